"""Placement groups: the head's table and decisions, and a node's ledger of the bundles it holds.

No sockets here. The head feeds ``PlacementGroups`` events (a group created or removed, a
node joined or died, fresh availability) and gets instructions back (reserve, release,
warn); what each node must hold is declared by ``bundles_on(node)`` and travels in the
head's ``ClusterView``, so a node that missed a message converges at the next heartbeat.

Reservation follows Ray's model: a node that holds bundle ``i`` of group ``G`` takes the
bundle's resources from what it has free (its totals stay) and adds renamed ones,
``CPU_group_i_G`` (this bundle) and ``CPU_group_G`` (any bundle of G on this node), plus
``bundle_group_i_G`` (1000 units, of which every task in the bundle takes 0.001, so work
with no CPUs still lands there). A task scheduled in a group asks for those names instead
(``group_demand``), so the node's scheduler and peer placement place it without knowing
about groups.

Decisions use two views of each node: its capacity (total resources less other groups'
bundles, a hard limit: bundles never exceed it) and its availability as of its last
heartbeat (soft: a node may run over for a moment while work that started before the
bundle arrived finishes, as a blocked worker's lent CPU does). A group that cannot fit in
the capacity of the live nodes is infeasible: the head warns once with the cluster's
resources, and the group stays pending until nodes join.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
BUNDLE_UNITS = 1000.0  # of bundle_group_*: each task in a bundle takes BUNDLE_SHARE
BUNDLE_SHARE = 0.001
MAX_GROUPS = 10_000  # live groups in the table (setting: placement_groups.MAX_GROUPS)
REMOVED_KEPT = 1_000  # removed groups still shown by placement_group_table
REDIRECT_KEPT = 10_000  # names of released bundles that running work may still give back
_EPS = 1e-9


class GroupState(enum.IntEnum):
    PENDING = 1  # waiting for resources: some bundle is not reserved
    CREATED = 2  # every bundle reserved
    RESCHEDULING = 3  # was created; a node holding some of its bundles died
    REMOVED = 4


GROUP_TRANSITIONS: dict[GroupState, frozenset[GroupState]] = {
    GroupState.PENDING: frozenset({GroupState.CREATED, GroupState.REMOVED}),
    GroupState.CREATED: frozenset({GroupState.RESCHEDULING, GroupState.REMOVED}),
    GroupState.RESCHEDULING: frozenset({GroupState.CREATED, GroupState.REMOVED}),
    GroupState.REMOVED: frozenset(),
}


class InvalidGroupTransition(RuntimeError):
    """A state change the table does not allow: a bug in the head, never user error."""


# ---------------------------------------------------------------- resource names


def indexed_name(resource: str, index: int, group_id: bytes) -> str:
    return f"{resource}_group_{index}_{group_id.hex()}"


def wildcard_name(resource: str, group_id: bytes) -> str:
    return f"{resource}_group_{group_id.hex()}"


def group_demand(demand: dict[str, float], group_id: bytes, index: int) -> dict[str, float]:
    """A task's demand rewritten to a bundle's resources (index -1: any bundle of the group).

    An indexed task takes both names, so wildcard work on that node never overbooks it.
    """
    out = {wildcard_name(k, group_id): v for k, v in demand.items()}
    out[wildcard_name("bundle", group_id)] = BUNDLE_SHARE
    if index >= 0:
        out.update({indexed_name(k, index, group_id): v for k, v in demand.items()})
        out[indexed_name("bundle", index, group_id)] = BUNDLE_SHARE
    return out


def with_bundles(
    base: dict[str, float], bundles: tuple[tuple[bytes, int, dict[str, float]], ...]
) -> dict[str, float]:
    """A node's resources as published once it holds these bundles (see ``BundleLedger``)."""
    total = dict(base)
    for group_id, index, resources in bundles:
        for key, value in (*resources.items(), ("bundle", BUNDLE_UNITS)):
            for name in (indexed_name(key, index, group_id), wildcard_name(key, group_id)):
                total[name] = total.get(name, 0.0) + value
    return total


def gpu_amount(demand: dict[str, float]) -> float:
    """The GPUs a demand takes, in a group's bundle too (they get device ids the same way)."""
    amount = demand.get("GPU")
    if amount is not None or len(demand) < 3:  # a group's demand has 3 names at least
        return amount or 0.0
    for key, value in demand.items():
        if key.startswith("GPU_group_") and key.count("_") == 2:  # the group-wide name
            return value
    return 0.0


def cpu_share(demand: dict[str, float]) -> dict[str, float]:
    """The CPUs of a demand (a bundle's too): what a task lends while it waits in get."""
    return {k: v for k, v in demand.items() if k == "CPU" or k.startswith("CPU_group_")}


def names_group(demand: dict[str, float]) -> bytes | None:
    """The group a demand was rewritten for, or None."""
    for key in demand:
        if key.startswith("bundle_group_"):
            return bytes.fromhex(key.rpartition("_")[2])
    return None


# ---------------------------------------------------------------- the head's table


@dataclass(eq=False)
class Group:
    """One placement group as the head knows it."""

    group_id: bytes
    bundles: tuple[dict[str, float], ...]
    strategy: str
    name: str = ""
    namespace: str = ""
    lifetime: str | None = None
    creator: bytes = b""  # the job (driver client id) that made it; its exit removes it
    state: GroupState = GroupState.PENDING
    nodes: list[bytes | None] = field(default_factory=list)  # node holding each bundle
    warned: bool = False  # the infeasible warning was given
    never_at: int = -1  # the capacity epoch at which it was found not to fit at all
    history: list[GroupState] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)

    def transition(self, new: GroupState) -> None:
        if new not in GROUP_TRANSITIONS[self.state]:
            recent = " -> ".join(s.name for s in self.history[-5:])
            raise InvalidGroupTransition(
                f"placement group {self.group_id.hex()}: {self.state.name} -> {new.name} is "
                f"not allowed (recent: {recent or 'none'})"
            )
        self.history.append(self.state)
        self.state = new

    def row(self) -> dict[str, Any]:
        """A row shaped like Ray's ``placement_group_table``."""
        return {
            "placement_group_id": self.group_id.hex(),
            "name": self.name,
            "bundles": {i: dict(b) for i, b in enumerate(self.bundles)},
            "bundles_to_node_id": {
                i: node.hex() for i, node in enumerate(self.nodes) if node is not None
            },
            "strategy": self.strategy,
            "state": self.state.name,
            "is_detached": self.lifetime == "detached",
            "stats": {"scheduling_state": self.state.name},
        }


class Reserve(NamedTuple):
    """Node ``node_id`` is to hold bundle ``index`` of the group."""

    node_id: bytes
    group_id: bytes
    bundle: int  # its index in the group
    resources: dict[str, float]


class Release(NamedTuple):
    """Node ``node_id`` is to give back every bundle of the group it holds."""

    node_id: bytes
    group_id: bytes


class Removed(NamedTuple):
    """The group is gone: its queued work fails and its actors die, on every node."""

    group_id: bytes


class Warn(NamedTuple):
    """Tell the group's driver (once per group)."""

    group_id: bytes
    creator: bytes
    text: str


Instruction = Reserve | Release | Removed | Warn


def _fits(free: dict[str, float], need: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + _EPS >= v for k, v in need.items())


def _take(free: dict[str, float], need: dict[str, float]) -> None:
    for k, v in need.items():
        free[k] = free.get(k, 0.0) - v


def _sum(bundles: list[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        for k, v in bundle.items():
            total[k] = total.get(k, 0.0) + v
    return total


def place(
    bundles: tuple[dict[str, float], ...],
    fixed: list[bytes | None],
    strategy: str,
    free: dict[bytes, dict[str, float]],
) -> dict[int, bytes] | None:
    """Nodes for the unplaced bundles (``fixed[i] is None``) under the strategy, or None.

    ``free`` is each live node's room (it is not changed); nodes are tried in its order.
    """
    room = {node: dict(res) for node, res in free.items()}
    todo = [i for i, node in enumerate(fixed) if node is None]
    used = [node for node in fixed if node is not None]
    out: dict[int, bytes] = {}
    if strategy == "STRICT_PACK" or strategy == "PACK":
        need = _sum([bundles[i] for i in todo])
        candidates = [used[0]] if used and strategy == "STRICT_PACK" else list(room)
        if used and strategy == "PACK":  # the nodes it is on already come first
            candidates = [*dict.fromkeys(used), *(n for n in room if n not in used)]
        for node in candidates:
            if node in room and _fits(room[node], need):
                return {i: node for i in todo}
        if strategy == "STRICT_PACK":
            return None
    for i in todo:
        bundle = bundles[i]
        taken = [*used, *out.values()]
        if strategy == "STRICT_SPREAD":
            order = [n for n in room if n not in taken]
        elif strategy == "SPREAD":  # fewest of this group's bundles first
            order = sorted(room, key=taken.count)
        else:  # PACK that does not fit on one node: fill the nodes already used first
            order = sorted(room, key=lambda n: n not in taken)
        target = next((n for n in order if _fits(room[n], bundle)), None)
        if target is None:
            return None
        _take(room[target], bundle)
        out[i] = target
    return out


class PlacementGroups:
    """The head's placement-group table: events in, instructions out."""

    def __init__(self, max_groups: int = MAX_GROUPS) -> None:
        self.max_groups = max_groups
        self.groups: dict[bytes, Group] = {}  # live (not removed), in creation order
        self.removed: deque[Group] = deque(maxlen=REMOVED_KEPT)
        self.names: dict[tuple[str, str], bytes] = {}  # (namespace, name) -> group id
        self.capacity: dict[bytes, dict[str, float]] = {}  # live nodes' total resources
        # bumped whenever capacity may have grown or changed (a node joined or died, a group
        # went): a group that cannot fit at all is not tried again before it changes
        self.epoch = 0

    # ------------------------------------------------------------ events

    def create(
        self,
        group_id: bytes,
        bundles: tuple[dict[str, float], ...],
        strategy: str,
        name: str = "",
        namespace: str = "",
        lifetime: str | None = None,
        creator: bytes = b"",
    ) -> Group:
        """Add a group (pending); ``schedule`` then places it. Raises ValueError on a bad
        request (the caller answers the client with it)."""
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if not bundles:
            raise ValueError("a placement group needs at least one bundle")
        if len(self.groups) >= self.max_groups:
            raise ValueError(
                f"the cluster already has {self.max_groups} placement groups "
                f"(placement_groups.MAX_GROUPS): remove some with remove_placement_group"
            )
        if name and (namespace, name) in self.names:
            raise ValueError(
                f"a placement group named {name!r} already exists in namespace {namespace!r}"
            )
        group = Group(group_id, bundles, strategy, name, namespace, lifetime, creator)
        group.nodes = [None] * len(bundles)
        self.groups[group_id] = group
        if name:
            self.names[(namespace, name)] = group_id
        return group

    def remove(self, group_id: bytes) -> list[Instruction]:
        group = self.groups.pop(group_id, None)
        if group is None:
            return []
        out: list[Instruction] = [
            Release(node, group_id) for node in dict.fromkeys(group.nodes) if node is not None
        ]
        out.append(Removed(group_id))
        group.transition(GroupState.REMOVED)
        group.nodes = [None] * len(group.bundles)
        if group.name and self.names.get((group.namespace, group.name)) == group_id:
            del self.names[(group.namespace, group.name)]
        self.removed.append(group)
        self.epoch += 1
        return out

    def job_ended(self, creator: bytes) -> list[Instruction]:
        """A driver left: its groups go with it, unless detached."""
        out: list[Instruction] = []
        for group in [g for g in self.groups.values() if g.creator == creator]:
            if group.lifetime != "detached":
                out.extend(self.remove(group.group_id))
        return out

    def node_joined(self, node_id: bytes, total: dict[str, float]) -> None:
        """A node's own resources (before any bundle), as it registered."""
        self.capacity[node_id] = dict(total)
        self.epoch += 1

    def node_died(self, node_id: bytes) -> list[Instruction]:
        """Its bundles are gone: their groups go back to pending and are placed again."""
        self.capacity.pop(node_id, None)
        self.epoch += 1
        for group in self.groups.values():
            if node_id in group.nodes:
                group.nodes = [None if n == node_id else n for n in group.nodes]
                if group.state is GroupState.CREATED:
                    group.transition(GroupState.RESCHEDULING)
                group.warned = False
        return []

    def schedule(self, available: dict[bytes, dict[str, float]]) -> list[Instruction]:
        """Place every group that waits, in creation order, where ``available`` (each live
        node's free resources as last reported) and the capacity allow."""
        out: list[Instruction] = []
        waiting = [g for g in self.groups.values() if None in g.nodes]
        if not waiting:
            return out
        room = self._room()
        soft = {
            node: {k: min(v, available.get(node, {}).get(k, v)) for k, v in free.items()}
            for node, free in room.items()
        }
        for group in waiting:
            if group.never_at == self.epoch:
                continue
            chosen = place(group.bundles, group.nodes, group.strategy, soft)
            if chosen is None:
                if place(group.bundles, group.nodes, group.strategy, room) is None:
                    group.never_at = self.epoch
                    if not group.warned:
                        group.warned = True
                        out.append(Warn(group.group_id, group.creator, self._infeasible(group)))
                continue
            for index, node in chosen.items():
                group.nodes[index] = node
                _take(room[node], group.bundles[index])
                _take(soft[node], group.bundles[index])
                out.append(Reserve(node, group.group_id, index, dict(group.bundles[index])))
            group.transition(GroupState.CREATED)
        return out

    # ------------------------------------------------------------ reads

    def _room(self) -> dict[bytes, dict[str, float]]:
        """Each live node's capacity less the bundles it holds."""
        room = {node: dict(total) for node, total in self.capacity.items()}
        for group in self.groups.values():
            for index, node in enumerate(group.nodes):
                if node is not None and node in room:
                    _take(room[node], group.bundles[index])
        return room

    def _infeasible(self, group: Group) -> str:
        cluster = _sum(list(self.capacity.values()))
        asked = _sum(list(group.bundles))
        shown = {k: v for k, v in cluster.items() if k in ("CPU", "GPU") or k in asked}
        return (
            f"Warning: placement group {group.name or group.group_id.hex()} "
            f"({group.strategy}, bundles {list(group.bundles)}) cannot be placed on this "
            f"cluster ({len(self.capacity)} nodes, resources {shown}); it stays pending "
            f"until nodes that can hold it join.\n"
        )

    def bundles_on(self, node_id: bytes) -> tuple[tuple[bytes, int, dict[str, float]], ...]:
        """What a node is to hold: (group id, bundle index, resources) of each bundle."""
        return tuple(
            (group.group_id, index, group.bundles[index])
            for group in self.groups.values()
            for index, node in enumerate(group.nodes)
            if node == node_id
        )

    def get(self, group_id: bytes) -> Group | None:
        group = self.groups.get(group_id)
        if group is None:
            group = next((g for g in self.removed if g.group_id == group_id), None)
        return group

    def by_name(self, name: str, namespace: str) -> Group | None:
        group_id = self.names.get((namespace, name))
        return self.groups.get(group_id) if group_id is not None else None

    def table(self) -> dict[str, dict[str, Any]]:
        rows = [*self.removed, *self.groups.values()]
        return {group.group_id.hex(): group.row() for group in rows}

    def validate(self) -> None:
        """Invariants: bundles only on live nodes and within their capacity; the state says
        whether every bundle is placed; names point at live groups."""
        room = self._room()
        for node, free in room.items():
            for key, value in free.items():
                assert value >= -_EPS, f"node {node.hex()} overbooked on {key}: {value}"
        for group in self.groups.values():
            assert group.state is not GroupState.REMOVED, group.group_id.hex()
            assert len(group.nodes) == len(group.bundles)
            placed = None not in group.nodes
            assert placed == (group.state is GroupState.CREATED), (group.state, group.nodes)
            for holder in group.nodes:
                assert holder is None or holder in self.capacity, "a bundle on a dead node"
            if group.strategy == "STRICT_PACK" and placed:
                assert len(set(group.nodes)) == 1
            if group.strategy == "STRICT_SPREAD":
                held = [n for n in group.nodes if n is not None]
                assert len(held) == len(set(held)), "STRICT_SPREAD bundles share a node"
        for (_, _), group_id in self.names.items():
            assert group_id in self.groups
        for group in self.removed:
            assert group.state is GroupState.REMOVED and group.group_id not in self.groups


# ---------------------------------------------------------------- a node's ledger


class BundleLedger:
    """The bundles a node holds, taken from and given back to its resource pool.

    ``pool`` is the node's ``scheduler.ResourcePool`` (total, available, redirect).
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.held: dict[tuple[bytes, int], dict[str, float]] = {}

    def groups(self) -> set[bytes]:
        return {group_id for group_id, _ in self.held}

    def reconcile(self, wanted: tuple[tuple[bytes, int, dict[str, float]], ...]) -> list[bytes]:
        """Hold exactly ``wanted``; returns the groups given back entirely."""
        want = {(group_id, index): dict(res) for group_id, index, res in wanted}
        gone = self.groups() - {group_id for group_id, _ in want}
        for group_id in gone:
            self._release(group_id)
        for key, resources in want.items():
            if key not in self.held:
                self._reserve(key[0], key[1], resources)
        return sorted(gone)

    def _reserve(self, group_id: bytes, index: int, resources: dict[str, float]) -> None:
        total, available = self.pool.total, self.pool.available
        named = dict(resources)
        named["bundle"] = BUNDLE_UNITS
        for key, value in named.items():
            if key != "bundle":  # taken from what is free; the node's total stays, as in Ray
                available[key] = available.get(key, 0.0) - value
            for name in (indexed_name(key, index, group_id), wildcard_name(key, group_id)):
                total[name] = total.get(name, 0.0) + value
                available[name] = available.get(name, 0.0) + value
        self.held[(group_id, index)] = named

    def _release(self, group_id: bytes) -> None:
        """Give back every bundle of the group here; work still running in it gives its
        share back to the plain resources when it ends (``pool.redirect``)."""
        total, available = self.pool.total, self.pool.available
        redirect: dict[str, str] = {}
        reserved: dict[str, float] = {}
        for key in [k for k in self.held if k[0] == group_id]:
            named = self.held.pop(key)
            for name, value in named.items():
                reserved[name] = reserved.get(name, 0.0) + value
                total.pop(indexed_name(name, key[1], group_id), None)
                available.pop(indexed_name(name, key[1], group_id), None)
                redirect[indexed_name(name, key[1], group_id)] = ""
        in_use = False
        for name, value in reserved.items():
            wild = wildcard_name(name, group_id)
            used = total.pop(wild, 0.0) - available.pop(wild, 0.0)
            in_use = in_use or used > _EPS
            redirect[wild] = "" if name == "bundle" else name
            if name != "bundle":
                available[name] = available.get(name, 0.0) + value - used
        if in_use:  # only work still running needs to know where its share goes
            pool_redirect = self.pool.redirect
            if len(pool_redirect) > REDIRECT_KEPT:  # the oldest groups' work has long ended
                for stale in list(pool_redirect)[: REDIRECT_KEPT // 2]:
                    del pool_redirect[stale]
            pool_redirect.update(redirect)

    def validate(self) -> None:
        """Invariants: every held bundle's names are in the pool with at least its amount
        (wildcards sum their bundles), and no group name is left for a group not held."""
        total = self.pool.total
        wild: dict[str, float] = {}
        for (group_id, index), named in self.held.items():
            for key, value in named.items():
                assert total.get(indexed_name(key, index, group_id), 0.0) == value, key
                name = wildcard_name(key, group_id)
                wild[name] = wild.get(name, 0.0) + value
        for name, value in wild.items():
            assert abs(total.get(name, 0.0) - value) < 1e-6, name
        held = {group_id.hex() for group_id in self.groups()}
        for key in total:
            if "_group_" in key:
                assert key.rpartition("_")[2] in held, f"{key} outlived its group"

    def reserved(self) -> dict[str, float]:
        """What the bundles held here took out of the plain resources (``CPU``, ``GPU``...):
        the node's resource equation counts it as held (``NodeState.validate``)."""
        out: dict[str, float] = {}
        for named in self.held.values():
            for key, value in named.items():
                if key != "bundle":
                    out[key] = out.get(key, 0.0) + value
        return out

    def base_total(self) -> dict[str, float]:
        """The node's resources as if it held no bundle (what it registers with)."""
        return {k: v for k, v in self.pool.total.items() if "_group_" not in k}
