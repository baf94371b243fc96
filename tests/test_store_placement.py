"""Where the object store lives: the sizing decision (a pure function), how every process
finds a session's directory, a store kept in files on disk, and how the status shows it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rayjupyter.core import cluster_repr, object_files
from rayjupyter.core.object_files import map_object, pool_prefix, shm_path, store_dir
from rayjupyter.core.object_store import ObjectStore, write_object
from rayjupyter.core.read_models import MachineUsage, NodeStatus, StoreStats
from rayjupyter.core.serialization import deserialize, serialize
from rayjupyter.core.store_placement import (
    MIN_SHM_STORE,
    MIN_STORE,
    SHM_DIR,
    fallback_dir,
    place_store,
)

MiB = 1 << 20
GiB = 1 << 30
FALLBACK = "/tmp/rayjupyter/s/objects"


def place(
    requested: int = 0,
    shm_free: int | None = 32 * GiB,
    memory: int = 64 * GiB,
    disk_free: int | None = 500 * GiB,
) -> object:
    return place_store(requested, shm_free, memory, disk_free, FALLBACK)


# -- the decision ---------------------------------------------------------------------------


def test_a_store_that_fits_dev_shm_lives_there_unchanged() -> None:
    default = place()  # 30% of 64 GiB = 19.2 GiB <= 80% of 32 GiB free
    assert default.directory == SHM_DIR and default.in_shm
    assert default.capacity == int(64 * GiB * 0.3)
    assert default.reason == "" and not default.warn
    asked = place(requested=100 * MiB)
    assert (asked.directory, asked.capacity, asked.reason, asked.warn) == (
        SHM_DIR,
        100 * MiB,
        "",
        False,
    )


def test_docker_default_64mb_shm_puts_the_store_in_files() -> None:
    decision = place(shm_free=64 * MiB, memory=16 * GiB)
    assert decision.directory == FALLBACK and not decision.in_shm
    assert decision.capacity == int(16 * GiB * 0.3)  # the store it would have had, not 51 MB
    assert decision.warn
    # says why, and names the fix: a --shm-size that holds the default store
    assert "/dev/shm has 64 MiB free" in decision.reason
    assert "docker run --shm-size=6g" in decision.reason
    assert FALLBACK in decision.reason


def test_a_default_store_shrinks_to_a_large_enough_dev_shm() -> None:
    # 8 GiB free: 6.4 GiB usable, smaller than 19.2 GiB but large: stay in shared memory
    decision = place(shm_free=8 * GiB)
    assert decision.in_shm and decision.capacity == int(8 * GiB * 0.8)
    assert not decision.warn and "by default" in decision.reason


def test_a_small_dev_shm_is_not_worth_shrinking_to() -> None:
    free = (MIN_SHM_STORE - MiB) * 5 // 4  # just under MIN_SHM_STORE usable
    decision = place(shm_free=free)
    assert decision.directory == FALLBACK and decision.warn
    assert "object_store_memory=" in decision.reason  # the other way out: a smaller store


def test_an_explicit_size_larger_than_dev_shm_is_kept_in_files() -> None:
    decision = place(requested=20 * GiB, shm_free=8 * GiB)
    assert decision.directory == FALLBACK and decision.capacity == 20 * GiB and decision.warn
    assert "--shm-size=25g" in decision.reason


def test_the_disk_bounds_a_file_backed_store() -> None:
    decision = place(requested=20 * GiB, shm_free=64 * MiB, disk_free=10 * GiB)
    assert decision.capacity == 8 * GiB
    tiny = place(requested=20 * GiB, shm_free=64 * MiB, disk_free=MiB)
    assert tiny.capacity == MIN_STORE  # a store that works, full early, not one of 0 bytes


def test_no_dev_shm_at_all_uses_files() -> None:
    decision = place(shm_free=None)
    assert decision.directory == FALLBACK and "there is no /dev/shm" in decision.reason
    assert "--shm-size" not in decision.reason


def test_the_fallback_is_inside_the_session_folder() -> None:
    assert fallback_dir("abc") == "/tmp/rayjupyter/abc/objects"


# -- every process finds the session's directory -------------------------------------------


@pytest.fixture
def session() -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    object_files._store_dirs.pop(name, None)


def test_store_dir_is_dev_shm_unless_the_node_made_the_fallback(session: str) -> None:
    assert store_dir(session) == SHM_DIR
    assert shm_path(session, b"\x01") == f"/dev/shm/rj-{session}-01"


def test_a_client_finds_the_fallback_the_node_made(session: str, tmp_path: Path) -> None:
    folder = fallback_dir(session)
    os.makedirs(folder)
    try:
        assert shm_path(session, b"\xab") == f"{folder}/rj-{session}-ab"
        assert pool_prefix(session) == f"{folder}/rj-{session}-pool-"
    finally:
        os.rmdir(folder)
        os.rmdir(os.path.dirname(folder))


def test_a_store_in_files_writes_maps_spills_and_cleans_up(session: str, tmp_path: Path) -> None:
    folder = tmp_path / "objects"
    store = ObjectStore(session, 3 * MiB, str(tmp_path / "spill"), str(folder))
    assert folder.is_dir() and store_dir(session) == str(folder)
    arrays = {}
    for n in (1, 2, 3, 4):
        object_id = n.to_bytes(4, "big") + b"\x00" * 24
        arrays[object_id] = np.full(MiB // 8 - 64, n, dtype=np.float64)
        path = shm_path(session, object_id)
        assert path.startswith(f"{folder}/")
        store.add(object_id, write_object(path, serialize(arrays[object_id])))
    first = next(iter(arrays))
    assert store.is_spilled(first)  # spilled by a rename: same disk
    store.restore(first)
    for object_id, array in arrays.items():
        if not store.is_spilled(object_id):
            value = deserialize(map_object(store.path_of(object_id)))
            assert not value.flags.writeable
            np.testing.assert_array_equal(value, array)
            del value
    store.policy.validate()
    store.shutdown()
    assert not folder.exists() and not (tmp_path / "spill").exists()


# -- the status and the cluster repr show it -----------------------------------------------


def _status(store: StoreStats) -> NodeStatus:
    return NodeStatus(
        nodes=[],
        total={"CPU": 2.0, "object_store_memory": float(store.capacity)},
        available={"CPU": 2.0},
        tasks={},
        actors={},
        workers=2,
        drivers=1,
        driver_pids=[],
        store=store,
        machine=MachineUsage(0.0, 0.0, 0.0, 0.0),
    )


def test_status_and_repr_show_a_store_in_files() -> None:
    note = "the object store (4.8 GiB) keeps its objects in files under /x/objects because ..."
    status = _status(StoreStats(5 * GiB, 0, 0, 0, 0, 0, 0, 0, 0, "/x/objects", note))
    assert f"Object store: {note}" in cluster_repr.status_text(status)
    assert "Object store" in cluster_repr.status_html(status) and "/x/objects" in (
        cluster_repr.status_html(status)
    )
    summary = cluster_repr.summary_text("127.0.0.1:1", True, status)
    assert "in files under /x/objects (/dev/shm too small)" in summary
    assert "/x/objects" in cluster_repr.summary_html("127.0.0.1:1", True, status)


def test_status_and_repr_unchanged_with_a_normal_dev_shm() -> None:
    status = _status(StoreStats(5 * GiB, 0, 0, 0, 0, 0, 0, 0, 0))
    assert "Object store" not in cluster_repr.status_text(status)
    assert "Object store" not in cluster_repr.status_html(status)
    assert "files under" not in cluster_repr.summary_text("127.0.0.1:1", True, status)


def test_rayjupyter_status_shows_a_store_in_files() -> None:
    from rayjupyter.cli.cluster import render_status

    note = "the object store (4.8 GiB) keeps its objects in files under /x/objects because ..."
    shown = render_status("h:1", _status(StoreStats(5 * GiB, 0, 0, 0, 0, 0, 0, 0, 0, "/x", note)))
    assert f"object store: {note}" in shown
    plain = render_status("h:1", _status(StoreStats(5 * GiB, 0, 0, 0, 0, 0, 0, 0, 0)))
    assert "object store:" not in plain
