"""``get_dataset_shard``'s data until ``rayjupyter.data`` lands: each worker gets a
contiguous share of every dataset (a numpy array, a list, or a dict of equal-length
columns) and iterates it in numpy batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def _length(data: Any) -> int:
    if isinstance(data, dict):
        lengths = {len(column) for column in data.values()}
        if len(lengths) != 1:
            raise ValueError("a dict dataset's columns must all have the same length")
        return lengths.pop()
    return len(data)


def _take(data: Any, start: int, stop: int) -> Any:
    if isinstance(data, dict):
        return {name: np.asarray(column)[start:stop] for name, column in data.items()}
    return np.asarray(data)[start:stop]


def split(data: Any, world_size: int) -> list[DataIterator]:
    """``world_size`` contiguous shares, sizes differing by at most one row."""
    if not isinstance(data, (dict, list, tuple, np.ndarray)):
        raise TypeError(
            "datasets values are numpy arrays, lists or dicts of columns "
            f"(rayjupyter.data is not there yet), got {type(data).__name__}"
        )
    bounds = np.linspace(0, _length(data), world_size + 1).astype(int)
    return [DataIterator(_take(data, bounds[i], bounds[i + 1])) for i in range(world_size)]


class DataIterator:
    """One worker's share: ``iter_batches`` yields numpy arrays (or dicts of them)."""

    def __init__(self, data: Any) -> None:
        self._data = data

    def count(self) -> int:
        return _length(self._data)

    def iter_batches(self, *, batch_size: int = 256, drop_last: bool = False) -> Iterator[Any]:
        total = self.count()
        for start in range(0, total, batch_size):
            if drop_last and start + batch_size > total:
                return
            yield _take(self._data, start, start + batch_size)

    def iter_torch_batches(
        self, *, batch_size: int = 256, drop_last: bool = False, device: Any = None
    ) -> Iterator[Any]:
        import torch

        for batch in self.iter_batches(batch_size=batch_size, drop_last=drop_last):
            if isinstance(batch, dict):
                yield {k: torch.as_tensor(v, device=device) for k, v in batch.items()}
            else:
                yield torch.as_tensor(batch, device=device)

    def __iter__(self) -> Iterator[Any]:
        return self.iter_batches()
