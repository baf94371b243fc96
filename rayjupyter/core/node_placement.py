"""The node's part in placement groups and scheduling strategies: a thin shell.

Composed into the node (``Node.placement``), not mixed in. On the head it feeds the
``PlacementGroups`` table and carries out its instructions: the bundles each node is to
hold go out in the ``ClusterView`` (at once to the nodes concerned, and after every
heartbeat), warnings go to the group's driver. On every node it keeps the ``BundleLedger``
(the bundles held here, moved in and out of the resource pool), fails the queued work and
kills the actors of removed groups, and places SPREAD and node-affinity tasks.
A node that is not the head relays its clients' group requests to the head.
"""

from __future__ import annotations

import itertools
import pickle
import signal
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from rayjupyter.core import placement_groups as pgs
from rayjupyter.core import protocol as P
from rayjupyter.core import scheduling_strategies
from rayjupyter.core.actor_state import ActorState
from rayjupyter.core.exceptions import (
    ActorPlacementGroupRemoved,
    ActorUnschedulableError,
    TaskPlacementGroupRemoved,
    TaskUnschedulableError,
)
from rayjupyter.core.scheduler import TaskRecord, TaskState

if TYPE_CHECKING:
    from rayjupyter.core.actor_state import ActorRecord
    from rayjupyter.core.node import Node
    from rayjupyter.core.node_links import PeerLink

SCHEDULE_EVERY_S = 0.1  # how often the head tries again to place groups that wait
REMOVED_NOTICE_S = 10.0  # how long views keep telling nodes about a removed group
RELAYED_MAX = 10_000  # group requests relayed to the head and not yet answered


class NodePlacement:
    """Placement groups and strategies on one node (the table itself only on the head)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.table = pgs.PlacementGroups()  # used on the head only
        self.ledger = pgs.BundleLedger(node.resources)
        self.removed_at: deque[tuple[float, bytes]] = deque()  # head: recent removals
        self.seen_removed: deque[bytes] = deque(maxlen=pgs.REMOVED_KEPT)  # handled here
        self.relayed: dict[int, tuple[bytes, int]] = {}  # our id -> (client, its request id)
        self.relay_ids = itertools.count(1)
        # not the head: the non-detached groups each local driver made, removed when it goes
        self.jobs_groups: dict[bytes, list[bytes]] = {}
        # the head: the node that relayed a group's creation, which hears its warnings
        self.notify: dict[bytes, bytes] = {}
        self.last_schedule = 0.0

    # ------------------------------------------------------------ requests

    def _relay(self, client: bytes, message: Any) -> bool:
        """Not the head: send the request on to it; its answer comes back to ``client``."""
        node = self.node
        if node.is_head:
            return False
        if len(self.relayed) >= RELAYED_MAX:
            error = RuntimeError(
                f"{RELAYED_MAX} placement-group requests wait for the head "
                f"(node_placement.RELAYED_MAX): is the head reachable?"
            )
            node.send(client, P.Reply(message.request_id, error))
            return True
        relay_id = next(self.relay_ids)
        self.relayed[relay_id] = (client, message.request_id)
        node.peer_links.link(node.config.head_address).send(message._replace(request_id=relay_id))
        return True

    def on_peer_reply(self, link: PeerLink, message: P.Reply) -> None:
        target = self.relayed.pop(message.request_id, None)
        if target is not None:
            self.node.send(target[0], P.Reply(target[1], message.value))

    def on_create(self, client: bytes, message: P.CreatePlacementGroup) -> None:
        node = self.node
        if not message.job:
            job, namespace, _ = node.context_of(client)
            message = message._replace(job=job, namespace=namespace)
        if not node.is_head and message.lifetime != "detached":
            made = self.jobs_groups.setdefault(message.job, [])
            if len(made) < pgs.MAX_GROUPS:
                made.append(message.group_id)
        if self._relay(client, message):
            return
        try:
            self.table.create(
                message.group_id,
                tuple(dict(b) for b in message.bundles),
                message.strategy,
                message.name,
                message.namespace,
                message.lifetime,
                message.job,
            )
        except ValueError as error:
            node.send(client, P.Reply(message.request_id, error))
            return
        node.send(client, P.Reply(message.request_id, None))
        if client in node.node_clients:
            self.notify[message.group_id] = client
        self.schedule()

    def on_remove(self, client: bytes, message: P.RemovePlacementGroup) -> None:
        if self._relay(client, message):
            return
        self.apply(self.table.remove(message.group_id))
        if message.request_id:
            self.node.send(client, P.Reply(message.request_id, None))

    def on_query(self, client: bytes, message: P.QueryPlacementGroups) -> None:
        node = self.node
        if not message.namespace:
            message = message._replace(namespace=node.context_of(client)[1])
        if self._relay(client, message):
            return
        value: Any
        if message.group_id:
            group = self.table.get(message.group_id)
            value = group.row() if group is not None else None
        elif message.name:
            group = self.table.by_name(message.name, message.namespace)
            value = group.row() if group is not None else None
        else:
            value = self.table.table()
        node.send(client, P.Reply(message.request_id, value))

    # ------------------------------------------------------------ the head

    def node_joined(self, node_id: bytes, resources: dict[str, float]) -> None:
        base = {k: v for k, v in resources.items() if "_group_" not in k}
        self.table.node_joined(node_id, base)
        self.schedule()

    def node_died(self, node_id: bytes) -> None:
        if self.node.is_head:
            self.apply(self.table.node_died(node_id))
            self.schedule()

    def client_gone(self, client: bytes) -> None:
        """A driver left: its groups go (not the detached ones)."""
        node = self.node
        if node.is_head:
            if self.table.groups:
                self.apply(self.table.job_ended(client))
            return
        for group_id in self.jobs_groups.pop(client, []):  # the head hears it from us
            node.peer_links.link(node.config.head_address).send(P.RemovePlacementGroup(0, group_id))

    def tick(self) -> None:
        """Each loop turn on the head: place waiting groups now and then."""
        now = time.monotonic()
        if self.node.is_head and now - self.last_schedule >= SCHEDULE_EVERY_S:
            self.schedule()

    def schedule(self) -> None:
        node = self.node
        self.last_schedule = time.monotonic()
        if not any(None in g.nodes for g in self.table.groups.values()):
            return
        available = {
            info.node_id: dict(info.available)
            for info in node.head.nodes.values()
            if info.alive and info.node_id != node.node_id
        }
        available[node.node_id] = node.free_resources()
        self.apply(self.table.schedule(available))

    def apply(self, instructions: list[pgs.Instruction]) -> None:
        node = self.node
        touched: set[bytes] = set()
        for instruction in instructions:
            if isinstance(instruction, pgs.Reserve | pgs.Release):
                touched.add(instruction.node_id)
            elif isinstance(instruction, pgs.Removed):
                self.removed_at.append((time.monotonic(), instruction.group_id))
                self.notify.pop(instruction.group_id, None)
                self.group_removed(instruction.group_id)
            elif isinstance(instruction, pgs.Warn):
                relayer = self.notify.get(instruction.group_id, b"")
                targets = [c for c in (instruction.creator, relayer) if c in node.clients][:1]
                for driver in targets or node.drivers():
                    node.send(driver, P.LogLines(2, instruction.text))
        for node_id in touched:
            info = node.head.nodes.get(node_id)
            if info is None:
                continue
            base = self.table.capacity.get(node_id)
            if base is not None:
                info.resources = pgs.with_bundles(base, self.table.bundles_on(node_id))
            if node_id == node.node_id:
                self.hold(self.table.bundles_on(node_id))
            else:
                for client, peer_id in node.node_clients.items():
                    if peer_id == node_id:
                        node.membership.send_view(client)

    def view_extras(self, client: bytes) -> tuple[Any, tuple[bytes, ...]]:
        """What a node's view carries besides the node table: its bundles, recent removals."""
        node_id = self.node.node_clients.get(client, b"")
        cutoff = time.monotonic() - REMOVED_NOTICE_S
        while self.removed_at and self.removed_at[0][0] < cutoff:
            self.removed_at.popleft()
        removed = tuple(group_id for _, group_id in self.removed_at)
        return self.table.bundles_on(node_id), removed

    # ------------------------------------------------------------ every node

    def on_view(self, bundles: Any, removed: tuple[bytes, ...]) -> None:
        for group_id in removed:
            if group_id not in self.seen_removed:
                self.group_removed(group_id)
        self.hold(bundles)

    def hold(self, bundles: Any) -> None:
        held = self.ledger.held
        reserves = any((group_id, index) not in held for group_id, index, _ in bundles)
        for group_id in self.ledger.reconcile(bundles):
            self.end_running_work(group_id)
        leases = self.node.state.leases
        if reserves and leases.leases:
            # a bundle may take what a worker lent to a driver holds (it counts as free):
            # that worker comes back now, not when its driver leaves it idle
            self.node.execute(leases.revoke_all())

    def group_removed(self, group_id: bytes) -> None:
        """Fail its queued tasks, kill its actors (and running tasks), give back its bundles."""
        node = self.node
        self.seen_removed.append(group_id)
        for task in list(node.tasks.values()):
            if task.actor_id or pgs.names_group(task.demand) != group_id:
                continue
            if task.state in (TaskState.WAITING, TaskState.READY):
                error = TaskPlacementGroupRemoved(
                    f"Task {task.name!r} cannot run: its placement group {group_id.hex()} "
                    f"was removed."
                )
                node.fail_task(task, pickle.dumps(error, protocol=5))
        self.end_running_work(group_id)
        if group_id in self.ledger.groups():
            self.hold(tuple(b for b in self._held() if b[0] != group_id))

    def _held(self) -> tuple[tuple[bytes, int, dict[str, float]], ...]:
        return tuple(
            (g, i, {k: v for k, v in res.items() if k != "bundle"})
            for (g, i), res in self.ledger.held.items()
        )

    def end_running_work(self, group_id: bytes) -> None:
        """Work that runs in bundles this node no longer holds: tasks are stopped; actors die
        if the group was removed, else their process is killed (they restart where the
        bundle is now, within max_restarts)."""
        node = self.node
        removed = group_id in self.seen_removed
        for actor in list(node.actors.values()):
            if actor.state is ActorState.DEAD or pgs.names_group(actor.place_demand) != group_id:
                continue
            if removed:
                actor.no_restart = True
                node.actor_part.actor_dies(actor, ActorPlacementGroupRemoved.default_message)
            elif not actor.host and actor.worker in node.workers:
                node.pool.signal_worker(node.workers[actor.worker], signal.SIGKILL)
        for task in list(node.tasks.values()):
            if (
                not task.actor_id
                and task.state is TaskState.RUNNING
                and pgs.names_group(task.demand) == group_id
            ):
                node.execute(node.state.cancel(task, True, True, node.forwarded))

    def infeasible(self, name: str, demand: dict[str, float]) -> bool:
        """No node can meet a demand now: warn (plain work), stay quiet (a group that waits
        for placement warns by itself), or True: its group is gone, it must fail."""
        node = self.node
        group_id = pgs.names_group(demand)
        if group_id is None:
            node.task_part.warn_infeasible(name, demand)
            return False
        if node.is_head:
            return group_id not in self.table.groups
        return group_id in self.seen_removed

    def removed_error(self, name: str, demand: dict[str, float]) -> bytes:
        group_id = pgs.names_group(demand) or b""
        error = TaskPlacementGroupRemoved(
            f"Task {name!r} cannot run: its placement group {group_id.hex()} was removed."
        )
        return pickle.dumps(error, protocol=5)

    # ------------------------------------------------------------ strategies

    def place_actor(self, actor: ActorRecord) -> str:
        """A pending actor with a SPREAD or node-affinity strategy: "done" (sent to a peer,
        or dead: no node may run it), "here" (it waits for this node) or "default"."""
        node = self.node
        strategy = str(actor.options.get("strategy") or "")
        if strategy[:1] not in ("S", "n") or actor.creation.owner in node.node_clients:
            return "default"
        if actor.placed_by_strategy:
            return "here"  # chosen once: it waits here for resources
        target = self._choose(strategy, actor.place_demand)
        if isinstance(target, str):
            actor.no_restart = True
            node.actor_part.actor_dies(actor, f"{ActorUnschedulableError.default_message} {target}")
            return "done"
        if target is None:
            return "default"
        if target == node.node_id:
            actor.placed_by_strategy = True
            return "here"
        peer = next(p for p in node.forwarding.peer_nodes() if p.node_id == target)
        node.actor_part.host_on(actor, peer)
        return "done"

    def _choose(self, strategy: str, demand: dict[str, float]) -> bytes | str | None:
        node = self.node
        nodes = [(node.node_id, dict(node.resources.total), node.free_resources())]
        nodes += [(p.node_id, p.resources, p.available) for p in node.forwarding.peer_nodes()]
        return scheduling_strategies.choose_node(strategy, demand, node.node_id, nodes)

    def place(self, task: TaskRecord) -> bool:
        """A ready task with a SPREAD or node-affinity strategy: send it where it goes;
        True if it was placed (sent to a peer or failed), False to place it as usual."""
        node = self.node
        if task.owner in node.node_clients:  # sent here by a peer: it runs here
            return False
        target = self._choose(task.strategy, task.demand)
        if isinstance(target, str):
            error = TaskUnschedulableError(f"Task {task.name!r} cannot be scheduled: {target}.")
            node.fail_task(task, pickle.dumps(error, protocol=5))
            return True
        if target is None or (target == node.node_id and task.strategy == "SPREAD"):
            return False
        if target == node.node_id:  # pinned here: not moved by locality or spill-over
            if not node.task_part.pull_deps(task):
                node.state.task_ready(task)
            return True
        peer = next(p for p in node.forwarding.peer_nodes() if p.node_id == target)
        node.forwarding.forward(task, peer)
        return True
