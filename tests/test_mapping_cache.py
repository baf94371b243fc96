"""Workers keep task arguments mapped for later tasks: still zero-copy, never stale, and let
go when the node frees the object (its memory does not outlive the last ref)."""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Iterator

import numpy as np
import pytest
from helpers import mapped_file, wait_for_condition

import rayjupyter as rj
from rayjupyter.core import queries
from rayjupyter.core.api import _client
from rayjupyter.core.object_files import (
    SHM_DIR,
    map_object,
    pool_prefix,
    pooled_files,
    write_object,
)
from rayjupyter.core.object_store import ObjectStore, StorePolicy
from rayjupyter.core.serialization import deserialize, serialize

MiB = 2**20


def _store_stats() -> dict[str, int]:
    return dataclasses.asdict(queries.store_stats(_client()))


def _maps_inode(pid: int, inode: int) -> bool:
    """Whether process pid maps a file with this inode (field 5 of /proc/<pid>/maps)."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return any(
                len(fields) > 5 and fields[4] == str(inode)
                for fields in (line.split() for line in maps)
            )
    except FileNotFoundError:  # the worker is gone: it maps nothing
        return False


@rj.remote
def _inspect(hold_s: float, array: np.ndarray) -> tuple[int, int, str, bool, int, int]:
    """(pid, address, backing file, writeable, min, max): one call per worker at once."""
    import time

    time.sleep(hold_s)
    address = array.__array_interface__["data"][0]
    backing = mapped_file(address)
    return os.getpid(), address, backing, array.flags.writeable, int(array.min()), int(array[-1])


def _on_both_workers(ref: rj.ObjectRef) -> list[tuple[int, int, str, bool, int, int]]:
    return rj.get([_inspect.remote(0.3, ref) for _ in range(2)], timeout=60)


def test_later_tasks_read_the_same_read_only_shared_mapping(cluster):
    session = cluster.address_info["session"]
    ref = rj.put(np.full(16 * MiB, 5, dtype=np.uint8))
    first = {row[0]: row for row in _on_both_workers(ref)}
    again = {row[0]: row for row in _on_both_workers(ref)}
    assert len(first) == 2 and set(again) == set(first)
    for pid, (_, address, backing, writeable, low, last) in again.items():
        assert address == first[pid][1]  # mapped once per worker, reused by the next task
        assert backing == f"/dev/shm/rj-{session}-{ref.hex()}"
        assert not writeable and low == last == 5


def test_a_freed_argument_is_unmapped_by_the_workers_that_kept_it(cluster):
    session = cluster.address_info["session"]
    ref = rj.put(np.ones(16 * MiB, dtype=np.uint8))
    path = f"/dev/shm/rj-{session}-{ref.hex()}"
    inode = os.stat(path).st_ino
    pids = {row[0] for row in _on_both_workers(ref)}
    assert len(pids) == 2 and all(_maps_inode(pid, inode) for pid in pids)
    del ref
    gc.collect()
    # the workers let go of their mappings and the store forgets the object
    wait_for_condition(lambda: not any(_maps_inode(pid, inode) for pid in pids), timeout=10)
    wait_for_condition(lambda: _store_stats()["used_bytes"] == 0, timeout=10)
    assert not os.path.exists(path)  # unlinked, or renamed into the pool of reusable files


def test_reused_pooled_files_never_show_stale_data_to_a_worker(cluster):
    session = cluster.address_info["session"]
    size = 8 * MiB
    inodes = []
    for value in range(1, 7):  # same size each time: every put may reuse the last file
        ref = rj.put(np.full(size, value, dtype=np.uint8))
        inodes.append(os.stat(f"/dev/shm/rj-{session}-{ref.hex()}").st_ino)
        for row in _on_both_workers(ref) + _on_both_workers(ref):
            assert row[4] == row[5] == value, (value, row)
        del ref
        gc.collect()
        wait_for_condition(lambda: _store_stats()["num_objects"] == 0, timeout=10)
        wait_for_condition(lambda: _store_stats()["used_bytes"] == 0, timeout=10)
    assert len(set(inodes)) < len(inodes), inodes  # the workers' files were reused


@rj.remote
class _Keeper:
    def keep(self, array: np.ndarray) -> int:
        self.array = array  # a value built on the worker's mapping outlives the task
        return int(self.array[-1])

    def read(self) -> tuple[int, int]:
        return int(self.array.min()), int(self.array.max())


def test_a_file_is_never_reused_while_a_task_value_still_maps_it(cluster):
    size = 8 * MiB
    keeper = _Keeper.remote()
    ref = rj.put(np.full(size, 1, dtype=np.uint8))
    assert rj.get(keeper.keep.remote(ref), timeout=30) == 1
    del ref
    gc.collect()
    wait_for_condition(lambda: _store_stats()["num_objects"] == 0, timeout=10)
    for value in range(2, 5):  # puts of the same size: none may land in the kept file
        other = rj.put(np.full(size, value, dtype=np.uint8))
        assert int(rj.get(other, timeout=30).min()) == value
        assert rj.get(keeper.read.remote(), timeout=30) == (1, 1)
        del other
    rj.kill(keeper)


@pytest.fixture
def small_store_cluster():
    rj.init(num_cpus=2, object_store_memory=300 * MiB)
    yield
    rj.shutdown()


@rj.remote
def _checksum(array: np.ndarray) -> tuple[int, int]:
    return int(array[::4096].sum(dtype=np.int64)), int(array[-1])


def test_kept_mappings_do_not_stop_the_store_spilling(small_store_cluster):
    kept = [rj.put(np.full(70 * MiB, i, dtype=np.uint8)) for i in (1, 2)]
    for ref in kept:  # both workers keep both mapped (140 MiB each, under half the store)
        _on_both_workers(ref)
    assert _store_stats()["num_pinned"] == 2
    big = rj.put(np.full(200 * MiB, 3, dtype=np.uint8))  # nothing unmapped to spill for it
    # the workers are asked to unmap the least recently used kept one, which is spilled
    wait_for_condition(lambda: _store_stats()["used_bytes"] <= 300 * MiB, timeout=20)
    assert 70 * MiB <= _store_stats()["spilled_bytes"] < 71 * MiB  # the oldest: 1
    for value, ref in enumerate([*kept, big], start=1):
        for row in _on_both_workers(ref):
            assert row[4] == row[5] == value


def test_tasks_read_spilled_and_restored_arguments_correctly(small_store_cluster):
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, 80 * MiB, dtype=np.uint8) for _ in range(6)]  # 480 MiB
    refs = [rj.put(a) for a in arrays]
    assert _store_stats()["spilled_bytes"] > 0
    expected = [(int(a[::4096].sum(dtype=np.int64)), int(a[-1])) for a in arrays]
    for _ in range(2):  # each read may restore one object and spill another
        assert rj.get([_checksum.remote(r) for r in refs], timeout=120) == expected
    assert _store_stats()["restore_count"] > 0


# -- the node's side: a freed file that readers still map waits for them, then is pooled ----


@pytest.fixture
def store(tmp_path) -> Iterator[ObjectStore]:
    import uuid

    session = f"t{uuid.uuid4().hex[:12]}"
    st = ObjectStore(session, capacity=64 * MiB, spill_dir=str(tmp_path / "spill"))
    yield st
    st.policy.validate()
    st.shutdown()
    left = [n for n in os.listdir(SHM_DIR) if n.startswith(f"rj-{session}-")]
    assert left == [], f"the store left files: {left}"


def _put(store: ObjectStore, object_id: bytes, fill: int) -> str:
    path = store.path_of(object_id)
    write_object(
        path, serialize(np.full(2 * MiB, fill, dtype=np.uint8)), pool_prefix(store.session)
    )
    store.add(object_id, os.path.getsize(path))
    return path


def test_a_file_freed_under_a_reader_is_pooled_only_after_its_last_unpin(store):
    a, b = b"a" * 28, b"b" * 28
    path = _put(store, a, 1)
    view = map_object(path)
    inode = os.stat(path).st_ino
    store.pin(a, b"worker")
    store.pin(a, b"driver")
    store.free(a)
    assert not os.path.exists(path) and pooled_files(pool_prefix(store.session)) == []
    store.unpin(a, b"worker")
    assert pooled_files(pool_prefix(store.session)) == []  # the driver still maps it
    _put(store, b, 2)  # a writer meanwhile gets a fresh file
    assert bytes(view[-8:]) == b"\x01" * 8
    del view
    store.unpin(a, b"driver")  # (sent after the munmap)
    [(_, pooled)] = pooled_files(pool_prefix(store.session))
    assert os.stat(pooled).st_ino == inode
    assert store.used_bytes == os.path.getsize(store.path_of(b))


def test_a_gone_clients_freed_files_are_deleted_not_pooled(store):
    a = b"a" * 28
    path = _put(store, a, 1)
    store.pin(a, b"driver")
    store.free(a)
    store.release_client(b"driver")  # maybe still alive somewhere: never reuse its file
    assert pooled_files(pool_prefix(store.session)) == [] and store.used_bytes == 0
    assert not any(n.endswith("-freed") for n in os.listdir(SHM_DIR) if store.session in n)
    assert not os.path.exists(path)


def test_a_new_object_with_a_freed_mapped_ones_id_replaces_its_file(store):
    a = b"a" * 28
    _put(store, a, 1)
    store.pin(a, b"worker")
    store.free(a)
    path = _put(store, a, 2)  # made again (a retried task), while the old one is mapped
    assert not any(n.endswith("-freed") for n in os.listdir(SHM_DIR) if store.session in n)
    assert deserialize(map_object(path))[-1] == 2


def test_policy_names_the_pinned_objects_to_let_go_of_when_over_capacity():
    policy = StorePolicy(100)
    a, b, c = b"a" * 28, b"b" * 28, b"c" * 28
    for oid in (a, b):
        policy.added(oid, 40)
        policy.pin(oid, b"worker")
    policy.pin(b, b"driver")
    workers = {b"worker"}.__contains__
    assert policy.pinned_excess(workers) == []  # under capacity: nothing to ask for
    policy.added(c, 40)  # 120 of 100, and nothing unpinned but c itself
    assert policy.plan_room(0, exclude=c) == []
    assert policy.pinned_excess(workers) == [(a, (b"worker",))]  # the oldest covers it
    policy.pin(a, b"task")  # pinned by a running task too: asking the worker frees nothing
    assert policy.pinned_excess(workers) == []
    policy.unpin(a, b"task")
    policy.unpin(a, b"worker")
    assert set(policy.plan_room(40)) == {a, c}  # b is still pinned by the driver
    policy.validate()
