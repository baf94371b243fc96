"""Placement groups (Ray's ``ray.util.placement_group``): reserve bundles of resources across
nodes, all or nothing, and run tasks and actors in them.

The head keeps the groups and places their bundles (``core/placement_groups.py``); this
module is the caller's side: it checks the request, sends it, and wraps the answer.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

from rayjupyter.core import protocol as P
from rayjupyter.core import scheduling_strategies
from rayjupyter.core.api import _client, remote, wait
from rayjupyter.core.object_ref import ObjectRef
from rayjupyter.core.placement_groups import STRATEGIES

__all__ = [
    "PlacementGroup",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
]

GROUP_ID_BYTES = 14


class PlacementGroup:
    """A handle on a placement group; pass it to PlacementGroupSchedulingStrategy."""

    def __init__(self, id: bytes, bundles: list[dict[str, float]] | None = None) -> None:
        self.id = id
        self._known_bundle_specs = bundles

    @property
    def bundle_specs(self) -> list[dict[str, float]]:
        """The bundles it reserves, in index order."""
        if self._known_bundle_specs is None:
            row = _query(self.id, "")
            if row is None:
                raise ValueError(f"no placement group {self.id.hex()} in this cluster")
            self._known_bundle_specs = [dict(b) for _, b in sorted(row["bundles"].items())]
        return self._known_bundle_specs

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        """An ObjectRef that resolves (to this group) once every bundle is reserved."""
        strategy = scheduling_strategies.PlacementGroupSchedulingStrategy(self, -1)
        ref: ObjectRef = _ready_check.options(scheduling_strategy=strategy).remote(self)
        return ref

    def wait(self, timeout_seconds: float | int = 30) -> bool:
        """True once the group is ready; False if it is not within timeout_seconds."""
        done, _ = wait([self.ready()], timeout=timeout_seconds)
        return bool(done)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup(id={self.id.hex()})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PlacementGroup, (self.id, self._known_bundle_specs))


@remote(num_cpus=0, max_retries=-1)
def _ready_check(group: PlacementGroup) -> PlacementGroup:
    return group


def _check_bundles(bundles: Any) -> list[dict[str, float]]:
    if not isinstance(bundles, list | tuple) or not bundles:
        raise ValueError(
            f"bundles must be a non-empty list of resource dicts, e.g. [{{'CPU': 1}}], "
            f"got {bundles!r}"
        )
    checked = []
    for bundle in bundles:
        if not isinstance(bundle, dict) or not bundle:
            raise ValueError(f"each bundle must be a non-empty dict of resources, got {bundle!r}")
        clean: dict[str, float] = {}
        for key, value in bundle.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"bundle resource names must be strings, got {key!r}")
            if key == "bundle":  # the group's own marker resource (see group_demand)
                raise ValueError("'bundle' is a reserved resource name: name the resource else")
            amount = float(value) if isinstance(value, numbers.Real) else math.nan
            if isinstance(value, bool) or not math.isfinite(amount) or amount < 0:
                raise ValueError(f"bundle amounts must be numbers >= 0, got {key}={value!r}")
            if amount > 0:
                clean[key] = amount
        if not clean:
            raise ValueError(f"a bundle cannot hold only zeros, got {bundle!r}")
        checked.append(clean)
    return checked


def placement_group(
    bundles: list[dict[str, float]],
    strategy: str = "PACK",
    name: str = "",
    lifetime: str | None = None,
    _max_cpu_fraction_per_node: float | None = None,
) -> PlacementGroup:
    """Reserve ``bundles`` (each a dict of resources) with a strategy: PACK (as few nodes as
    possible), SPREAD (as many as possible), STRICT_PACK (one node) or STRICT_SPREAD (one
    bundle per node). Returns at once; ``pg.ready()`` resolves when all are reserved."""
    checked = _check_bundles(bundles)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {name!r}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"lifetime must be None or 'detached', got {lifetime!r}")
    if _max_cpu_fraction_per_node is not None:
        raise ValueError("_max_cpu_fraction_per_node is not supported: leave it out (None)")
    client = _client()
    group_id = os.urandom(GROUP_ID_BYTES)
    request_id = client.new_request_id()
    message = P.CreatePlacementGroup(request_id, group_id, tuple(checked), strategy, name, lifetime)
    client.send([message])
    client.await_reply(request_id, "create placement group")
    return PlacementGroup(group_id, checked)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Remove the group: its actors are killed, its queued tasks fail, its bundles are freed."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"expected a PlacementGroup, got {placement_group!r}")
    client = _client()
    request_id = client.new_request_id()
    client.send([P.RemovePlacementGroup(request_id, placement_group.id)])
    client.await_reply(request_id, "remove placement group")


def _query(group_id: bytes, name: str) -> Any:
    client = _client()
    request_id = client.new_request_id()
    client.send([P.QueryPlacementGroups(request_id, group_id, name)])
    return client.await_reply(request_id, "placement group table")


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group of that name (in this job's namespace); ValueError if there is none."""
    row = _query(b"", placement_group_name)
    if row is None:
        raise ValueError(f"Failed to look up placement group with name: {placement_group_name}")
    bundles = [dict(b) for _, b in sorted(row["bundles"].items())]
    return PlacementGroup(bytes.fromhex(row["placement_group_id"]), bundles)


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """Ray's table: one group's row, or {group id hex: row} for every group."""
    if placement_group is None:
        table: dict[str, Any] = _query(b"", "")
        return table
    row = _query(placement_group.id, "")
    return row if row is not None else {}


def get_current_placement_group() -> PlacementGroup | None:
    """The group the running task or actor was scheduled in; None outside any group."""
    group_id = scheduling_strategies.current_group_id()
    return PlacementGroup(group_id) if group_id is not None else None
