"""``streaming_split``: n iterators fed by one execution, for n training workers.

A coordinator actor runs the dataset's streaming executor and hands each block to the
split that asks next (``equal=True``: the rows are cut evenly once the run is complete).
Each pass over the iterators is one epoch; a new epoch starts when every split has
finished the previous one. The iterators pickle, so they can go to other tasks/actors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import rayjupyter as rj
from rayjupyter.data.block import RefBundle
from rayjupyter.data.iterator import DataIterator


class _Coordinator:
    def __init__(self, ds: Any, n: int, equal: bool) -> None:
        self.ds = ds
        self.n = n
        self.equal = equal
        self.epoch = -1
        self.finished: set[int] = set()
        self.stream: Iterator[RefBundle] | None = None
        self.queues: list[list[RefBundle]] = []

    def _start(self) -> None:
        self.epoch += 1
        self.finished = set()
        if self.equal:
            from rayjupyter.data import alltoall

            bundles = list(self.ds._execute())
            size = sum(b.meta.num_rows for b in bundles) // self.n
            self.queues = alltoall.split_rows(bundles, [size] * self.n)
            self.stream = None
        else:
            self.stream = self.ds._execute()

    def next_block(self, split: int, epoch: int) -> Any:
        """("block", ref) | ("wait", None) until others finish the epoch | ("end", None)."""
        if epoch > self.epoch:
            if self.epoch >= 0 and len(self.finished) < self.n:
                return ("wait", None)
            self._start()
        if self.equal:
            queue = self.queues[split]
            if queue:
                return ("block", queue.pop(0).ref)
        elif self.stream is not None:
            bundle = next(self.stream, None)
            if bundle is not None:
                return ("block", bundle.ref)
            self.stream = None
        self.finished.add(split)
        return ("end", None)


class _SplitSource:
    """Picklable: pulls one split's blocks from the coordinator, one epoch per pass."""

    def __init__(self, coordinator: Any, split: int) -> None:
        self.coordinator = coordinator
        self.split = split
        self.epoch = 0

    def __call__(self) -> Iterator[RefBundle]:
        import time

        from rayjupyter.data.block import BlockMetadata

        epoch = self.epoch
        self.epoch += 1
        delay = 0.01
        while True:
            kind, ref = rj.get(self.coordinator.next_block.remote(self.split, epoch), timeout=600)
            if kind == "end":
                return
            if kind == "wait":
                time.sleep(delay)  # another split is still on the previous epoch
                delay = min(delay * 2, 0.5)
                continue
            yield RefBundle(ref, BlockMetadata(0, 0, None))


def streaming_split(ds: Any, n: int, equal: bool) -> list[DataIterator]:
    if n < 1:
        raise ValueError(f"streaming_split needs n >= 1, got {n}.")
    coordinator = rj.remote(_Coordinator).options(num_cpus=0).remote(ds, n, equal)
    return [DataIterator(_SplitSource(coordinator, i), f"split {i}/{n}") for i in range(n)]
