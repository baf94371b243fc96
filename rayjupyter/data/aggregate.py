"""Aggregations: Ray Data's ``AggregateFn`` and its built-ins (Count, Sum, Min, Max, Mean,
Std), each also expressed as a pyarrow group-by aggregation when one exists, so groupby
runs in Arrow's kernels and only a custom ``AggregateFn`` loops in Python."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayjupyter.data.block import rows_of


class AggregateFn:
    """``init(key) -> acc``, ``accumulate_row(acc, row)`` or ``accumulate_block(acc,
    table)``, ``merge(a, b)``, ``finalize(acc)``; ``name`` is the output column."""

    def __init__(
        self,
        init: Callable[[Any], Any],
        merge: Callable[[Any, Any], Any],
        accumulate_row: Callable[[Any, Any], Any] | None = None,
        accumulate_block: Callable[[Any, pa.Table], Any] | None = None,
        finalize: Callable[[Any], Any] | None = None,
        name: str | None = None,
    ) -> None:
        if (accumulate_row is None) == (accumulate_block is None):
            raise ValueError("Give exactly one of accumulate_row and accumulate_block.")
        self.init = init
        self.merge = merge
        self.accumulate_row = accumulate_row
        self.accumulate_block_fn = accumulate_block
        self.finalize = finalize or (lambda acc: acc)
        self.name = name or "aggregate"

    def accumulate_block(self, acc: Any, table: pa.Table) -> Any:
        if self.accumulate_block_fn is not None:
            return self.accumulate_block_fn(acc, table)
        assert self.accumulate_row is not None
        for row in rows_of(table):
            acc = self.accumulate_row(acc, row)
        return acc

    def arrow(self) -> tuple[Any, ...] | None:
        """The pyarrow ``Table.group_by().aggregate`` spec, or None (Python fallback)."""
        return None


def _nonnull(table: pa.Table, on: str) -> pa.ChunkedArray:
    return pc.drop_null(table.column(on))


class Count(AggregateFn):
    def __init__(self) -> None:
        super().__init__(
            lambda k: 0,
            lambda a, b: a + b,
            accumulate_block=lambda a, t: a + t.num_rows,
            name="count()",
        )

    def arrow(self) -> tuple[Any, ...]:
        return ([], "count_all")


class _Simple(AggregateFn):
    kind = ""

    def __init__(
        self,
        on: str,
        fn: Callable[[pa.ChunkedArray], Any],
        merge: Callable[[Any, Any], Any],
        alias_name: str | None = None,
    ) -> None:
        self.on = on

        def acc_block(acc: Any, table: pa.Table) -> Any:
            values = _nonnull(table, on)
            if len(values) == 0:
                return acc
            value = fn(values).as_py()
            return value if acc is None else merge(acc, value)

        super().__init__(
            lambda k: None,
            lambda a, b: b if a is None else a if b is None else merge(a, b),
            accumulate_block=acc_block,
            name=alias_name or f"{self.kind}({on})",
        )

    def arrow(self) -> tuple[Any, ...]:
        return (self.on, self.kind)


class Sum(_Simple):
    kind = "sum"

    def __init__(self, on: str, alias_name: str | None = None) -> None:
        super().__init__(on, pc.sum, lambda a, b: a + b, alias_name)


class Min(_Simple):
    kind = "min"

    def __init__(self, on: str, alias_name: str | None = None) -> None:
        super().__init__(on, pc.min, min, alias_name)


class Max(_Simple):
    kind = "max"

    def __init__(self, on: str, alias_name: str | None = None) -> None:
        super().__init__(on, pc.max, max, alias_name)


class Mean(AggregateFn):
    """Sum and count merged, so partial means combine exactly."""

    def __init__(self, on: str, alias_name: str | None = None) -> None:
        self.on = on

        def acc_block(acc: list[float], table: pa.Table) -> list[float]:
            values = _nonnull(table, on)
            if len(values):
                acc = [acc[0] + pc.sum(values).as_py(), acc[1] + len(values)]
            return acc

        super().__init__(
            lambda k: [0, 0],
            lambda a, b: [a[0] + b[0], a[1] + b[1]],
            accumulate_block=acc_block,
            finalize=lambda a: a[0] / a[1] if a[1] else None,
            name=alias_name or f"mean({on})",
        )

    def arrow(self) -> tuple[Any, ...]:
        return (self.on, "mean")


class Std(AggregateFn):
    """Count, mean and M2 merged with Chan's parallel formula; ``ddof=1`` as in Ray."""

    def __init__(self, on: str, ddof: int = 1, alias_name: str | None = None) -> None:
        self.on = on
        self.ddof = ddof

        def acc_block(acc: tuple[int, float, float], table: pa.Table) -> tuple[int, float, float]:
            values = _nonnull(table, on).to_numpy().astype(np.float64)
            if not len(values):
                return acc
            mean = float(values.mean())
            part = (len(values), mean, float(((values - mean) ** 2).sum()))
            return merge(acc, part)

        def merge(
            a: tuple[int, float, float], b: tuple[int, float, float]
        ) -> tuple[int, float, float]:
            if a[0] == 0:
                return b
            if b[0] == 0:
                return a
            n = a[0] + b[0]
            delta = b[1] - a[1]
            return (n, a[1] + delta * b[0] / n, a[2] + b[2] + delta * delta * a[0] * b[0] / n)

        def finalize(acc: tuple[int, float, float]) -> float | None:
            if acc[0] - ddof <= 0:
                return None
            return math.sqrt(acc[2] / (acc[0] - ddof))

        super().__init__(
            lambda k: (0, 0.0, 0.0),
            merge,
            accumulate_block=acc_block,
            finalize=finalize,
            name=alias_name or f"std({on})",
        )

    def arrow(self) -> tuple[Any, ...]:
        return (self.on, "stddev", pc.VarianceOptions(ddof=self.ddof))


def arrow_group_aggregate(table: pa.Table, keys: list[str], aggs: list[AggregateFn]) -> pa.Table:
    """One partition's groups through pyarrow, renamed to Ray's column names, key-sorted."""
    specs = [spec for spec in (agg.arrow() for agg in aggs) if spec is not None]
    out = table.group_by(keys, use_threads=False).aggregate(specs)
    # pyarrow names an aggregate "<column>_<function>" ("count_all" for the row count)
    agg_cols = [spec[1] if not spec[0] else f"{spec[0]}_{spec[1]}" for spec in specs]
    result = out.select(keys + agg_cols)
    result = result.rename_columns(keys + [agg.name for agg in aggs])
    return result.sort_by([(k, "ascending") for k in keys])


def python_group_aggregate(table: pa.Table, keys: list[str], aggs: list[AggregateFn]) -> pa.Table:
    """Groups found by sorting; each group's slice through the aggregations' own code."""
    table = table.sort_by([(k, "ascending") for k in keys])
    rows: list[dict[str, Any]] = []
    for start, stop in group_bounds(table, keys):
        part = table.slice(start, stop - start)
        row = {k: part.column(k)[0].as_py() for k in keys}
        for agg in aggs:
            row[agg.name] = agg.finalize(agg.accumulate_block(agg.init(row), part))
        rows.append(row)
    return pa.Table.from_pylist(rows)


def group_bounds(table: pa.Table, keys: list[str]) -> list[tuple[int, int]]:
    """[start, stop) of each run of equal keys in a key-sorted table."""
    n = table.num_rows
    if n == 0:
        return []
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for key in keys:
        values = table.column(key).to_numpy(zero_copy_only=False)
        change[1:] |= values[1:] != values[:-1]
    starts = np.flatnonzero(change).tolist()
    return list(zip(starts, [*starts[1:], n], strict=True))
