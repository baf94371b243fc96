"""The node daemon: one thread, one poll loop, running the tasks, the worker processes,
the object table and the shared-memory store of its machine.

Everything arrives as events (a batch of messages, a worker's output, a worker's exit,
the owning driver's stdin closing) and leaves as batched messages, one frame per client
per loop turn. What to do with a task or a worker is decided by ``node_state.NodeState``
(no I/O: events in, instructions out); ``node_tasks.NodeTasks`` carries its instructions
out. ``Node`` itself is a thin shell: the loop, the dispatch tables (each message type to
the bound method of the part that owns it) and the wiring of its parts, each built with
what it needs (see the map in README.md).

Start with ``python -m rayjupyter.core.node CONFIG_JSON``; the cluster secret comes in the
environment (``RAYJUPYTER_SECRET``), never on the command line.
"""

from __future__ import annotations

import contextlib
import glob
import json
import operator
import os
import shutil
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import zmq

from rayjupyter.core import (
    auth,
    discovery,
    fork_server,
    node_routes,
    spawn,
    store_placement,
    task_events,
    worker_limit,
)
from rayjupyter.core import protocol as P
from rayjupyter.core.channel import Channel
from rayjupyter.core.config import (
    DRIVER_CHANNEL_ENV,
    READY_LINE,
    SECRET_ENV,
    NodeConfig,
    bound,
    node_totals,
    session_dir,
    worker_endpoint,
)
from rayjupyter.core.head import HeadState, NodeInfo
from rayjupyter.core.node_actors import ActorRecord, NodeActors
from rayjupyter.core.node_connections import NodeConnections
from rayjupyter.core.node_forwarding import NodeForwarding
from rayjupyter.core.node_gc import GarbagePolicy
from rayjupyter.core.node_generators import NodeGenerators
from rayjupyter.core.node_instructions import WARN, Instruction
from rayjupyter.core.node_io import ClientInfo, NodePoll
from rayjupyter.core.node_jobs import NodeJobs
from rayjupyter.core.node_links import NodeLinks, PeerLink
from rayjupyter.core.node_membership import NodeMembership
from rayjupyter.core.node_objects import NodeObjects
from rayjupyter.core.node_placement import NodePlacement
from rayjupyter.core.node_pulls import NodePulls
from rayjupyter.core.node_queries import NodeQueries
from rayjupyter.core.node_routers import NodeRouters
from rayjupyter.core.node_runtime_env import NodeRuntimeEnv
from rayjupyter.core.node_state import NodeState
from rayjupyter.core.node_tasks import NodeTasks
from rayjupyter.core.node_workers import NodeWorkers
from rayjupyter.core.object_store import (
    ObjectStore,
)
from rayjupyter.core.scheduler import ResourcePool, TaskRecord, WorkerRecord

VALIDATE_ENV = "RAYJUPYTER_VALIDATE"  # "1": check the state's invariants every loop turn


class Node:
    """The daemon: its parts, the tables routing messages to them; ``run`` is the loop."""

    #: the parts the node is made of: attribute -> class (each built in ``__init__``)
    PARTS: dict[str, type] = {
        "actor_part": NodeActors,
        "queries": NodeQueries,
        "envs": NodeRuntimeEnv,
        "pool": NodeWorkers,
        "placement": NodePlacement,
        "generators": NodeGenerators,
        "peer_links": NodeLinks,
        "membership": NodeMembership,
        "forwarding": NodeForwarding,
        "pulling": NodePulls,
        "object_table": NodeObjects,
        "task_part": NodeTasks,
        "connections": NodeConnections,
        "jobs": NodeJobs,
    }

    #: which method handles each message a client may send, and each message a peer node
    #: sends us on our link to it: the node's own, or "part.method" of one of ``PARTS``
    #: (bound once, in ``__init__``: one lookup a message); the tables are node_routes.py's
    HANDLERS: dict[type, str] = node_routes.CLIENT_MESSAGES
    PEER_HANDLERS: dict[type, str] = node_routes.PEER_MESSAGES

    def __init__(self, config: NodeConfig, secret: str) -> None:
        self.config = config
        self.secret = secret
        self.session = config.session
        self.worker_endpoint = worker_endpoint(self.session)
        self.node_id = os.urandom(8)
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.zap = auth.ZapHandler(self.context, secret)  # before any socket binds
        self.clients: dict[bytes, ClientInfo] = {}
        #: the one dispatch table: message type -> the bound method that handles it
        self.handlers: dict[type, Callable[[bytes, Any], None]] = {}
        # Local drivers: a Unix socket; everyone else: tcp with CurveZMQ (node_routers). Our
        # own workers talk over a socket pair each (channel.py), the cheapest hop there is.
        self.routers = NodeRouters(
            context=self.context,
            secret=secret,
            endpoint=self.worker_endpoint,
            host=config.host,
            port=config.port,
            handlers=self.handlers,
            clients=self.clients,
            report_error=self.report_internal_error,
        )
        self.router, self.tcp_router = self.routers.router, self.routers.tcp_router
        self.port = self.routers.port
        self.tcp_clients = self.routers.tcp_clients
        # bound once: every part sends through these
        self.send = self.routers.send
        self.send_chunk = self.routers.send_chunk
        self.send_file_chunk = self.routers.send_file_chunk
        self.flush = self.routers.flush
        self.address = f"{config.host}:{self.port}"
        # TCP peers without the secret fail the handshake before ZAP: reported from here
        self.handshakes = auth.HandshakeMonitor(
            self.tcp_router, f"tcp://{self.address}", self.zap.refusals
        )

        # /dev/shm, or files on disk when it is too small (a container's 64 MB): decided
        # before anything reads the store's size (the memory resource is what it leaves)
        placement = store_placement.measure(self.session, config.object_store_memory)
        config.object_store_memory = placement.capacity
        totals = node_totals(config)  # CPU, GPU, memory and the custom ones
        totals.setdefault(f"node:{config.host}", 1.0)  # as Ray: every node names its address
        # every task and worker decision is made there; NodeTasks carries them out
        self.state = NodeState(
            ResourcePool(totals),
            pool_size=max(1, int(config.num_cpus)),
            limit=worker_limit.for_node(config.max_workers, config.num_cpus),
        )
        self.resources = self.state.resources
        self.scheduler = self.state.scheduler
        self.placement = NodePlacement(self)  # bundles held here; on the head, the group table
        spill_dir = config.spill_dir or f"/tmp/rayjupyter/{self.session}/spill"
        self.store = ObjectStore(
            self.session, config.object_store_memory, spill_dir, placement.directory
        )
        self.store.note = placement.reason
        self.head = HeadState()
        me = NodeInfo(self.node_id, self.address, self.advertised(), session=self.session)
        self.head.register_node(me)
        self.state.nodes, self.state.node_id = self.head.nodes, self.node_id  # peer placement
        self.placement.table.node_joined(self.node_id, me.resources)

        self.actors: dict[bytes, ActorRecord] = self.state.actor_table.actors
        self.events = task_events.TaskEventLog(bound("task_events"))
        self.workers: dict[bytes, WorkerRecord] = self.state.workers
        self.tasks: dict[bytes, TaskRecord] = self.state.tasks
        self.recent_logs = task_events.RecentLogs()  # each worker's last lines, for dashboards
        self.pool_size = self.state.pool_size
        self.running = True
        self.generators = NodeGenerators(self)  # streaming generator tasks (their items)
        # tests set it: the state machine's invariants are checked after every loop turn,
        # and a broken one stops the node with the reason (as dask's validate=True does)
        self.validating = os.environ.get(VALIDATE_ENV) == "1"

        self.poll = NodePoll()
        self.routers.watch(self.poll)
        self.poll.watch_quiet_socket(self.zap.socket, self.zap.handle)
        self.poll.watch_quiet_socket(self.handshakes.socket, self.handshakes.handle)
        if config.watch_stdin:
            self.poll.watch(sys.stdin.fileno(), self._on_stdin)

        self.envs = NodeRuntimeEnv(self.session, self.address, self.actors, self.send)
        self.pool = NodeWorkers(
            secret=secret,
            session=self.session,
            sys_path=config.sys_path,
            poll=self.poll,
            state=self.state,
            envs=self.envs,
            clients=self.clients,
            recent_logs=self.recent_logs,
            handlers=self.handlers,
            report_error=self.report_internal_error,
            release_client=lambda client: self.release_client(client),
            execute=lambda instructions: self.execute(instructions),  # (the task part's)
            send=self.send,
            log_clients=lambda: (*self.drivers(), *self.node_clients),
            actor_class=lambda a: (
                (self.actors[a].label or self.actors[a].class_name) if a in self.actors else None
            ),
            running=lambda: self.running,
            refusals=self.zap.refusals,
        )
        self.channels = self.pool.channels
        self.pipes = self.pool.pipes
        self.send_on_channel = self.pool.send_on_channel
        self.routers.channels, self.routers.send_on_channel = self.channels, self.send_on_channel
        self.routers.watch_output = self.pool.watch_output
        self.spawn_worker = self.pool.spawn_worker
        driver_channel = os.environ.pop(DRIVER_CHANNEL_ENV, "")
        if driver_channel:  # the driver that started us talks over a socket pair (channel.py)
            fd, driver_id = driver_channel.split(":")
            link = Channel(socket.socket(fileno=int(fd)), blocking_send=False)
            self.pool.open_channel(bytes.fromhex(driver_id), link)
        self.pool.listen_for_local_drivers()
        self.peer_handlers: dict[type, Callable[[PeerLink, Any], None]] = {}
        self.peer_links = NodeLinks(
            context=self.context,
            secret=secret,
            node_id=self.node_id,
            poll=self.poll,
            handlers=self.peer_handlers,
            report_error=self.report_internal_error,
        )
        self.links = self.peer_links.links
        self.node_clients: dict[bytes, bytes] = self.peer_links.node_clients
        self.flush_links = self.peer_links.flush_links
        self.routers.flush_links = self.flush_links
        self.pulling = NodePulls(self, self.peer_links)
        self.forwarding = NodeForwarding(self, self.peer_links, self.pulling)
        self.forwarded = self.forwarding.forwarded
        self.membership = NodeMembership(self, self.peer_links, self.forwarding, self.pulling)
        self.object_table = NodeObjects(
            session=self.session,
            state=self.state,
            store=self.store,
            clients=self.clients,
            actors=self.actors,
            generators=self.generators,
            pulling=self.pulling,
            forwarding=self.forwarding,
            send=self.send,
            actor_released=lambda actor: self.actor_part.actor_released(actor),
        )
        # the object table's calls on the path of every task, bound once
        self.objects = self.object_table.objects
        # full collections only while the tables are small (a pause per million objects)
        self.garbage = GarbagePolicy(lambda: len(self.tasks) + len(self.objects))
        self.hold = self.object_table.hold
        self.unhold = self.object_table.unhold
        self.incref = self.object_table.incref
        self.decref = self.object_table.decref
        self.set_ready = self.object_table.set_ready
        self.object_info = self.object_table.object_info
        self.new_entry = self.object_table.new_entry
        self.actor_part: NodeActors = NodeActors(
            host=self,
            peers=self.forwarding,
            state=self.state,
            pool=self.pool,
            objects=self.objects,
            events=self.events,
            actors_file=config.actors_file,
            place_actor=self.placement.place_actor,
            infeasible=self.placement.infeasible,
        )
        self.named_actors = self.actor_part.named_actors
        self.connections = NodeConnections(
            node_id=self.node_id,
            session=self.session,
            config=config,
            state=self.state,
            clients=self.clients,
            tcp_clients=self.tcp_clients,
            node_clients=self.node_clients,
            generators=self.generators,
            object_table=self.object_table,
            store=self.store,
            placement=self.placement,
            send=self.send,
            execute=lambda instructions: self.execute(instructions),  # (the task part's)
            owner_gone=self.actor_part.owner_gone,
            driver_arrived=self._driver_arrived,
            store_notice=placement.reason if placement.warn else "",
        )
        self.drivers: Callable[[], list[bytes]] = self.connections.drivers
        self.release_client: Callable[[bytes], None] = self.connections.release_client
        self.task_part = NodeTasks(
            state=self.state,
            events=self.events,
            store=self.store,
            head=self.head,
            clients=self.clients,
            actors=self.actors,
            object_table=self.object_table,
            generators=self.generators,
            placement=self.placement,
            forwarding=self.forwarding,
            pulling=self.pulling,
            envs=self.envs,
            pool=self.pool,
            actor_part=self.actor_part,
            send=self.send,
            flush=self.flush,
            drivers=self.drivers,
        )
        tasks = self.task_part
        self.events.warn = lambda text: tasks.execute_one((WARN, text))
        self.object_table.wire(tasks.task_ready, tasks.fail_task)
        # what the other parts ask of the node (ActorHost, PeerHost), bound once
        self.funcs = tasks.funcs
        self.context_of = tasks.context_of
        self.admit = tasks.admit
        self.task_ready = tasks.task_ready
        self.fail_task = tasks.fail_task
        self.task_failed = tasks.task_failed
        self.forget_task = tasks.forget_task
        self.unpin_deps = tasks.unpin_deps
        self.dispatch = tasks.dispatch
        self.pool.channel_closed = tasks.client_gone
        self.execute: Callable[[list[Instruction]], None] = tasks.execute
        self.warn_worker_limit = tasks.warn_worker_limit
        self.membership.start()
        self.jobs = NodeJobs(
            node_id=self.node_id,
            address=self.address,
            secret=secret,
            session=self.session,
            is_head=lambda: self.is_head,
            head_address=config.head_address,
            poll=self.poll,
            clients=self.clients,
            envs=self.envs,
            send=self.send,
        )
        self.queries = NodeQueries(
            node_id=self.node_id,
            object_store_memory=config.object_store_memory,
            state=self.state,
            actors=self.actors,
            named_actors=self.named_actors,
            clients=self.clients,
            channels=self.channels,
            objects=self.objects,
            head=self.head,
            store=self.store,
            events=self.events,
            recent_logs=self.recent_logs,
            free_resources=self.free_resources,
            drivers=self.drivers,
            context_of=self.context_of,
            lookup_actor=self.actor_part.lookup_actor,
            send=self.send,
            jobs=self.jobs,
        )
        self.handlers.update(
            (kind, operator.attrgetter(name)(self)) for kind, name in self.HANDLERS.items()
        )
        self.peer_handlers.update(
            (kind, operator.attrgetter(name)(self)) for kind, name in self.PEER_HANDLERS.items()
        )
        for _ in range(self.pool_size):
            self.spawn_worker()
        self.actor_part.restore_detached_actors()

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        if self.is_head:
            self.announce_ready()  # a joining node does once the head has answered
        last_check = time.monotonic()
        self.garbage.start()
        try:
            while self.running:
                if self.pool.unborn:  # (started outside an instruction list: the pool's)
                    self.pool.adopt_unborn()
                busy = self.object_table.releasing or self.routers.ready
                events = self.poll.poll(0 if busy else self.forwarding.poll_timeout_ms(1000))
                if time.monotonic() - last_check > 1.0:
                    last_check = time.monotonic()
                    self.connections.let_go_of_silent_drivers()
                    self.pool.expire_unproven()
                    self.zap.refusals.tick()  # a window's summary of refused connections
                    # tasks' orphaned processes that exited (not jobs': theirs to collect)
                    self.pool.reap_adopted(also=self.jobs.pids())
                    self.garbage.tick(last_check)
                    # env workers idle for a while stop (NodeState picks them)
                    self.execute(self.state.reap_env_workers(last_check))
                    self.task_part.warn_if_starved(last_check)
                    self.actor_part.tick(last_check)  # actors asked to end, past their grace
                self.membership.tick()
                self.placement.tick()
                self.jobs.tick()
                # Order matters: a worker writes its output, then sends its result, then
                # may exit. So output first (a task's prints carry its own name), then
                # messages, then exits (a result sent just before exiting still counts).
                exited = []
                channel_fds = self.pool.channel_fds
                exit_fds = self.poll.exit_fds
                fd_handlers = self.poll.fd_handlers
                link_of_socket = self.peer_links.link_of_socket
                for source, mask in events:
                    if source in channel_fds:
                        self.pool.on_channel(channel_fds[source], mask)
                    elif source in exit_fds:
                        exited.append(source)
                    elif source in link_of_socket:
                        self.peer_links.drain_link(link_of_socket[source])
                    elif isinstance(source, int):  # .get: an earlier event may have closed it
                        handler = fd_handlers.get(source)
                        if handler is not None:
                            handler(source)
                    # else: a peer link's socket dropped by an earlier event of this turn
                if self.routers.ready:  # (their descriptors' handlers above, or left over)
                    self.routers.drain_ready()
                for fd in exited:
                    if fd in fd_handlers:
                        fd_handlers[fd](fd)
                if self.object_table.releasing:  # a gone client's many holds, a share a turn
                    self.object_table.release_some()
                self.schedule()
                if self.validating:
                    self.validate()
                self.flush()
        finally:
            self.shutdown()

    def _driver_arrived(self, client: bytes) -> None:
        self.jobs.driver_arrived(client)  # (the jobs part is built after the connections)

    @property
    def is_head(self) -> bool:
        return not self.config.head_address

    def announce_ready(self) -> None:
        print(f"{READY_LINE} {self.port} {self.session}", flush=True)

    def report_internal_error(self, message: Any) -> None:
        text = (
            f"rayjupyter node: internal error while handling {type(message).__name__} "
            f"(please report it):\n{traceback.format_exc()}"
        )
        print(text, file=sys.stderr, flush=True)
        for driver in self.drivers():
            self.send(driver, P.LogLines(2, text))

    def _on_stdin(self, fd: int) -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:  # the owning driver is gone, however it died
            self.running = False
            self.poll.forget(fd)

    def describe(self) -> dict[str, Any]:
        """This cluster's record for ``discovery`` (other programs of this user find it)."""
        return {
            "session": self.session,
            "address": self.address,
            "connect_address": f"rayjupyter://{self.secret}@{self.address}",
            "pid": os.getpid(),
            "owner_pid": self.config.owner_pid,
            "started": time.time(),
            "num_cpus": self.config.num_cpus,
            "num_gpus": self.config.num_gpus,
            "head_address": self.config.head_address,  # "" for a head: a cluster of its own
        }

    def advertised(self) -> dict[str, float]:
        """What this node offers, as the node table shows it."""
        advertised = self.placement.ledger.base_total()  # without our groups' bundles
        advertised["object_store_memory"] = float(self.config.object_store_memory)
        return advertised

    def free_resources(self) -> dict[str, float]:
        """What this node could run now. A worker lent to a driver counts as free: the node
        takes it back the moment other work waits here (worker_leases.py), so placement
        (SPREAD, groups, peers) and ``available_resources()`` see what is really spare."""
        free = dict(self.resources.available)
        for lease in self.state.leases.leases.values():
            if not lease.returned:
                for key, value in lease.record.demand.items():
                    free[key] = free.get(key, 0.0) + value
        return {k: max(v, 0.0) for k, v in free.items()}

    def queued(self) -> int:
        return len(self.scheduler.ready)

    # ------------------------------------------------------------------ handlers

    def on_generator_item(self, client: bytes, message: P.GeneratorItem) -> None:
        self.generators.on_item(message)

    def on_generator_consumed(self, client: bytes, message: P.GeneratorConsumed) -> None:
        self.generators.on_consumed(message)

    def on_stop(self, client: bytes, message: P.StopCluster) -> None:
        self.running = False

    # ------------------------------------------------------------------ tasks

    def schedule(self) -> None:
        """Once per loop turn: place actors, run what is ready, start the workers missing."""
        actor_part = self.actor_part
        if actor_part.pending_actors:
            actor_part.place_pending_actors()
        state = self.state
        self.execute(state.assign())
        leases = state.leases
        if leases.leases and (state.ready or actor_part.pending_actors):
            self.execute(leases.revoke_all())  # the leased workers are wanted
        # (what waits for a lent worker coming back stays: it is free in a moment)
        if len(self.head.nodes) > 1 and not leases.coming_back():
            self.forwarding.spill_over()
        if self.scheduler.env_unplaced:
            self.execute(state.env_spawns(self.envs.runtime_envs, time.monotonic()))
        state.turn_ended()  # (after every start this turn, actors' included)
        self.execute(state.prefetch())

    def validate(self) -> None:
        """``NodeState.validate``, reported on stderr before the error stops the node."""
        try:
            ledger = self.placement.ledger
            ledger.validate()
            # the bundles held here were taken out of the plain resources (BundleLedger)
            self.state.validate(held_elsewhere=ledger.reserved())
        except AssertionError:
            print(
                f"rayjupyter node: an invariant of its state broke ({VALIDATE_ENV}=1):\n"
                f"{traceback.format_exc()}",
                file=sys.stderr,
                flush=True,
            )
            raise

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        self.jobs.shutdown()
        self.pool.stop_fork_server()  # (the workers it started are ours)
        for pipes in self.pipes.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pipes.pid, signal.SIGKILL)
        for pipes in self.pipes.values():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pipes.pid, 0)  # SIGKILLed: this returns at once
        spawn.kill_descendants()  # what tasks started and left behind (we are its subreaper)
        self.store.shutdown()
        for path in glob.glob(f"{self.store.directory}/rj-{self.session}-*"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for address in list(self.links):
            self.peer_links.drop_link(address)
        for client in list(self.channels):
            self.pool.close_channel(client)
        self.handshakes.close()
        self.routers.close()
        self.zap.close()
        self.context.term()
        shutil.rmtree(session_dir(self.session), ignore_errors=True)


def main() -> None:
    config = NodeConfig(**json.loads(sys.argv[1]))
    secret = os.environ.pop(SECRET_ENV, "")
    if not secret:
        raise SystemExit(f"rayjupyter node: set {SECRET_ENV}; a node never runs without a secret")
    config.session = config.session or os.urandom(4).hex()
    spawn.become_subreaper()  # processes tasks detach stay below us (see spawn.py)
    # what nodes killed before us left (their secret, their shared memory): ours to clear
    discovery.remove_stale_sessions(keep=config.session)
    os.makedirs(session_dir(config.session), mode=0o700, exist_ok=True)
    import rayjupyter.core.worker_main  # noqa: F401 - imported once here, shared by forked workers

    # workers are forked from a template made now, before the node's state and sockets
    template = fork_server.start_if_enabled()

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the driver's terminal is the driver's
    signal.signal(signal.SIGTERM, lambda *_: setattr(node, "running", False))
    node = Node(config, secret)
    node.pool.fork_server = template
    discovery.write_cluster_file(config.session, node.describe())
    node.run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # everything is cleaned up: skip the interpreter's slow teardown


if __name__ == "__main__":
    main()
