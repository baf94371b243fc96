"""The placement-group table and a node's bundle ledger, with no processes: every transition,
each strategy's choices, the invariants after each step, and seeded random event runs."""

from __future__ import annotations

import random

import pytest

from rayjupyter.core import placement_groups as pgs
from rayjupyter.core.placement_groups import GroupState, PlacementGroups
from rayjupyter.core.scheduler import ResourcePool

A, B, C = b"node-a..", b"node-b..", b"node-c.."


def gid(i: int) -> bytes:
    return i.to_bytes(14, "big")


def table(*nodes: bytes, cpus: float = 2.0) -> PlacementGroups:
    groups = PlacementGroups()
    for node in nodes:
        groups.node_joined(node, {"CPU": cpus})
    return groups


def free(groups: PlacementGroups) -> dict[bytes, dict[str, float]]:
    return {node: dict(total) for node, total in groups.capacity.items()}


def step(groups: PlacementGroups, available: dict[bytes, dict[str, float]] | None = None) -> list:
    out = groups.schedule(free(groups) if available is None else available)
    groups.validate()
    return out


# ------------------------------------------------------------------ transitions


def test_the_transition_table_allows_exactly_what_the_events_do() -> None:
    group = pgs.Group(gid(1), ({"CPU": 1},), "PACK")
    for old, allowed in pgs.GROUP_TRANSITIONS.items():
        for new in GroupState:
            group.state, group.history = old, []
            if new in allowed:
                group.transition(new)
                assert group.state is new
            else:
                with pytest.raises(pgs.InvalidGroupTransition, match=f"{old.name} -> {new.name}"):
                    group.transition(new)


def test_pending_to_created_to_rescheduling_to_created_to_removed() -> None:
    groups = table(A, B)
    groups.create(gid(1), ({"CPU": 2}, {"CPU": 2}), "STRICT_SPREAD")
    assert groups.groups[gid(1)].state is GroupState.PENDING
    out = step(groups)
    assert sorted(i.bundle for i in out if isinstance(i, pgs.Reserve)) == [0, 1]
    group = groups.groups[gid(1)]
    assert group.state is GroupState.CREATED
    lost = group.nodes[0]
    assert lost is not None
    groups.node_died(lost)
    groups.validate()
    assert group.state is GroupState.RESCHEDULING and group.nodes[0] is None
    out = step(groups)
    assert out and isinstance(out[0], pgs.Warn)  # one node left: STRICT_SPREAD cannot fit
    groups.node_joined(C, {"CPU": 2})
    out = step(groups)
    assert out == [pgs.Reserve(C, gid(1), 0, {"CPU": 2})]
    assert group.state is GroupState.CREATED
    holders = set(group.nodes)
    out = groups.remove(gid(1))
    groups.validate()
    assert pgs.Removed(gid(1)) in out
    assert {i.node_id for i in out if isinstance(i, pgs.Release)} == holders
    assert group.state is GroupState.REMOVED
    assert groups.table()[gid(1).hex()]["state"] == "REMOVED"


def test_pending_group_removed_before_it_is_placed() -> None:
    groups = table(A)
    groups.create(gid(1), ({"CPU": 5},), "PACK", name="big")
    out = step(groups)
    assert len(out) == 1 and isinstance(out[0], pgs.Warn) and "cannot be placed" in out[0].text
    assert step(groups) == []  # said once
    assert groups.remove(gid(1)) == [pgs.Removed(gid(1))]
    assert groups.by_name("big", "") is None
    groups.validate()


def test_bad_requests_and_the_table_bound() -> None:
    groups = PlacementGroups(max_groups=1)
    with pytest.raises(ValueError, match="strategy must be one of"):
        groups.create(gid(1), ({"CPU": 1},), "TIGHT")
    with pytest.raises(ValueError, match="at least one bundle"):
        groups.create(gid(1), (), "PACK")
    groups.create(gid(1), ({"CPU": 1},), "PACK", name="x")
    with pytest.raises(ValueError, match="MAX_GROUPS"):
        groups.create(gid(2), ({"CPU": 1},), "PACK")
    groups.max_groups = 5
    with pytest.raises(ValueError, match="already exists"):
        groups.create(gid(2), ({"CPU": 1},), "PACK", name="x")
    assert groups.remove(gid(9)) == []  # unknown: nothing to do


def test_a_job_ending_removes_its_groups_but_not_detached_ones() -> None:
    groups = table(A)
    groups.create(gid(1), ({"CPU": 1},), "PACK", creator=b"job")
    groups.create(gid(2), ({"CPU": 1},), "PACK", lifetime="detached", creator=b"job")
    step(groups)
    out = groups.job_ended(b"job")
    assert pgs.Removed(gid(1)) in out and pgs.Removed(gid(2)) not in out
    assert list(groups.groups) == [gid(2)]


# ------------------------------------------------------------------ strategies


def test_strategies_choose_nodes_as_ray_does() -> None:
    room = {A: {"CPU": 4.0}, B: {"CPU": 4.0}, C: {"CPU": 1.0}}
    two = ({"CPU": 1}, {"CPU": 1})
    assert set(pgs.place(two, [None, None], "STRICT_PACK", room).values()) == {A}
    assert set(pgs.place(two, [None, None], "PACK", room).values()) == {A}
    assert len(set(pgs.place(two, [None, None], "SPREAD", room).values())) == 2
    three = ({"CPU": 1},) * 3
    assert len(set(pgs.place(three, [None] * 3, "STRICT_SPREAD", room).values())) == 3
    assert pgs.place(({"CPU": 1},) * 4, [None] * 4, "STRICT_SPREAD", room) is None
    assert pgs.place(({"CPU": 5},), [None], "PACK", room) is None
    # PACK that does not fit on one node fills the nodes it uses first
    big = ({"CPU": 3}, {"CPU": 3}, {"CPU": 1})
    chosen = pgs.place(big, [None] * 3, "PACK", room)
    assert chosen is not None and len(set(chosen.values())) == 2
    assert pgs.place(big, [None] * 3, "STRICT_PACK", room) is None
    # placing again after a loss keeps the strategy against what is still placed
    assert pgs.place(two, [A, None], "STRICT_PACK", room) == {1: A}
    assert pgs.place(two, [A, None], "STRICT_SPREAD", room) in ({1: B}, {1: C})
    assert pgs.place(two, [A, None], "STRICT_PACK", {B: {"CPU": 4.0}}) is None
    assert room == {A: {"CPU": 4.0}, B: {"CPU": 4.0}, C: {"CPU": 1.0}}  # not changed


def test_busy_nodes_keep_a_feasible_group_pending_without_a_warning() -> None:
    groups = table(A, B)
    groups.create(gid(1), ({"CPU": 2},), "PACK")
    assert step(groups, {A: {"CPU": 1}, B: {"CPU": 0}}) == []  # busy, not infeasible
    assert groups.groups[gid(1)].state is GroupState.PENDING
    out = step(groups, {A: {"CPU": 2}, B: {"CPU": 0}})
    assert out == [pgs.Reserve(A, gid(1), 0, {"CPU": 2})]


def test_bundles_never_exceed_a_nodes_capacity() -> None:
    groups = table(A, cpus=2)
    groups.create(gid(1), ({"CPU": 2},), "PACK")
    groups.create(gid(2), ({"CPU": 1},), "PACK")
    step(groups)
    assert groups.groups[gid(2)].state is GroupState.PENDING  # A is full of bundles
    assert groups.bundles_on(A) == ((gid(1), 0, {"CPU": 2}),)
    groups.remove(gid(1))
    step(groups)
    assert groups.groups[gid(2)].state is GroupState.CREATED


# ------------------------------------------------------------------ a node's ledger


def test_ledger_moves_resources_into_bundles_and_back() -> None:
    pool = ResourcePool({"CPU": 4, "GPU": 0})
    ledger = pgs.BundleLedger(pool)
    group = gid(7)
    assert ledger.reconcile(((group, 0, {"CPU": 1}), (group, 1, {"CPU": 2}))) == []
    assert pool.total["CPU"] == 4 and pool.available["CPU"] == 1  # totals stay, as in Ray
    assert pool.total[pgs.indexed_name("CPU", 1, group)] == 2
    assert pool.total[pgs.wildcard_name("CPU", group)] == 3
    assert ledger.base_total() == {"CPU": 4}
    published = pgs.with_bundles({"CPU": 4}, ((group, 0, {"CPU": 1}), (group, 1, {"CPU": 2})))
    assert published == pool.total
    demand = pgs.group_demand({"CPU": 1}, group, 1)
    assert pgs.names_group(demand) == group and pgs.names_group({"CPU": 1}) is None
    assert pool.fits(demand)
    pool.acquire(demand)  # a task runs in bundle 1 ...
    assert ledger.reconcile(()) == [group]  # ... when the group goes
    assert not any("_group_" in k for k in pool.total)
    assert pool.total["CPU"] == 4 and pool.available["CPU"] == 3  # its CPU is still in use
    assert pool.redirect[pgs.wildcard_name("CPU", group)] == "CPU"
    pool.release(demand)  # it ends: the CPU comes back to the plain pool
    assert pool.available == {"CPU": 4}


def test_ledger_reconcile_is_idempotent() -> None:
    pool = ResourcePool({"CPU": 2})
    ledger = pgs.BundleLedger(pool)
    wanted = ((gid(1), 0, {"CPU": 1}),)
    ledger.reconcile(wanted)
    before = dict(pool.total)
    assert ledger.reconcile(wanted) == []
    assert pool.total == before
    assert ledger.reconcile(()) == [gid(1)]
    assert pool.total == pool.available == {"CPU": 2}
    assert pool.redirect == {}  # nothing ran in it: nothing to give back later


# ------------------------------------------------------------------ random runs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_events_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    groups = PlacementGroups(max_groups=12)
    alive: list[bytes] = []
    ledgers: dict[bytes, pgs.BundleLedger] = {}
    next_node = next_group = 0
    for _ in range(400):
        event = rng.choice(["join", "die", "create", "create", "remove", "schedule", "schedule"])
        if event == "join" and len(alive) < 5:
            next_node += 1
            node = next_node.to_bytes(8, "big")
            cpus = float(rng.choice([1, 2, 4]))
            groups.node_joined(node, {"CPU": cpus, "x": 1.0})
            ledgers[node] = pgs.BundleLedger(ResourcePool({"CPU": cpus, "x": 1.0}))
            alive.append(node)
        elif event == "die" and alive:
            node = alive.pop(rng.randrange(len(alive)))
            groups.node_died(node)
            del ledgers[node]
        elif event == "create":
            next_group += 1
            bundles = tuple(
                {"CPU": float(rng.choice([0.5, 1, 2]))} | ({"x": 0.5} if rng.random() < 0.2 else {})
                for _ in range(rng.randint(1, 3))
            )
            try:
                groups.create(gid(next_group), bundles, rng.choice(pgs.STRATEGIES))
            except ValueError:
                assert len(groups.groups) == groups.max_groups
        elif event == "remove" and groups.groups:
            groups.remove(rng.choice(list(groups.groups)))
        else:
            available = {
                node: {k: v * rng.random() for k, v in total.items()}
                for node, total in groups.capacity.items()
            }
            groups.schedule(available if rng.random() < 0.5 else free(groups))
        groups.validate()
        for node, ledger in ledgers.items():  # each node holds what the head declares
            ledger.reconcile(groups.bundles_on(node))
            ledger.validate()
            declared = pgs.with_bundles(dict(groups.capacity[node]), groups.bundles_on(node))
            assert ledger.pool.total == pytest.approx(declared)
            assert ledger.base_total() == pytest.approx(groups.capacity[node])
            assert all(v >= -1e-9 for v in ledger.pool.total.values())
