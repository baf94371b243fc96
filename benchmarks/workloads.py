"""The workloads: functions of a backend returning flat metrics, the same code for every runtime."""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from benchmarks import procs, tasks
from benchmarks.backends import WARM_TASK_SECONDS, Backend, helper_pids

Metrics = dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; ``QUICK`` exists so a smoke run takes seconds, not minutes."""

    sync_calls: int  # timed synchronous round trips
    sync_warmup: int  # untimed round trips before them
    async_tasks: int  # no-op tasks submitted before getting any
    array_bytes: int  # size of the put/get array
    put_get_rounds: int  # put/get (and ref sum) repeats in one run; the median is reported
    actor_count: int  # actors created at once in the "many actors" timing
    actor_async_calls: int  # calls submitted to one actor before getting any
    chain_length: int  # tasks in the dependency chain
    primes_limit: int  # sum the primes below this
    primes_runs: int  # how many sums, sequential in the driver vs parallel on the backend

    def as_dict(self) -> dict[str, int]:
        """Plain dict for the JSON record."""
        return asdict(self)


FULL = Sizes(
    sync_calls=1000,
    sync_warmup=100,
    async_tasks=10_000,
    array_bytes=10**9,
    put_get_rounds=3,
    actor_count=20,
    actor_async_calls=10_000,
    chain_length=1000,
    primes_limit=2_000_000,
    primes_runs=8,
)
QUICK = Sizes(
    sync_calls=200,
    sync_warmup=20,
    async_tasks=200,
    array_bytes=10**8,
    put_get_rounds=3,
    actor_count=5,
    actor_async_calls=200,
    chain_length=100,
    primes_limit=500_000,
    primes_runs=8,
)
TINY = Sizes(
    sync_calls=20,
    sync_warmup=5,
    async_tasks=20,
    array_bytes=10**6,
    put_get_rounds=1,
    actor_count=2,
    actor_async_calls=20,
    chain_length=10,
    primes_limit=10_000,
    primes_runs=4,
)

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
    median_us, p99_us = _round_trips(backend.noop_sync, sizes.sync_warmup, sizes.sync_calls)
    return {"sync_median_us": median_us, "sync_p99_us": p99_us, "sync_calls": sizes.sync_calls}


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


def actor_creation(backend: Backend, sizes: Sizes) -> Metrics:
    """Seconds to create one actor, then ``actor_count`` at once, and get a call from each."""
    if not backend.supports_actors:
        return {"actor_create_1_s": None, "actor_create_many_s": None}
    return {
        "actor_create_1_s": _time_actor_creation(backend, 1),
        "actor_create_many_s": _time_actor_creation(backend, sizes.actor_count),
        "actor_count": sizes.actor_count,
    }


def actor_sync_latency(backend: Backend, sizes: Sizes) -> Metrics:
    """Median and p99 of one-at-a-time calls on one live actor, after a warm-up."""
    if not backend.supports_actors:
        return {"actor_sync_median_us": None, "actor_sync_p99_us": None}
    [actor] = backend.create_actors(1)
    try:
        call = lambda: backend.actor_call(actor)  # noqa: E731 - a one-line closure reads best
        median_us, p99_us = _round_trips(call, sizes.sync_warmup, sizes.sync_calls)
    finally:
        backend.kill_actor(actor)
    return {"actor_sync_median_us": median_us, "actor_sync_p99_us": p99_us}


def actor_async_throughput(backend: Backend, sizes: Sizes) -> Metrics:
    """Calls per second when all calls to one actor are submitted before any is awaited."""
    if not backend.supports_actors:
        return {"actor_async_per_s": None}
    n = sizes.actor_async_calls
    [actor] = backend.create_actors(1)
    try:
        backend.actor_call(actor)  # the actor is up before the clock starts
        t0 = time.perf_counter()
        results = backend.actor_get_all([backend.actor_submit(actor) for _ in range(n)])
        elapsed = time.perf_counter() - t0
    finally:
        backend.kill_actor(actor)
    if sorted(results) != list(range(2, n + 2)):
        raise RuntimeError(f"{n} counter calls returned other than the counts 2..{n + 1}")
    return {"actor_async_per_s": n / elapsed, "actor_async_calls": n}


def dependency_chain(backend: Backend, sizes: Sizes) -> Metrics:
    """Seconds for ``chain_length`` tasks that each add 1 to the previous one's result."""
    t0 = time.perf_counter()
    result = backend.chain(sizes.chain_length)
    elapsed = time.perf_counter() - t0
    if result != sizes.chain_length:
        raise RuntimeError(f"the chain of {sizes.chain_length} add_one tasks returned {result}")
    return {"chain_s": elapsed, "chain_length": sizes.chain_length}


def ref_sum(backend: Backend, sizes: Sizes) -> Metrics:
    """Seconds for a task to sum a large array passed by reference, the put excluded.

    The first call is kept apart (``ref_sum_first_s``): it may pay a worker's first import of
    numpy. Then every worker runs a small array task, and the median of the rounds is reported.
    """
    source = np.arange(sizes.array_bytes // 8, dtype=np.float64)
    expected = float(source.sum())
    handle = backend.put(source)
    del source  # the store holds the array now; a second GB in the driver is not needed
    gc.collect()
    try:
        first_s = _time_ref_sum(backend, handle, expected)  # may pay a worker's first numpy use
        _warm_array_tasks(backend)
        seconds = [_time_ref_sum(backend, handle, expected) for _ in range(sizes.put_get_rounds)]
    finally:
        backend.free(handle)
        del handle
        gc.collect()
    return {"ref_sum_s": statistics.median(seconds), "ref_sum_first_s": first_s}


def value_sum(backend: Backend, sizes: Sizes) -> Metrics:
    """Seconds for a task to sum a large array passed by value: the runtime's own shipping
    of a big argument (Ray puts it in the object store) plus the task, after a warm-up call."""
    source = np.arange(sizes.array_bytes // 8, dtype=np.float64)
    expected = float(source.sum())
    try:
        first_s = _time_value_sum(backend, source, expected)
        seconds = [_time_value_sum(backend, source, expected) for _ in range(sizes.put_get_rounds)]
    finally:
        del source
        gc.collect()
    return {"value_sum_s": statistics.median(seconds), "value_sum_first_s": first_s}


def primes_speedup(backend: Backend, sizes: Sizes) -> Metrics:
    """The seeds' example: ``primes_runs`` prime sums in the driver, then in parallel tasks."""
    limit, runs = sizes.primes_limit, sizes.primes_runs
    t0 = time.perf_counter()
    sequential = [tasks.sum_primes(limit) for _ in range(runs)]
    t1 = time.perf_counter()
    parallel = backend.map_tasks(tasks.sum_primes, [(limit,)] * runs)
    t2 = time.perf_counter()
    if parallel != sequential:
        raise RuntimeError(f"parallel prime sums {parallel[:2]}... differ from {sequential[0]}")
    return {
        "primes_seq_s": t1 - t0,
        "primes_par_s": t2 - t1,
        "primes_speedup": (t1 - t0) / (t2 - t1),
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


def _round_trips(call: Callable[[], Any], warmup: int, calls: int) -> tuple[float, float]:
    """Median and p99 in microseconds of ``calls`` timed calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    samples_ns = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        call()
        samples_ns.append(time.perf_counter_ns() - t0)
    samples_us = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return float(np.median(samples_us)), float(np.percentile(samples_us, 99))


def _time_actor_creation(backend: Backend, n: int) -> float:
    """Seconds to create ``n`` actors and get one call's result from each; then kill them."""
    t0 = time.perf_counter()
    actors = backend.create_actors(n)
    try:
        results = backend.actor_get_all([backend.actor_submit(actor) for actor in actors])
        elapsed = time.perf_counter() - t0
    finally:
        for actor in actors:
            backend.kill_actor(actor)
    if results != [1] * n:
        raise RuntimeError(f"first calls on {n} fresh counters returned {results[:5]}, not 1s")
    return elapsed


def _warm_array_tasks(backend: Backend) -> None:
    """One small array task per worker at once, so no timed round pays a worker's numpy import."""
    small = np.ones(8, dtype=np.float64)
    backend.map_tasks(tasks.hold_then_sum, [(WARM_TASK_SECONDS, small)] * backend.num_cpus)


def _time_ref_sum(backend: Backend, handle: Any, expected: float) -> float:
    """Seconds for one ``sum_ref`` call, checked against the driver's own sum."""
    t0 = time.perf_counter()
    total = backend.sum_ref(handle)
    elapsed = time.perf_counter() - t0
    if not math.isclose(total, expected, rel_tol=1e-9):
        raise RuntimeError(f"the task summed the array to {total}, expected {expected}")
    return elapsed


def _time_value_sum(backend: Backend, source: np.ndarray, expected: float) -> float:
    """Seconds for one ``sum_value`` call, checked against the driver's own sum."""
    t0 = time.perf_counter()
    total = backend.sum_value(source)
    elapsed = time.perf_counter() - t0
    if not math.isclose(total, expected, rel_tol=1e-9):
        raise RuntimeError(f"the task summed the array to {total}, expected {expected}")
    return elapsed


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
