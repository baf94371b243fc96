"""Stages: the per-block work of a map operator, and the fused chain a task runs.

A stage turns a stream of tables into a stream of tables. Fusion (see ``plan.py``) chains
stages so a read followed by maps is one task. These objects are pickled into tasks and
actors; they hold the user's function, never a handle to the driver.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from rayjupyter.data.block import (
    BlockMetadata,
    batch_from_table,
    check_batch_format,
    compact,
    concat,
    metadata_of,
    rebatch,
    rows_of,
    split_table,
    table_from_batch,
    table_from_rows,
)
from rayjupyter.data.packing import Packer, packable

# callable-class instances made once per actor of an actor pool, by stage key
_UDF_INSTANCES: dict[str, Any] = {}


@dataclass
class Stage:
    """Base: ``apply`` maps a stream of tables; ``name`` shows in plans and progress."""

    name: str

    def apply(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        raise NotImplementedError


@dataclass
class UserFn:
    """A user's function or callable class, with its arguments."""

    fn: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    constructor_args: tuple[Any, ...] = ()
    constructor_kwargs: dict[str, Any] = field(default_factory=dict)
    key: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def is_class(self) -> bool:
        return isinstance(self.fn, type)

    def resolve(self) -> Callable[..., Any]:
        if not self.is_class:
            fn: Callable[..., Any] = self.fn
            return fn
        instance = _UDF_INSTANCES.get(self.key)
        if instance is None:  # outside an actor pool (tests of stages): make it here
            instance = self.construct()
        return instance  # type: ignore[no-any-return]

    def construct(self) -> Any:
        instance = self.fn(*self.constructor_args, **self.constructor_kwargs)
        _UDF_INSTANCES[self.key] = instance
        return instance

    def __call__(self, value: Any) -> Any:
        return self.resolve()(value, *self.args, **self.kwargs)


@dataclass
class MapRows(Stage):
    fn: UserFn

    def apply(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        for table in tables:
            out = [self.fn(row) for row in rows_of(table)]
            for row in out:
                if not isinstance(row, dict):
                    raise TypeError(
                        f"map() functions must return a dict per row, got {type(row).__name__}."
                    )
            yield table_from_rows(out)


@dataclass
class FlatMap(Stage):
    fn: UserFn

    def apply(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        for table in tables:
            out: list[Any] = []
            for row in rows_of(table):
                out.extend(self.fn(row))
            if out:
                yield table_from_rows(out)


@dataclass
class FilterRows(Stage):
    fn: UserFn | None = None
    expr: Any = None  # a pyarrow.compute.Expression, evaluated on whole blocks

    def apply(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        for table in tables:
            if self.expr is not None:
                yield table.filter(self.expr)
                continue
            assert self.fn is not None
            mask = [bool(self.fn(row)) for row in rows_of(table)]
            yield table.filter(pa.array(mask, pa.bool_())) if table.num_rows else table


@dataclass
class MapBatches(Stage):
    fn: UserFn
    batch_size: int | None = 1024
    batch_format: str = "default"
    zero_copy_batch: bool = False

    def apply(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        fmt = check_batch_format(self.batch_format)
        for batch in rebatch(tables, self.batch_size):
            result = self.fn(batch_from_table(batch, fmt))
            if result is None:
                raise TypeError("A map_batches function returned None; return the batch.")
            if _is_generator(result):
                for item in result:
                    yield table_from_batch(item)
            else:
                yield table_from_batch(result)
            del batch, result  # neither is held while the next batch is made


def _is_generator(value: Any) -> bool:
    return isinstance(value, Iterator) and not isinstance(value, dict | pa.Table)


@dataclass
class AddColumn(Stage):
    column: str
    fn: UserFn
    batch_format: str = "pandas"

    def apply(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        from rayjupyter.data.block import array_from_values

        for table in tables:
            values = array_from_values(self.fn(batch_from_table(table, self.batch_format)))
            if self.column in table.column_names:
                table = table.drop_columns([self.column])
            yield table.append_column(self.column, values)


@dataclass
class SelectColumns(Stage):
    columns: list[str]

    def apply(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        for table in tables:
            yield table.select(self.columns)


@dataclass
class DropColumns(Stage):
    columns: list[str]

    def apply(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        for table in tables:
            missing = [c for c in self.columns if c not in table.column_names]
            if missing:
                raise KeyError(f"drop_columns: no column(s) {missing} in {table.column_names}.")
            yield table.drop_columns(self.columns)


@dataclass
class RenameColumns(Stage):
    mapping: dict[str, str]

    def apply(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        for table in tables:
            yield table.rename_columns([self.mapping.get(n, n) for n in table.column_names])


@dataclass
class WriteBlocks(Stage):
    """A sink: writes each block with ``writer(table, index)``, yields a one-row summary.

    What reaches it is joined into blocks of up to ``target_bytes`` first: fused behind a
    map_batches, it sees one small table per batch, and a file per batch (1,024 rows) made
    a 2 GB write 122,000 files and slower than Ray Data, which writes a file per block."""

    writer: Callable[[pa.Table, str], str]
    target_bytes: int = 128 * 1024 * 1024

    def apply(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        for i, table in enumerate(coalesce(tables, self.target_bytes)):
            if table.num_rows == 0:
                continue
            path = self.writer(table, f"{uuid.uuid4().hex[:12]}_{i:06d}")
            yield pa.table({"path": [path], "num_rows": [table.num_rows]})


# --------------------------------------------------------------------------- the task body


def coalesce(
    tables: Iterable[pa.Table], target: int, *, blocks: bool = False
) -> Iterator[pa.Table]:
    """Small outputs (a map_batches batch each) joined into blocks of up to ``target`` bytes,
    so a task makes few blocks, not one per batch; an all-empty output keeps its schema.

    With ``blocks`` (a task's output for the store) each block is one contiguous chunk per
    column of at most ``target`` bytes: fixed-width rows are copied into it as they come
    (``packing.Packer``), other tables are joined, cut and compacted (``block.compact``);
    either way a worker holds one block's bytes, not the pieces and their copy too."""
    pending: list[pa.Table] = []
    held = 0
    empty: pa.Table | None = None
    emitted = False
    packer: Packer | None = None
    for table in tables:
        if table.num_rows == 0:
            empty = table
            continue
        if blocks and not pending and table.nbytes < target:
            if packer is None and packable(table):
                packer = Packer(table.schema, target)
            if packer is not None and packer.accepts(table):
                emitted = True
                yield from packer.add(table)
                del table
                continue
        if packer is not None:  # another kind of table: the rows packed so far go first
            yield from _drain(packer)
            packer = None
        pending.append(table)
        del table
        held += int(pending[-1].nbytes)
        if held >= target:
            ready = _joined(pending, target, blocks)
            held, emitted = 0, True
            while ready:
                yield ready.pop(0)
    if packer is not None:
        yield from _drain(packer)
    if pending:
        ready = _joined(pending, target, blocks)
        while ready:
            yield ready.pop(0)
    elif not emitted and empty is not None:
        yield empty


def _drain(packer: Packer) -> Iterator[pa.Table]:
    last = packer.flush()
    if last is not None:
        yield last


def _joined(pending: list[pa.Table], target: int, blocks: bool) -> list[pa.Table]:
    """pending as one table (or, with ``blocks``, as compact pieces); empties pending."""
    table = concat(pending)
    pending.clear()
    if not blocks:
        return [table]
    return [compact(piece) for piece in split_table(table, target)]


def run_chain(
    source: Callable[[], Iterable[pa.Table]] | None,
    stages: list[Stage],
    blocks: tuple[pa.Table, ...],
    target_max_block_size: int,
) -> Iterator[Any]:
    """The body of every map task: yields block, metadata, block, metadata, ...

    A user error does not kill the stream: it ends it with an empty block whose metadata
    carries the exception, so the driver can honour ``max_errored_blocks``.
    """
    start = time.perf_counter()
    try:
        stream: Iterator[pa.Table] = iter(source()) if source is not None else iter(blocks)
        for stage in stages:
            stream = stage.apply(stream)
        for piece in coalesce(stream, target_max_block_size, blocks=True):
            now = time.perf_counter()
            yield piece
            yield metadata_of(piece, now - start)
            del piece  # sent: not held while the next block is made
            start = time.perf_counter()
    except Exception as exc:
        tb = traceback.format_exc()
        try:
            import cloudpickle

            cloudpickle.dumps(exc)
            err: BaseException = exc
        except Exception:
            err = RuntimeError(f"{type(exc).__name__}: {exc}")
        yield pa.table({})
        yield BlockMetadata(0, 0, None, time.perf_counter() - start, err, tb)


def construct_udfs(stages: list[Stage]) -> None:
    """An actor pool's actor: make each callable class once, at start."""
    for stage in stages:
        fn = getattr(stage, "fn", None)
        if isinstance(fn, UserFn) and fn.is_class:
            fn.construct()
