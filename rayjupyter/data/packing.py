"""Packing a task's small outputs into blocks as they come, one copy, no second block.

A map_batches task makes one small table per batch and sends blocks of up to
``target_max_block_size``. Joining the batches when a block is full holds them all and
then their contiguous copy, two blocks' bytes at once in every worker; a ``Packer`` copies
each batch into the block being filled as it arrives and lets the batch go, so a worker
holds one block. Only fixed-width columns without nulls (numbers, fixed-shape tensors) are
packed; other tables are joined as before (``stages.coalesce``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from rayjupyter.data.block import column_to_numpy


def _packable_type(type_: pa.DataType) -> bool:
    if pa.types.is_integer(type_) or pa.types.is_floating(type_):
        return True
    if isinstance(type_, pa.FixedShapeTensorType):  # the plain layout from_numpy_ndarray makes
        plain = pa.fixed_shape_tensor(type_.value_type, type_.shape)
        return bool(type_ == plain) and _packable_type(type_.value_type)
    return False


def packable(table: pa.Table) -> bool:
    """Whether every column is fixed-width, without nulls, so rows copy as numpy slices."""
    return table.num_columns > 0 and all(
        _packable_type(column.type) and column.null_count == 0 for column in table.columns
    )


class Packer:
    """Fills preallocated columns of ``capacity`` rows (``target`` bytes) with the rows of
    tables of one schema; ``add`` yields each block that fills, ``flush`` the last one."""

    def __init__(self, schema: pa.Schema, target: int) -> None:
        self.schema = schema
        self.layouts: list[tuple[np.dtype, tuple[int, ...]]] = []
        for field in schema:
            type_ = field.type
            if isinstance(type_, pa.FixedShapeTensorType):
                self.layouts.append(
                    (np.dtype(type_.value_type.to_pandas_dtype()), tuple(type_.shape))
                )
            else:
                self.layouts.append((np.dtype(type_.to_pandas_dtype()), ()))
        row_bytes = sum(dtype.itemsize * int(np.prod(shape)) for dtype, shape in self.layouts)
        self.capacity = max(1, target // max(1, row_bytes))
        self.columns: list[np.ndarray] | None = None
        self.filled = 0

    def accepts(self, table: pa.Table) -> bool:
        return table.schema.equals(self.schema) and packable(table)

    def add(self, table: pa.Table) -> Iterator[pa.Table]:
        sources = [column_to_numpy(column) for column in table.columns]
        start = 0
        while start < table.num_rows:
            if self.columns is None:  # pages of np.empty are only taken as rows are copied
                self.columns = [np.empty((self.capacity, *s), d) for d, s in self.layouts]
            take = min(self.capacity - self.filled, table.num_rows - start)
            for column, values in zip(self.columns, sources, strict=True):
                column[self.filled : self.filled + take] = values[start : start + take]
            self.filled += take
            start += take
            if self.filled == self.capacity:
                yield self._take()

    def flush(self) -> pa.Table | None:
        return self._take() if self.filled else None

    def _take(self) -> pa.Table:
        assert self.columns is not None
        arrays: list[pa.Array] = []
        for column, field in zip(self.columns, self.schema, strict=True):
            rows = column[: self.filled]
            if isinstance(field.type, pa.FixedShapeTensorType):
                arrays.append(pa.FixedShapeTensorArray.from_numpy_ndarray(rows))
            else:
                arrays.append(pa.array(rows, type=field.type))
        self.columns, self.filled = None, 0
        return pa.Table.from_arrays(arrays, schema=self.schema)
