"""rayjupyter.util.queue.Queue on a real cluster, with Ray's API and semantics."""

from __future__ import annotations

import asyncio
import queue as std_queue
import time

import pytest

import rayjupyter as rj
from rayjupyter.exceptions import ActorDiedError
from rayjupyter.util.queue import Empty, Full, Queue


@pytest.fixture(autouse=True)
def _cluster(shared_cluster):
    yield


def test_items_come_out_in_order_and_the_sizes_follow():
    q = Queue()
    assert q.empty() and not q.full() and q.qsize() == 0
    for item in range(10):
        q.put(item)
        assert q.qsize() == item + 1
    assert len(q) == q.size() == 10 and not q.full()  # maxsize 0: never full
    assert [q.get() for _ in range(10)] == list(range(10))
    assert q.empty()
    q.shutdown()


def test_errors_are_also_the_standard_library_ones():
    assert issubclass(Empty, std_queue.Empty) and issubclass(Full, std_queue.Full)


def test_a_bounded_queue_refuses_or_times_out_when_full():
    q = Queue(maxsize=1)
    q.put(0, block=False)
    assert q.full() and q.qsize() == 1
    with pytest.raises(Full):
        q.put_nowait(1)
    start = time.monotonic()
    with pytest.raises(Full):
        q.put(1, timeout=0.2)
    assert time.monotonic() - start >= 0.2  # it waited for room, then gave up
    with pytest.raises(ValueError, match="timeout"):
        q.put(1, timeout=-1)
    assert q.get() == 0
    q.put(1, timeout=0.2)  # room now: no wait
    assert q.get_nowait() == 1
    q.shutdown()


def test_get_refuses_or_times_out_when_empty_and_a_timeout_loses_nothing():
    q = Queue()
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(std_queue.Empty):
        q.get(block=False)
    start = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.2)
    assert time.monotonic() - start >= 0.2
    with pytest.raises(ValueError, match="timeout"):
        q.get(timeout=-1)
    q.put("after")  # the timed-out get took nothing from the queue
    assert q.get(timeout=5) == "after" and q.empty()
    q.shutdown()


@rj.remote
def produce(q, items):
    for item in items:
        q.put(item, timeout=60)  # waits for room while the consumer is behind
    return "produced"


@rj.remote
class Consumer:
    def take(self, q, count):
        return [q.get(timeout=60) for _ in range(count)]


def test_a_producer_task_and_a_consumer_actor_share_a_bounded_queue():
    q = Queue(maxsize=3)  # the producer must wait for the consumer many times
    consumer = Consumer.remote()
    taken = consumer.take.remote(q, 20)
    assert rj.get(produce.remote(q, list(range(20))), timeout=60) == "produced"
    assert rj.get(taken, timeout=60) == list(range(20))
    assert q.empty()
    q.shutdown()


@rj.remote
def inspect_queue(q):
    first = q.get_nowait()
    q.put_nowait_batch(["from", "the", "task"])
    return type(q).__name__, first, q.qsize()


def test_a_queue_passed_into_a_task_is_the_same_queue():
    q = Queue()
    q.put("from the driver")
    assert rj.get(inspect_queue.remote(q), timeout=30) == ("Queue", "from the driver", 3)
    assert q.get_nowait_batch(3) == ["from", "the", "task"]
    q.shutdown()


def test_a_blocked_get_is_woken_by_a_put_elsewhere():
    q = Queue()
    waiting = Consumer.remote().take.remote(q, 2)
    ready, _ = rj.wait([waiting], timeout=0.2)
    assert ready == []  # it waits in the queue's actor
    rj.get(produce.remote(q, ["a", "b"]), timeout=30)
    assert rj.get(waiting, timeout=30) == ["a", "b"]
    q.shutdown()


def test_batches_go_in_and_out_whole_or_not_at_all():
    q = Queue(maxsize=4)
    q.put_nowait_batch([1, 2, 3])
    with pytest.raises(Full, match="room for 1"):
        q.put_nowait_batch([4, 5])
    assert q.qsize() == 3  # nothing of the refused batch went in
    q.put_nowait_batch(iter([4]))
    with pytest.raises(Empty, match="holding 4"):
        q.get_nowait_batch(5)
    assert q.get_nowait_batch(0) == []
    assert q.get_nowait_batch(4) == [1, 2, 3, 4]
    with pytest.raises(TypeError):
        q.put_nowait_batch(7)
    with pytest.raises(TypeError):
        q.get_nowait_batch(1.5)
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)
    q.shutdown()


def test_async_put_and_get():
    q = Queue(maxsize=1)

    async def main():
        await q.put_async("x")
        with pytest.raises(Full):
            await q.put_async("y", timeout=0.1)
        with pytest.raises(Full):
            await q.put_async("y", block=False)
        got = await q.get_async(timeout=5)
        with pytest.raises(Empty):
            await q.get_async(block=False)
        return got

    assert asyncio.run(main()) == "x"
    q.shutdown()


def test_actor_options_reach_the_queue_actor():
    q = Queue(actor_options={"num_cpus": 1, "name": "the-queue"})
    q.put(1)
    assert rj.get(rj.get_actor("the-queue").qsize.remote(), timeout=30) == 1
    assert rj.available_resources().get("CPU", 0) <= 1.0  # it holds the CPU it asked for
    q.shutdown()
    with pytest.raises(TypeError):
        Queue(actor_options=["num_cpus"])  # type: ignore[arg-type]


def test_shutdown_ends_the_actor_and_its_waiters():
    graceful = Queue()
    graceful.put(1)
    actor = graceful.actor
    graceful.shutdown()
    with pytest.raises(ActorDiedError, match="exit_actor"):  # it exited by itself
        rj.get(actor.qsize.remote(), timeout=30)
    with pytest.raises(RuntimeError, match="shut down"):
        graceful.put(2)
    graceful.shutdown()  # twice is harmless

    forced = Queue()
    waiting = Consumer.remote().take.remote(forced, 1)
    assert rj.wait([waiting], timeout=0.2)[0] == []
    forced.shutdown(force=True)
    with pytest.raises(ActorDiedError):
        rj.get(waiting, timeout=30)


@rj.remote
def take_one(q):
    return q.get(timeout=60)


@rj.remote
def put_one(q, item):
    q.put(item, timeout=60)


def test_many_producers_and_consumers_each_item_taken_once():
    """More blocked consumers than CPUs: a task waiting in get lends its CPU out, and the
    task the node had sent ahead to its worker is taken back and runs elsewhere, once
    (a few rounds: that race once ran such a task twice, or lost its function)."""
    q = Queue(maxsize=2)
    for _ in range(5):
        consumers = [take_one.remote(q) for _ in range(6)]
        producers = [put_one.remote(q, item) for item in range(6)]
        rj.get(producers, timeout=60)
        assert sorted(rj.get(consumers, timeout=60)) == list(range(6))
        assert q.empty()
    q.shutdown()
