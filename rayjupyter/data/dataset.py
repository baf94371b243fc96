"""``Dataset``: Ray Data's API over a lazy logical plan.

Transforms add a logical operator and return a new Dataset; nothing runs until a
consumer (iter_*, take, count, write_*...) asks, and then the plan is optimized and run by
the streaming executor. ``MaterializedDataset`` holds finished blocks in the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

import rayjupyter as rj
from rayjupyter.data import alltoall
from rayjupyter.data.aggregate import AggregateFn, Count, Max, Mean, Min, Std, Sum
from rayjupyter.data.block import RefBundle, batch_from_table, check_batch_format
from rayjupyter.data.context import DataContext
from rayjupyter.data.executor import StreamingExecutor
from rayjupyter.data.iterator import DataIterator
from rayjupyter.data.plan import (
    Barrier,
    Compute,
    InputData,
    Limit,
    LogicalOp,
    MapOp,
    chain_names,
    known_rows,
    known_schema,
    optimize,
)
from rayjupyter.data.stages import (
    AddColumn,
    DropColumns,
    FilterRows,
    FlatMap,
    MapBatches,
    MapRows,
    RenameColumns,
    SelectColumns,
    Stage,
    UserFn,
)


class Schema:
    """A dataset's column names and Arrow types (``names``, ``types``, ``base_schema``)."""

    def __init__(self, schema: pa.Schema) -> None:
        self.base_schema = schema

    @property
    def names(self) -> list[str]:
        return list(self.base_schema.names)

    @property
    def types(self) -> list[pa.DataType]:
        return list(self.base_schema.types)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.base_schema.equals(other.base_schema)

    def __repr__(self) -> str:
        width = max([len("Column"), *(len(n) for n in self.names)])
        lines = [f"{'Column':<{width}}  Type", f"{'------':<{width}}  ----"]
        lines += [f"{n:<{width}}  {t}" for n, t in zip(self.names, self.types, strict=True)]
        return "\n".join(lines)


def _remote_args(
    num_cpus: float | None, num_gpus: float | None, memory: float | None, extra: dict[str, Any]
) -> tuple[tuple[str, Any], ...]:
    args = dict(extra)
    for key, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus), ("memory", memory)):
        if value is not None:
            args[key] = value
    return tuple(sorted(args.items()))


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


class Dataset:
    """A lazy, distributed table of rows, cut into Arrow blocks."""

    def __init__(self, op: LogicalOp, ctx: DataContext | None = None) -> None:
        self._op = op
        self._ctx = ctx or DataContext.get_current()
        self._last_stats: list[Any] | None = None

    # ------------------------------------------------------------------ plumbing

    def _with(self, name: str, cls: type = MapOp, **fields: Any) -> Dataset:
        return Dataset(cls(name=name, inputs=(self._op,), **fields), self._ctx)

    def _map(
        self, name: str, stage: Stage, compute: Compute, remote_args: tuple[tuple[str, Any], ...]
    ) -> Dataset:
        return self._with(name, MapOp, stage=stage, compute=compute, remote_args=remote_args)

    def _barrier(self, name: str, fn: Any, *others: Dataset) -> Dataset:
        op = Barrier(name=name, inputs=(self._op, *(o._op for o in others)), fn=fn)
        return Dataset(op, self._ctx)

    def _execute(self) -> Iterator[RefBundle]:
        from rayjupyter.data.progress import progress_callback

        specs = optimize(self._op)
        callback = progress_callback(specs, self._ctx)
        executor = StreamingExecutor(specs, self._ctx, callback)
        try:
            yield from executor.iter_bundles()
        finally:
            self._last_stats = executor.stats()

    def _known_rows(self) -> int | None:
        return known_rows(self._op)

    # ------------------------------------------------------------------ row transforms

    def _udf_call(
        self,
        name: str,
        fn: Any,
        make: Callable[[UserFn], Stage],
        *,
        fn_args: Any = None,
        fn_kwargs: Any = None,
        fn_constructor_args: Any = None,
        fn_constructor_kwargs: Any = None,
        compute: Any = None,
        concurrency: Any = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        memory: float | None = None,
        **ray_remote_args: Any,
    ) -> Dataset:
        if compute is not None:
            raise ValueError("compute= is deprecated in Ray Data; use concurrency= instead.")
        is_class = isinstance(fn, type)
        if not is_class and (fn_constructor_args or fn_constructor_kwargs):
            raise ValueError("fn_constructor_args/kwargs are for callable classes only.")
        user_fn = UserFn(
            fn,
            tuple(fn_args or ()),
            dict(fn_kwargs or {}),
            tuple(fn_constructor_args or ()),
            dict(fn_constructor_kwargs or {}),
        )
        return self._map(
            f"{name}({_fn_name(fn)})",
            make(user_fn),
            Compute.from_concurrency(concurrency, is_class),
            _remote_args(num_cpus, num_gpus, memory, ray_remote_args),
        )

    def map(self, fn: Any, **kwargs: Any) -> Dataset:
        return self._udf_call("Map", fn, lambda f: MapRows("Map", f), **kwargs)

    def flat_map(self, fn: Any, **kwargs: Any) -> Dataset:
        return self._udf_call("FlatMap", fn, lambda f: FlatMap("FlatMap", f), **kwargs)

    def filter(self, fn: Any = None, *, expr: Any = None, **kwargs: Any) -> Dataset:
        if (fn is None) == (expr is None):
            raise ValueError("filter() takes exactly one of fn and expr.")
        if expr is not None:
            import pyarrow.compute as pc

            if not isinstance(expr, pc.Expression):
                raise TypeError(
                    "filter(expr=) takes a pyarrow.compute.Expression, e.g. pc.field('x') > 3."
                )
            return self._map(f"Filter({expr})", FilterRows("Filter", expr=expr), Compute(), ())
        return self._udf_call("Filter", fn, lambda f: FilterRows("Filter", f), **kwargs)

    def map_batches(
        self,
        fn: Any,
        *,
        batch_size: int | str | None = "default",
        batch_format: str | None = "default",
        zero_copy_batch: bool = False,
        **kwargs: Any,
    ) -> Dataset:
        size = 1024 if batch_size == "default" else batch_size
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ValueError(
                f"batch_size must be a positive int, None or 'default', got {batch_size!r}."
            )
        fmt = check_batch_format(batch_format)
        return self._udf_call(
            "MapBatches",
            fn,
            lambda f: MapBatches("MapBatches", f, size, fmt, zero_copy_batch),
            **kwargs,
        )

    def add_column(
        self,
        col: str,
        fn: Callable[[Any], Any],
        *,
        batch_format: str | None = "pandas",
        **kwargs: Any,
    ) -> Dataset:
        fmt = check_batch_format(batch_format)
        return self._udf_call(
            "AddColumn", fn, lambda f: AddColumn("AddColumn", col, f, fmt), **kwargs
        )

    def drop_columns(self, cols: list[str], **kwargs: Any) -> Dataset:
        return self._map(
            f"DropColumns({cols})", DropColumns("DropColumns", list(cols)), Compute(), ()
        )

    def select_columns(self, cols: list[str] | str, **kwargs: Any) -> Dataset:
        cols = [cols] if isinstance(cols, str) else list(cols)
        return self._map(f"Project({cols})", SelectColumns("Project", cols), Compute(), ())

    def rename_columns(self, names: dict[str, str] | list[str], **kwargs: Any) -> Dataset:
        if not isinstance(names, dict):
            current = self.columns() or []
            names = dict(zip(current, names, strict=True))
        return self._map(
            f"RenameColumns({names})", RenameColumns("Rename", dict(names)), Compute(), ()
        )

    # ------------------------------------------------------------------ whole-dataset ops

    def limit(self, limit: int) -> Dataset:
        return self._with(f"Limit[{limit}]", Limit, limit=limit)

    def repartition(self, num_blocks: int, *, shuffle: bool = False) -> Dataset:
        if shuffle:
            return self._barrier(
                f"Repartition[{num_blocks}, shuffle]", alltoall.random_shuffle(None, num_blocks)
            )
        return self._barrier(f"Repartition[{num_blocks}]", alltoall.repartition(num_blocks))

    def random_shuffle(self, *, seed: int | None = None, num_blocks: int | None = None) -> Dataset:
        return self._barrier("RandomShuffle", alltoall.random_shuffle(seed, num_blocks))

    def randomize_block_order(self, *, seed: int | None = None) -> Dataset:
        return self._barrier("RandomizeBlockOrder", alltoall.randomize_block_order(seed))

    def sort(self, key: str | list[str], descending: bool = False) -> Dataset:
        keys = [key] if isinstance(key, str) else list(key)
        return self._barrier(f"Sort[{keys}]", alltoall.sort(keys, descending))

    def groupby(self, key: str | list[str]) -> GroupedData:
        return GroupedData(self, [key] if isinstance(key, str) else list(key))

    def union(self, *other: Dataset) -> Dataset:
        return self._barrier("Union", alltoall.union, *other)

    def zip(self, other: Dataset) -> Dataset:
        return self._barrier("Zip", alltoall.zip_blocks, other)

    # ------------------------------------------------------------------ splits

    def _bundles(self) -> list[RefBundle]:
        return list(self._execute())

    def split(
        self, n: int, *, equal: bool = False, locality_hints: Any = None
    ) -> list[MaterializedDataset]:
        if n < 1:
            raise ValueError(f"split needs n >= 1, got {n}.")
        if locality_hints is not None:
            raise ValueError("locality_hints is not supported by rayjupyter.data; leave it out.")
        bundles = self._bundles()
        from rayjupyter.data.block import even_sizes

        if equal:
            total = sum(b.meta.num_rows for b in bundles)
            size = total // n
            parts = alltoall.split_rows(bundles, [size] * n)
        else:
            parts, start = [], 0
            for count in even_sizes(len(bundles), n):
                parts.append(bundles[start : start + count])
                start += count
        return [MaterializedDataset(p, self._ctx) for p in parts]

    def split_at_indices(self, indices: list[int]) -> list[MaterializedDataset]:
        if any(i < 0 for i in indices) or sorted(indices) != list(indices):
            raise ValueError(f"indices must be sorted and non-negative, got {indices}.")
        bundles = self._bundles()
        total = sum(b.meta.num_rows for b in bundles)
        cuts = [min(i, total) for i in indices] + [total]
        sizes = [b - a for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
        return [MaterializedDataset(p, self._ctx) for p in alltoall.split_rows(bundles, sizes)]

    def train_test_split(
        self, test_size: float | int, *, shuffle: bool = False, seed: int | None = None
    ) -> tuple[MaterializedDataset, MaterializedDataset]:
        ds = self.random_shuffle(seed=seed) if shuffle else self
        total = ds.count()
        if isinstance(test_size, float):
            if not 0 < test_size < 1:
                raise ValueError(f"A float test_size must be in (0, 1), got {test_size}.")
            test = int(total * test_size)
        else:
            if not 0 < test_size < total:
                raise ValueError(f"An int test_size must be in (0, {total}), got {test_size}.")
            test = test_size
        train_part, test_part = ds.split_at_indices([total - test])
        return train_part, test_part

    def streaming_split(
        self, n: int, *, equal: bool = False, locality_hints: Any = None
    ) -> list[DataIterator]:
        from rayjupyter.data.split import streaming_split

        if locality_hints is not None:
            raise ValueError("locality_hints is not supported by rayjupyter.data; leave it out.")
        return streaming_split(self, n, equal)

    # ------------------------------------------------------------------ consumption

    def iterator(self) -> DataIterator:
        return DataIterator(self._execute, self._repr_name())

    def iter_batches(self, **kwargs: Any) -> Iterator[Any]:
        return self.iterator().iter_batches(**kwargs)

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        return self.iterator().iter_rows()

    def iter_torch_batches(self, **kwargs: Any) -> Iterator[Any]:
        return self.iterator().iter_torch_batches(**kwargs)

    def take(self, limit: int = 20) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for row in self.limit(limit).iter_rows():
            rows.append(row)
        return rows

    def take_all(self, limit: int | None = None) -> list[dict[str, Any]]:
        rows = list(self.iter_rows())
        if limit is not None and len(rows) > limit:
            raise ValueError(f"The dataset has more than the given limit of {limit} rows.")
        return rows

    def take_batch(self, batch_size: int = 20, *, batch_format: str | None = "default") -> Any:
        fmt = check_batch_format(batch_format)
        for batch in self.limit(batch_size).iter_batches(
            batch_size=batch_size, batch_format="pyarrow"
        ):
            return batch_from_table(batch, fmt)
        raise ValueError("The dataset is empty.")

    def show(self, limit: int = 20) -> None:
        """Prints the first rows, as Ray does; in a Jupyter kernel, as an HTML table."""
        from rayjupyter.data.progress import _in_kernel

        rows = self.take(limit)
        if _in_kernel() and rows:
            from IPython.display import HTML, display

            from rayjupyter.data.display import table_html

            names = list(rows[0])
            body = [[row.get(n) for n in names] for row in rows]
            display(HTML(table_html(names, body, f"first {len(rows)} rows")))  # type: ignore[no-untyped-call]
            return
        for row in rows:
            print(row)

    def count(self) -> int:
        known = self._known_rows()
        if known is not None:
            return known
        return sum(b.meta.num_rows for b in self._execute())

    def schema(self) -> Schema | None:
        known = known_schema(self._op)
        if known is not None:
            return Schema(known)
        for bundle in self._execute():
            if bundle.meta.schema is not None and bundle.meta.schema.names:
                return Schema(bundle.meta.schema)
        return None

    def columns(self) -> list[str] | None:
        schema = self.schema()
        return None if schema is None else schema.names

    def aggregate(self, *aggs: AggregateFn) -> dict[str, Any]:
        accs = [agg.init(None) for agg in aggs]
        partial = rj.remote(_partial_aggregate)
        refs = [partial.remote(list(aggs), b.ref) for b in self._execute() if b.meta.num_rows]
        for part in rj.get(refs, timeout=600):
            accs = [agg.merge(a, p) for agg, a, p in zip(aggs, accs, part, strict=True)]
        return {agg.name: agg.finalize(a) for agg, a in zip(aggs, accs, strict=True)}

    def _column_agg(self, make: Callable[[str], AggregateFn], on: str | list[str]) -> Any:
        cols = [on] if isinstance(on, str) else list(on)
        result = self.aggregate(*[make(c) for c in cols])
        values = list(result.values())
        return values[0] if isinstance(on, str) else result

    def sum(self, on: str | list[str]) -> Any:
        return self._column_agg(Sum, on)

    def min(self, on: str | list[str]) -> Any:
        return self._column_agg(Min, on)

    def max(self, on: str | list[str]) -> Any:
        return self._column_agg(Max, on)

    def mean(self, on: str | list[str]) -> Any:
        return self._column_agg(Mean, on)

    def std(self, on: str | list[str], ddof: int = 1) -> Any:
        return self._column_agg(lambda c: Std(c, ddof=ddof), on)

    def unique(self, column: str) -> list[Any]:
        return [row[column] for row in self.groupby(column).count().take_all()]

    def materialize(self) -> MaterializedDataset:
        bundles = self._bundles()
        out = MaterializedDataset(bundles, self._ctx)
        out._last_stats = self._last_stats
        return out

    def stats(self) -> str:
        if self._last_stats is None:
            return "Dataset has not been executed yet: no stats."
        lines = []
        for s in self._last_stats:
            lines.append(
                f"Operator {s.name}: {s.tasks_done} tasks, {s.blocks_out} blocks, "
                f"{s.rows_out} rows, {s.bytes_out} bytes out; task time "
                f"{s.task_wall_s:.3f}s; peak queued {s.peak_queued_bytes} bytes"
                + (f"; {s.errored_blocks} errored blocks" if s.errored_blocks else "")
            )
        return "\n".join(lines)

    def to_pandas(self, limit: int | None = None) -> Any:
        import pandas as pd

        tables = [rj.get(b.ref, timeout=600) for b in self._execute()]
        rows = sum(t.num_rows for t in tables)
        if limit is not None and rows > limit:
            raise ValueError(f"The dataset has more than the given limit of {limit} rows.")
        tables = [t for t in tables if t.num_columns]
        if not tables:
            return pd.DataFrame()
        return batch_from_table(pa.concat_tables(tables), "pandas")

    def to_arrow_refs(self) -> list[Any]:
        return [b.ref for b in self._execute()]

    def to_pandas_refs(self) -> list[Any]:
        convert = rj.remote(_to_format)
        return [convert.remote("pandas", b.ref) for b in self._execute()]

    def to_numpy_refs(self, *, column: str | None = None) -> list[Any]:
        convert = rj.remote(_to_format)
        return [convert.remote("numpy", b.ref, column) for b in self._execute()]

    # ------------------------------------------------------------------ sinks

    def _write(self, name: str, writer: Any) -> None:
        from rayjupyter.data.stages import WriteBlocks

        block_bytes = self._ctx.target_max_block_size
        ds = self._map(name, WriteBlocks(name, writer, block_bytes), Compute(), ())
        for _ in ds._execute():
            pass
        self._last_stats = ds._last_stats

    def write_parquet(self, path: str, **arrow_parquet_args: Any) -> None:
        from rayjupyter.data import sinks

        self._write("Write[Parquet]", sinks.writer("parquet", path, arrow_parquet_args))

    def write_csv(self, path: str, **arrow_csv_args: Any) -> None:
        from rayjupyter.data import sinks

        self._write("Write[CSV]", sinks.writer("csv", path, arrow_csv_args))

    def write_json(self, path: str, **pandas_json_args: Any) -> None:
        from rayjupyter.data import sinks

        self._write("Write[JSON]", sinks.writer("json", path, pandas_json_args))

    def write_numpy(self, path: str, *, column: str) -> None:
        from rayjupyter.data import sinks

        self._write("Write[Numpy]", sinks.writer("numpy", path, {"column": column}))

    # ------------------------------------------------------------------ display

    def _repr_name(self) -> str:
        return chain_names(self._op)[-1]

    def _plan_lines(self) -> list[str]:
        return list(reversed(chain_names(self._op)))

    def __repr__(self) -> str:
        from rayjupyter.data.display import dataset_text

        return dataset_text(self)

    def _repr_html_(self) -> str:
        from rayjupyter.data.display import dataset_html

        return dataset_html(self)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_rows()

    def num_blocks(self) -> int:
        return len(self._bundles())


def _partial_aggregate(aggs: list[AggregateFn], table: pa.Table) -> list[Any]:
    return [agg.accumulate_block(agg.init(None), table) for agg in aggs]


def _to_format(fmt: str, table: pa.Table, column: str | None = None) -> Any:
    batch = batch_from_table(table, fmt)
    if column is not None:
        return batch[column]
    return batch


class MaterializedDataset(Dataset):
    """A dataset whose blocks exist in the store; its count and schema are known."""

    def __init__(self, bundles: list[RefBundle], ctx: DataContext | None = None) -> None:
        super().__init__(InputData(name="InputData", bundles=tuple(bundles)), ctx)
        self._materialized = bundles

    def num_blocks(self) -> int:
        return len(self._materialized)


class GroupedData:
    """``ds.groupby(key)``: aggregations per group, output sorted by key."""

    def __init__(self, ds: Dataset, keys: list[str]) -> None:
        self._ds = ds
        self._keys = keys

    def __repr__(self) -> str:
        return f"GroupedData(dataset={self._ds._repr_name()}, key={self._keys!r})"

    def aggregate(self, *aggs: AggregateFn) -> Dataset:
        return self._ds._barrier(
            f"Aggregate[{self._keys}]", alltoall.groupby(self._keys, list(aggs))
        )

    def count(self) -> Dataset:
        return self.aggregate(Count())

    def _each(self, make: Callable[[str], AggregateFn], on: str | list[str] | None) -> Dataset:
        if on is None:
            schema = self._ds.schema()
            on = [n for n in (schema.names if schema else []) if n not in self._keys]
        cols = [on] if isinstance(on, str) else list(on)
        return self.aggregate(*[make(c) for c in cols])

    def sum(self, on: str | list[str] | None = None) -> Dataset:
        return self._each(Sum, on)

    def min(self, on: str | list[str] | None = None) -> Dataset:
        return self._each(Min, on)

    def max(self, on: str | list[str] | None = None) -> Dataset:
        return self._each(Max, on)

    def mean(self, on: str | list[str] | None = None) -> Dataset:
        return self._each(Mean, on)

    def std(self, on: str | list[str] | None = None, ddof: int = 1) -> Dataset:
        return self._each(lambda c: Std(c, ddof=ddof), on)

    def map_groups(
        self, fn: Any, *, batch_format: str | None = "default", **kwargs: Any
    ) -> Dataset:
        if kwargs:
            raise ValueError(
                f"map_groups options {sorted(kwargs)} are not supported by "
                "rayjupyter.data; leave them out."
            )
        fmt = check_batch_format(batch_format)
        return self._ds._barrier(
            f"MapGroups({_fn_name(fn)})", alltoall.groupby(self._keys, fn=fn, batch_format=fmt)
        )
