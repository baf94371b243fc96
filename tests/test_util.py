"""concurrent.futures, asyncio, ActorPool and as_completed on a real cluster."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.util import ActorPool, Executor, as_completed, state

pytestmark = pytest.mark.usefixtures("shared_cluster")


@rj.remote
def slow_square(x, seconds=0.0):
    time.sleep(seconds)
    return x * x


@rj.remote
def fail(message):
    raise KeyError(message)


def square(x):
    return x * x


def test_object_ref_future_gives_the_value_or_the_error():
    assert slow_square.remote(4).future().result(timeout=30) == 16
    assert rj.put({"a": 1}).future().result(timeout=30) == {"a": 1}
    with pytest.raises(KeyError):
        fail.remote("missing").future().result(timeout=30)
    futures = [slow_square.remote(i).future() for i in range(5)]
    done, _ = concurrent.futures.wait(futures, timeout=30)
    assert sorted(f.result() for f in done) == [0, 1, 4, 9, 16]


def test_await_refs_in_async_code():
    async def main():
        one = await slow_square.remote(3)
        many = await asyncio.gather(*[slow_square.remote(i) for i in range(4)])
        return one, many

    assert asyncio.run(main()) == (9, [0, 1, 4, 9])


def test_an_await_given_up_on_leaves_the_connection_working():
    async def impatient():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow_square.remote(2, 1.0), 0.05)

    asyncio.run(impatient())
    future = slow_square.remote(3, 0.5).future()
    assert future.cancel()
    # both values arrive after their futures were cancelled; the driver must read on
    unfinished = [("name", "=", "slow_square"), ("state", "!=", "FINISHED")]
    wait_for_condition(lambda: not state.list_tasks(filters=unfinished), timeout=20)
    assert rj.get(slow_square.remote(5), timeout=30) == 25


def test_executor_submit_map_and_errors():
    with Executor() as pool:
        assert pool.submit(square, 7).result(timeout=30) == 49
        assert list(pool.map(square, range(5))) == [0, 1, 4, 9, 16]
        future = pool.submit(int, "not a number")
        with pytest.raises(ValueError):
            future.result(timeout=30)
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(square, 1)


def test_as_completed_yields_refs_as_they_finish():
    refs = [slow_square.remote(1, 1.0), slow_square.remote(2, 0.0)]
    done = as_completed(refs, chunk_size=1, yield_obj_refs=True, timeout=30)  # Ray's signature
    order = [rj.get(ref, timeout=30) for ref in done]
    assert order == [4, 1]


@rj.remote
class Doubler:
    def double(self, value):
        return 2 * value


def test_actor_pool_map_submit_and_get_next():
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    assert list(pool.map(lambda actor, v: actor.double.remote(v), range(6))) == [0, 2, 4, 6, 8, 10]
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), [1, 2, 3])) == [2, 4, 6]
    for value in (10, 20, 30):
        pool.submit(lambda actor, v: actor.double.remote(v), value)
    results = []
    while pool.has_next():
        results.append(pool.get_next(timeout=30))
    assert results == [20, 40, 60]
    with pytest.raises(StopIteration):
        pool.get_next()


def cube(x):
    return x**3


def add(a, b):
    return a + b


def test_multiprocessing_pool_drop_in():
    from rayjupyter.util.multiprocessing import Pool

    with Pool(processes=2) as pool:
        assert pool.map(cube, range(10)) == [x**3 for x in range(10)]
        assert list(pool.imap(cube, range(5))) == [0, 1, 8, 27, 64]
        assert sorted(pool.imap_unordered(cube, range(5))) == [0, 1, 8, 27, 64]
        assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.apply(add, (5, 6)) == 11
        result = pool.apply_async(cube, (3,))
        assert result.get(timeout=30) == 27 and result.ready() and result.successful()
        failing = pool.apply_async(int, ("x",))
        with pytest.raises(ValueError):
            failing.get(timeout=30)
        assert not failing.successful()
    pool = Pool(processes=1)
    pool.close()
    with pytest.raises(ValueError, match="not running"):
        pool.map(cube, [1])
    pool.join()


def test_pool_terminate_stops_unfinished_work():
    from rayjupyter.exceptions import RayActorError
    from rayjupyter.util.multiprocessing import Pool

    pool = Pool(processes=1)
    result = pool.apply_async(time.sleep, (60,))
    pool.terminate()
    with pytest.raises(RayActorError):
        result.get(timeout=30)


def pid_of(_):
    import os

    return os.getpid()


def test_a_live_pool_holds_no_cpu_so_tasks_and_actors_still_run():
    """As in Ray: a pool's processes are actors that hold no CPU once placed; a pool as
    large as the cluster used to starve every other task and actor, silently."""
    from rayjupyter.util.multiprocessing import Pool

    @rj.remote
    class Other:
        def ping(self):
            return "pong"

    with Pool(processes=2) as pool:
        assert pool.map(cube, [1, 2]) == [1, 8]
        assert rj.get(slow_square.remote(3), timeout=30) == 9
        assert rj.get(Other.remote().ping.remote(), timeout=30) == "pong"
        assert rj.available_resources().get("CPU") == 2.0


def test_pool_maxtasksperchild_and_ray_remote_args():
    from rayjupyter.util.multiprocessing import Pool

    with Pool(processes=1, maxtasksperchild=2) as pool:
        pids = pool.map(pid_of, range(6), chunksize=1)
        # two chunks per process: a fresh process after every second chunk
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]
    with Pool(processes=1, ray_remote_args={"num_cpus": 1}) as pool:
        assert pool.map(cube, [2]) == [8]
        assert rj.available_resources().get("CPU") == 1.0  # reserved, as asked
    with pytest.raises(ValueError, match="maxtasksperchild"):
        Pool(processes=1, maxtasksperchild=0)
