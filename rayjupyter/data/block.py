"""Blocks: Arrow tables, the unit every operator moves, and the batch formats users see.

A block is a ``pyarrow.Table``. It travels through the shared-memory store as Arrow buffers
(pickle protocol 5, out of band), so the next operator on the same node reads it without a
copy. Everything here is pure: conversions between tables, rows and user batches, block
metadata, and the block-splitting decision, all tested without processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

BATCH_FORMATS = ("default", "numpy", "pandas", "pyarrow")


@dataclass(frozen=True)
class BlockMetadata:
    """What the driver knows about a block without reading it (it stays in the store)."""

    num_rows: int
    size_bytes: int
    schema: pa.Schema | None
    wall_s: float = 0.0  # time the producing task spent on this block
    error: BaseException | None = None  # a user function raised; the block is empty
    error_traceback: str = ""


@dataclass
class RefBundle:
    """One block's ref plus its metadata: what flows between physical operators."""

    ref: Any  # ObjectRef of a pyarrow.Table
    meta: BlockMetadata
    seq: tuple[int, ...] = field(default=(0,))  # order key, so output follows input order
    owner: int = -1  # the physical operator whose store budget it counts against


def metadata_of(table: pa.Table, wall_s: float = 0.0) -> BlockMetadata:
    return BlockMetadata(table.num_rows, int(table.nbytes), table.schema, wall_s)


def check_batch_format(batch_format: str | None) -> str:
    fmt = "default" if batch_format is None else batch_format
    if fmt not in BATCH_FORMATS:
        raise ValueError(
            f"batch_format must be one of {', '.join(map(repr, BATCH_FORMATS))}, got {fmt!r}."
        )
    return fmt


# --------------------------------------------------------------------------- columns


def _is_tensor_type(type_: pa.DataType) -> bool:
    return isinstance(type_, pa.FixedShapeTensorType)


def column_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """One column as numpy: tensors keep their shape, lists become object arrays."""
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 1:
            column = column.chunk(0)
        else:
            column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    if _is_tensor_type(column.type):
        if len(column) == 0:
            shape = tuple(column.type.shape)
            return np.empty((0, *shape), dtype=column.type.value_type.to_pandas_dtype())
        tensor: np.ndarray = column.to_numpy_ndarray()
        return tensor
    if pa.types.is_list(column.type) or pa.types.is_struct(column.type):
        values = column.to_pylist()
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    plain: np.ndarray = column.to_numpy(zero_copy_only=False)
    return plain


def array_from_values(values: Any) -> pa.Array:
    """A user's column (numpy, list, pandas Series, Arrow) as an Arrow array."""
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):  # pandas Series
        values = values.to_numpy()
    if isinstance(values, np.ndarray):
        if values.ndim > 1:
            array = np.ascontiguousarray(values)
            if array.shape[0] <= 1:  # a length-1 axis may carry any stride: make it plain
                array = array.copy()
            return pa.FixedShapeTensorArray.from_numpy_ndarray(array)
        if values.dtype == object and len(values) and isinstance(values[0], np.ndarray):
            return array_from_values(np.stack(list(values)))
        return pa.array(values)
    values = list(values)
    if values and isinstance(values[0], np.ndarray):
        return array_from_values(np.stack(values))
    return pa.array(values)


# --------------------------------------------------------------------------- batches


def table_from_batch(batch: Any) -> pa.Table:
    """What a user function returned (dict of columns, DataFrame, Table) as a block."""
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    if isinstance(batch, Mapping):
        columns = {str(name): array_from_values(values) for name, values in batch.items()}
        lengths = {len(col) for col in columns.values()}
        if len(lengths) > 1:
            raise ValueError(
                f"A batch's columns must have one length, got lengths {sorted(lengths)} "
                f"for columns {list(columns)}."
            )
        return pa.table(columns)
    if type(batch).__name__ == "DataFrame":
        table = pa.Table.from_pandas(batch, preserve_index=False)
        return table.replace_schema_metadata(None)
    raise TypeError(
        "A map_batches function must return a dict of columns (numpy arrays or lists), a "
        f"pandas.DataFrame or a pyarrow.Table, got {type(batch).__name__}."
    )


def batch_from_table(table: pa.Table, batch_format: str) -> Any:
    """A block in the format a user asked for."""
    fmt = check_batch_format(batch_format)
    if fmt == "pyarrow":
        return table
    if fmt == "pandas":
        if any(_is_tensor_type(f.type) for f in table.schema):
            import pandas as pd

            return pd.DataFrame(
                {name: list(column_to_numpy(table.column(name))) for name in table.column_names}
            )
        return table.to_pandas()
    return {name: column_to_numpy(table.column(name)) for name in table.column_names}


# --------------------------------------------------------------------------- rows


def rows_of(table: pa.Table) -> Iterator[dict[str, Any]]:
    """A block's rows as dicts; tensor columns give numpy arrays, as in Ray Data."""
    tensors = [f.name for f in table.schema if _is_tensor_type(f.type)]
    if not tensors:
        yield from table.to_pylist()
        return
    arrays = {name: column_to_numpy(table.column(name)) for name in tensors}
    plain = table.drop_columns(tensors).to_pylist() if table.num_columns > len(tensors) else None
    for i in range(table.num_rows):
        row = dict(plain[i]) if plain is not None else {}
        for name in tensors:
            row[name] = arrays[name][i]
        yield {name: row[name] for name in table.column_names}


def table_from_rows(rows: Iterable[Any]) -> pa.Table:
    """Rows (dicts) as a block; a non-dict row becomes the ``item`` column, as in Ray."""
    rows = list(rows)
    if not rows:
        return pa.table({})
    if not isinstance(rows[0], Mapping):
        return pa.table({"item": array_from_values(rows)})
    names: list[str] = []
    for row in rows:
        if not isinstance(row, Mapping):
            raise TypeError(f"Every row must be a dict, got {type(row).__name__}: {row!r}.")
        for name in row:
            if name not in names:
                names.append(name)
    return pa.table({name: array_from_values([row.get(name) for row in rows]) for name in names})


# --------------------------------------------------------------------------- tables


def concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_columns or t.num_rows]
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="default")


def compact(table: pa.Table) -> pa.Table:
    """The table with each column in one chunk of its own buffers (copied only if needed).

    A block goes to the store as its buffers, whole: a slice of a larger table would carry
    its parent's buffers along (a 100-row slice of an 80 MB table pickles 80 MB), and a
    block of many chunks (a map_batches output joined from its batches) makes the reader
    copy it into one array for ``batch_size=None``; one contiguous copy here spares both."""
    if table.num_columns == 0:
        return table
    chunked = any(column.num_chunks > 1 for column in table.columns)
    slack = table.nbytes // 8 + 65536
    if not chunked and table.get_total_buffer_size() <= table.nbytes + slack:
        return table
    try:
        columns = [pa.concat_arrays(c.chunks) if c.num_chunks else c for c in table.columns]
        return pa.Table.from_arrays(columns, schema=table.schema)
    except pa.ArrowException:  # a type Arrow cannot join (or too large): as it was
        return table


def split_sizes(num_rows: int, size_bytes: int, target_max_block_size: int) -> list[int]:
    """How many rows each piece of a too-large block gets (one piece if it fits)."""
    if num_rows <= 1 or size_bytes <= target_max_block_size:
        return [num_rows]
    pieces = min(num_rows, math.ceil(size_bytes / target_max_block_size))
    base, extra = divmod(num_rows, pieces)
    return [base + (1 if i < extra else 0) for i in range(pieces)]


def split_table(table: pa.Table, target_max_block_size: int) -> list[pa.Table]:
    sizes = split_sizes(table.num_rows, int(table.nbytes), target_max_block_size)
    out, start = [], 0
    for size in sizes:
        out.append(table.slice(start, size))
        start += size
    return out


def even_sizes(total: int, parts: int) -> list[int]:
    """``total`` rows into ``parts`` pieces differing by at most one row, bigger first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def rebatch(tables: Iterable[pa.Table], batch_size: int | None) -> Iterator[pa.Table]:
    """Re-cut a stream of tables into batches of exactly ``batch_size`` rows (the last may
    be short); ``None`` passes each non-empty table through whole."""
    if batch_size is None:
        for table in tables:
            if table.num_rows:
                yield table
            del table  # not held (nor its mapping) while the next one is fetched
        return
    pending: list[pa.Table] = []
    held = 0
    for table in tables:
        while table.num_rows:
            take = min(batch_size - held, table.num_rows)
            pending.append(table.slice(0, take))
            held += take
            table = table.slice(take)
            if held == batch_size:
                yield concat(pending)
                pending, held = [], 0
        del table  # an empty slice still holds its block: not while the next is made
    if held:
        yield concat(pending)
