"""The shared-memory object store through the public API: zero-copy gets, freeing, spilling."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pyarrow as pa
import pytest
from helpers import mapped_file, wait_for_condition

import rayjupyter as rj
from rayjupyter.core import queries
from rayjupyter.core.api import _client

MiB = 2**20


def _mapped_file(array: np.ndarray) -> str:
    """The file backing the memory of an array ('' if anonymous)."""
    return mapped_file(array.__array_interface__["data"][0])


def _store_stats() -> dict[str, int]:
    return dataclasses.asdict(queries.store_stats(_client()))


@pytest.fixture
def small_store_cluster():
    rj.init(num_cpus=2, object_store_memory=300 * MiB)
    yield
    rj.shutdown()


def test_get_of_400_mb_array_is_read_only_and_in_shared_memory(cluster):
    array = np.arange(400 * MiB // 8, dtype=np.int64)
    ref = rj.put(array)
    out = rj.get(ref, timeout=60)
    assert out.dtype == array.dtype and out.shape == array.shape
    assert not out.flags.writeable
    assert not out.flags.owndata
    assert _mapped_file(out).startswith("/dev/shm/rj-")
    assert out[12345] == 12345 and out[-1] == array[-1]
    with pytest.raises(ValueError, match="read-only"):
        out[0] = 1


def test_large_task_result_and_arrow_table_are_zero_copy(cluster):
    @rj.remote
    def make(n):
        return np.full(n, 7, dtype=np.uint8)

    result = rj.get(make.remote(50 * MiB), timeout=60)
    assert not result.flags.writeable and _mapped_file(result).startswith("/dev/shm/rj-")
    assert int(result[:1000].sum()) == 7000

    table = pa.table({"x": np.arange(1_000_000, dtype=np.int64)})
    back = rj.get(rj.put(table), timeout=60)
    assert back.equals(table)
    column = back.column("x").chunk(0).to_numpy(zero_copy_only=True)
    assert _mapped_file(column).startswith("/dev/shm/rj-")


def test_task_reads_large_ref_argument_zero_copy(cluster):
    @rj.remote
    def inspect(array):
        path = mapped_file(array.__array_interface__["data"][0])
        return float(array.sum()), path, array.flags.writeable

    array = np.ones(20 * MiB // 8)
    total, path, writeable = rj.get(inspect.remote(rj.put(array)), timeout=60)
    assert total == array.size and path.startswith("/dev/shm/rj-") and not writeable


def _session_shm_bytes(session: str) -> int:
    """Shared memory held by this cluster's files (other processes may use /dev/shm too)."""
    total = 0
    for name in os.listdir("/dev/shm"):
        if name.startswith(f"rj-{session}-"):
            total += os.stat(os.path.join("/dev/shm", name)).st_blocks * 512
    return total


def test_memory_stays_flat_over_put_and_drop_cycles(cluster):
    session = cluster.address_info["session"]
    held = []
    for i in range(20):
        ref = rj.put(np.full(400 * MiB, i % 251, dtype=np.uint8))
        assert rj.get(ref, timeout=60)[-1] == i % 251
        del ref
        # freed once the last ref is gone: the store empties (a freed file may be kept for
        # reuse by the next put, so shared memory holds at most one array between cycles)
        wait_for_condition(lambda: _store_stats()["used_bytes"] == 0, timeout=10)
        held.append(_session_shm_bytes(session))
    assert max(held) <= 401 * MiB, held  # flat: never more than one array's worth


def test_full_store_spills_to_disk_and_reads_back_every_byte(small_store_cluster):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, 80 * MiB, dtype=np.uint8) for _ in range(6)]  # 480 MiB
    refs = [rj.put(a) for a in arrays]
    stats = _store_stats()
    assert stats["used_bytes"] <= 300 * MiB
    assert stats["spilled_bytes"] > 0
    for array, ref in zip(arrays, refs, strict=False):
        back = rj.get(ref, timeout=60)
        assert np.array_equal(back, array)
        del back


def test_put_larger_than_the_store_is_a_clear_error(small_store_cluster):
    from rayjupyter.exceptions import ObjectStoreFullError

    with pytest.raises(ObjectStoreFullError, match="object_store_memory"):
        rj.put(np.zeros(400 * MiB, dtype=np.uint8))


def test_objects_are_freed_when_refs_in_other_processes_go(cluster):
    @rj.remote
    def hold(items):
        return len(items)

    big = rj.put(np.zeros(10 * MiB, dtype=np.uint8))
    assert rj.get(hold.remote([big]), timeout=30) == 1
    assert _store_stats()["used_bytes"] >= 10 * MiB
    del big
    wait_for_condition(lambda: _store_stats()["used_bytes"] == 0, timeout=10)


def test_freed_files_are_reused_but_never_under_a_reader(cluster):
    size = 8 * MiB
    first = rj.put(np.full(size, 1, dtype=np.uint8))
    kept = rj.get(first, timeout=30)  # still mapped here: its file must not be reused
    del first
    wait_for_condition(lambda: _store_stats()["num_objects"] == 0, timeout=10)
    second = rj.put(np.full(size, 2, dtype=np.uint8))
    assert int(kept.min()) == int(kept.max()) == 1
    assert int(rj.get(second, timeout=30).min()) == 2
    del kept
    for value in range(3, 8):  # dropped with their refs: files cycle through the pool
        ref = rj.put(np.full(size, value, dtype=np.uint8))
        out = rj.get(ref, timeout=30)
        assert int(out.min()) == int(out.max()) == value
        del out, ref


def test_workers_keep_a_large_argument_mapped_across_tasks(cluster):
    @rj.remote
    def where(array):
        return os.getpid(), array.__array_interface__["data"][0], float(array[:10].sum())

    ref = rj.put(np.ones(16 * MiB // 8))
    seen: dict[int, set[int]] = {}
    for pid, address, total in rj.get([where.remote(ref) for _ in range(12)], timeout=60):
        assert total == 10.0
        seen.setdefault(pid, set()).add(address)
    assert all(len(addresses) == 1 for addresses in seen.values())  # one mapping per worker
