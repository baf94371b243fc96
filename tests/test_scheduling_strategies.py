"""Scheduling strategies on a real 3-node cluster: DEFAULT, SPREAD, node affinity (hard and
soft), a placement group's bundle for actors, and the node:<ip> resources."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from cluster_helpers import alive_nodes, head_id, node_of, started_nodes
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.exceptions import ActorDiedError, TaskUnschedulableError
from rayjupyter.util import (
    get_current_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from rayjupyter.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

pytestmark = pytest.mark.timeout(120)
UNKNOWN_NODE = "ab" * 8


@pytest.fixture
def three() -> Iterator[list[str]]:
    """A head and two nodes of 1 CPU each; yields their node ids, the head's first."""
    with started_nodes(num_cpus=1) as started:
        started.join(num_cpus=1)
        started.join(num_cpus=1)
        wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
        head = head_id()
        others = [r["NodeID"] for r in rj.nodes() if r["NodeID"] != head]
        yield [head, *others]


@rj.remote(num_cpus=1)
class Where:
    def node(self) -> str:
        return rj.get_runtime_context().get_node_id()

    def bundles(self) -> list[dict[str, float]]:
        group = get_current_placement_group()  # asked of the head through this node
        return group.bundle_specs if group else []


def test_default_and_spread_use_every_node(three: list[str]) -> None:
    default = node_of.options(scheduling_strategy="DEFAULT")
    assert rj.get(default.remote(), timeout=30) in three
    spread = node_of.options(scheduling_strategy="SPREAD", num_cpus=0.1)
    where = rj.get([spread.remote(0.3) for _ in range(6)], timeout=60)
    assert set(where) == set(three), where  # fractional CPUs: all would fit on one node
    actors = [Where.options(scheduling_strategy="SPREAD", num_cpus=0.1).remote() for _ in range(3)]
    assert {rj.get(a.node.remote(), timeout=30) for a in actors} == set(three)
    for actor in actors:
        rj.kill(actor)


def test_hard_node_affinity_runs_only_there(three: list[str]) -> None:
    for node_id in three:
        pinned = node_of.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
        )
        assert rj.get([pinned.remote() for _ in range(3)], timeout=30) == [node_id] * 3
    target = three[2]
    actor = Where.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(target, soft=False)
    ).remote()
    assert rj.get(actor.node.remote(), timeout=30) == target
    rj.kill(actor)


def test_hard_affinity_to_an_unknown_node_fails_and_soft_falls_back(three: list[str]) -> None:
    hard = NodeAffinitySchedulingStrategy(UNKNOWN_NODE, soft=False)
    with pytest.raises(TaskUnschedulableError, match=UNKNOWN_NODE):
        rj.get(node_of.options(scheduling_strategy=hard).remote(), timeout=30)
    actor = Where.options(scheduling_strategy=hard).remote()
    with pytest.raises(ActorDiedError, match="cannot be scheduled"):
        rj.get(actor.node.remote(), timeout=30)
    soft = NodeAffinitySchedulingStrategy(UNKNOWN_NODE, soft=True)
    assert rj.get(node_of.options(scheduling_strategy=soft).remote(), timeout=30) in three
    preferred = NodeAffinitySchedulingStrategy(three[1], soft=True)
    assert rj.get(node_of.options(scheduling_strategy=preferred).remote(), timeout=30) == three[1]
    with pytest.raises(ValueError, match="hex id"):
        NodeAffinitySchedulingStrategy("not-hex", soft=False)


def test_actors_in_a_bundle_follow_it(three: list[str]) -> None:
    group = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    assert group.wait(30)
    holders = placement_group_table(group)["bundles_to_node_id"]
    actors = [
        Where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group, i)).remote()
        for i in range(3)
    ]
    assert [rj.get(a.node.remote(), timeout=30) for a in actors] == [holders[i] for i in range(3)]
    assert rj.get([a.bundles.remote() for a in actors], timeout=30) == [[{"CPU": 1.0}] * 3] * 3
    with pytest.raises(ValueError, match="out of range"):
        PlacementGroupSchedulingStrategy(group, 3)
    remove_placement_group(group)


def test_every_node_advertises_its_address(three: list[str]) -> None:
    assert rj.cluster_resources()["node:127.0.0.1"] == 3
    for row in rj.nodes():
        assert row["Resources"]["node:127.0.0.1"] == 1
    pinned = node_of.options(resources={"node:127.0.0.1": 0.01})
    assert rj.get(pinned.remote(), timeout=30) in three


def test_strategies_are_checked_at_the_call(three: list[str]) -> None:
    with pytest.raises(ValueError, match="'DEFAULT', 'SPREAD'"):
        node_of.options(scheduling_strategy="PACK")
    with pytest.raises(TypeError, match="scheduling strategy object"):
        node_of.options(scheduling_strategy={"node": three[0]})
    with pytest.raises(TypeError, match="PlacementGroup"):
        PlacementGroupSchedulingStrategy("group", 0)
    with pytest.raises(ValueError, match="_spill_on_unavailable"):
        NodeAffinitySchedulingStrategy(three[0], soft=True, _spill_on_unavailable=True)


def test_hard_affinity_fails_when_its_node_dies() -> None:
    with started_nodes(num_cpus=1) as started:
        doomed = started.join(num_cpus=1)
        wait_for_condition(lambda: alive_nodes() == 2, timeout=10)
        port = int(doomed.address.rpartition(":")[2])
        target = next(r["NodeID"] for r in rj.nodes() if r["NodeManagerPort"] == port)
        pinned = node_of.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(target, soft=False), max_retries=2
        )
        preferred = node_of.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(target, soft=True), max_retries=2
        )
        hard, soft = pinned.remote(30), preferred.remote(2)
        wait_for_condition(lambda: rj.available_resources().get("CPU", 0) == 1, timeout=10)
        os.kill(doomed.pid, signal.SIGKILL)
        with pytest.raises(TaskUnschedulableError, match="died"):
            rj.get(hard, timeout=30)
        assert rj.get(soft, timeout=30) == head_id()
