"""The workloads: functions of a backend returning flat metrics, the same code for every runtime."""

from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from benchmarks import procs
from benchmarks.backends import Backend, helper_pids

Metrics = dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; ``QUICK`` exists so a smoke run takes seconds, not minutes."""

    sync_calls: int  # timed synchronous round trips
    sync_warmup: int  # untimed round trips before them
    async_tasks: int  # no-op tasks submitted before getting any
    array_bytes: int  # size of the put/get array
    put_get_rounds: int  # put/get repeats in one run; the median is reported

    def as_dict(self) -> dict[str, int]:
        """Plain dict for the JSON record."""
        return asdict(self)


FULL = Sizes(1000, sync_warmup=100, async_tasks=10_000, array_bytes=10**9, put_get_rounds=3)
QUICK = Sizes(200, sync_warmup=20, async_tasks=200, array_bytes=10**8, put_get_rounds=3)
TINY = Sizes(20, sync_warmup=5, async_tasks=20, array_bytes=10**6, put_get_rounds=1)

SETTLE_INTERVAL_S = 0.25  # between memory samples while a fresh tree may still be growing
SETTLE_LIMIT_S = 5.0  # stop waiting for the tree to settle and measure anyway
SHUTDOWN_LIMIT_S = 30.0  # processes alive this long after shutdown count as leftovers


def time_import(backend: Backend) -> Metrics:
    """Seconds to import the library, the part of start-up a process pays only once."""
    if backend.in_stdlib:
        backend.load()
        return {"import_s": None}
    t0 = time.perf_counter()
    backend.load()
    return {"import_s": time.perf_counter() - t0}


def time_startup(backend: Backend, num_cpus: int) -> Metrics:
    """Seconds from ``start`` to the first task result: the wait before anything works."""
    t0 = time.perf_counter()
    backend.start(num_cpus)
    t1 = time.perf_counter()
    backend.noop_sync()
    t2 = time.perf_counter()
    return {"init_s": t1 - t0, "first_result_s": t2 - t0}


def idle_memory(backend: Backend) -> Metrics:
    """RSS and PSS summed over the process tree, once every worker is live and the tree settled."""
    live_workers = backend.warm_workers()
    rss, pss, count, settle_s = _settled_tree_memory(backend)
    return {
        "idle_rss_mb": rss / 1e6,
        "idle_pss_mb": pss / 1e6,
        "idle_processes": count,
        "idle_live_workers": live_workers,
        "idle_settle_s": settle_s,
    }


def sync_latency(backend: Backend, sizes: Sizes) -> Metrics:
    """Median and p99 of one-at-a-time no-op round trips, after a warm-up that fills caches."""
    for _ in range(sizes.sync_warmup):
        backend.noop_sync()
    samples_ns = []
    for _ in range(sizes.sync_calls):
        t0 = time.perf_counter_ns()
        backend.noop_sync()
        samples_ns.append(time.perf_counter_ns() - t0)
    samples_us = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return {
        "sync_median_us": float(np.median(samples_us)),
        "sync_p99_us": float(np.percentile(samples_us, 99)),
        "sync_calls": sizes.sync_calls,
    }


def async_throughput(backend: Backend, sizes: Sizes) -> Metrics:
    """Tasks per second when all are submitted before any is awaited: a parallel map."""
    t0 = time.perf_counter()
    handles = backend.submit_many(sizes.async_tasks)
    t1 = time.perf_counter()
    results = backend.get_all(handles)
    t2 = time.perf_counter()
    if len(results) != sizes.async_tasks:
        raise RuntimeError(f"got {len(results)} results for {sizes.async_tasks} tasks")
    return {
        "async_per_s": sizes.async_tasks / (t2 - t0),
        "async_submit_per_s": sizes.async_tasks / (t1 - t0),
        "async_tasks": sizes.async_tasks,
    }


def put_get(backend: Backend, sizes: Sizes) -> Metrics:
    """GB/s of put and get of a large array, and whether get returns a read-only shared view."""
    # arange writes every page, so no page fault of the source lands inside a timing.
    source = np.arange(sizes.array_bytes // 8, dtype=np.float64)
    rounds = [_put_get_round(backend, source) for _ in range(sizes.put_get_rounds)]
    del source
    gc.collect()
    metrics: Metrics = {
        "put_gbps": statistics.median(r["put_gbps"] for r in rounds),
        "get_gbps": statistics.median(r["get_gbps"] for r in rounds),
        "get_ms": statistics.median(r["get_ms"] for r in rounds),
        "get_zero_copy": all(r["zero_copy"] for r in rounds),
        "put_gbps_first": rounds[0]["put_gbps"],
        "array_bytes": sizes.array_bytes,
    }
    for key in ("read_only", "owns_data", "shared_mapping"):
        metrics[f"get_{key}"] = rounds[-1][key]
    return metrics


def time_shutdown(backend: Backend) -> Metrics:
    """Seconds from ``shutdown`` until every process of the tree exited: when memory is back."""
    skip = {os.getpid(), *helper_pids()}
    tree = procs.processes(pid for pid in backend.process_tree_pids() if pid not in skip)
    t0 = time.perf_counter()
    backend.shutdown()
    t1 = time.perf_counter()
    leftovers = procs.wait_gone(tree, SHUTDOWN_LIMIT_S)
    t2 = time.perf_counter()
    return {
        "shutdown_s": t2 - t0,
        "shutdown_call_s": t1 - t0,
        "shutdown_leftover_processes": len(leftovers),
    }


def _put_get_round(backend: Backend, source: np.ndarray) -> dict[str, Any]:
    """One timed put and get of ``source``, checked for content, freed before the next round."""
    t0 = time.perf_counter()
    handle = backend.put(source)
    t1 = time.perf_counter()
    result = backend.get(handle)
    t2 = time.perf_counter()
    _check_same(source, result)
    shared = shared_mapping_of(result)
    read_only = not result.flags.writeable
    owns_data = bool(result.flags.owndata)
    del result
    backend.free(handle)
    del handle
    gc.collect()
    return {
        "put_gbps": source.nbytes / (t1 - t0) / 1e9,
        "get_gbps": source.nbytes / (t2 - t1) / 1e9,
        "get_ms": (t2 - t1) * 1e3,
        "read_only": read_only,
        "owns_data": owns_data,
        "shared_mapping": shared,
        "zero_copy": read_only and not owns_data and shared is not None,
    }


def _check_same(expected: np.ndarray, got: np.ndarray) -> None:
    """Catch a backend returning the wrong thing, by shape, dtype and a strided sample of values."""
    if got.shape != expected.shape or got.dtype != expected.dtype:
        want = f"{expected.dtype}{expected.shape}"
        raise RuntimeError(f"get returned {got.dtype}{got.shape}, expected {want}")
    step = max(1, expected.size // 10_000)
    if not np.array_equal(got[::step], expected[::step]) or got[-1] != expected[-1]:
        raise RuntimeError("get returned an array whose contents differ from what was put")


def shared_mapping_of(arr: np.ndarray) -> str | None:
    """Name of the shared (``s``) mapping holding ``arr``'s data; None when memory is private."""
    address = int(arr.__array_interface__["data"][0])
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                low, high = (int(part, 16) for part in fields[0].split("-"))
                if low <= address < high:
                    if fields[1][3] != "s":
                        return None
                    return fields[5].strip() if len(fields) > 5 else "[anonymous shared]"
    except OSError:
        return None  # not Linux: cannot tell, so do not claim zero-copy
    return None


def _settled_tree_memory(backend: Backend) -> tuple[int, int, int, float]:
    """Sample until the tree's process count and RSS stop changing, so lazy helpers count."""
    t0 = time.perf_counter()
    previous = procs.tree_memory(backend.process_tree_pids())
    while time.perf_counter() - t0 < SETTLE_LIMIT_S:
        time.sleep(SETTLE_INTERVAL_S)
        current = procs.tree_memory(backend.process_tree_pids())
        if current[2] == previous[2] and abs(current[0] - previous[0]) <= 0.01 * previous[0]:
            return (*current, time.perf_counter() - t0)
        previous = current
    return (*previous, time.perf_counter() - t0)
