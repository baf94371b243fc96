"""The shared-memory object store: real files in /dev/shm, real mappings, real spill files."""

from __future__ import annotations

import gc
import mmap
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from helpers import wait_for_condition

from rayjupyter.core.exceptions import ObjectStoreFullError
from rayjupyter.core.object_store import (
    SHM_DIR,
    ObjectStore,
    StorePolicy,
    map_object,
    shm_path,
    write_object,
)
from rayjupyter.core.serialization import SerializedObject, deserialize, serialize

MiB = 1 << 20


def session_files(session: str) -> list[str]:
    prefix = f"rj-{session}-"
    return sorted(name for name in os.listdir(SHM_DIR) if name.startswith(prefix))


@pytest.fixture
def session() -> Iterator[str]:
    """A unique session name; fails the test if it leaves files in /dev/shm, then cleans up."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    left = session_files(name)
    for file in left:
        os.unlink(os.path.join(SHM_DIR, file))
    assert left == [], f"test left files in {SHM_DIR}: {left}"


@pytest.fixture
def store(session: str, tmp_path: Path) -> Iterator[ObjectStore]:
    """A store of 3 MiB that spills into a fresh directory; shut down after the test."""
    st = ObjectStore(session, capacity=3 * MiB, spill_dir=str(tmp_path / "spill"))
    yield st
    st.policy.validate()
    st.shutdown()


def oid(n: int) -> bytes:
    return n.to_bytes(4, "big") + b"\x00" * 24


def mapping_range(view: memoryview) -> tuple[int, int]:
    base = int(np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0])
    return base, base + view.nbytes


def put(store: ObjectStore, object_id: bytes, value: Any) -> bytes:
    """Write value as the maker of an object would, account it, return its exact bytes."""
    sobj = serialize(value)
    size = write_object(store.path_of(object_id), sobj)
    assert size == sobj.nbytes == os.path.getsize(store.path_of(object_id))
    store.add(object_id, size)
    return sobj.to_bytes()


def file_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- write_object / map_object --------------------------------------------------------


def test_shm_path_names_session_and_object() -> None:
    assert shm_path("abc", b"\x01\xff") == "/dev/shm/rj-abc-01ff"


def test_write_then_map_is_zero_copy_and_read_only(session: str) -> None:
    array = np.random.default_rng(0).random((500, 300))
    path = shm_path(session, oid(1))
    sobj = serialize(array)
    assert write_object(path, sobj) == sobj.nbytes
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert file_bytes(path) == sobj.to_bytes()

    view = map_object(path)
    assert view.readonly and view.nbytes == sobj.nbytes
    back = deserialize(view)
    np.testing.assert_array_equal(back, array)
    assert not back.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        back[0, 0] = 1.0
    lo, hi = mapping_range(view)
    addr = back.__array_interface__["data"][0]
    assert lo <= addr and addr + back.nbytes <= hi  # the array's memory is the mapping
    assert addr % 64 == 0
    os.unlink(path)


def test_pyarrow_table_from_a_mapping_is_zero_copy(session: str) -> None:
    table = pa.table({"a": np.arange(200_000), "b": np.ones(200_000)})
    path = shm_path(session, oid(2))
    write_object(path, serialize(table))
    view = map_object(path)
    back = deserialize(view)
    assert back.equals(table)
    lo, hi = mapping_range(view)
    for column in back.columns:
        for chunk in column.chunks:
            data = chunk.buffers()[1]
            assert lo <= data.address and data.address + data.size <= hi
    os.unlink(path)


def test_on_release_fires_when_the_last_view_is_gone(session: str) -> None:
    path = shm_path(session, oid(3))
    write_object(path, serialize(np.arange(100_000)))
    released: list[str] = []
    view = map_object(path, on_release=lambda: released.append("gone"))
    array = deserialize(view)
    del view
    gc.collect()
    assert released == []  # the array still uses the mapping
    total = int(array.sum())
    assert total == sum(range(100_000))
    del array
    wait_for_condition(lambda: gc.collect() is not None and released == ["gone"], timeout=5)
    os.unlink(path)


def test_mapping_does_not_hold_a_file_descriptor(session: str) -> None:
    path = shm_path(session, oid(4))
    write_object(path, serialize(np.arange(50_000)))
    before = len(os.listdir("/proc/self/fd"))
    views = [map_object(path) for _ in range(50)]
    assert len(os.listdir("/proc/self/fd")) == before
    assert all(int(deserialize(v)[-1]) == 49_999 for v in views)
    del views
    os.unlink(path)


def test_write_refuses_an_existing_file_and_map_a_missing_one(session: str) -> None:
    path = shm_path(session, oid(5))
    sobj = serialize(np.arange(30_000))
    write_object(path, sobj)
    with pytest.raises(FileExistsError):
        write_object(path, sobj)
    os.unlink(path)
    with pytest.raises(FileNotFoundError):
        map_object(path)


def test_full_shared_memory_raises_store_full_and_leaves_no_file(
    session: str, tmp_path: Path
) -> None:
    # A value larger than all of /dev/shm, backed by a sparse file so it costs no memory.
    size = shutil.disk_usage(SHM_DIR).total + 64 * MiB
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(size)
    with open(sparse, "rb") as f:
        mapped = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
    try:
        huge = SerializedObject(b"meta", [memoryview(mapped)], [], 1)
        path = shm_path(session, oid(6))
        with pytest.raises(ObjectStoreFullError, match="No space"):
            write_object(path, huge)
        assert not os.path.exists(path)
        del huge
    finally:
        mapped.close()


def test_a_value_written_by_another_process_is_read_zero_copy(session: str) -> None:
    path = shm_path(session, oid(7))
    code = textwrap.dedent(
        f"""
        import numpy as np
        from rayjupyter.core.object_store import write_object
        from rayjupyter.core.serialization import serialize
        write_object({path!r}, serialize(np.arange(300_000, dtype=np.int64) * 3))
        """
    )
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env)
    view = map_object(path)
    back = deserialize(view)
    np.testing.assert_array_equal(back, np.arange(300_000, dtype=np.int64) * 3)
    lo, hi = mapping_range(view)
    assert lo <= back.__array_interface__["data"][0] < hi
    os.unlink(path)


# -- StorePolicy (pure) -----------------------------------------------------------------


def test_policy_spills_least_recently_used_first() -> None:
    p = StorePolicy(capacity=300)
    for n in (1, 2, 3):
        assert p.plan_room(100) == []
        p.added(oid(n), 100)
    p.touch(oid(1))  # order now 2, 3, 1
    assert p.plan_room(100) == [oid(2)]
    assert p.plan_room(150) == [oid(2), oid(3)]
    p.spilled(oid(2))
    p.added(oid(4), 100)
    assert (p.used_bytes, p.spilled_bytes) == (300, 100)
    assert p.plan_room(10) == [oid(3)]
    p.validate()


def test_policy_never_picks_pinned_or_the_excluded_object() -> None:
    p = StorePolicy(capacity=200)
    p.added(oid(1), 100)
    p.added(oid(2), 100)
    p.pin(oid(1), b"client-a")
    assert p.plan_room(100) == [oid(2)]
    assert p.plan_room(100, exclude=oid(2)) == []  # only pinned ones left: go over capacity
    p.pin(oid(1), b"client-a")
    p.unpin(oid(1), b"client-a")
    assert p.is_pinned(oid(1))  # one of two mappings remains
    p.unpin(oid(1), b"client-a")
    assert not p.is_pinned(oid(1))
    p.validate()


def test_policy_counts_a_freed_but_mapped_object_until_unpinned() -> None:
    p = StorePolicy(capacity=1000)
    p.added(oid(1), 100)
    p.pin(oid(1), b"c")
    assert p.freed(oid(1)) is False
    assert not p.contains(oid(1)) and p.used_bytes == 100
    assert p.unpin(oid(1), b"c") is True
    assert p.used_bytes == 0 and p.entries == {}
    p.added(oid(2), 50)
    p.pin(oid(2), b"c")
    p.freed(oid(2))
    assert p.release_client(b"c") == [oid(2)]
    assert p.used_bytes == 0
    p.validate()


def test_policy_rejects_a_nonpositive_capacity() -> None:
    with pytest.raises(ValueError, match="positive"):
        StorePolicy(0)


# -- ObjectStore (files) -----------------------------------------------------------------


def test_store_spills_lru_and_restores_byte_exact(store: ObjectStore, tmp_path: Path) -> None:
    rng = np.random.default_rng(42)
    arrays = {n: rng.random(MiB // 8 - 64) for n in range(1, 5)}  # just under 1 MiB each
    exact = {n: put(store, oid(n), arrays[n]) for n in (1, 2, 3)}
    assert store.used_bytes == sum(len(b) for b in exact.values()) <= store.capacity
    assert not any(store.is_spilled(oid(n)) for n in (1, 2, 3))

    exact[4] = put(store, oid(4), arrays[4])  # over capacity: 1 is least recently used
    assert store.is_spilled(oid(1))
    assert not os.path.exists(store.path_of(oid(1)))
    assert os.path.exists(tmp_path / "spill" / oid(1).hex())
    assert store.spilled_bytes == len(exact[1])
    assert store.used_bytes <= store.capacity

    store.restore(oid(1))  # needs room: 2 is now the least recently used
    assert not store.is_spilled(oid(1)) and store.is_spilled(oid(2))
    assert file_bytes(store.path_of(oid(1))) == exact[1]
    np.testing.assert_array_equal(deserialize(map_object(store.path_of(oid(1)))), arrays[1])

    for n in (2, 3, 4):
        store.restore(oid(n))
        assert file_bytes(store.path_of(oid(n))) == exact[n]
    stats = store.stats()
    assert stats["num_objects"] == 4 and stats["spill_count"] >= 3
    assert stats["restore_count"] >= 2


def test_touch_changes_the_spill_victim(store: ObjectStore) -> None:
    for n in (1, 2, 3):
        put(store, oid(n), np.full(MiB // 8 - 64, n, dtype=np.float64))
    store.touch(oid(1))
    put(store, oid(4), np.zeros(MiB // 8 - 64))
    assert store.is_spilled(oid(2))
    assert not store.is_spilled(oid(1))


def test_pinned_objects_are_never_spilled(store: ObjectStore) -> None:
    for n in (1, 2, 3):
        put(store, oid(n), np.full(MiB // 8 - 64, n, dtype=np.float64))
    store.pin(oid(1), b"worker-1")
    store.pin(oid(2), b"driver")
    put(store, oid(4), np.zeros(MiB // 8 - 64))
    assert store.is_spilled(oid(3))
    assert not store.is_spilled(oid(1)) and not store.is_spilled(oid(2))
    store.pin(oid(4), b"driver")
    put(store, oid(5), np.zeros(MiB // 8 - 64))  # everything else pinned: over capacity
    assert store.used_bytes > store.capacity
    store.release_client(b"driver")
    put(store, oid(6), np.zeros(MiB // 8 - 64))
    assert store.is_spilled(oid(2)) and store.is_spilled(oid(4))  # LRU among the unpinned
    assert not store.is_spilled(oid(1)) and not store.is_spilled(oid(5))
    store.unpin(oid(1), b"worker-1")
    put(store, oid(7), np.zeros(MiB // 8 - 64))
    assert store.is_spilled(oid(1))


def test_an_object_larger_than_capacity_is_accepted(store: ObjectStore) -> None:
    put(store, oid(1), np.ones(MiB // 8 - 64))
    big = np.arange(4 * MiB // 8, dtype=np.float64)
    exact = put(store, oid(2), big)
    assert store.is_spilled(oid(1)) and not store.is_spilled(oid(2))
    assert file_bytes(store.path_of(oid(2))) == exact
    assert store.size_of(oid(2)) == len(exact)


def test_policy_refuses_what_does_not_fit_only_when_spilling_failed() -> None:
    policy = StorePolicy(capacity=100)
    policy.added(oid(1), 80)
    assert policy.admits(20, spill_failed=True)  # fits: spilling was not needed
    assert not policy.admits(30, spill_failed=True)  # the spill disk is full: refused
    assert policy.admits(30, spill_failed=False)  # nothing to spill (pinned): over capacity


def test_a_full_or_unwritable_spill_dir_refuses_the_new_object_and_keeps_the_rest(
    session: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "spill"
    blocker.write_bytes(b"")  # a file where the spill directory goes: no spill can be made
    st = ObjectStore(session, capacity=3 * MiB, spill_dir=str(blocker))
    try:
        kept = {n: put(st, oid(n), np.full(MiB // 8 - 64, n, dtype=np.float64)) for n in (1, 2)}
        used = st.used_bytes
        with pytest.raises(ObjectStoreFullError, match="object_store_memory") as info:
            put(st, oid(3), np.zeros(2 * MiB // 8))
        assert str(blocker) in str(info.value)
        assert not os.path.exists(st.path_of(oid(3))) and not st.contains(oid(3))
        assert st.used_bytes == used and st.spilled_bytes == 0  # nothing half done
        for n, exact in kept.items():
            assert file_bytes(st.path_of(oid(n))) == exact
        st.policy.validate()
    finally:
        st.shutdown()


def test_a_spilled_object_is_restored_even_when_others_cannot_be_spilled(
    store: ObjectStore, tmp_path: Path
) -> None:
    exact = {n: put(store, oid(n), np.full(MiB // 8 - 64, n, dtype=np.float64)) for n in (1, 2)}
    exact[3] = put(store, oid(3), np.zeros(2 * MiB // 8 - 64))  # spills 1
    assert store.is_spilled(oid(1))
    for n in (2, 3):  # a directory where their spill files go: spilling them fails
        os.mkdir(tmp_path / "spill" / oid(n).hex())
    store.restore(oid(1))  # a reader needs it: read over capacity rather than fail
    assert file_bytes(store.path_of(oid(1))) == exact[1]
    assert store.used_bytes > store.capacity and not store.is_spilled(oid(2))


def test_readers_keep_their_memory_when_an_object_is_spilled(store: ObjectStore) -> None:
    array = np.arange(MiB // 8 - 64, dtype=np.float64)
    put(store, oid(1), array)
    mapped = deserialize(map_object(store.path_of(oid(1))))  # mapped but not pinned
    for n in (2, 3, 4):
        put(store, oid(n), np.zeros(MiB // 8 - 64))
    assert store.is_spilled(oid(1))
    with pytest.raises(FileNotFoundError):
        map_object(store.path_of(oid(1)))  # a new reader must ask for a restore
    np.testing.assert_array_equal(mapped, array)  # an old one still reads valid memory


def test_a_spill_copy_is_reused_after_restore(store: ObjectStore, tmp_path: Path) -> None:
    exact = put(store, oid(1), np.arange(MiB // 8 - 64, dtype=np.float64))
    for n in (2, 3, 4):
        put(store, oid(n), np.zeros(MiB // 8 - 64))
    store.restore(oid(1))
    spill_file = tmp_path / "spill" / oid(1).hex()
    assert spill_file.exists()  # sealed objects never change: the copy stays valid
    for n in (5, 6, 7):
        put(store, oid(n), np.zeros(MiB // 8 - 64))
    assert store.is_spilled(oid(1))
    store.restore(oid(1))
    assert file_bytes(store.path_of(oid(1))) == exact


def test_free_removes_shm_and_spill_files(store: ObjectStore, tmp_path: Path) -> None:
    for n in (1, 2, 3, 4):
        put(store, oid(n), np.zeros(MiB // 8 - 64))
    assert store.is_spilled(oid(1))
    store.free(oid(1))
    store.free(oid(2))
    assert not store.contains(oid(1)) and not store.contains(oid(2))
    assert not (tmp_path / "spill" / oid(1).hex()).exists()
    assert not os.path.exists(store.path_of(oid(2)))
    assert store.spilled_bytes == 0
    store.free(oid(2))  # freeing twice is harmless
    assert sorted(session_files(store.session)) == sorted(
        os.path.basename(store.path_of(oid(n))) for n in (3, 4)
    )
    with pytest.raises(KeyError, match="not in this store"):
        store.size_of(oid(1))


def test_free_of_a_mapped_object_keeps_its_bytes_counted(store: ObjectStore) -> None:
    exact = put(store, oid(1), np.zeros(MiB // 8 - 64))
    store.pin(oid(1), b"driver")
    store.free(oid(1))
    assert not store.contains(oid(1))
    assert not os.path.exists(store.path_of(oid(1)))
    assert store.used_bytes == len(exact)  # the driver's mapping still holds the memory
    store.unpin(oid(1), b"driver")
    assert store.used_bytes == 0


def test_add_is_idempotent(store: ObjectStore) -> None:
    exact = put(store, oid(1), np.zeros(MiB // 8 - 64))
    store.add(oid(1), len(exact))
    assert store.used_bytes == len(exact)


def test_shutdown_leaves_nothing_behind(session: str, tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    st = ObjectStore(session, capacity=2 * MiB, spill_dir=str(spill))
    for n in (1, 2, 3):
        put(st, oid(n), np.zeros(MiB // 8 - 64))
    assert st.is_spilled(oid(1)) and spill.exists()
    # a file some writer made but never reported (it died before telling the node)
    write_object(shm_path(session, oid(9)), serialize(np.zeros(20_000)))
    # another session whose name starts like ours is not touched
    other = shm_path(session + "-x", oid(1))
    write_object(other, serialize(np.zeros(20_000)))
    try:
        st.shutdown()
        assert session_files(session) == [os.path.basename(other)]
        assert not spill.exists()
        assert st.used_bytes == 0 and st.spilled_bytes == 0
    finally:
        os.unlink(other)


def test_store_rejects_a_session_with_a_slash(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="session"):
        ObjectStore("a/b", capacity=MiB, spill_dir=str(tmp_path))
