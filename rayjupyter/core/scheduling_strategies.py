"""Scheduling strategies (Ray's names): what a submitter asks for, and how it travels.

A strategy becomes two things at submit time (``resolve``):

- a demand: a placement-group strategy rewrites the resources to the bundle's own
  (``placement_groups.group_demand``), so the node's scheduler places the task without
  knowing about groups;
- a short string carried with the task (``SubmitTask.strategy``): ``""`` (DEFAULT),
  ``"SPREAD"``, ``"node:<hex>:<soft>"`` or ``"pg:<hex>:<index>:<capture>"``. The node places
  SPREAD and node-affinity work by it (``choose_node``); the worker keeps it as the running
  code's context, so ``get_current_placement_group`` and captured child tasks see it.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from typing import Any

from rayjupyter.core import runtime_context

__all__ = [
    "NodeAffinitySchedulingStrategy",
    "PlacementGroupSchedulingStrategy",
    "choose_node",
    "resolve",
]


class PlacementGroupSchedulingStrategy:
    """Run in a placement group: in bundle ``placement_group_bundle_index`` (-1: any).

    ``placement_group_capture_child_tasks``: tasks and actors this one submits run in the
    same group too (in any bundle) unless they name a strategy of their own.
    """

    def __init__(
        self,
        placement_group: Any,
        placement_group_bundle_index: int = -1,
        placement_group_capture_child_tasks: bool | None = None,
    ) -> None:
        group_id = getattr(placement_group, "id", None)
        if placement_group is not None and not isinstance(group_id, bytes):
            raise TypeError(
                f"placement_group must be a PlacementGroup (from rj.util.placement_group), "
                f"got {placement_group!r}"
            )
        if type(placement_group_bundle_index) is not int or placement_group_bundle_index < -1:
            raise ValueError(
                f"placement_group_bundle_index must be an integer >= -1 (-1: any bundle), "
                f"got {placement_group_bundle_index!r}"
            )
        bundle_count = getattr(placement_group, "bundle_count", None)
        if bundle_count is not None and placement_group_bundle_index >= bundle_count:
            raise ValueError(
                f"placement_group_bundle_index {placement_group_bundle_index} is out of range: "
                f"the group has {bundle_count} bundles"
            )
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def __repr__(self) -> str:
        return (
            f"PlacementGroupSchedulingStrategy({self.placement_group!r}, "
            f"placement_group_bundle_index={self.placement_group_bundle_index}, "
            f"placement_group_capture_child_tasks={self.placement_group_capture_child_tasks})"
        )


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (hex, as ``get_runtime_context().get_node_id()``).

    ``soft=False``: only there; if that node is dead or unknown the task fails with
    ``TaskUnschedulableError`` (an actor with ``ActorUnschedulableError``). ``soft=True``:
    there if it is alive and could run it, else anywhere.
    """

    def __init__(
        self,
        node_id: str,
        soft: bool,
        _spill_on_unavailable: bool = False,
        _fail_on_unavailable: bool = False,
    ) -> None:
        if not isinstance(node_id, str):
            raise TypeError(f"node_id must be a hex string, got {node_id!r}")
        try:
            bytes.fromhex(node_id)
        except ValueError:
            raise ValueError(f"node_id must be a node's hex id, got {node_id!r}") from None
        if not isinstance(soft, bool):
            raise TypeError(f"soft must be True or False, got {soft!r}")
        if _spill_on_unavailable or _fail_on_unavailable:
            raise ValueError(
                "_spill_on_unavailable and _fail_on_unavailable are not supported: leave them "
                "False (soft=True already falls back to other nodes when this one cannot run it)"
            )
        self.node_id = node_id
        self.soft = soft

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


STRATEGY_TYPES = (PlacementGroupSchedulingStrategy, NodeAffinitySchedulingStrategy)


def from_legacy(options: Mapping[str, Any]) -> Any:
    """Ray's older ``placement_group=`` options as a strategy (None when not given)."""
    group = options.get("placement_group")
    if group is None or group == "default":
        return options.get("scheduling_strategy")
    if options.get("scheduling_strategy") is not None:
        raise ValueError(
            "placement_group= and scheduling_strategy= cannot both be given: use "
            "scheduling_strategy=PlacementGroupSchedulingStrategy(...)"
        )
    warnings.warn(
        "placement_group parameter is deprecated: use scheduling_strategy="
        "PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index) instead",
        DeprecationWarning,
        stacklevel=4,
    )
    return PlacementGroupSchedulingStrategy(
        group,
        options.get("placement_group_bundle_index", -1),
        options.get("placement_group_capture_child_tasks"),
    )


def resolve(strategy: Any, demand: dict[str, float]) -> tuple[dict[str, float], str]:
    """(the demand to send, the strategy string) for one submission.

    With no strategy of its own, work submitted from inside a group that captures child
    tasks runs in that group (any bundle), as in Ray.
    """
    if strategy is None or strategy == "DEFAULT":
        current = runtime_context.current.placement
        if strategy is None and current.startswith("pg:") and current.endswith(":1"):
            group_id = bytes.fromhex(current.split(":")[1])
            from rayjupyter.core.placement_groups import group_demand  # only work in a group

            return group_demand(demand, group_id, -1), current
        return demand, ""
    if strategy == "SPREAD":
        return demand, "SPREAD"
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return demand, f"node:{strategy.node_id}:{int(strategy.soft)}"
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        group = strategy.placement_group
        if group is None:  # Ray: None means "not in a group"
            return demand, ""
        index = strategy.placement_group_bundle_index
        check_fits(group, index, demand)
        capture = int(bool(strategy.placement_group_capture_child_tasks))
        text = f"pg:{group.id.hex()}:{index}:{capture}"
        from rayjupyter.core.placement_groups import group_demand  # (4 ms to import)

        return group_demand(demand, group.id, index), text
    raise TypeError(f"unknown scheduling strategy {strategy!r}")


def check_fits(group: Any, index: int, demand: dict[str, float]) -> None:
    """A task that asks for more than its bundle (or than every bundle, index -1) could
    never run in the group: say so at submit rather than let it wait forever."""
    specs = getattr(group, "_known_bundle_specs", None)
    if not specs:
        return
    candidates = specs if index < 0 else [specs[index]]
    for bundle in candidates:
        if all(bundle.get(k, 0.0) + 1e-9 >= v for k, v in demand.items()):
            return
    where = "any bundle" if index < 0 else f"bundle {index} ({specs[index]})"
    raise ValueError(
        f"the demand {demand} cannot fit in {where} of placement group {group.id.hex()} "
        f"(bundles: {specs}): ask for less, or create the group with larger bundles"
    )


def current_group_id() -> bytes | None:
    """The placement group the running task or actor was scheduled in, if any."""
    current = runtime_context.current.placement
    if current.startswith("pg:"):
        return bytes.fromhex(current.split(":")[1])
    return None


_spread_turn = itertools.count()


def choose_node(
    strategy: str,
    demand: dict[str, float],
    me: bytes,
    nodes: list[tuple[bytes, dict[str, float], dict[str, float]]],
) -> bytes | str | None:
    """Where a SPREAD or node-affinity task goes: a node id, None (place it as usual), or a
    string (the reason it can never run).

    ``nodes``: the live nodes as (id, total, available), this one (``me``) included.
    """

    def fits(free: dict[str, float]) -> bool:
        return all(free.get(k, 0.0) + 1e-9 >= v for k, v in demand.items())

    if strategy == "SPREAD":
        feasible = [n for n in nodes if fits(n[1])]
        if not feasible:
            return None
        free = [n for n in feasible if fits(n[2])] or feasible
        return free[next(_spread_turn) % len(free)][0]
    if strategy.startswith("node:"):
        _, hex_id, soft = strategy.split(":")
        target = next((n for n in nodes if n[0].hex() == hex_id), None)
        if target is not None and fits(target[1]):
            return target[0]
        if soft == "1":
            return None
        if target is None:
            return f"node {hex_id} is not alive in the cluster (NodeAffinitySchedulingStrategy)"
        return (
            f"node {hex_id} has {target[1]}, which can never meet {demand} "
            f"(NodeAffinitySchedulingStrategy, soft=False)"
        )
    return None
