"""Consumption: ``DataIterator`` (iter_batches, iter_rows, iter_torch_batches).

Batches are cut from the stream of output blocks as they arrive; a block is read zero-copy
from the shared store (``rj.get`` of an Arrow table maps its buffers), and the executor
keeps ``prefetch_batches`` blocks finished ahead of the one being read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

import rayjupyter as rj
from rayjupyter.data.block import (
    RefBundle,
    batch_from_table,
    check_batch_format,
    concat,
    rebatch,
    rows_of,
)


def _tables(bundles: Iterator[RefBundle], prefetch: int) -> Iterator[pa.Table]:
    """Each block's table; ``prefetch`` more bundles are pulled (their tasks finished)
    before the current one is handed over."""
    ahead: deque[RefBundle] = deque()
    for bundle in bundles:
        ahead.append(bundle)
        if len(ahead) > prefetch:
            yield rj.get(ahead.popleft().ref, timeout=600)
    while ahead:
        yield rj.get(ahead.popleft().ref, timeout=600)


def _local_shuffle(
    tables: Iterator[pa.Table], buffer_size: int, batch_size: int, seed: int | None
) -> Iterator[pa.Table]:
    """Rows drawn at random from a buffer kept at least ``buffer_size`` rows full."""
    rng = np.random.default_rng(seed)
    buffer = pa.table({})
    for table in tables:
        buffer = concat([buffer, table])
        while buffer.num_rows >= buffer_size + batch_size:
            picks = rng.choice(buffer.num_rows, batch_size, replace=False)
            keep = np.ones(buffer.num_rows, dtype=bool)
            keep[picks] = False
            yield buffer.take(pa.array(picks))
            buffer = buffer.filter(pa.array(keep))
    if buffer.num_rows:
        yield buffer.take(pa.array(rng.permutation(buffer.num_rows)))


class DataIterator:
    """An iterable view of a dataset's blocks; each ``iter_*`` call is one pass."""

    def __init__(self, bundles: Callable[[], Iterator[RefBundle]], name: str = "Dataset") -> None:
        self._bundles = bundles
        self._name = name

    def __repr__(self) -> str:
        return f"DataIterator({self._name})"

    def iter_batches(
        self,
        *,
        prefetch_batches: int = 1,
        batch_size: int | None = 256,
        batch_format: str | None = "default",
        drop_last: bool = False,
        local_shuffle_buffer_size: int | None = None,
        local_shuffle_seed: int | None = None,
    ) -> Iterator[Any]:
        fmt = check_batch_format(batch_format)
        if prefetch_batches < 0:
            raise ValueError(f"prefetch_batches must be >= 0, got {prefetch_batches}.")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size}.")
        tables = _tables(self._bundles(), prefetch_batches)
        if local_shuffle_buffer_size is not None:
            if batch_size is None:
                raise ValueError("local_shuffle_buffer_size needs a batch_size.")
            tables = _local_shuffle(
                tables, local_shuffle_buffer_size, batch_size, local_shuffle_seed
            )
        for batch in rebatch(tables, batch_size):
            if drop_last and batch_size is not None and batch.num_rows < batch_size:
                return
            yield batch_from_table(batch, fmt)
            del batch  # its block's mapping is not held while the next one is fetched

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        for table in _tables(self._bundles(), 1):
            yield from rows_of(table)

    def iter_torch_batches(
        self,
        *,
        prefetch_batches: int = 1,
        batch_size: int | None = 256,
        dtypes: Any = None,
        device: str = "auto",
        drop_last: bool = False,
        local_shuffle_buffer_size: int | None = None,
        local_shuffle_seed: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        try:
            import torch
        except ImportError as exc:
            raise ImportError("iter_torch_batches needs torch: pip install torch.") from exc
        dev = None if device == "auto" else torch.device(device)
        for batch in self.iter_batches(
            prefetch_batches=prefetch_batches,
            batch_size=batch_size,
            batch_format="numpy",
            drop_last=drop_last,
            local_shuffle_buffer_size=local_shuffle_buffer_size,
            local_shuffle_seed=local_shuffle_seed,
        ):
            out = {}
            for name, values in batch.items():
                dtype = dtypes.get(name) if isinstance(dtypes, dict) else dtypes
                if isinstance(values, np.ndarray) and not values.flags.writeable:
                    values = values.copy()  # read-only shared memory: torch wants to own it
                out[name] = torch.as_tensor(values, dtype=dtype, device=dev)
            yield out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_rows()
