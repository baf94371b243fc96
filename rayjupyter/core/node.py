"""The node daemon: one thread, one poll loop, running the tasks, the worker processes,
the object table and the shared-memory store of its machine.

Everything arrives as events (a batch of messages, a worker's output, a worker's exit,
the owning driver's stdin closing) and leaves as batched messages, one frame per client
per loop turn. What to do with a task or a worker is decided by ``node_state.NodeState``
(no I/O: events in, instructions out); this class carries its instructions out.

Start with ``python -m rayjupyter.core.node CONFIG_JSON``; the cluster secret comes in the
environment (``RAYJUPYTER_SECRET``), never on the command line.
"""

from __future__ import annotations

import contextlib
import glob
import json
import operator
import os
import pickle
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
    ids,
    protocol,
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
    session_dir,
    worker_endpoint,
)
from rayjupyter.core.exceptions import ObjectLostError, ObjectStoreFullError
from rayjupyter.core.head import HeadState, NodeInfo
from rayjupyter.core.node_actors import ActorRecord, ActorState, NodeActors
from rayjupyter.core.node_forwarding import NodeForwarding
from rayjupyter.core.node_generators import NodeGenerators
from rayjupyter.core.node_io import ClientInfo, NodePoll
from rayjupyter.core.node_links import NodeLinks, PeerLink
from rayjupyter.core.node_membership import NodeMembership
from rayjupyter.core.node_placement import NodePlacement
from rayjupyter.core.node_pulls import NodePulls
from rayjupyter.core.node_queries import NodeQueries
from rayjupyter.core.node_runtime_env import NodeRuntimeEnv
from rayjupyter.core.node_state import (
    ACTOR_PROCESS_DIED,
    CANCEL_CALL,
    CANCEL_FORWARDED,
    DROP_ACTOR_CALL,
    EXECUTE,
    FAILED,
    FINISHED,
    INTERRUPT,
    KILL,
    REVOKE,
    SPAWN,
    START_ACTOR,
    STARTED,
    UNPIN,
    WARN,
    Instruction,
    NodeState,
    cancelled_error,
)
from rayjupyter.core.node_workers import NodeWorkers
from rayjupyter.core.object_store import (
    FlatBytes,
    ObjectStore,
    pool_prefix,
    shm_path,
    write_object,
)
from rayjupyter.core.scheduler import ResourcePool, TaskRecord, TaskState, WorkerRecord
from rayjupyter.core.serialization import INLINE_THRESHOLD

VALIDATE_ENV = "RAYJUPYTER_VALIDATE"  # "1": check the state's invariants every loop turn


class ObjectEntry:
    """One object in the node's table, from the task that will make it until it is freed."""

    __slots__ = (
        "contained",
        "copies",
        "in_store",
        "inline",
        "is_error",
        "location",
        "ready",
        "refs",
        "size",
        "subscribers",
        "waiters",
    )

    def __init__(self) -> None:
        self.ready = False
        self.inline: bytes | None = None
        self.size = 0
        self.is_error = False
        self.in_store = False  # the value is a file in shared memory (or spilled)
        self.refs = 0  # holds: client refs, tasks using it, objects containing it
        self.contained: tuple[bytes, ...] = ()
        self.waiters: list[TaskRecord] = []
        self.subscribers: set[bytes] = set()
        self.location = ""  # host:port of the peer node that has the value, if not here
        self.copies: set[str] = set()  # peers that keep a copy for us until we free it


class Node:
    """The daemon's state and handlers; ``run`` is the loop."""

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
    }

    #: which method handles each message a client may send: the node's own, or
    #: "part.method" of one of ``PARTS`` (bound once, in ``__init__``: one lookup a message)
    HANDLERS: dict[type, str] = {
        P.Hello: "on_hello",
        P.SubmitTask: "on_submit",
        P.PutObject: "on_put",
        P.RefOps: "on_ref_ops",
        P.PinOps: "on_pin_ops",
        P.Subscribe: "on_subscribe",
        P.TaskFinished: "on_task_finished",
        P.WorkerBlocked: "on_worker_blocked",
        P.StopCluster: "on_stop",
        P.Heartbeat: "on_heartbeat",
        P.Disconnect: "on_disconnect",
        P.CancelTask: "on_cancel",
        P.CreateActor: "actor_part.on_create_actor",
        P.KillActor: "actor_part.on_kill_actor",
        P.ActorStarted: "actor_part.on_actor_started",
        P.ActorExiting: "actor_part.on_actor_exiting",
        P.ProvideObjects: "pulling.on_provide_objects",
        P.PullObject: "pulling.on_pull_object",
        P.RegisterNode: "membership.on_register_node",
        P.NodeHeartbeat: "membership.on_node_heartbeat",
        P.ActorHomes: "forwarding.on_actor_homes",
        P.UploadPackage: "envs.on_upload_package",
        P.RegisterRuntimeEnv: "envs.on_register_runtime_env",
        P.GeneratorItem: "on_generator_item",
        P.GeneratorConsumed: "on_generator_consumed",
        **dict.fromkeys(P.QUERIES, "queries.on_query"),  # by type: node_queries.ANSWERS
        P.CreatePlacementGroup: "placement.on_create",
        P.RemovePlacementGroup: "placement.on_remove",
        P.QueryPlacementGroups: "placement.on_query",
    }

    #: which method handles each message a peer node sends us on our link to it
    PEER_HANDLERS: dict[type, str] = {
        P.Welcome: "membership.on_peer_welcome",
        P.ClusterView: "membership.on_cluster_view",
        P.ObjectsReady: "forwarding.on_peer_objects_ready",
        P.ContainedObjects: "forwarding.on_contained_objects",
        P.ActorGone: "forwarding.on_actor_gone",
        P.LogLines: "forwarding.on_peer_log_lines",
        P.ObjectChunk: "pulling.on_object_chunk",
        P.Reply: "placement.on_peer_reply",
    }

    def __init__(self, config: NodeConfig, secret: str) -> None:
        self.config = config
        self.secret = secret
        self.session = config.session
        self.worker_endpoint = worker_endpoint(self.session)
        self.node_id = os.urandom(8)
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.zap = auth.ZapHandler(self.context, secret)  # before any socket binds
        # Local drivers: a Unix socket, faster than tcp and needing no crypto. Everyone else:
        # tcp with CurveZMQ. Clients of each are told apart by their socket. Our own workers
        # talk over a socket pair each (channel.py), the cheapest hop there is.
        self.router = self._router(secret, curve=False)
        self.router.bind(self.worker_endpoint)
        self.tcp_router = self._router(secret, curve=True)
        if config.port:
            self.tcp_router.bind(f"tcp://{config.host}:{config.port}")
            self.port = config.port
        else:
            self.port = self.tcp_router.bind_to_random_port(f"tcp://{config.host}")
        self.tcp_clients: set[bytes] = set()
        self.address = f"{config.host}:{self.port}"

        totals = {"CPU": float(config.num_cpus), "GPU": float(config.num_gpus)}
        totals.update({k: float(v) for k, v in config.resources.items()})
        totals.setdefault(f"node:{config.host}", 1.0)  # as Ray: every node names its address
        # every task and worker decision is made there; this class carries them out
        self.state = NodeState(
            ResourcePool(totals),
            pool_size=max(1, int(config.num_cpus)),
            limit=worker_limit.for_node(config.max_workers, config.num_cpus),
        )
        self.resources = self.state.resources
        self.scheduler = self.state.scheduler
        self.worker_limit = self.state.limit
        self.placement = NodePlacement(self)  # bundles held here; on the head, the group table
        spill_dir = config.spill_dir or f"/tmp/rayjupyter/{self.session}/spill"
        self.store = ObjectStore(self.session, config.object_store_memory, spill_dir)
        self.head = HeadState()
        me = NodeInfo(self.node_id, self.address, self.advertised(), session=self.session)
        self.head.register_node(me)
        self.placement.table.node_joined(self.node_id, me.resources)

        self.clients: dict[bytes, ClientInfo] = {}
        self.actors: dict[bytes, ActorRecord] = {}
        self.events = task_events.TaskEventLog()
        self.workers: dict[bytes, WorkerRecord] = self.state.workers
        self.tasks: dict[bytes, TaskRecord] = self.state.tasks
        self.objects: dict[bytes, ObjectEntry] = {}
        self.funcs: dict[bytes, bytes] = {}
        self.holds: dict[bytes, dict[bytes, int]] = {}  # client -> object -> count
        self.outbox: dict[bytes, list[Any]] = {}
        self.recent_logs = task_events.RecentLogs()  # each worker's last lines, for dashboards
        self.pool_size = self.state.pool_size
        self.warned_infeasible: set[tuple[tuple[str, float], ...]] = set()
        self.running = True
        self.generators = NodeGenerators(self)  # streaming generator tasks (their items)
        # tests set it: the state machine's invariants are checked after every loop turn,
        # and a broken one stops the node with the reason (as dask's validate=True does)
        self.validating = os.environ.get(VALIDATE_ENV) == "1"

        self.poll = NodePoll()
        self.poller = self.poll.poller
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.tcp_router, zmq.POLLIN)
        self.poller.register(self.zap.socket, zmq.POLLIN)
        if config.watch_stdin:
            self.poll.watch(sys.stdin.fileno(), self._on_stdin)

        #: the one dispatch table: message type -> the bound method that handles it
        self.handlers: dict[type, Callable[[bytes, Any], None]] = {}
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
            release_client=self.release_client,
            execute=self.execute,
            send=self.send,
            log_clients=lambda: (*self.drivers(), *self.node_clients),
            actor_class=lambda a: self.actors[a].class_name if a in self.actors else None,
            running=lambda: self.running,
        )
        self.channels = self.pool.channels
        self.pipes = self.pool.pipes
        self.drain_output = self.pool.drain_output
        self.send_on_channel = self.pool.send_on_channel
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
        self.pulling = NodePulls(self, self.peer_links)
        self.pull = self.pulling.pull
        self.lineage = self.pulling.lineage
        self.forwarding = NodeForwarding(self, self.peer_links, self.pulling)
        self.forwarded = self.forwarding.forwarded
        self.place_by_locality = self.forwarding.place_by_locality
        self.membership = NodeMembership(self, self.peer_links, self.forwarding, self.pulling)
        self.actor_part = NodeActors(
            host=self,
            peers=self.forwarding,
            state=self.state,
            pool=self.pool,
            actors=self.actors,
            objects=self.objects,
            events=self.events,
            actors_file=config.actors_file,
            place_actor=self.placement.place_actor,
            infeasible=self.placement.infeasible,
        )
        self.named_actors = self.actor_part.named_actors
        self.membership.start()
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
        try:
            while self.running:
                events = self.poller.poll(1000)
                if time.monotonic() - last_check > 1.0:
                    last_check = time.monotonic()
                    self.let_go_of_silent_drivers()
                    self.pool.expire_unproven()
                    # env workers idle for a while stop (NodeState picks them)
                    self.execute(self.state.reap_env_workers(last_check))
                self.membership.tick()
                self.placement.tick()
                # Order matters: a worker writes its output, then sends its result, then
                # may exit. So output first (a task's prints carry its own name), then
                # messages, then exits (a result sent just before exiting still counts).
                router_ready = tcp_ready = False
                exited = []
                channel_fds = self.pool.channel_fds
                exit_fds = self.poll.exit_fds
                fd_handlers = self.poll.fd_handlers
                link_of_socket = self.peer_links.link_of_socket
                for source, mask in events:
                    if source in channel_fds:
                        self.pool.on_channel(channel_fds[source], mask)
                    elif source is self.router:
                        router_ready = True
                    elif source is self.tcp_router:
                        tcp_ready = True
                    elif source is self.zap.socket:
                        self.zap.handle()
                    elif source in exit_fds:
                        exited.append(source)
                    elif source in link_of_socket:
                        self.peer_links.drain_link(link_of_socket[source])
                    else:  # .get: an earlier event of this turn may have closed it
                        handler = fd_handlers.get(int(source))
                        if handler is not None:
                            handler(int(source))
                if router_ready:
                    self._drain_router(self.router)
                if tcp_ready:
                    self._drain_router(self.tcp_router)
                for fd in exited:
                    if fd in fd_handlers:
                        fd_handlers[fd](fd)
                self.schedule()
                if self.validating:
                    self.validate()
                self.flush()
        finally:
            self.shutdown()

    @property
    def is_head(self) -> bool:
        return not self.config.head_address

    def announce_ready(self) -> None:
        print(f"{READY_LINE} {self.port} {self.session}", flush=True)

    def _router(self, secret: str, *, curve: bool) -> zmq.Socket[bytes]:
        router = self.context.socket(zmq.ROUTER)
        router.linger = 0
        router.sndhwm = 0
        router.rcvhwm = 0
        auth.secure_server(router, secret, curve=curve)
        return router

    def _drain_router(self, router: zmq.Socket[bytes]) -> None:
        over_tcp = router is self.tcp_router
        pollin = int(zmq.POLLIN)
        for _ in range(10_000):
            # EVENTS instead of a failing recv: an exception per drained batch costs more
            if not int(router.getsockopt(zmq.EVENTS)) & pollin:
                return
            identity = router.recv()  # always two frames: the peer's id, then the batch
            frame = router.recv()
            client = identity[:-1]
            if over_tcp:
                self.tcp_clients.add(client)
            info = self.clients.get(client)
            if info is not None:
                info.last_seen = time.monotonic()
            for message in protocol.loads(frame):
                try:
                    self.handlers[type(message)](client, message)
                except Exception:  # a bug here must not take the cluster down: report it
                    self.report_internal_error(message)

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

    def send(self, client: bytes, message: Any) -> None:
        self.outbox.setdefault(client, []).append(message)

    def send_chunk(self, client: bytes, chunk: P.ObjectChunk) -> None:
        """A piece of a value for a peer: its bytes go as a frame of their own, not pickled."""
        self.flush()  # keep the order of what was sent before
        header = protocol.dumps([chunk._replace(data=b"")])
        router = self.tcp_router if client in self.tcp_clients else self.router
        router.send_multipart([client + b"r", header, chunk.data], copy=False)

    def flush(self) -> None:
        outbox, self.outbox = self.outbox, {}
        tcp_clients = self.tcp_clients
        channels = self.channels
        for client, messages in outbox.items():
            link = channels.get(client)
            if link is not None:  # a worker of ours
                self.send_on_channel(link, protocol.dumps(messages))
                continue
            # no high-water mark on the router: a slow reader queues, it never loses messages
            router = self.tcp_router if client in tcp_clients else self.router
            router.send(client + b"r", zmq.SNDMORE)
            router.send(protocol.dumps(messages))
        self.flush_links()

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
        return {k: max(v, 0.0) for k, v in self.resources.available.items()}

    def queued(self) -> int:
        return len(self.scheduler.ready)

    def new_entry(self) -> ObjectEntry:
        return ObjectEntry()

    def drivers(self) -> list[bytes]:
        return [c for c, info in self.clients.items() if info.kind == "driver"]

    # ------------------------------------------------------------------ handlers

    def on_hello(self, client: bytes, message: P.Hello) -> None:
        if message.version != protocol.PROTOCOL_VERSION:
            error = (
                f"protocol version {message.version} does not match the node's "
                f"{protocol.PROTOCOL_VERSION}: install the same rayjupyter version on both sides"
            )
            self.send(client, P.Welcome(self.node_id, self.session, 0, error))
            return
        self.send(
            client, P.Welcome(self.node_id, self.session, self.config.object_store_memory, "")
        )
        if message.kind == "node":  # a peer: its tasks run here, it gets our workers' output
            self.node_clients.setdefault(client, b"")
        self.clients[client] = ClientInfo(
            message.kind, message.pid, message.namespace, time.monotonic()
        )
        worker = self.workers.get(client)
        if worker is not None:
            self.execute(self.state.worker_connected(worker))

    def on_submit(self, client: bytes, message: P.SubmitTask) -> None:
        if message.func_blob is not None:
            self.funcs[message.func_id] = message.func_blob
        job, namespace, parent = self.context_of(client)
        task = TaskRecord(
            task_id=message.task_id,
            owner=client,
            name=message.name,
            func_id=message.func_id,
            args_blob=message.args_blob,
            deps=message.deps,
            nested=message.nested,
            return_ids=message.return_ids,
            demand=message.resources,
            max_retries=message.max_retries,
            retry_exceptions=message.retry_exceptions,
            actor_id=message.actor_id,
            method=message.method,
            job=job,
            namespace=namespace,
            parent=parent,
            env=message.runtime_env,
            strategy=message.strategy,
        )
        if message.generator:
            self.generators.submitted(task.task_id, client, message)
        self.admit(client, task)

    def context_of(self, client: bytes) -> tuple[bytes, str, bytes | None]:
        """(job, namespace, parent task) of what a client submits now."""
        worker = self.workers.get(client)
        if worker is None:
            info = self.clients.get(client)
            return client, info.namespace if info else "", None
        if worker.actor_id and worker.actor_id in self.actors:
            actor = self.actors[worker.actor_id]
            return actor.job, actor.namespace, None
        if worker.task is not None:
            return worker.task.job, worker.task.namespace, worker.task.task_id
        return b"", "", None

    def admit(self, client: bytes, task: TaskRecord) -> None:
        """Take a new task (or actor call or creation): hold its values, wait for its deps."""
        self.state.submit(task)
        if task.method != "__init__":
            self.events.submitted(task.task_id, task.name, task.job, task.actor_id, bool(task.deps))
        for object_id in task.return_ids:
            self.objects[object_id] = ObjectEntry()
            self.hold(client, object_id)
        for object_id in task.nested:
            self.incref(object_id)
        failed_dep: bytes | None = None
        for object_id in task.deps:
            entry = self.objects.get(object_id)
            if entry is None:
                failed_dep = pickle.dumps(
                    ObjectLostError(
                        f"Task {task.name!r} depends on object {object_id.hex()}, which no "
                        f"longer exists (all its refs were dropped)."
                    ),
                    protocol=5,
                )
                continue
            entry.refs += 1
            if not entry.ready:
                entry.waiters.append(task)
                task.missing += 1
            elif entry.is_error and failed_dep is None:
                failed_dep = entry.inline
        if failed_dep is None and (task.env or task.method == "__init__"):
            failed_dep = self.envs.env_error(task)
        if failed_dep is not None:
            self.fail_task(task, failed_dep)
            return
        if task.actor_id:
            if not self.actor_part.actor_call_admitted(task):
                return
        elif (
            not self.resources.feasible(task.demand)
            and not self.forwarding.feasible_on_peer(task.demand)
            and self.placement.infeasible(task.name, task.demand)  # warns, or: group gone
        ):
            self.fail_task(task, self.placement.removed_error(task.name, task.demand))
            return
        if task.missing == 0:
            self.task_ready(task)

    def task_ready(self, task: TaskRecord) -> None:
        self.events.ready(task.task_id)
        if task.actor_id:
            if task.actor_id not in self.actors:
                self.forwarding.route_actor_call(task)  # an actor of another node (see actor_homes)
                return
            if self._pull_deps(task):
                return
            task.transition(TaskState.READY)
            self.actor_part.pump_actor(task.actor_id)
        elif task.strategy[:1] in ("S", "n") and self.placement.place(task):
            return  # SPREAD or node affinity: sent to its node (or failed)
        elif not self.place_by_locality(task) and not self._pull_deps(task):
            self.state.task_ready(task)

    def _pull_deps(self, task: TaskRecord) -> bool:
        """Start copying the task's values that only peers have; True if it must wait."""
        waiting = False
        for object_id in task.deps:
            entry = self.objects.get(object_id)
            if entry is not None and entry.location:
                entry.waiters.append(task)
                task.missing += 1
                self.pull(object_id)
                waiting = True
        return waiting

    def _warn_infeasible(self, name: str, demand: dict[str, float]) -> None:
        key = tuple(sorted(demand.items()))
        if key in self.warned_infeasible:
            return
        self.warned_infeasible.add(key)
        text = (
            f"Warning: {name!r} needs {demand}, more than this cluster has "
            f"({self.head.cluster_resources()}); it waits until a node that can run it joins.\n"
        )
        for driver in self.drivers():
            self.send(driver, P.LogLines(2, text))

    def warn_worker_limit(self, waiting: int, what: str) -> None:
        """Work found no process (worker_limit.py): the drivers hear it once per episode."""
        self.execute(self.state.limit_reached(waiting, what))

    def on_put(self, client: bytes, message: P.PutObject) -> None:
        entry = ObjectEntry()
        self.objects[message.object_id] = entry
        self.hold(client, message.object_id)
        inline = message.inline
        if inline is not None and len(inline) > INLINE_THRESHOLD:
            # a driver on another machine sends large values whole: they go to the store here
            path = shm_path(self.session, message.object_id)
            try:
                write_object(path, FlatBytes(inline), pool_prefix(self.session))
                inline = None
            except ObjectStoreFullError:
                pass  # kept inline: the value still works, in this process's memory
        self.set_ready(message.object_id, inline, message.size, False, message.contained)

    def on_ref_ops(self, client: bytes, message: P.RefOps) -> None:
        for add, object_id in message.ops:
            if add:
                if object_id in self.objects or object_id in self.actors:
                    self.hold(client, object_id)
            else:
                self.unhold(client, object_id)
                if self.generators.streams:  # maybe a generator its owner dropped
                    self.generators.released(object_id)

    def on_generator_item(self, client: bytes, message: P.GeneratorItem) -> None:
        self.generators.on_item(message)

    def on_generator_consumed(self, client: bytes, message: P.GeneratorConsumed) -> None:
        self.generators.on_consumed(message)

    def on_pin_ops(self, client: bytes, message: P.PinOps) -> None:
        for pin, object_id in message.ops:
            if not pin:
                self.store.unpin(object_id, client)  # also for freed objects still mapped
            elif self.store.contains(object_id):
                self.store.pin(object_id, client)

    def on_subscribe(self, client: bytes, message: P.Subscribe) -> None:
        for object_id in message.object_ids:
            entry = self.objects.get(object_id)
            if entry is None:
                error = ObjectLostError(
                    f"Object {object_id.hex()} no longer exists: every ref to it was dropped "
                    f"before this get."
                )
                blob = pickle.dumps(error, protocol=5)
                self.send(client, P.ObjectsReady(((object_id, blob, len(blob), True),)))
            elif entry.ready and not entry.location:
                self.send(client, P.ObjectsReady((self.object_info(object_id, entry),)))
            else:
                entry.subscribers.add(client)
                if entry.location:
                    self.pull(object_id)

    def on_task_finished(self, client: bytes, message: P.TaskFinished) -> None:
        worker = self.workers[client]
        if worker.actor_id:
            self.actor_part.actor_call_finished(worker, message)
            return
        task = self.tasks.get(message.task_id)
        if task is None or worker.task is not task:
            return
        self.drain_output(self.pipes[client])  # the task's prints, under the task's name
        self.unpin_deps(task)
        for instruction in self.state.task_finished(worker, task, message.error, message.retryable):
            if instruction[0] == FINISHED:
                self.events.ended(task.task_id, failed=False)
                for object_id, inline, size, contained in message.results:
                    self.set_ready(object_id, inline, size, False, contained)
                self.forget_task(task)
            else:
                self.execute_one(instruction)

    def on_worker_blocked(self, client: bytes, message: P.WorkerBlocked) -> None:
        worker = self.workers.get(client)
        if worker is None:
            return
        if message.blocked:  # answered always, with what was taken back (see P.RevokeTask)
            self.execute(self.state.worker_blocked(worker))
        else:
            self.state.worker_unblocked(worker)

    def on_stop(self, client: bytes, message: P.StopCluster) -> None:
        self.running = False

    def on_heartbeat(self, client: bytes, message: P.Heartbeat) -> None:
        self.send(client, P.Reply(0, None))  # so an attached driver knows the node lives

    def on_disconnect(self, client: bytes, message: P.Disconnect) -> None:
        self.release_client(client)

    def let_go_of_silent_drivers(self) -> None:
        """A driver (or observer) that stopped talking died: drop what it held (its actors
        end with it)."""
        deadline = time.monotonic() - self.config.client_timeout_s
        for client, info in list(self.clients.items()):
            owner = info.pid == self.config.owner_pid
            if info.kind != "worker" and not owner and info.last_seen < deadline:
                self.release_client(client)

    # ------------------------------------------------------------------ objects

    def hold(self, client: bytes, object_id: bytes) -> None:
        counts = self.holds.setdefault(client, {})
        counts[object_id] = counts.get(object_id, 0) + 1
        self.incref(object_id)

    def unhold(self, client: bytes, object_id: bytes) -> None:
        counts = self.holds.get(client)
        if counts is None or object_id not in counts:
            return
        if counts[object_id] <= 1:
            del counts[object_id]
        else:
            counts[object_id] -= 1
        self.decref(object_id)

    def release_client(self, client: bytes) -> None:
        """A client is gone: drop its holds and pins."""
        self.clients.pop(client, None)
        self.tcp_clients.discard(client)
        if self.generators.streams:
            self.generators.client_gone(client)
        for object_id, count in self.holds.pop(client, {}).items():
            for _ in range(count):
                self.decref(object_id)
        self.store.release_client(client)
        self.placement.client_gone(client)

    def incref(self, object_id: bytes) -> None:
        """One more hold on an object, or on an actor (its handles count like refs)."""
        entry = self.objects.get(object_id)
        if entry is not None:
            entry.refs += 1
        elif object_id in self.actors:
            self.actors[object_id].refs += 1

    def decref(self, object_id: bytes) -> None:
        entry = self.objects.get(object_id)
        if entry is None:
            if object_id in self.actors:
                self.actor_part.actor_released(self.actors[object_id])
            return
        entry.refs -= 1
        if entry.refs <= 0 and entry.ready:
            self.free(object_id, entry)

    def free(self, object_id: bytes, entry: ObjectEntry) -> None:
        if self.objects.get(object_id) is not entry:
            return  # already freed further down a cascade of failures or releases
        del self.objects[object_id]
        if entry.in_store:
            self.store.free(object_id)
        if entry.location or entry.copies:
            self.pulling.release_copies(object_id, entry.copies | ({entry.location} - {""}))
        if self.lineage:
            self.pulling.forget_lineage(object_id)
        for contained in entry.contained:
            self.decref(contained)

    def object_info(self, object_id: bytes, entry: ObjectEntry) -> P.ObjectInfo:
        if entry.in_store:
            self.store.restore(object_id)
            self.store.touch(object_id)
        return (object_id, entry.inline, entry.size, entry.is_error)

    def set_ready(
        self,
        object_id: bytes,
        inline: bytes | None,
        size: int,
        is_error: bool,
        contained: tuple[bytes, ...],
        location: str = "",
    ) -> None:
        entry = self.objects.get(object_id)
        if entry is None:  # made by a retried task whose first result was freed meanwhile
            entry = self.objects[object_id] = ObjectEntry()
        if location:
            self._set_ready_elsewhere(object_id, entry, size, location)
            return
        entry.location = ""
        entry.ready = True
        entry.inline = inline
        entry.size = size
        entry.is_error = is_error
        if inline is None:
            entry.in_store = True
            self.store.add(object_id, size)
        entry.contained = contained
        for inner in contained:
            self.incref(inner)
        if entry.refs > 0:
            info = (object_id, inline, size, is_error)
            owner = ids.owner_of(object_id)
            if owner in self.clients:
                self.send(owner, P.ObjectsReady((info,)))
            for subscriber in entry.subscribers:
                if subscriber != owner:
                    if contained and subscriber in self.node_clients:
                        self.forwarding.lend_contained(subscriber, object_id, contained)
                    self.send(subscriber, P.ObjectsReady((info,)))
        entry.subscribers = set()
        waiters, entry.waiters = entry.waiters, []
        dependency_ready = self.state.dependency_ready
        for task in waiters:
            if is_error:
                if task.state is TaskState.WAITING:
                    self.fail_task(task, inline or b"")
            elif dependency_ready(task):
                self.task_ready(task)
        if entry.refs <= 0:
            self.free(object_id, entry)

    def _set_ready_elsewhere(
        self, object_id: bytes, entry: ObjectEntry, size: int, location: str
    ) -> None:
        """The value exists on a peer: pull it only when someone here needs it."""
        entry.ready = True
        entry.size = size
        entry.location = location
        if entry.refs > 0:
            owner = ids.owner_of(object_id)
            if owner in self.clients and owner not in entry.subscribers:
                # ready, not copied: when the owner reads it and finds no file here, it
                # asks again (Subscribe with restore), and that is when we pull it
                self.send(owner, P.ObjectsReady(((object_id, None, size, False),)))
        if entry.subscribers:
            self.pull(object_id)
        waiters, entry.waiters = entry.waiters, []
        for task in waiters:  # placed next: maybe where the value is, with no copy
            if self.state.dependency_ready(task):
                self.task_ready(task)
        if entry.refs <= 0:
            self.free(object_id, entry)

    # ------------------------------------------------------------------ tasks

    def fail_task(self, task: TaskRecord, error_blob: bytes) -> None:
        """Every return value of the task becomes the error; dependents inherit it."""
        self.state.fail(task)
        self.task_failed(task, error_blob)

    def task_failed(self, task: TaskRecord, error_blob: bytes) -> None:
        """A task is FAILED now (``NodeState`` said so): publish it, store the error."""
        self.events.ended(task.task_id, failed=True)
        if self.generators.modes:  # a stream's error goes where it stopped, as an item
            self.generators.failed(task, error_blob)
        for object_id in task.return_ids:
            self.set_ready(object_id, error_blob, len(error_blob), True, ())
        self.forget_task(task)
        if task.method == "__init__" and task.actor_id in self.actors:
            actor = self.actors[task.actor_id]
            if actor.state is not ActorState.DEAD:
                self.actor_part.actor_dies(
                    actor, f"its creation failed: {pickle.loads(error_blob)}"
                )

    def forget_task(self, task: TaskRecord) -> None:
        if not self.state.forget(task):
            return  # already forgotten (an actor's creation, when the actor died)
        if self.generators.modes:
            self.generators.forgotten(task.task_id)
        for object_id in task.deps:
            self.decref(object_id)
        for object_id in task.nested:
            self.decref(object_id)

    def unpin_deps(self, task: TaskRecord) -> None:
        for object_id in task.deps:
            if self.store.contains(object_id):
                self.store.unpin(object_id, task.task_id)

    def schedule(self) -> None:
        """Once per loop turn: place actors, run what is ready, start the workers missing."""
        actor_part = self.actor_part
        if actor_part.pending_actors:
            actor_part.place_pending_actors()
        state = self.state
        self.execute(state.assign())
        if len(self.head.nodes) > 1:
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

    def execute(self, instructions: list[Instruction]) -> None:
        """Carry out what ``NodeState`` decided."""
        for instruction in instructions:
            self.execute_one(instruction)

    def execute_one(self, instruction: Instruction) -> None:
        op = instruction[0]
        if op == EXECUTE:
            self.dispatch(instruction[1], instruction[2])
        elif op == FAILED:
            self.task_failed(instruction[1], instruction[2])
        elif op == STARTED:
            task, worker = instruction[1], instruction[2]
            self.events.started(task.task_id, worker.pid, task.attempt)
        elif op == REVOKE:
            task, worker, answers_block = instruction[1], instruction[2], instruction[3]
            self.send(
                worker.client_id,
                P.RevokeTask(task.task_id if task is not None else b"", answers_block),
            )
            if task is not None:
                self.unpin_deps(task)
        elif op == UNPIN:
            self.unpin_deps(instruction[1])
        elif op == SPAWN:
            for _ in range(instruction[2]):
                self.spawn_worker(env=instruction[1])
        elif op == KILL:
            with contextlib.suppress(ProcessLookupError):
                os.kill(instruction[1].pid, signal.SIGKILL)
        elif op == INTERRUPT:
            task, worker = instruction[1], instruction[2]
            # names the task, so a worker still setting it up stops it too; sent ahead of
            # the signal, which makes the worker look for it
            self.send(worker.client_id, P.CancelCall(task.task_id))
            self.flush()
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGINT)
        elif op == CANCEL_CALL:
            self.send(instruction[2].client_id, P.CancelCall(instruction[1].task_id))
        elif op == CANCEL_FORWARDED:
            self.forwarding.cancel_forwarded(instruction[1], instruction[2])
        elif op == ACTOR_PROCESS_DIED:
            self.actor_part.actor_process_died(instruction[1], instruction[2])
        elif op == DROP_ACTOR_CALL:
            self.actor_part.actor_call_dropped(instruction[1])
        elif op == START_ACTOR:
            self.actor_part.start_actor_in(instruction[1])
        elif op == WARN:
            for driver in self.drivers():
                self.send(driver, P.LogLines(2, instruction[1]))
        else:
            raise ValueError(f"unknown instruction {instruction!r}")

    def dispatch(self, task: TaskRecord, worker: WorkerRecord) -> None:
        deps = []
        for object_id in task.deps:
            entry = self.objects[object_id]
            if entry.in_store:
                self.store.pin(object_id, task.task_id)
            deps.append(self.object_info(object_id, entry))
        func_blob = None
        if task.func_id not in worker.known_funcs:
            func_blob = self.funcs.get(task.func_id)
            worker.known_funcs.add(task.func_id)
        if worker.prefetched is not task:  # one sent ahead starts when the current one ends
            self.events.started(task.task_id, worker.pid, task.attempt)
        generator, credit = "", -1
        if self.generators.modes:  # (a plain task pays one check on this hot path)
            generator, credit = self.generators.execute_fields(task.task_id)
        self.send(
            worker.client_id,
            P.ExecuteTask(
                task.task_id,
                task.func_id,
                func_blob,
                task.name,
                task.args_blob,
                tuple(deps),
                task.return_ids,
                task.retry_exceptions,
                task.attempt,
                task.actor_id,
                task.method,
                task.job,
                task.gpu_ids,
                generator,
                credit,
                task.strategy,
            ),
        )
        if generator:
            self.generators.dispatched(task, worker.client_id)

    # ------------------------------------------------------------------ cancel

    def on_cancel(self, client: bytes, message: P.CancelTask) -> None:
        task = self.tasks.get(ids.task_of(message.object_id))
        if task is not None:
            self.execute(self.state.cancel(task, message.force, message.recursive, self.forwarded))

    def cancelled_error(self, task: TaskRecord) -> bytes:
        return cancelled_error(task)

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        for pipes in self.pipes.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pipes.pid, signal.SIGKILL)
        for pipes in self.pipes.values():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pipes.pid, 0)  # SIGKILLed: this returns at once
        self.store.shutdown()
        for path in glob.glob(f"/dev/shm/rj-{self.session}-*"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for address in list(self.links):
            self.peer_links.drop_link(address)
        for client in list(self.channels):
            self.pool.close_channel(client)
        self.router.close(0)
        self.tcp_router.close(0)
        self.zap.close()
        self.context.term()
        shutil.rmtree(session_dir(self.session), ignore_errors=True)


def main() -> None:
    config = NodeConfig(**json.loads(sys.argv[1]))
    secret = os.environ.pop(SECRET_ENV, "")
    if not secret:
        raise SystemExit(f"rayjupyter node: set {SECRET_ENV}; a node never runs without a secret")
    config.session = config.session or os.urandom(4).hex()
    os.makedirs(session_dir(config.session), mode=0o700, exist_ok=True)
    import rayjupyter.core.worker  # noqa: F401 - imported once here, shared by forked workers

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the driver's terminal is the driver's
    signal.signal(signal.SIGTERM, lambda *_: setattr(node, "running", False))
    node = Node(config, secret)
    discovery.write_cluster_file(config.session, node.describe())
    node.run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # everything is cleaned up: skip the interpreter's slow teardown


if __name__ == "__main__":
    main()
