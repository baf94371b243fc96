"""The logical plan and its optimizer: pure data, rewritten before anything runs.

A Dataset holds a chain (a DAG for union and zip) of logical operators. ``optimize`` turns
it into physical operator specs: projections and filters pushed into Parquet reads, a read
and the task-pool maps after it fused into one task, consecutive task-pool maps with the
same resources fused. Tested without processes (tests/test_data_plan.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from rayjupyter.data.block import RefBundle
from rayjupyter.data.sources import ReadTask, push_columns, push_filter
from rayjupyter.data.stages import FilterRows, SelectColumns, Stage


@dataclass(frozen=True)
class Compute:
    """Where a map runs: ``tasks``, or a pool of ``min_size..max_size`` actors."""

    actors: bool = False
    min_size: int = 1
    max_size: int = 0  # tasks: 0 is no cap of our own
    max_tasks_in_flight_per_actor: int = 2

    @staticmethod
    def from_concurrency(concurrency: int | tuple[int, int] | None, is_class: bool) -> Compute:
        if not is_class:
            if concurrency is not None and not isinstance(concurrency, int):
                raise ValueError(
                    "concurrency=(min, max) is for callable classes (an actor pool); "
                    "a function takes an int or None."
                )
            return Compute(actors=False, max_size=concurrency or 0)
        if concurrency is None:
            raise ValueError(
                "A callable class needs concurrency=N or concurrency=(min, max): the size of "
                "its actor pool."
            )
        if isinstance(concurrency, int):
            lo, hi = concurrency, concurrency
        else:
            lo, hi = concurrency
        if lo < 1 or hi < lo:
            raise ValueError(
                f"concurrency must be N >= 1 or (min, max) with 1 <= min <= max, "
                f"got {concurrency!r}."
            )
        return Compute(actors=True, min_size=lo, max_size=hi)


# --------------------------------------------------------------------------- logical


@dataclass(frozen=True)
class LogicalOp:
    name: str
    inputs: tuple[LogicalOp, ...] = ()


@dataclass(frozen=True)
class Read(LogicalOp):
    tasks: tuple[ReadTask, ...] = ()
    schema: Any = None  # a pyarrow.Schema when known without reading (footers, range)


def known_rows(op: LogicalOp) -> int | None:
    """Rows of a source known without running it (None for anything else)."""
    if isinstance(op, InputData):
        return sum(b.meta.num_rows for b in op.bundles)
    if isinstance(op, Read):
        rows = [t.num_rows for t in op.tasks]
        return None if None in rows else sum(r or 0 for r in rows)
    return None


def known_schema(op: LogicalOp) -> Any:
    if isinstance(op, InputData):
        for bundle in op.bundles:
            if bundle.meta.schema is not None and bundle.meta.schema.names:
                return bundle.meta.schema
    if isinstance(op, Read):
        return op.schema
    return None


def leaf(op: LogicalOp) -> LogicalOp:
    while op.inputs:
        op = op.inputs[0]
    return op


@dataclass(frozen=True)
class InputData(LogicalOp):
    bundles: tuple[RefBundle, ...] = ()


@dataclass(frozen=True)
class MapOp(LogicalOp):
    stage: Stage | None = None
    compute: Compute = field(default_factory=Compute)
    remote_args: tuple[tuple[str, Any], ...] = ()  # num_cpus, num_gpus, resources...


@dataclass(frozen=True)
class Limit(LogicalOp):
    limit: int = 0


@dataclass(frozen=True)
class Barrier(LogicalOp):
    """All of its inputs' blocks, then ``fn(list of bundle lists) -> bundles`` (shuffle,
    sort, groupby, repartition, union, zip)."""

    fn: Callable[[list[list[RefBundle]]], list[RefBundle]] | None = None


def chain_names(op: LogicalOp) -> list[str]:
    """The plan as names, source first (for reprs)."""
    names: list[str] = []
    for child in op.inputs:
        names.extend(chain_names(child))
    names.append(op.name)
    return names


# --------------------------------------------------------------------------- physical


@dataclass
class PhysicalSpec:
    """One physical operator: kind in {input, map, limit, barrier}; inputs by index."""

    kind: str
    name: str
    inputs: list[int] = field(default_factory=list)
    read_tasks: list[ReadTask] | None = None
    bundles: list[RefBundle] | None = None
    stages: list[Stage] = field(default_factory=list)
    compute: Compute = field(default_factory=Compute)
    remote_args: dict[str, Any] = field(default_factory=dict)
    limit: int = 0
    fn: Callable[[list[list[RefBundle]]], list[RefBundle]] | None = None


def _pushdown(op: LogicalOp) -> LogicalOp:
    """Select-columns and expression filters right after a Parquet read go into the read."""
    inputs = tuple(_pushdown(child) for child in op.inputs)
    op = replace(op, inputs=inputs)
    if not isinstance(op, MapOp) or op.compute.actors or len(inputs) != 1:
        return op
    child = inputs[0]
    if not isinstance(child, Read) or not child.tasks:
        return op
    stage = op.stage
    pushed: list[ReadTask | None] | None = None
    if isinstance(stage, SelectColumns):
        pushed = [push_columns(t, stage.columns) for t in child.tasks]
    elif isinstance(stage, FilterRows) and stage.expr is not None:
        pushed = [push_filter(t, stage.expr) for t in child.tasks]
    if pushed is None or any(t is None for t in pushed):
        return op
    return replace(
        child,
        name=f"{child.name}[{stage.name if stage else ''}]",
        tasks=tuple(t for t in pushed if t is not None),
    )


def _can_fuse(up: PhysicalSpec, down: MapOp) -> bool:
    if up.kind != "map" or down.compute.actors or up.compute.actors:
        return False
    if up.read_tasks is not None and not up.stages:
        return not dict(down.remote_args)  # a read fuses with maps on default resources
    return up.remote_args == dict(down.remote_args) and up.compute == down.compute


def optimize(root: LogicalOp) -> list[PhysicalSpec]:
    """The physical operators, inputs before outputs; the last one is the output."""
    specs: list[PhysicalSpec] = []
    consumers: dict[int, int] = {}

    def build(op: LogicalOp) -> int:
        in_ids = [build(child) for child in op.inputs]
        for i in in_ids:
            consumers[i] = consumers.get(i, 0) + 1
        if isinstance(op, Read):
            specs.append(PhysicalSpec("map", op.name, [], read_tasks=list(op.tasks)))
        elif isinstance(op, InputData):
            specs.append(PhysicalSpec("input", op.name, [], bundles=list(op.bundles)))
        elif isinstance(op, MapOp):
            assert op.stage is not None
            up = specs[in_ids[0]] if len(in_ids) == 1 else None
            if up is not None and _can_fuse(up, op) and in_ids[0] == len(specs) - 1:
                up.stages.append(op.stage)
                up.name = f"{up.name}->{op.name}"
                if up.read_tasks is not None and len(up.stages) == 1:
                    up.remote_args = dict(op.remote_args)
                    up.compute = op.compute
                return in_ids[0]
            specs.append(
                PhysicalSpec(
                    "map",
                    op.name,
                    in_ids,
                    stages=[op.stage],
                    compute=op.compute,
                    remote_args=dict(op.remote_args),
                )
            )
        elif isinstance(op, Limit):
            specs.append(PhysicalSpec("limit", op.name, in_ids, limit=op.limit))
        elif isinstance(op, Barrier):
            specs.append(PhysicalSpec("barrier", op.name, in_ids, fn=op.fn))
        else:
            raise TypeError(f"unknown logical operator {op!r}")
        return len(specs) - 1

    build(_pushdown(root))
    return specs
