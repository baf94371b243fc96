"""Large arguments passed by value: stored once by the caller, read zero-copy, freed after."""

from __future__ import annotations

import hashlib
import os
import signal

import numpy as np
from helpers import mapped_file, wait_for_condition

import rayjupyter as rj
from rayjupyter.core import queries
from rayjupyter.core.api import _client
from rayjupyter.core.object_files import pool_prefix, shm_path
from rayjupyter.core.object_ref import ObjectRef
from rayjupyter.core.serialization import INLINE_THRESHOLD
from rayjupyter.core.task_args import pack_args

MiB = 2**20
SIZE = 32 * MiB


def _big() -> np.ndarray:
    return np.arange(SIZE // 8, dtype=np.float64)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()


def _look(array: np.ndarray) -> tuple[str, bool, bool]:
    """(digest, writeable, lies in the store's shared memory) of an argument in a worker."""
    mapped = mapped_file(array.__array_interface__["data"][0])
    prefix = shm_path(_client().session, b"")
    return _digest(array), bool(array.flags.writeable), mapped.startswith(prefix)


def _session_object_files() -> list[str]:
    """The session's object files (pooled files, kept for reuse, are not objects)."""
    session = _client().session
    directory, stem = os.path.split(shm_path(session, b""))
    pool = os.path.basename(pool_prefix(session))
    return [n for n in os.listdir(directory) if n.startswith(stem) and not n.startswith(pool)]


def _store_is_empty() -> bool:
    stats = queries.store_stats(_client())
    return stats.num_objects == 0 and not _session_object_files()


@rj.remote
def look(array):
    return _look(array)


@rj.remote
def look_inside(items, *, extra=None):
    return [_look(a) for a in items["arrays"]], items["name"], _look(extra)


def test_a_big_argument_arrives_intact_zero_copy_and_is_freed_after(cluster):
    array = _big()
    assert rj.get(look.remote(np.ones(4)), timeout=60)[0]  # a worker is up: nothing held
    wait_for_condition(_store_is_empty, timeout=30)
    ref = look.remote(array)
    digest, writeable, shared = rj.get(ref, timeout=60)
    assert digest == _digest(array)
    assert not writeable and shared  # as a ref's value: read-only, mapped from the store
    # the call is over: its copy is freed although the result's ref is still held
    wait_for_condition(_store_is_empty, timeout=30, message="the argument's file was freed")
    del ref


def test_the_freed_argument_file_is_kept_for_the_next_write(cluster):
    """The worker lets go of a by-value argument when its task ends, so the node can pool the
    file: the next big write reuses its pages instead of faulting fresh ones."""
    session = _client().session
    array = _big()
    for _ in range(3):
        assert rj.get(look.remote(array), timeout=60)[0] == _digest(array)
        wait_for_condition(_store_is_empty, timeout=30)
    from rayjupyter.core.object_files import pooled_files

    pooled = pooled_files(pool_prefix(session))
    assert [size for size, _ in pooled if size >= SIZE], pooled


def test_nested_and_keyword_big_arguments(cluster):
    a, b, c = _big(), _big() + 1, _big() + 2
    ref = look_inside.remote({"arrays": [a, b], "name": "pair"}, extra=c)
    looks, name, extra = rj.get(ref, timeout=60)
    assert name == "pair"
    assert [d for d, _, _ in looks] == [_digest(a), _digest(b)]
    assert extra[0] == _digest(c) and not extra[1]
    assert all(not w for _, w, _ in looks)  # read-only views of the store, as Ray gives
    wait_for_condition(_store_is_empty, timeout=30)


def test_a_retried_task_still_finds_its_big_argument(cluster, tmp_path):
    marker = str(tmp_path / "tried")

    @rj.remote(max_retries=1)
    def die_first(array, path):
        if not os.path.exists(path):
            open(path, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return _look(array)

    array = _big()
    digest, writeable, shared = rj.get(die_first.remote(array, marker), timeout=90)
    assert os.path.exists(marker)  # the first try died
    assert digest == _digest(array) and not writeable and shared
    wait_for_condition(_store_is_empty, timeout=30)


def test_actor_calls_and_constructors_take_big_arguments(cluster):
    @rj.remote
    class Holder:
        def __init__(self, array):
            self.first = _look(array)  # the array itself is not kept: only its look

        def first_look(self):
            return self.first

        def look(self, array, scale=1):
            return _look(array), scale

    array = _big()
    holder = Holder.remote(array)
    assert rj.get(holder.first_look.remote(), timeout=60)[0] == _digest(array)
    other = array * 3
    (digest, writeable, shared), scale = rj.get(holder.look.remote(other, scale=2), timeout=60)
    assert digest == _digest(other) and not writeable and shared and scale == 2
    (digest, _, _), _ = rj.get(holder.look.remote(array=array), timeout=60)
    assert digest == _digest(array)
    # the methods' arguments are freed; the constructor's is held while the actor lives
    # (a restart runs __init__ again), as in Ray
    wait_for_condition(lambda: queries.store_stats(_client()).num_objects == 1, timeout=30)
    rj.kill(holder)
    wait_for_condition(_store_is_empty, timeout=30, message="the constructor's argument freed")


def test_small_arguments_stay_inline():
    puts: list[object] = []

    def put(sobj):
        puts.append(sobj)
        return ObjectRef(os.urandom(8) + (1).to_bytes(8, "big") + bytes(4))

    packed = pack_args((1, "x", np.ones(16)), {"k": b"y" * 1000}, "t", put)
    assert not puts and not packed.deps
    big = np.ones(INLINE_THRESHOLD // 8 + 1)
    packed = pack_args((1, big), {}, "t", put)
    assert len(puts) == 1 and len(packed.deps) == 1 and len(packed.blob) < 1000


def test_a_task_that_returns_its_big_argument(cluster):
    @rj.remote
    def echo(array):
        return array

    array = _big()
    out = rj.get(echo.remote(array), timeout=60)
    assert _digest(out) == _digest(array)
    del out
    wait_for_condition(_store_is_empty, timeout=30)


def test_a_retried_actor_call_still_finds_its_big_argument(cluster, tmp_path):
    marker = str(tmp_path / "tried")

    @rj.remote(max_restarts=1, max_task_retries=1)
    class Fragile:
        def look(self, array, path):
            if not os.path.exists(path):
                open(path, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return _look(array)

    array = _big()
    fragile = Fragile.remote()
    digest, writeable, shared = rj.get(fragile.look.remote(array, marker), timeout=90)
    assert os.path.exists(marker)  # the first try died with the actor's process
    assert digest == _digest(array) and not writeable and shared
    wait_for_condition(_store_is_empty, timeout=30)
    rj.kill(fragile)


def test_no_file_of_the_session_is_left_after_shutdown():
    rj.init(num_cpus=1)
    try:
        session = _client().session
        array = _big()
        assert rj.get(look.remote(array), timeout=60)[0] == _digest(array)
        wait_for_condition(_store_is_empty, timeout=30)
    finally:
        rj.shutdown()
    directory, stem = os.path.split(shm_path(session, b""))
    assert not [n for n in os.listdir(directory) if n.startswith(stem)]  # pooled ones too
