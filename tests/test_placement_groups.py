"""Placement groups on real clusters: bundles reserved across nodes (all or nothing), work
placed in them, removal, a node's death, an infeasible group's warning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from cluster_helpers import Nodes, alive_nodes, node_of, nodes_fixture
from helpers import wait_for_condition, wait_for_pids_gone

import rayjupyter as rj
from rayjupyter.exceptions import ActorDiedError, TaskPlacementGroupRemoved
from rayjupyter.util import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
    state,
)
from rayjupyter.util.scheduling_strategies import PlacementGroupSchedulingStrategy

pytestmark = pytest.mark.timeout(120)


nodes = nodes_fixture(num_cpus=1)


def in_group(group: Any, index: int = -1, capture: bool | None = None) -> Any:
    return PlacementGroupSchedulingStrategy(group, index, capture)


@rj.remote(num_cpus=1)
class Where:
    def node(self) -> str:
        return rj.get_runtime_context().get_node_id()

    def group(self) -> str | None:
        group = get_current_placement_group()
        assert rj.get_runtime_context().get_placement_group_id() == (
            group.id.hex() if group else None
        )
        return group.id.hex() if group else None


def test_pack_and_strict_spread_over_three_nodes(nodes: Nodes) -> None:
    nodes.join(num_cpus=2)
    nodes.join(num_cpus=2)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)

    spread = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    assert spread.wait(30)
    assert rj.cluster_resources()["CPU"] == 5  # as in Ray: totals stay, the free CPUs drop
    assert rj.cluster_resources()[f"CPU_group_{spread.id.hex()}"] == 3
    wait_for_condition(lambda: rj.available_resources().get("CPU") == 2, timeout=10)
    row = placement_group_table(spread)
    assert row["state"] == "CREATED" and row["strategy"] == "STRICT_SPREAD"
    holders = row["bundles_to_node_id"]
    assert len(set(holders.values())) == 3
    where = rj.get(
        [node_of.options(scheduling_strategy=in_group(spread, i)).remote() for i in range(3)],
        timeout=30,
    )
    assert where == [holders[i] for i in range(3)]  # each task ran on its bundle's node

    pack = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="PACK", name="packed")
    assert rj.get(pack.ready(), timeout=30) == pack
    packed = placement_group_table(pack)["bundles_to_node_id"]
    assert packed[0] == packed[1]  # both on one node: it has the room
    assert get_placement_group("packed") == pack
    assert get_placement_group("packed").bundle_specs == [{"CPU": 0.5}, {"CPU": 0.5}]
    assert set(placement_group_table()) >= {spread.id.hex(), pack.id.hex()}
    listed = state.list_placement_groups(filters=[("name", "=", "packed")])
    assert [r["placement_group_id"] for r in listed] == [pack.id.hex()]
    assert [b["node_id"] for b in listed[0]["bundles"]] == [packed[0], packed[1]]

    remove_placement_group(spread)
    remove_placement_group(pack)
    wait_for_condition(lambda: rj.available_resources().get("CPU") == 5, timeout=10)
    assert placement_group_table(spread)["state"] == "REMOVED"
    with pytest.raises(ValueError, match="packed"):
        get_placement_group("packed")


def test_all_or_nothing_warning_and_a_node_that_joins(nodes: Nodes, capfd: Any) -> None:
    nodes.join(num_cpus=1)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=10)
    group = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")  # 3 nodes needed
    said = []  # (what was read: readouterr consumes it)
    wait_for_condition(
        lambda: said.append(capfd.readouterr().err) or "cannot be placed" in "".join(said),
        timeout=5,
    )
    assert "'CPU': 2.0" in "".join(said)  # with the cluster's resources
    assert not group.wait(0.5)
    assert placement_group_table(group)["state"] == "PENDING"
    assert rj.available_resources().get("CPU") == 2  # nothing reserved: all or nothing
    nodes.join(num_cpus=1)
    assert group.wait(30)  # now there is room: it is placed
    assert len(set(placement_group_table(group)["bundles_to_node_id"].values())) == 3
    assert "cannot be placed" not in capfd.readouterr().err  # said once
    remove_placement_group(group)


def test_work_in_a_bundle_uses_only_its_resources(cluster: Any) -> None:
    group = placement_group([{"CPU": 1}])
    assert group.wait(30)
    with pytest.raises(ValueError, match="cannot fit in bundle 0"):
        node_of.options(num_cpus=2, scheduling_strategy=in_group(group, 0)).remote()
    first = node_of.options(scheduling_strategy=in_group(group, 0)).remote(1.0)
    second = node_of.options(scheduling_strategy=in_group(group)).remote()
    ready, _ = rj.wait([second], timeout=0.3)
    assert ready == []  # the bundle's one CPU goes to the first
    assert rj.get(node_of.remote(), timeout=30)  # the other CPU, outside the group
    rj.get([first, second], timeout=30)
    remove_placement_group(group)


def test_removal_kills_actors_and_fails_queued_tasks(cluster: Any) -> None:
    group = placement_group([{"CPU": 1}])
    assert group.wait(30)
    actor = Where.options(scheduling_strategy=in_group(group, 0)).remote()
    assert rj.get(actor.group.remote(), timeout=30) == group.id.hex()
    queued = node_of.options(scheduling_strategy=in_group(group, 0)).remote()  # no CPU left
    ready, _ = rj.wait([queued], timeout=0.3)
    assert ready == []
    remove_placement_group(group)
    with pytest.raises(TaskPlacementGroupRemoved):
        rj.get(queued, timeout=10)
    with pytest.raises(ActorDiedError, match="placement group"):
        rj.get(actor.node.remote(), timeout=10)
    wait_for_condition(lambda: rj.available_resources().get("CPU") == 2, timeout=10)
    assert not any("_group_" in key for key in rj.cluster_resources())
    with pytest.raises(TaskPlacementGroupRemoved):  # submitted after the removal
        rj.get(node_of.options(scheduling_strategy=in_group(group)).remote(), timeout=10)
    late = Where.options(scheduling_strategy=in_group(group)).remote()
    with pytest.raises(ActorDiedError, match="placement group"):
        rj.get(late.node.remote(), timeout=10)


def test_capture_child_tasks_and_the_current_group(cluster: Any) -> None:
    group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    assert group.wait(30)

    @rj.remote(num_cpus=0)
    def child() -> str | None:
        current = get_current_placement_group()
        return current.id.hex() if current else None

    @rj.remote(num_cpus=1)
    def parent() -> tuple[str | None, str | None]:
        current = get_current_placement_group()
        return (current.id.hex() if current else None, rj.get(child.remote(), timeout=30))

    assert get_current_placement_group() is None
    captured = parent.options(scheduling_strategy=in_group(group, 0, True)).remote()
    assert rj.get(captured, timeout=30) == (group.id.hex(), group.id.hex())
    free = parent.options(scheduling_strategy=in_group(group, 1)).remote()
    assert rj.get(free, timeout=30) == (group.id.hex(), None)
    legacy = parent.options(placement_group=group, placement_group_capture_child_tasks=True)
    assert rj.get(legacy.remote(), timeout=30) == (group.id.hex(), group.id.hex())
    remove_placement_group(group)

    heavy_child = child.options(num_cpus=1)

    @rj.remote(num_cpus=1)
    def heavy_parent() -> str | None:
        return rj.get(heavy_child.remote(), timeout=30)  # type: ignore[no-any-return]

    single = placement_group([{"CPU": 1}])  # a parent waiting in get lends its bundle's CPU
    assert single.wait(30)
    nested = heavy_parent.options(scheduling_strategy=in_group(single, 0, True)).remote()
    assert rj.get(nested, timeout=30) == single.id.hex()
    remove_placement_group(single)


def test_a_dead_node_takes_its_bundles_and_the_group_is_placed_again(nodes: Nodes) -> None:
    first = nodes.join(num_cpus=1)
    second = nodes.join(num_cpus=1)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
    group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert group.wait(30)
    held = placement_group_table(group)["bundles_to_node_id"]
    ports = {int(node.address.rpartition(":")[2]): node.pid for node in (first, second)}
    pids = {
        row["NodeID"]: ports[row["NodeManagerPort"]]
        for row in rj.nodes()
        if row["NodeManagerPort"] in ports
    }
    doomed_index, doomed_id = next((i, n) for i, n in held.items() if n in pids)
    actor = Where.options(
        scheduling_strategy=in_group(group, doomed_index), max_restarts=1
    ).remote()
    assert rj.get(actor.node.remote(), timeout=30) == doomed_id
    os.kill(pids[doomed_id], signal.SIGKILL)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=10)

    def placed_again() -> bool:
        row = placement_group_table(group)
        return row["state"] == "CREATED" and doomed_id not in row["bundles_to_node_id"].values()

    wait_for_condition(placed_again, timeout=15)
    moved_to = placement_group_table(group)["bundles_to_node_id"][doomed_index]
    assert rj.get(actor.node.remote(), timeout=30) == moved_to  # restarted in its bundle
    wait_for_pids_gone([pids[doomed_id]], timeout=10)
    remove_placement_group(group)


def test_gpus_in_a_bundle_get_device_ids() -> None:
    rj.init(num_cpus=1, num_gpus=2)
    try:
        group = placement_group([{"GPU": 1}])
        assert group.wait(30)

        @rj.remote(num_cpus=0, num_gpus=1)
        def devices() -> tuple[list[int], str]:
            return rj.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

        ids, visible = rj.get(
            devices.options(scheduling_strategy=in_group(group, 0)).remote(), timeout=30
        )
        assert len(ids) == 1 and visible == str(ids[0])
        remove_placement_group(group)
        wait_for_condition(lambda: rj.available_resources().get("GPU") == 2, timeout=10)
    finally:
        rj.shutdown()


def test_a_drivers_groups_end_with_it_unless_detached(cluster: Any) -> None:
    script = textwrap.dedent(
        f"""
        import rayjupyter as rj
        from rayjupyter.util import placement_group
        rj.init(address={cluster.connect_address!r})
        mine = placement_group([{{"CPU": 0.5}}])
        kept = placement_group([{{"CPU": 0.5}}], name="kept", lifetime="detached")
        assert mine.wait(30) and kept.wait(30)
        print(mine.id.hex(), kept.id.hex())
        rj.shutdown()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    mine, kept = out.stdout.split()
    wait_for_condition(lambda: placement_group_table()[mine]["state"] == "REMOVED", timeout=10)
    assert placement_group_table()[kept]["state"] == "CREATED"
    remove_placement_group(PlacementGroup(bytes.fromhex(kept)))  # (named in its namespace)


def test_a_driver_on_another_node_is_relayed_warned_and_cleaned_up(nodes: Nodes) -> None:
    other = nodes.join(num_cpus=1)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=10)
    script = textwrap.dedent(
        f"""
        import io, sys, time
        import rayjupyter as rj
        from rayjupyter.util import placement_group, placement_group_table
        rj.init(address="rayjupyter://{nodes.head._secret}@{other.address}")
        sys.stderr = captured = io.StringIO()
        fits = placement_group([{{"CPU": 1}}, {{"CPU": 1}}], strategy="STRICT_SPREAD")
        never = placement_group([{{"CPU": 64}}])
        assert fits.wait(30)
        deadline = time.monotonic() + 5
        while "cannot be placed" not in captured.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "cannot be placed" in captured.getvalue(), captured.getvalue()
        assert placement_group_table(never)["state"] == "PENDING"
        print(fits.id.hex(), never.id.hex(), file=sys.stdout)
        rj.shutdown()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for group_id in out.stdout.split():  # its node told the head it left
        wait_for_condition(
            lambda g=group_id: placement_group_table()[g]["state"] == "REMOVED", timeout=10
        )
