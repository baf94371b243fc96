"""All-to-all operators (barriers): repartition, shuffle, sort, groupby, union, zip.

Each is a driver-side function over every input block's ``RefBundle``: it plans from the
metadata (pure helpers, tested alone), then runs map tasks that cut each block into
partitions (``num_returns=N``) and reduce tasks that gather one partition each. Blocks
never come to the driver; only samples of sort keys do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

import rayjupyter as rj
from rayjupyter.data.aggregate import AggregateFn, arrow_group_aggregate, python_group_aggregate
from rayjupyter.data.block import RefBundle, concat, even_sizes, metadata_of

_TASKS: dict[str, Any] = {}


def _task(fn: Callable[..., Any]) -> Any:
    if fn.__name__ not in _TASKS:
        _TASKS[fn.__name__] = rj.remote(fn)
    return _TASKS[fn.__name__]


def _with_meta(table: pa.Table) -> tuple[pa.Table, Any]:
    return table, metadata_of(table)


def _bundles(pairs: list[Any]) -> list[RefBundle]:
    metas = rj.get([meta for _, meta in pairs], timeout=600)
    return [
        RefBundle(ref, meta, (i,))
        for i, ((ref, _), meta) in enumerate(zip(pairs, metas, strict=True))
    ]


def _flat(groups: list[list[RefBundle]]) -> list[RefBundle]:
    return [b for group in groups for b in group]


# --------------------------------------------------------------------------- slicing plans


def slice_plan(block_rows: list[int], out_rows: list[int]) -> list[list[tuple[int, int, int]]]:
    """For each output block, the (input block, start, stop) slices that make it."""
    plan: list[list[tuple[int, int, int]]] = []
    block, offset = 0, 0
    for want in out_rows:
        pieces: list[tuple[int, int, int]] = []
        while want > 0:
            while block_rows[block] - offset == 0:
                block, offset = block + 1, 0
            take = min(want, block_rows[block] - offset)
            pieces.append((block, offset, offset + take))
            offset += take
            want -= take
        plan.append(pieces)
    return plan


def _gather(pieces: list[tuple[int, int, int]], *tables: pa.Table) -> tuple[pa.Table, Any]:
    order = list(dict.fromkeys(p[0] for p in pieces))
    index = {block: slot for slot, block in enumerate(order)}
    parts = [tables[index[b]].slice(start, stop - start) for b, start, stop in pieces]
    return _with_meta(concat(parts) if parts else pa.table({}))


def _run_slices(bundles: list[RefBundle], out_rows: list[int]) -> list[RefBundle]:
    plan = slice_plan([b.meta.num_rows for b in bundles], out_rows)
    pairs = []
    for pieces in plan:
        blocks = list(dict.fromkeys(p[0] for p in pieces))
        pairs.append(
            _task(_gather).options(num_returns=2).remote(pieces, *[bundles[b].ref for b in blocks])
        )
    return _bundles(pairs)


def repartition(num_blocks: int) -> Callable[[list[list[RefBundle]]], list[RefBundle]]:
    def run(groups: list[list[RefBundle]]) -> list[RefBundle]:
        bundles = _flat(groups)
        total = sum(b.meta.num_rows for b in bundles)
        return _run_slices(bundles, even_sizes(total, num_blocks))

    return run


def split_rows(bundles: list[RefBundle], sizes: list[int]) -> list[list[RefBundle]]:
    """Cut a sequence of blocks into consecutive pieces of these row counts (zero-copy
    slices in tasks only where a block crosses a boundary)."""
    out: list[list[RefBundle]] = []
    plan = slice_plan([b.meta.num_rows for b in bundles], sizes)
    for pieces in plan:
        part: list[RefBundle] = []
        for block, start, stop in pieces:
            bundle = bundles[block]
            if start == 0 and stop == bundle.meta.num_rows:
                part.append(bundle)
            else:
                part.extend(
                    _bundles(
                        [
                            _task(_gather)
                            .options(num_returns=2)
                            .remote([(0, start, stop)], bundle.ref)
                        ]
                    )
                )
        out.append(part)
    return out


# --------------------------------------------------------------------------- shuffle


def _shuffle_map(n: int, seed: Any, index: int, table: pa.Table) -> Any:
    rng = np.random.default_rng(None if seed is None else [seed, index])
    parts = rng.integers(0, n, table.num_rows) if table.num_rows else np.zeros(0, int)
    out = [table.filter(pa.array(parts == j)) for j in range(n)]
    return out if n > 1 else out[0]


def _shuffle_reduce(seed: Any, index: int, *parts: pa.Table) -> tuple[pa.Table, Any]:
    table = concat(list(parts))
    rng = np.random.default_rng(None if seed is None else [seed, index, 1])
    return _with_meta(table.take(pa.array(rng.permutation(table.num_rows))))


def random_shuffle(
    seed: int | None, num_blocks: int | None = None
) -> Callable[[list[list[RefBundle]]], list[RefBundle]]:
    def run(groups: list[list[RefBundle]]) -> list[RefBundle]:
        bundles = _flat(groups)
        n = num_blocks or max(1, len(bundles))
        maps = []
        for i, bundle in enumerate(bundles):
            refs = _task(_shuffle_map).options(num_returns=n).remote(n, seed, i, bundle.ref)
            maps.append(refs if n > 1 else [refs])
        return _bundles(
            [
                _task(_shuffle_reduce).options(num_returns=2).remote(seed, j, *[m[j] for m in maps])
                for j in range(n)
            ]
        )

    return run


def randomize_block_order(seed: int | None) -> Callable[[list[list[RefBundle]]], list[RefBundle]]:
    def run(groups: list[list[RefBundle]]) -> list[RefBundle]:
        bundles = _flat(groups)
        order = np.random.default_rng(seed).permutation(len(bundles))
        return [bundles[i] for i in order]

    return run


# --------------------------------------------------------------------------- sort, groupby


def _sample(key: str, count: int, table: pa.Table) -> np.ndarray:
    values: np.ndarray = table.column(key).to_numpy(zero_copy_only=False)
    if len(values) <= count:
        return values
    picked: np.ndarray = values[np.linspace(0, len(values) - 1, count).astype(int)]
    return picked


def boundaries(samples: list[np.ndarray], n: int) -> np.ndarray:
    """n-1 range-partition boundaries: quantiles of the pooled samples (pure)."""
    pooled = np.sort(np.concatenate(samples)) if samples else np.array([])
    if n <= 1 or len(pooled) == 0:
        return pooled[:0]
    picks = np.linspace(0, len(pooled), n + 1)[1:-1].astype(int)
    return np.asarray(pooled[np.minimum(picks, len(pooled) - 1)])


def _range_map(key: str, bounds: np.ndarray, descending: bool, table: pa.Table) -> Any:
    n = len(bounds) + 1
    values = table.column(key).to_numpy(zero_copy_only=False)
    parts = np.searchsorted(bounds, values, side="right") if len(values) else np.zeros(0, int)
    if descending:
        parts = n - 1 - parts
    out = [table.filter(pa.array(parts == j)) for j in range(n)]
    return out if n > 1 else out[0]


def _sort_reduce(keys: list[str], descending: bool, *parts: pa.Table) -> tuple[pa.Table, Any]:
    table = concat(list(parts))
    order = "descending" if descending else "ascending"
    return _with_meta(table.sort_by([(k, order) for k in keys]) if table.num_rows else table)


def _range_partition(bundles: list[RefBundle], key: str, descending: bool) -> list[list[Any]]:
    n = max(1, len(bundles))
    samples = rj.get([_task(_sample).remote(key, 64, b.ref) for b in bundles], timeout=600)
    bounds = boundaries(list(samples), n)
    maps = []
    for bundle in bundles:
        refs = (
            _task(_range_map)
            .options(num_returns=len(bounds) + 1)
            .remote(key, bounds, descending, bundle.ref)
        )
        maps.append(refs if len(bounds) else [refs])
    return [[m[j] for m in maps] for j in range(len(bounds) + 1)]


def sort(keys: list[str], descending: bool) -> Callable[[list[list[RefBundle]]], list[RefBundle]]:
    def run(groups: list[list[RefBundle]]) -> list[RefBundle]:
        bundles = [b for b in _flat(groups) if b.meta.num_rows]
        if not bundles:
            return []
        parts = _range_partition(bundles, keys[0], descending)
        return _bundles(
            [_task(_sort_reduce).options(num_returns=2).remote(keys, descending, *p) for p in parts]
        )

    return run


def _group_reduce(
    keys: list[str], aggs: list[AggregateFn], *parts: pa.Table
) -> tuple[pa.Table, Any]:
    table = concat(list(parts))
    if table.num_rows == 0:
        return _with_meta(pa.table({}))
    if all(agg.arrow() is not None for agg in aggs):
        return _with_meta(arrow_group_aggregate(table, keys, aggs))
    return _with_meta(python_group_aggregate(table, keys, aggs))


def _map_groups_reduce(
    keys: list[str], fn: Any, batch_format: str, *parts: pa.Table
) -> tuple[pa.Table, Any]:
    from rayjupyter.data.aggregate import group_bounds
    from rayjupyter.data.block import batch_from_table, table_from_batch

    table = concat(list(parts))
    if table.num_rows == 0:
        return _with_meta(pa.table({}))
    table = table.sort_by([(k, "ascending") for k in keys])
    out = [
        table_from_batch(fn(batch_from_table(table.slice(a, b - a), batch_format)))
        for a, b in group_bounds(table, keys)
    ]
    return _with_meta(concat(out))


def groupby(
    keys: list[str],
    aggs: list[AggregateFn] | None = None,
    fn: Any = None,
    batch_format: str = "default",
) -> Callable[[list[list[RefBundle]]], list[RefBundle]]:
    def run(groups: list[list[RefBundle]]) -> list[RefBundle]:
        bundles = [b for b in _flat(groups) if b.meta.num_rows]
        if not bundles:
            return []
        parts = _range_partition(bundles, keys[0], False)
        if fn is not None:
            pairs = [
                _task(_map_groups_reduce).options(num_returns=2).remote(keys, fn, batch_format, *p)
                for p in parts
            ]
        else:
            pairs = [
                _task(_group_reduce).options(num_returns=2).remote(keys, aggs, *p) for p in parts
            ]
        return [b for b in _bundles(pairs) if b.meta.num_rows]

    return run


# --------------------------------------------------------------------------- union, zip


def union(groups: list[list[RefBundle]]) -> list[RefBundle]:
    return _flat(groups)


def _zip_block(
    names_right: list[str], pieces: list[tuple[int, int, int]], left: pa.Table, *rights: pa.Table
) -> tuple[pa.Table, Any]:
    right = _gather(pieces, *rights)[0]
    out = left
    for name, column in zip(names_right, right.columns, strict=True):
        out = out.append_column(name, column)
    return _with_meta(out)


def zip_names(left: list[str], right: list[str]) -> list[str]:
    """Right-side names, a clash renamed with a ``_1`` suffix (then ``_2``...), as in Ray."""
    taken = set(left)
    out = []
    for name in right:
        new, i = name, 1
        while new in taken:
            new, i = f"{name}_{i}", i + 1
        taken.add(new)
        out.append(new)
    return out


def zip_blocks(groups: list[list[RefBundle]]) -> list[RefBundle]:
    left, right = groups
    left_rows = [b.meta.num_rows for b in left]
    right_rows = [b.meta.num_rows for b in right]
    if sum(left_rows) != sum(right_rows):
        raise ValueError(
            f"Cannot zip datasets of different lengths: {sum(left_rows)} and {sum(right_rows)} "
            "rows."
        )
    schema = next((b.meta.schema for b in right if b.meta.schema is not None), None)
    left_schema = next((b.meta.schema for b in left if b.meta.schema is not None), None)
    names = zip_names(left_schema.names if left_schema else [], schema.names if schema else [])
    plan = slice_plan(right_rows, left_rows)
    pairs = []
    for bundle, pieces in zip(left, plan, strict=True):
        blocks = list(dict.fromkeys(p[0] for p in pieces))
        pairs.append(
            _task(_zip_block)
            .options(num_returns=2)
            .remote(names, pieces, bundle.ref, *[right[b].ref for b in blocks])
        )
    return _bundles(pairs)
