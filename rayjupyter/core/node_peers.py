"""Several nodes: joining the head, heartbeats, forwarding tasks, pulling objects.

A mixin of the node daemon. Every node runs the same loop; the head is the node that
others join, and it keeps the node table (``HeadState``), which it sends back to every node
after each heartbeat, so each node knows its peers' addresses, resources and liveness.

A node talks to a peer as a client of that peer (a ``PeerLink``: two DEALER sockets, as a
driver has). To the peer, a forwarded task looks like one a driver submitted: the sender
first provides the values the task uses (``ProvideObjects``), then submits it and
subscribes to its results. Small results come back inline; a large one stays in the
peer's store (its location is recorded) until someone here needs it, and is then pulled
in chunks with a few requests in flight, so a 1 GB value crosses in bounded memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import pickle
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq

from rayjupyter.core import auth, ids, protocol
from rayjupyter.core import protocol as P
from rayjupyter.core.exceptions import ActorDiedError, ObjectLostError, WorkerCrashedError
from rayjupyter.core.head import NodeInfo
from rayjupyter.core.node_actors import ActorState
from rayjupyter.core.node_state import OCCUPYING
from rayjupyter.core.object_store import shm_path
from rayjupyter.core.scheduler import TaskRecord, TaskState

if TYPE_CHECKING:
    from rayjupyter.core.node import Node
    from rayjupyter.core.node_actors import ActorRecord

CHUNK_BYTES = 8 << 20
CHUNKS_IN_FLIGHT = 8  # at most 64 MB in the pipe per pull
HEARTBEAT_S = 0.5
JOIN_TIMEOUT_S = 10.0
STALL_S = 2.0  # a gap this long between two turns of our own loop: judge nobody's silence yet
LOCALITY_MIN_BYTES = 1 << 20  # arguments this large pull their task to the node holding them


class PeerLink:
    """This node as a client of another node."""

    def __init__(
        self, context: zmq.Context[zmq.Socket[bytes]], address: str, secret: str, node_id: bytes
    ) -> None:
        self.address = address
        self.client_id = ids.new_client_id()
        self.tx = self._socket(context, b"t", secret)
        self.rx = self._socket(context, b"r", secret)
        self.known_funcs: set[bytes] = set()
        self.outbox: list[Any] = []
        self.last_heard = time.monotonic()
        # Hello goes on the receiving socket, and nothing else is sent before the Welcome:
        # the peer can only answer on a connection it has heard from (a router drops the rest).
        self.welcomed = False
        hello = P.Hello("node", os.getpid(), protocol.PROTOCOL_VERSION, "", node_id)
        self.rx.send(protocol.dumps([hello]), zmq.NOBLOCK)

    def _socket(
        self, context: zmq.Context[zmq.Socket[bytes]], channel: bytes, secret: str
    ) -> zmq.Socket[bytes]:
        sock = context.socket(zmq.DEALER)
        sock.routing_id = self.client_id + channel
        sock.linger = 0
        sock.sndhwm = 0
        sock.rcvhwm = 0
        auth.secure_client(sock, secret, f"tcp://{self.address}")
        sock.connect(f"tcp://{self.address}")
        return sock

    def send(self, message: Any) -> None:
        self.outbox.append(message)

    def flush(self) -> None:
        """Send what is queued; never block the node's loop on a peer that is not there
        (a DEALER blocks when it has no connection: refused, or the peer died)."""
        if self.outbox and self.welcomed:
            try:
                self.tx.send(protocol.dumps(self.outbox), zmq.NOBLOCK)
            except zmq.Again:
                return  # kept for the next turn; a dead peer's link is dropped
            self.outbox = []

    def close(self) -> None:
        self.tx.close(0)
        self.rx.close(0)


@dataclass
class Pull:
    """A value being copied here from a peer's store, chunk by chunk."""

    object_id: bytes
    address: str
    size: int
    fd: int
    requested: int = 0  # bytes asked for so far
    received: int = 0


@dataclass
class Forwarded:
    """A task of ours running on a peer."""

    task: TaskRecord
    address: str
    pending: set[bytes] = field(default_factory=set)  # return ids not yet reported


class NodePeers:
    """Joining, heartbeats, task forwarding and object pulls (mixed into ``Node``)."""

    def _node(self) -> Node:
        return self  # type: ignore[return-value]

    def init_peers(self) -> None:
        node = self._node()
        self.links: dict[str, PeerLink] = {}
        self.link_of_socket: dict[zmq.Socket[bytes], PeerLink] = {}
        self.node_clients: dict[bytes, bytes] = {}  # peer nodes' client ids -> their node ids
        self.forwarded: dict[bytes, Forwarded] = {}
        self.pulls: dict[bytes, Pull] = {}
        # finished tasks whose results live only on peers: kept (with their arguments held)
        # to run again if that peer dies, until every result is freed
        self.lineage: dict[bytes, TaskRecord] = {}
        self.contained_info: dict[bytes, tuple[tuple[bytes, bytes | None, int, bool, str], ...]]
        self.contained_info = {}  # refs inside a peer's value, until that value arrives
        self.actor_homes: dict[bytes, str] = {}  # other nodes' actors we were handed
        self.last_heartbeat = 0.0
        self.joined = False
        self.head_id = b""  # the head's node id, from its Welcome (on nodes that join one)
        self.rejoin_reason = ""  # set: register with the head again at the next tick
        self.started = time.monotonic()
        self.peer_handlers = {
            P.Welcome: self._on_peer_welcome,
            P.ObjectsReady: self._on_peer_objects_ready,
            P.ObjectChunk: self._on_object_chunk,
            P.ClusterView: self._on_cluster_view,
            P.ContainedObjects: self._on_contained_objects,
            P.ActorGone: self._on_actor_gone,
            P.LogLines: self._on_peer_log_lines,
            P.Reply: lambda link, message: None,
        }
        if node.config.head_address:
            link = self.link(node.config.head_address)
            link.send(P.RegisterNode(node.node_id, node.address, node.advertised(), node.session))

    @property
    def is_head(self) -> bool:
        return not self._node().config.head_address

    def link(self, address: str) -> PeerLink:
        node = self._node()
        link = self.links.get(address)
        if link is None:
            link = self.links[address] = PeerLink(node.context, address, node.secret, node.node_id)
            self.link_of_socket[link.rx] = link
            node.poller.register(link.rx, zmq.POLLIN)
        return link

    def drop_link(self, address: str) -> None:
        link = self.links.pop(address, None)
        if link is not None:
            del self.link_of_socket[link.rx]
            self._node().poller.unregister(link.rx)
            link.close()

    def flush_links(self) -> None:
        for link in self.links.values():
            link.flush()

    def drain_link(self, link: PeerLink) -> None:
        node = self._node()
        link.last_heard = time.monotonic()
        for _ in range(10_000):
            try:
                frames = link.rx.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) == 2:  # a chunk of a value: a small header, then the raw bytes
                header = protocol.loads(frames[0].bytes)[0]
                self._on_object_chunk(link, header._replace(data=frames[1].buffer))
                continue
            for message in protocol.loads(frames[0].bytes):
                try:
                    self.peer_handlers[type(message)](link, message)  # type: ignore[operator]
                except Exception:
                    node._report_internal_error(message)

    # ------------------------------------------------------------------ membership

    def peers_tick(self) -> None:
        """Each loop turn: heartbeats to the head, liveness of the nodes on the head."""
        node = self._node()
        now = time.monotonic()
        if self.rejoin_reason:
            self.rejoin()
        node.placement.tick()
        if now - self.last_heartbeat < HEARTBEAT_S:
            return
        # our own loop stood still (a long handler, a stopped process): what peers sent
        # meanwhile is still unread, so this turn reads it before anyone counts as silent
        stalled = now - self.last_heartbeat > STALL_S
        self.last_heartbeat = now
        for link in self.links.values():  # a peer lets go of a silent client's holds
            if link.welcomed and not link.outbox and link.address != node.config.head_address:
                link.send(P.Heartbeat())  # (the head hears our NodeHeartbeat)
        if not self.is_head:
            if not self.joined and now - self.started > JOIN_TIMEOUT_S:
                print(
                    f"rayjupyter node: could not join the head at {node.config.head_address} "
                    f"within {JOIN_TIMEOUT_S:.0f} s: check the address, that the head runs, "
                    f"and the cluster secret (RAYJUPYTER_SECRET or the rayjupyter:// address)",
                    file=sys.stderr,
                    flush=True,
                )
                node.running = False
                return
            head = self.link(node.config.head_address)
            timeout = node.config.node_timeout_s
            if self.joined and not stalled and now - head.last_heard > timeout:
                self.rejoin_reason = f"no word from the head for {timeout:.0f} s"
                self.rejoin()
                return
            head.send(P.NodeHeartbeat(node.node_id, node.free_resources(), node.queued()))
            return
        if stalled:
            return
        deadline = now - node.config.node_timeout_s
        for node_id in list(self.node_clients.values()):
            info = node.head.nodes.get(node_id)
            if info is not None and info.alive and info.last_seen < deadline:
                self.node_died(node_id, f"no heartbeat for {node.config.node_timeout_s:.0f} s")

    def on_register_node(self, client: bytes, message: P.RegisterNode) -> None:
        node = self._node()
        if not self.is_head:
            return
        known = node.head.nodes.get(message.node_id)
        if known is not None and known.alive:
            # it lost touch with us and settled our work as lost: settle its work here the
            # same way (retried elsewhere, its link dropped) before it counts as new
            self.node_died(message.node_id, "it registered again after losing touch")
        info = NodeInfo(message.node_id, message.address, dict(message.resources))
        info.session = message.session
        info.available = dict(message.resources)
        info.last_seen = time.monotonic()
        node.head.register_node(info)
        self.node_clients[client] = message.node_id
        node.placement.node_joined(message.node_id, info.resources)
        self.send_view(client)

    def on_node_heartbeat(self, client: bytes, message: P.NodeHeartbeat) -> None:
        node = self._node()
        info = node.head.nodes.get(message.node_id)
        if info is None or not info.alive or self.node_clients.get(client) != message.node_id:
            self.send_view(client)  # it is dead (or unknown) there: seeing so, it registers again
            return
        info.available = dict(message.available)
        info.queued = message.queued
        info.last_seen = time.monotonic()
        self.send_view(client)

    def send_view(self, client: bytes) -> None:
        node = self._node()
        me = node.head.nodes[node.node_id]
        me.available = node.free_resources()
        me.queued = node.queued()
        rows = tuple(
            (n.node_id, n.address, n.alive, n.resources, n.available, n.queued)
            for n in node.head.nodes.values()
        )
        node.send(client, P.ClusterView(rows, *node.placement.view_extras(client)))

    def _on_cluster_view(self, link: PeerLink, message: P.ClusterView) -> None:
        node = self._node()
        if not self.joined:
            self.joined = True
            node.announce_ready()
        listed = False
        for node_id, address, alive, total, available, queued in message.nodes:
            info = node.head.nodes.get(node_id)
            if info is None:
                info = NodeInfo(node_id, address, dict(total))
                node.head.register_node(info)
            elif alive and not info.alive:  # it registered again (after a cut link)
                info.alive, info.address = True, address
            info.resources = dict(total)  # placement groups' bundles change it
            info.available = dict(available)
            info.queued = queued
            if node_id == node.node_id:
                listed = alive
            elif info.alive and not alive:
                self.node_died(node_id, "the head declared it dead")
        if not listed:  # (not now: this very link is being read)
            self.rejoin_reason = "the head declared this node dead"
        else:
            node.placement.on_view(message.bundles, message.removed)

    def rejoin(self) -> None:
        """Out of touch with the head: settle what we had there as lost, as it did with ours
        (it retried our tasks elsewhere), and register again on a fresh link; the head takes
        this node back, alive, as it is now."""
        node = self._node()
        address = node.config.head_address
        why, self.rejoin_reason = self.rejoin_reason, ""
        print(f"rayjupyter node: joining the head at {address} again ({why})", file=sys.stderr)
        if self.head_id:
            self.node_died(self.head_id, f"out of touch: {why}")
        self.drop_link(address)  # anything still queued on it belongs to the old membership
        link = self.link(address)
        link.send(P.RegisterNode(node.node_id, node.address, node.advertised(), node.session))

    def node_died(self, node_id: bytes, why: str) -> None:
        """Retry what ran there, fail what only it held, forget it."""
        node = self._node()
        info = node.head.nodes.get(node_id)
        if info is None or not info.alive:
            return
        node.head.mark_dead(node_id)
        node.placement.node_died(node_id)
        address = info.address
        message = f"Node {address} died ({why})."
        print(f"rayjupyter node: {message}", file=sys.stderr, flush=True)
        for client, peer_id in list(self.node_clients.items()):
            if peer_id == node_id:
                del self.node_clients[client]
                node.release_client(client)
        for actor in [a for a in node.actors.values() if a.host == address]:
            self.host_lost(actor, f"the node it ran on died ({why})")
        for forwarded in [f for f in self.forwarded.values() if f.address == address]:
            task = forwarded.task
            del self.forwarded[task.task_id]
            if task.state not in OCCUPYING:
                continue
            error = WorkerCrashedError(f"Task {task.name!r} was lost: {message}")
            lost = pickle.dumps(error, protocol=5)
            # (dead_node: a task pinned to that node by its affinity fails, a soft one is freed)
            node.execute(node.state.retry_or_fail(task, lost, dead_node=node_id))
        self._rebuild_or_lose(address)
        for pull in [p for p in self.pulls.values() if p.address == address]:
            self._pull_failed(pull, f"the node holding it died ({why})")
        self.drop_link(address)

    # ------------------------------------------------------------------ placement

    def peer_nodes(self) -> list[NodeInfo]:
        node = self._node()
        return [n for n in node.head.nodes.values() if n.alive and n.node_id != node.node_id]

    def feasible_on_peer(self, demand: dict[str, float]) -> bool:
        return any(_fits(peer.resources, demand) for peer in self.peer_nodes())

    def place_by_locality(self, task: TaskRecord) -> bool:
        """Send a ready task to the peer that holds most of its large arguments, if one fits."""
        node = self._node()
        if task.actor_id or task.owner in self.node_clients or len(node.head.nodes) < 2:
            return False
        weight: dict[str, int] = {}
        local = 0
        for object_id in task.deps:
            entry = node.objects.get(object_id)
            if entry is None:
                continue
            if entry.location:
                weight[entry.location] = weight.get(entry.location, 0) + entry.size
            elif entry.in_store:
                local += entry.size
        if not weight:
            return False
        address, size = max(weight.items(), key=lambda item: item[1])
        if size < LOCALITY_MIN_BYTES or size <= local:
            return False
        for peer in self.peer_nodes():
            if peer.address == address and _fits(peer.available, task.demand):
                self.forward(task, peer)
                return True
        return False

    def spill_over(self) -> None:
        """Queued tasks that this node cannot run now go to peers that can."""
        node = self._node()
        ready = node.scheduler.ready
        if not ready:
            return
        peers = self.peer_nodes()
        if not peers:
            return
        kept: deque[TaskRecord] = deque()
        for _ in range(min(len(ready), 256)):
            task = ready.popleft()
            if task.state is not TaskState.READY:
                continue
            if (
                task.owner in self.node_clients
                or node.resources.fits(task.demand)
                or task.strategy.startswith("node:")  # placed here by its node affinity
            ):
                kept.append(task)  # runs here (sent to us by a peer, or waits for a worker)
                continue
            target = self.choose_peer(task.demand, peers)
            if target is None:
                kept.append(task)
            else:
                self.forward(task, target)
        ready.extendleft(reversed(kept))

    def choose_peer(self, demand: dict[str, float], peers: list[NodeInfo]) -> NodeInfo | None:
        """A peer with the demand free now; or, if this node can never meet it, the least
        busy peer that can."""
        node = self._node()
        fitting = [p for p in peers if _fits(p.available, demand)]
        if fitting:
            return max(fitting, key=lambda p: p.available.get("CPU", 0.0))
        if node.resources.feasible(demand):
            return None  # it waits here for a free slot rather than in a peer's queue
        feasible = [p for p in peers if _fits(p.resources, demand)]
        return min(feasible, key=lambda p: p.queued) if feasible else None

    def provide(self, link: PeerLink, object_ids: tuple[bytes, ...]) -> None:
        """Tell a peer the values (or where they are) of the ready objects a call uses."""
        node = self._node()
        provided = []
        for object_id in object_ids:
            entry = node.objects.get(object_id)
            if entry is None or not entry.ready:
                continue
            if entry.location:
                holder = entry.location
            elif entry.in_store:
                holder = node.address
            else:
                holder = ""
            provided.append((object_id, entry.inline, entry.size, entry.is_error, holder))
        if provided:
            link.send(P.ProvideObjects(tuple(provided)))
        homes = []
        for object_id in object_ids:
            if object_id in node.actors:
                homes.append((object_id, node.address))
            elif object_id in self.actor_homes:
                homes.append((object_id, self.actor_homes[object_id]))
        if homes:
            link.send(P.ActorHomes(tuple(homes)))

    def on_actor_homes(self, client: bytes, message: P.ActorHomes) -> None:
        node = self._node()
        for actor_id, address in message.homes:
            if actor_id not in node.actors and address != node.address:
                self.actor_homes[actor_id] = address

    def route_actor_call(self, task: TaskRecord) -> None:
        """A call made here to an actor of another node: send it to the actor's home node."""
        node = self._node()
        address = self.actor_homes[task.actor_id]
        home = next((peer for peer in self.peer_nodes() if peer.address == address), None)
        if home is None:
            error = ActorDiedError(
                f"Task {task.name!r} calls an actor whose node ({address}) is no longer in "
                f"the cluster."
            )
            node.fail_task(task, pickle.dumps(error, protocol=5))
            return
        self.forward(task, home)

    def forward(self, task: TaskRecord, peer: NodeInfo) -> None:
        """Run a ready task on a peer: provide its values, submit it, subscribe to results."""
        node = self._node()
        link = self.link(peer.address)
        self.provide(link, (*task.deps, *task.nested))
        node.envs.send_runtime_env(link, task.env)  # its packages and env, once per link
        func_blob = None
        if task.func_id not in link.known_funcs:
            func_blob = node.funcs.get(task.func_id)
            link.known_funcs.add(task.func_id)
        generator, backpressure = "", -1
        if node.generators.modes:  # its items stream back to us (NodeGenerators.on_peer_item)
            generator, backpressure = node.generators.forwarding(task.task_id, peer.address)
        link.send(
            P.SubmitTask(
                task.task_id,
                task.func_id,
                func_blob,
                task.name,
                task.args_blob,
                task.deps,
                task.nested,
                task.return_ids,
                task.demand,
                0,  # retries after a crash there are ours: the node itself may die
                task.retry_exceptions,
                task.actor_id,
                task.method,
                task.env,
                generator,
                backpressure,
                strategy=task.strategy,
            )
        )
        if generator:
            node.generators.forwarded(task.task_id, link)
        link.send(P.Subscribe(task.return_ids, False))
        for key, value in task.demand.items():  # until the next view says otherwise
            peer.available[key] = peer.available.get(key, 0.0) - value
        node.state.forwarded(task)
        node.events.started(task.task_id, 0, task.attempt)
        self.forwarded[task.task_id] = Forwarded(task, peer.address, set(task.return_ids))

    # ------------------------------------------------------------------ actors on peers

    def host_actor(self, actor: ActorRecord, peer: NodeInfo) -> None:
        """Start one of our actors on a peer. Its record stays here (its home): calls are
        forwarded to it in order, and if it dies there we decide whether it restarts."""
        node = self._node()
        link = self.link(peer.address)
        creation = actor.creation
        self.provide(link, (*creation.deps, *creation.nested))
        node.envs.send_runtime_env(link, str(actor.options.get("runtime_env") or ""))
        options = {k: v for k, v in actor.options.items() if k not in _HOME_ONLY_OPTIONS}
        options.update(max_restarts=0, max_task_retries=0)  # retries are the home's call
        link.send(
            P.CreateActor(
                actor.actor_id,
                actor.class_blob,
                actor.class_name,
                creation.args_blob,
                creation.deps,
                creation.nested,
                actor.place_demand,
                actor.run_demand,
                options,
                0,
            )
        )
        for key, value in actor.run_demand.items():  # until the next view says otherwise
            peer.available[key] = peer.available.get(key, 0.0) - value
        actor.host, actor.host_node = peer.address, peer.node_id
        creation.transition(TaskState.RUNNING)
        actor.transition(ActorState.STARTING)
        actor.transition(ActorState.ALIVE)  # calls queue there behind its __init__
        node.pump_actor(actor.actor_id)

    def forward_actor_calls(self, actor: ActorRecord) -> None:
        """Send an actor's ready calls, in order, to the peer that hosts it."""
        node = self._node()
        peer = node.head.nodes.get(actor.host_node)
        if peer is None or not peer.alive:
            return
        queue = actor.queue
        while queue:
            task = queue[0]
            if task.state is TaskState.FAILED:  # cancelled while queued
                queue.popleft()
                continue
            if task.state is not TaskState.READY:
                break  # a call still waiting for its arguments keeps the later ones waiting
            queue.popleft()
            actor.in_flight[task.task_id] = task
            self.forward(task, peer)

    def host_lost(self, actor: ActorRecord, reason: str) -> None:
        """The peer hosting one of our actors lost it: restart it (maybe elsewhere) or not."""
        for task_id in actor.in_flight:
            self.forwarded.pop(task_id, None)  # what the peer still says about them is stale
            if self._node().generators.remote:
                self._node().generators.detach(task_id)
        actor.host, actor.host_node = "", b""
        self._node().restart_or_die(actor, reason)

    def _on_actor_gone(self, link: PeerLink, message: P.ActorGone) -> None:
        node = self._node()
        actor = node.actors.get(message.actor_id)
        if actor is None or actor.host != link.address or actor.state is ActorState.DEAD:
            return
        if not message.restartable and not actor.killed:
            actor.no_restart = True
        self.host_lost(actor, message.reason)

    def actor_gone_from_here(self, actor: ActorRecord, reason: str, restartable: bool) -> None:
        """An actor we host for another node died here: tell its home first."""
        owner = actor.creation.owner
        if owner in self.node_clients:
            self._node().send(owner, P.ActorGone(actor.actor_id, reason, restartable))

    def release_hosted(self, actor: ActorRecord) -> None:
        """Our actor that a peer hosts is dead here: stop its process there."""
        for task_id in actor.in_flight:
            self.forwarded.pop(task_id, None)
        link = self.links.get(actor.host)
        if link is not None:
            link.send(P.KillActor(actor.actor_id, True))

    def _on_peer_objects_ready(self, link: PeerLink, message: P.ObjectsReady) -> None:
        node = self._node()
        for object_id, inline, size, is_error in message.objects:
            if node.generators.remote and node.generators.on_peer_item(
                link, object_id, inline, size, is_error
            ):
                continue
            forwarded = self.forwarded.get(ids.task_of(object_id))
            if forwarded is None or object_id not in forwarded.pending:
                link.send(P.RefOps(((False, object_id),)))  # nobody here needs it any more
                continue
            task = forwarded.task
            forwarded.pending.discard(object_id)
            if not forwarded.pending:
                del self.forwarded[task.task_id]
                self._slot_freed(link.address, task.demand)
            if is_error:
                with contextlib.suppress(KeyError):
                    del self.forwarded[task.task_id]
                for other in forwarded.pending:
                    link.send(P.RefOps(((False, other),)))
                link.send(P.RefOps(((False, object_id),)))
                if task.state in OCCUPYING:
                    node.fail_task(task, inline or b"")
                if task.actor_id:
                    node.remote_call_ended(task)
                continue
            inner = self._adopt_contained(link, object_id)
            if inline is not None:
                link.send(P.RefOps(((False, object_id),)))
            node.set_ready(
                object_id,
                inline,
                size,
                False,
                (),
                location="" if inline is not None else link.address,
            )
            if object_id in node.objects:
                node.objects[object_id].contained = inner  # held for it in _adopt_contained
            else:
                for inner_id in inner:  # already freed: nobody wanted it
                    node.decref(inner_id)
            if not forwarded.pending and task.state in OCCUPYING:
                task.transition(TaskState.FINISHED)
                node.events.ended(task.task_id, failed=False)
                remote = any(node.objects[r].location for r in task.return_ids if r in node.objects)
                if remote and not task.actor_id:
                    node.tasks.pop(task.task_id, None)
                    self.lineage[task.task_id] = task  # its arguments stay held
                else:
                    node._forget_task(task)
                if task.actor_id:
                    node.remote_call_ended(task)

    def _slot_freed(self, address: str, demand: dict[str, float]) -> None:
        """A task of ours ended there: count its resources free until the next view."""
        for peer in self.peer_nodes():
            if peer.address == address:
                for key, value in demand.items():
                    peer.available[key] = min(
                        peer.available.get(key, 0.0) + value, peer.resources.get(key, 0.0)
                    )

    def lend_contained(self, client: bytes, object_id: bytes, contained: tuple[bytes, ...]) -> None:
        """A peer gets a value of ours with refs inside: hold those for it, and say what
        they are, so that they outlive the value here and the peer can reach them."""
        node = self._node()
        infos = []
        for inner in contained:
            entry = node.objects.get(inner)
            if entry is None or not entry.ready or entry.location:
                continue  # not ready or not here: the peer cannot use it (not supported yet)
            node.hold(client, inner)
            holder = node.address if entry.in_store else ""
            inline = None if entry.in_store else entry.inline
            infos.append((inner, inline, entry.size, entry.is_error, holder))
        node.send(client, P.ContainedObjects(object_id, tuple(infos)))

    def _on_contained_objects(self, link: PeerLink, message: P.ContainedObjects) -> None:
        self.contained_info[message.object_id] = message.objects

    def _adopt_contained(self, link: PeerLink, object_id: bytes) -> tuple[bytes, ...]:
        """Entries for the refs inside a value a peer sent us, each held once for it."""
        node = self._node()
        inner_ids = []
        for inner, inline, size, is_error, holder in self.contained_info.pop(object_id, ()):
            inner_ids.append(inner)
            if inner in node.objects:
                node.incref(inner)
                link.send(P.RefOps(((False, inner),)))  # we have our own: theirs can go
                continue
            entry = node.objects[inner] = node.new_entry()
            entry.refs = 1
            if inline is not None or not holder:
                link.send(P.RefOps(((False, inner),)))
                node.set_ready(inner, inline, size, is_error, ())
            else:
                node.set_ready(inner, None, size, False, (), location=holder)
        return tuple(inner_ids)

    def _on_peer_welcome(self, link: PeerLink, message: P.Welcome) -> None:
        link.welcomed = not message.error
        if link.welcomed and link.address == self._node().config.head_address:
            self.head_id = message.node_id
        if message.error:
            print(
                f"rayjupyter node: node {link.address} refused us: {message.error}",
                file=sys.stderr,
                flush=True,
            )

    def _on_peer_log_lines(self, link: PeerLink, message: P.LogLines) -> None:
        node = self._node()
        for driver in node.drivers():
            node.send(driver, message)

    def cancel_forwarded(self, task: TaskRecord, force: bool) -> bool:
        forwarded = self.forwarded.get(task.task_id)
        if forwarded is None:
            return False
        self.link(forwarded.address).send(P.CancelTask(task.return_ids[0], force, True))
        return True

    # ------------------------------------------------------------------ objects

    def on_provide_objects(self, client: bytes, message: P.ProvideObjects) -> None:
        node = self._node()
        for object_id, inline, size, is_error, holder in message.objects:
            if object_id not in node.objects:
                entry = node.objects[object_id] = node.new_entry()
                node.hold(client, object_id)
                if inline is not None or not holder:
                    node.set_ready(object_id, inline, size, is_error, ())
                else:
                    location = "" if holder == node.address else holder
                    node.set_ready(object_id, None, size, False, (), location=location)
                del entry
            else:
                node.hold(client, object_id)

    def on_pull_object(self, client: bytes, message: P.PullObject) -> None:
        node = self._node()
        object_id = message.object_id
        entry = node.objects.get(object_id)
        if entry is None or not node.store.contains(object_id):
            node.send(client, P.ObjectChunk(object_id, message.offset, 0, b"", "not here"))
            return
        node.store.restore(object_id)
        try:
            fd = os.open(node.store.path_of(object_id), os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.pread(fd, message.length, message.offset)
            finally:
                os.close(fd)
        except OSError as exc:
            node.send(client, P.ObjectChunk(object_id, message.offset, 0, b"", str(exc)))
            return
        node.send_chunk(client, P.ObjectChunk(object_id, message.offset, entry.size, data, ""))

    def pull(self, object_id: bytes) -> None:
        """Copy a value that a peer holds into this node's store (once, however many ask)."""
        node = self._node()
        entry = node.objects[object_id]
        if object_id in self.pulls or not entry.location:
            return
        path = shm_path(node.session, object_id)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            if entry.size:
                os.posix_fallocate(fd, 0, entry.size)
        except OSError as exc:
            with contextlib.suppress(UnboundLocalError, OSError):
                os.close(fd)
            reason = os.strerror(exc.errno or errno.EIO)
            self._object_lost(object_id, f"no room in this node's store for it ({reason})")
            return
        pull = self.pulls[object_id] = Pull(object_id, entry.location, entry.size, fd)
        if entry.size == 0:
            self._pull_done(pull)
            return
        for _ in range(CHUNKS_IN_FLIGHT):
            self._request_chunk(pull)

    def _request_chunk(self, pull: Pull) -> None:
        if pull.requested >= pull.size:
            return
        length = min(CHUNK_BYTES, pull.size - pull.requested)
        self.link(pull.address).send(P.PullObject(pull.object_id, pull.requested, length))
        pull.requested += length

    def _on_object_chunk(self, link: PeerLink, message: P.ObjectChunk) -> None:
        pull = self.pulls.get(message.object_id)
        if pull is None or pull.address != link.address:
            return
        if message.error:
            self._pull_failed(pull, f"node {link.address} no longer has it ({message.error})")
            return
        view = memoryview(message.data)
        done = 0
        while done < len(view):
            done += os.pwrite(pull.fd, view[done:], message.offset + done)
        pull.received += len(view)
        if pull.received >= pull.size:
            self._pull_done(pull)
        else:
            self._request_chunk(pull)

    def _pull_done(self, pull: Pull) -> None:
        node = self._node()
        del self.pulls[pull.object_id]
        os.close(pull.fd)
        entry = node.objects.get(pull.object_id)
        if entry is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(shm_path(node.session, pull.object_id))
            return
        entry.copies.add(pull.address)  # our hold there stays until we free it
        contained = entry.contained  # held already, when the value arrived
        node.set_ready(pull.object_id, None, pull.size, False, ())
        entry.contained = contained

    def _pull_failed(self, pull: Pull, why: str) -> None:
        node = self._node()
        del self.pulls[pull.object_id]
        os.close(pull.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(shm_path(node.session, pull.object_id))
        entry = node.objects.get(pull.object_id)
        if entry is not None and entry.ready:  # (not being rebuilt)
            self._object_lost(pull.object_id, why)

    def _rebuild_or_lose(self, address: str) -> None:
        """Values whose only copy was on a dead node: run their tasks again (lineage) where
        retries allow, first marking every lost value as pending (a rebuilt task may need
        another); the rest raise ObjectLostError."""
        node = self._node()
        rebuilding: dict[bytes, TaskRecord] = {}
        for object_id, entry in list(node.objects.items()):
            entry.copies.discard(address)
            if entry.location != address:
                continue
            task_id = ids.task_of(object_id)
            done = self.lineage.get(task_id)
            if task_id not in rebuilding and done is not None and done.retry():
                del self.lineage[task_id]
                rebuilding[task_id] = done
            if task_id in rebuilding:
                entry.ready = False
                entry.location = ""
            else:
                self._object_lost(
                    object_id,
                    f"its only copy was on node {address}, which died, and it cannot be "
                    f"rebuilt (it came from rj.put, or its task is out of retries)",
                )
        for done in rebuilding.values():
            self._run_again(done)

    def _run_again(self, done: TaskRecord) -> None:
        node = self._node()
        again = dataclasses.replace(
            done, state=TaskState.WAITING, missing=0, history=[], worker=None, children=[]
        )
        node.tasks[again.task_id] = again
        node.events.submitted(again.task_id, again.name, again.job, b"", bool(again.deps))
        for dep in again.deps:
            entry = node.objects.get(dep)
            if entry is not None and not entry.ready:
                entry.waiters.append(again)
                again.missing += 1
        if again.missing == 0:
            node.task_ready(again)

    def forget_lineage(self, object_id: bytes) -> None:
        """A value was freed: once all of its task's values are, let go of its arguments."""
        node = self._node()
        task = self.lineage.get(ids.task_of(object_id))
        if task is not None and not any(r in node.objects for r in task.return_ids):
            del self.lineage[task.task_id]
            node.tasks[task.task_id] = task  # so that _forget_task releases its arguments
            node._forget_task(task)

    def _object_lost(self, object_id: bytes, why: str) -> None:
        node = self._node()
        entry = node.objects.get(object_id)
        if entry is None:
            return
        error = ObjectLostError(f"Object {object_id.hex()} was lost: {why}.")
        blob = pickle.dumps(error, protocol=5)
        entry.location = ""
        node.set_ready(object_id, blob, len(blob), True, ())

    def release_copies(self, object_id: bytes, locations: set[str]) -> None:
        """An object we freed: let go of the copies peers keep for us."""
        for address in locations:
            if address in self.links:
                self.links[address].send(P.RefOps(((False, object_id),)))


# what only an actor's home node acts on: names are looked up there, lifetime is kept there
_HOME_ONLY_OPTIONS = ("name", "get_if_exists", "lifetime", "namespace")


def _fits(available: dict[str, float], demand: dict[str, float]) -> bool:
    return all(available.get(k, 0.0) + 1e-9 >= v for k, v in demand.items())
