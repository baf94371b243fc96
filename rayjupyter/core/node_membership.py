"""Several nodes, membership: joining the head, heartbeats, the node table, deaths.

A part of the node daemon (``Node.membership``). Every node runs the same loop; the head is
the node that others join, and it keeps the node table (``HeadState``), which it sends back
to every node after each heartbeat, so each node knows its peers' addresses, resources and
liveness. A node that dies (silent for ``node_timeout_s``, or declared dead by the head) is
settled by the other peer parts: its forwarded tasks are retried (``NodeForwarding``), the
values only it had are rebuilt or lost (``NodePulls``).
"""

from __future__ import annotations

import pickle
import sys
import time

from rayjupyter.core import node_fate
from rayjupyter.core import protocol as P
from rayjupyter.core.exceptions import ActorDiedError, WorkerCrashedError
from rayjupyter.core.head import NodeInfo
from rayjupyter.core.node_forwarding import NodeForwarding
from rayjupyter.core.node_links import NodeLinks, PeerHost, PeerLink
from rayjupyter.core.node_pulls import NodePulls
from rayjupyter.core.node_state import OCCUPYING

HEARTBEAT_S = 0.5
JOIN_TIMEOUT_S = 10.0
STALL_S = 2.0  # a gap this long between two turns of our own loop: judge nobody's silence yet


class NodeMembership:
    """This node in the cluster: joined to the head (or the head), peers alive or dead."""

    def __init__(
        self, node: PeerHost, links: NodeLinks, forwarding: NodeForwarding, pulling: NodePulls
    ) -> None:
        self.node = node
        self.links = links
        self.forwarding = forwarding
        self.pulling = pulling
        self.last_heartbeat = 0.0
        self.joined = False
        self.head_id = b""  # the head's node id, from its Welcome (on nodes that join one)
        self.rejoin_reason = ""  # set: register with the head again at the next tick
        self.started = time.monotonic()

    def start(self) -> None:
        """A node that joins a head registers with it (the head answers with the table)."""
        node = self.node
        if node.config.head_address:
            link = self.links.link(node.config.head_address)
            link.send(P.RegisterNode(node.node_id, node.address, node.advertised(), node.session))

    def tick(self) -> None:
        """Each loop turn: heartbeats to the head, liveness of the nodes on the head."""
        now = time.monotonic()
        if self.rejoin_reason:
            self.rejoin()
        if now - self.last_heartbeat < HEARTBEAT_S:
            return
        # our own loop stood still (a long handler, a stopped process): what peers sent
        # meanwhile is still unread, so this turn reads it before anyone counts as silent
        stalled = now - self.last_heartbeat > STALL_S
        self.last_heartbeat = now
        for link in self.links.links.values():  # a peer lets go of a silent client's holds
            if link.welcomed and not link.outbox and link.address != self.node.config.head_address:
                link.send(P.Heartbeat())  # (the head hears our NodeHeartbeat)
        if not self.node.is_head:
            if not self.joined and now - self.started > JOIN_TIMEOUT_S:
                print(
                    f"rayjupyter node: could not join the head at {self.node.config.head_address} "
                    f"within {JOIN_TIMEOUT_S:.0f} s: check the address, that the head runs, "
                    f"and the cluster secret (RAYJUPYTER_SECRET or the rayjupyter:// address)",
                    file=sys.stderr,
                    flush=True,
                )
                self.node.running = False
                return
            head = self.links.link(self.node.config.head_address)
            timeout = self.node.config.node_timeout_s
            if self.joined and not stalled and now - head.last_heard > timeout:
                self.rejoin_reason = f"no word from the head for {timeout:.0f} s"
                self.rejoin()
                return
            head.send(
                P.NodeHeartbeat(self.node.node_id, self.node.free_resources(), self.node.queued())
            )
            return
        if stalled:
            return
        deadline = now - self.node.config.node_timeout_s
        for node_id in list(self.links.node_clients.values()):
            info = self.node.head.nodes.get(node_id)
            if info is not None and info.alive and info.last_seen < deadline:
                self.node_died(node_id, f"no heartbeat for {self.node.config.node_timeout_s:.0f} s")

    def on_register_node(self, client: bytes, message: P.RegisterNode) -> None:
        if not self.node.is_head:
            return
        known = self.node.head.nodes.get(message.node_id)
        if known is not None and known.alive:
            # it lost touch with us and settled our work as lost: settle its work here the
            # same way (retried elsewhere, its link dropped) before it counts as new
            self.node_died(message.node_id, "it registered again after losing touch")
        info = NodeInfo(message.node_id, message.address, dict(message.resources))
        info.session = message.session
        info.available = dict(message.resources)
        info.last_seen = time.monotonic()
        self.node.head.register_node(info)
        self.links.node_clients[client] = message.node_id
        self.node.placement.node_joined(message.node_id, info.resources)
        self.send_view(client)

    def on_node_heartbeat(self, client: bytes, message: P.NodeHeartbeat) -> None:
        info = self.node.head.nodes.get(message.node_id)
        if info is None or not info.alive or self.links.node_clients.get(client) != message.node_id:
            self.send_view(client)  # it is dead (or unknown) there: seeing so, it registers again
            return
        info.available = dict(message.available)
        info.queued = message.queued
        info.last_seen = time.monotonic()
        self.send_view(client)

    def send_view(self, client: bytes) -> None:
        me = self.node.head.nodes[self.node.node_id]
        me.available = self.node.free_resources()
        me.queued = self.node.queued()
        rows = tuple(
            (n.node_id, n.address, n.alive, n.resources, n.available, n.queued)
            for n in self.node.head.nodes.values()
        )
        self.node.send(client, P.ClusterView(rows, *self.node.placement.view_extras(client)))

    def on_cluster_view(self, link: PeerLink, message: P.ClusterView) -> None:
        if not self.joined:
            self.joined = True
            self.node.announce_ready()
        listed = False
        for node_id, address, alive, total, available, queued in message.nodes:
            info = self.node.head.nodes.get(node_id)
            if info is None:
                info = NodeInfo(node_id, address, dict(total))
                self.node.head.register_node(info)
            elif alive and not info.alive:  # it registered again (after a cut link)
                info.alive, info.address = True, address
            info.resources = dict(total)  # placement groups' bundles change it
            info.available = dict(available)
            info.queued = queued
            if node_id == self.node.node_id:
                listed = alive
            elif info.alive and not alive:
                self.node_died(node_id, "the head declared it dead")
        if not listed:  # (not now: this very link is being read)
            self.rejoin_reason = "the head declared this node dead"
        else:
            self.node.placement.on_view(message.bundles, message.removed)

    def rejoin(self) -> None:
        """Out of touch with the head: settle what we had there as lost, as it did with ours
        (it retried our tasks elsewhere), and register again on a fresh link; the head takes
        this node back, alive, as it is now."""
        address = self.node.config.head_address
        why, self.rejoin_reason = self.rejoin_reason, ""
        print(f"rayjupyter node: joining the head at {address} again ({why})", file=sys.stderr)
        if self.head_id:
            self.node_died(self.head_id, f"out of touch: {why}")
        self.links.drop_link(address)  # anything still queued on it belongs to the old membership
        link = self.links.link(address)
        link.send(
            P.RegisterNode(
                self.node.node_id, self.node.address, self.node.advertised(), self.node.session
            )
        )

    def node_died(self, node_id: bytes, why: str) -> None:
        """Retry what ran there, fail what only it held, forget it."""
        info = self.node.head.nodes.get(node_id)
        if info is None or not info.alive:
            return
        self.node.head.mark_dead(node_id)
        self.node.placement.node_died(node_id)
        address = info.address
        message = f"Node {address} died ({why})."
        print(f"rayjupyter node: {message}", file=sys.stderr, flush=True)
        for client, peer_id in list(self.links.node_clients.items()):
            if peer_id == node_id:
                del self.links.node_clients[client]
                self.node.release_client(client)
                for request in node_fate.orphaned(self.node.state, client):  # its owners died
                    self.node.handlers[type(request)](client, request)
        for actor in [a for a in self.node.actors.values() if a.host == address]:
            self.forwarding.host_lost(actor, f"the node it ran on died ({why})")
        for forwarded in [f for f in self.forwarding.forwarded.values() if f.address == address]:
            task = forwarded.task
            del self.forwarding.forwarded[task.task_id]
            if task.state not in OCCUPYING:
                continue
            error: Exception = WorkerCrashedError(f"Task {task.name!r} was lost: {message}")
            if task.actor_id:  # a call to an actor whose home was there: it is gone for good
                error = ActorDiedError(
                    f"The actor that {task.name!r} calls is dead: {message} It lived there."
                )
                error.actor_id = task.actor_id.hex()  # Ray's attribute
            lost = pickle.dumps(error, protocol=5)
            # (dead_node: a task pinned to that node by its affinity fails, a soft one is freed)
            self.node.execute(self.node.state.retry_or_fail(task, lost, dead_node=node_id))
        self.pulling.holder_died(
            address, why
        )  # (before: a value pulled on from others is not lost)
        self.pulling.rebuild_or_lose(address)
        for pull in [p for p in self.pulling.pulls.values() if p.address == address]:
            self.pulling.pull_failed(pull, f"the node holding it died ({why})")
        self.links.drop_link(address)

    def on_peer_welcome(self, link: PeerLink, message: P.Welcome) -> None:
        link.welcomed = not message.error
        if link.welcomed and link.address == self.node.config.head_address:
            self.head_id = message.node_id
        if message.error:
            print(
                f"rayjupyter node: node {link.address} refused us: {message.error}",
                file=sys.stderr,
                flush=True,
            )
