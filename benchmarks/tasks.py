"""The functions every backend runs as tasks; nothing heavy is imported, so workers load it fast."""

from __future__ import annotations

import os
import time
from typing import Any


def noop() -> None:
    """Do nothing, so a timing measures only the runtime's own overhead."""


def sleep_pid(seconds: float) -> int:
    """Hold a worker for ``seconds`` and name it, so concurrent calls prove every worker is live."""
    time.sleep(seconds)
    return os.getpid()


def add_one(value: int) -> int:
    """One link of the dependency chain: all cost is the runtime's hand-off of the result."""
    return value + 1


def array_sum(arr: Any) -> float:
    """Sum an array the runtime passed by reference: the read is the cost, not a copy."""
    return float(arr.sum())


def hold_then_sum(seconds: float, arr: Any) -> float:
    """Hold a worker, then sum: one per worker at once makes each load what arrays need (numpy)."""
    time.sleep(seconds)
    return float(arr.sum())


def shared_array_sum(name: str, shape: tuple[int, ...], dtype: str) -> float:
    """Attach to a ``multiprocessing.shared_memory`` segment by name and sum it: mp's "ref"."""
    from multiprocessing import shared_memory

    import numpy as np

    segment = shared_memory.SharedMemory(name=name)
    try:
        view: Any = np.ndarray(shape, dtype=dtype, buffer=segment.buf)
        total = float(view.sum())
        del view  # a live view would stop the segment from closing
    finally:
        segment.close()
    return total


def sum_primes(limit: int) -> int:
    """Sum of the primes below ``limit`` by a sieve of Eratosthenes: the seeds' CPU-bound task."""
    if limit < 3:
        return 0
    is_prime = bytearray([1]) * limit
    is_prime[0] = is_prime[1] = 0
    for n in range(2, int(limit**0.5) + 1):
        if is_prime[n]:
            first = n * n
            is_prime[first::n] = bytes(len(range(first, limit, n)))
    return sum(n for n, flag in enumerate(is_prime) if flag)


class Counter:
    """The actor every backend creates: state that only its own calls change, in its process."""

    def __init__(self) -> None:
        self.count = 0

    def incr(self) -> int:
        """Count one call and return the count, so lost or repeated calls show in the results."""
        self.count += 1
        return self.count


_REMOTE_TREES: dict[str, Any] = {}  # api module name -> the remote ``tree``, made once per worker


def tree(api_name: str, depth: int) -> int:
    """A node of a binary tree of nested tasks: start both children, wait on them (holding
    this worker), and count the tasks below and this one. ``api_name`` is "ray" or
    "rayjupyter": the same function runs on both."""
    if depth <= 1:
        return 1
    import importlib

    api = importlib.import_module(api_name)
    remote_tree = _REMOTE_TREES.get(api_name)
    if remote_tree is None:
        remote_tree = _REMOTE_TREES[api_name] = api.remote(tree)
    children = [remote_tree.remote(api_name, depth - 1) for _ in range(2)]
    return 1 + sum(api.get(children))
