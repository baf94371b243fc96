"""Generator tasks on a real cluster: streaming (Ray's ObjectRefGenerator) and dynamic."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.exceptions import TaskCancelledError
from rayjupyter.util.state import list_objects

pytestmark = pytest.mark.usefixtures("shared_cluster")


@rj.remote(num_cpus=0)  # num_cpus=0: also used on 1-CPU multi-node clusters
class Signal:
    """Ordering without timing: one side waits until the other sends."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def send(self) -> None:
        self.event.set()

    async def wait(self) -> None:
        await self.event.wait()


@rj.remote(num_cpus=0)
class Ledger:
    """Counts what a producer made and what its consumer took."""

    def __init__(self) -> None:
        self.made = 0
        self.taken = 0
        self.worst = 0  # most items ever made ahead of what was taken

    def make(self) -> None:
        self.made += 1
        self.worst = max(self.worst, self.made - self.taken)

    def take(self) -> None:
        self.taken += 1

    def counts(self) -> tuple[int, int, int]:
        return self.made, self.taken, self.worst


def objects_of(task_id: bytes) -> list[dict]:
    """The objects the cluster holds whose ids start with task_id (a stream's items)."""
    prefix = task_id.hex()
    return [row for row in list_objects(limit=100_000) if row["object_id"].startswith(prefix)]


def check_cancel_ends_the_stream(gen: Any, stopped: Path) -> None:
    """Cancel a stream of 0, 1, 2, ... after its first item: its producer sees the cancel
    (it creates stopped), the items made so far come out, then the cancellation."""
    assert rj.get(next(gen), timeout=30) == 0
    rj.cancel(gen)
    wait_for_condition(stopped.exists, timeout=30)  # the producer got the cancel
    refs = list(gen)
    assert refs, "the cancellation comes as the last item"
    with pytest.raises(TaskCancelledError):
        rj.get(refs[-1], timeout=30)
    assert [rj.get(r, timeout=30) for r in refs[:-1]] == list(range(1, len(refs)))  # 0 taken


def test_items_arrive_while_the_task_still_runs():
    signal = Signal.remote()

    @rj.remote
    def produce(signal):
        yield 0
        rj.get(signal.wait.remote())  # held here until the caller has read item 0
        yield 1
        yield 2

    gen = produce.remote(signal)
    assert isinstance(gen, rj.ObjectRefGenerator)
    first = next(gen)
    assert rj.get(first, timeout=30) == 0
    ready, _ = rj.wait([gen.completed()], timeout=0)
    assert ready == []  # the task is still running: it waits for our signal
    rj.get(signal.send.remote())
    assert [rj.get(ref, timeout=30) for ref in gen] == [1, 2]
    with pytest.raises(StopIteration):
        next(gen)
    assert gen.is_finished()
    assert rj.get(gen.completed(), timeout=30) is None


def test_async_for_and_anext():
    @rj.remote
    def count(n):
        yield from range(n)

    async def consume():
        gen = count.remote(4)
        first = await gen.__anext__()
        rest = [await ref async for ref in gen]
        return [await first, *rest]

    assert asyncio.run(consume()) == [0, 1, 2, 3]


def test_large_items_go_through_shared_memory_zero_copy():
    @rj.remote
    def arrays():
        for i in range(3):
            yield np.full(200_000, i, dtype=np.float64)  # 1.6 MB each: shared memory

    values = [rj.get(ref, timeout=30) for ref in arrays.remote()]
    assert [float(v[0]) for v in values] == [0.0, 1.0, 2.0]
    assert not values[0].flags.writeable  # mapped read-only from the store, not copied


def test_the_worker_lets_go_of_an_item_once_sent():
    @rj.remote(num_returns="streaming")
    def gen():
        import weakref

        item = np.ones(1 << 20)  # shared memory, not inline
        sent = weakref.ref(item)
        yield item
        del item
        yield sent() is None  # a data task's block, freed before the next is made

    first, second = gen.remote()
    assert rj.get(first, timeout=30).shape == (1 << 20,)
    assert rj.get(second, timeout=30) is True


def test_error_mid_stream_raises_at_its_index_then_ends():
    @rj.remote(max_retries=0)
    def fails_after_two():
        yield "a"
        yield "b"
        raise ValueError("third went wrong")

    gen = fails_after_two.remote()
    refs = list(gen)  # the error is an item; then the stream stops
    assert len(refs) == 3
    assert rj.get(refs[:2], timeout=30) == ["a", "b"]
    with pytest.raises(ValueError, match="third went wrong"):
        rj.get(refs[2], timeout=30)
    with pytest.raises(ValueError):
        rj.get(gen.completed(), timeout=30)


def test_cancel_stops_the_generator(tmp_path):
    stopped = tmp_path / "stopped"

    @rj.remote
    def endless(path):
        i = 0
        try:
            while True:
                yield i
                i += 1
                rj.get(rj.put(None))  # any call: the producer stays interruptible
        except KeyboardInterrupt:
            open(path, "w").close()
            raise

    gen = endless.options(_generator_backpressure_num_objects=1).remote(str(stopped))
    check_cancel_ends_the_stream(gen, stopped)


def test_backpressure_bounds_how_far_the_producer_runs_ahead():
    ledger = Ledger.remote()

    @rj.remote
    def produce(ledger, n):
        for i in range(n):
            rj.get(ledger.make.remote())  # counted before it is yielded
            yield i

    gen = produce.options(_generator_backpressure_num_objects=2).remote(ledger, 8)
    wait_for_condition(lambda: rj.get(ledger.counts.remote())[0] == 2, timeout=30)
    values = []
    while True:
        rj.get(ledger.take.remote())  # the ledger hears of a take before the node does
        try:
            ref = next(gen)
        except StopIteration:
            break
        values.append(rj.get(ref, timeout=30))
    made, _, worst = rj.get(ledger.counts.remote())
    assert values == list(range(8))
    assert made == 8
    assert worst <= 2


def test_backpressure_needs_streaming():
    @rj.remote
    def plain():
        return 1

    with pytest.raises(ValueError, match="streaming generators only"):
        plain.options(_generator_backpressure_num_objects=2).remote()
    with pytest.raises(ValueError, match=">= 1"):
        plain.options(_generator_backpressure_num_objects=0)


def test_generator_methods_of_sync_threaded_and_async_actors():
    @rj.remote
    class Source:
        def numbers(self, n):
            yield from range(n)

        @rj.method(num_returns="streaming")
        def letters(self):
            yield from "ab"

    @rj.remote
    class AsyncSource:
        async def ticks(self, n):
            for i in range(n):
                await asyncio.sleep(0)
                yield i * 10

    source = Source.remote()
    assert [rj.get(r) for r in source.numbers.remote(3)] == [0, 1, 2]
    assert [rj.get(r) for r in source.letters.remote()] == ["a", "b"]
    gen = source.numbers.options(num_returns="streaming").remote(2)
    assert [rj.get(r) for r in gen] == [0, 1]
    threaded = Source.options(max_concurrency=2).remote()
    assert [rj.get(r) for r in threaded.numbers.remote(3)] == [0, 1, 2]
    ticks = AsyncSource.remote().ticks.remote(3)
    assert [rj.get(r) for r in ticks] == [0, 10, 20]


def test_dynamic_returns_one_ref_holding_the_refs():
    @rj.remote(num_returns="dynamic")
    def split(n):
        for i in range(n):
            yield np.full(50_000, i)  # 400 KB: shared memory

    ref = split.remote(3)
    assert isinstance(ref, rj.ObjectRef)
    inner = rj.get(ref, timeout=30)
    assert isinstance(inner, rj.DynamicObjectRefGenerator)
    assert [int(rj.get(r)[0]) for r in inner] == [0, 1, 2]


def test_wait_on_generators_and_refs():
    signal = Signal.remote()

    @rj.remote
    def gated(signal):
        rj.get(signal.wait.remote())
        yield "x"

    @rj.remote
    def plain():
        return 1

    gen = gated.remote(signal)
    ready, not_ready = rj.wait([gen], timeout=0)
    assert (ready, not_ready) == ([], [gen])
    other = plain.remote()
    ready, not_ready = rj.wait([gen, other], num_returns=1, timeout=30)
    assert ready == [other] and not_ready == [gen]
    rj.get(signal.send.remote())
    ready, _ = rj.wait([gen], timeout=30)
    assert ready == [gen]
    assert rj.get(next(gen), timeout=0.1) == "x"  # ready: next does not wait
    ready, _ = rj.wait([gen], timeout=30)  # ended is ready too: next raises StopIteration
    assert ready == [gen]
    with pytest.raises(StopIteration):
        next(gen)


def test_refs_are_freed_after_use_and_when_the_generator_is_dropped():
    @rj.remote
    def produce(n):
        for i in range(n):
            yield np.full(20_000, i)  # 160 KB each: in the store

    gen = produce.remote(4)
    task_id = gen.task_id()
    total = sum(int(rj.get(ref)[0]) for ref in gen)
    assert total == 6
    rj.get(gen.completed())
    del gen
    wait_for_condition(lambda: not objects_of(task_id), timeout=30)

    gen = produce.remote(4)  # never read: its items go with it
    task_id = gen.task_id()
    rj.get(gen.completed(), timeout=30)
    assert len(objects_of(task_id)) == 5  # four items and its own ref
    del gen
    wait_for_condition(lambda: not objects_of(task_id), timeout=30)


def test_a_task_consumes_another_tasks_generator():
    @rj.remote
    def produce(n):
        yield from range(n)

    @rj.remote
    def consume(n):
        return sum(rj.get(ref) for ref in produce.remote(n))

    assert rj.get(consume.remote(5), timeout=60) == 10


def test_a_crashed_generator_is_retried_without_repeating_items(tmp_path):
    marker = tmp_path / "crashed"

    @rj.remote(max_retries=1)
    def flaky(path):
        for i in range(4):
            if i == 2 and not os.path.exists(path):
                open(path, "w").close()
                os._exit(1)  # the worker dies after two items
            yield i

    assert [rj.get(r, timeout=30) for r in flaky.remote(str(marker))] == [0, 1, 2, 3]
    assert marker.exists()


def test_generators_cannot_be_passed_or_got():
    @rj.remote
    def produce():
        yield 1

    gen = produce.remote()
    with pytest.raises(TypeError, match="cannot be passed"):
        rj.put(gen)
    with pytest.raises(TypeError, match="iterate it"):
        rj.get(gen)
    assert [rj.get(r) for r in gen] == [1]


def test_a_dropped_generator_lets_its_held_back_producer_finish():
    @rj.remote
    def produce(n):
        yield from range(n)

    gen = produce.options(_generator_backpressure_num_objects=1).remote(5)
    done = gen.completed()
    assert rj.get(next(gen), timeout=30) == 0
    task_id = gen.task_id()
    del gen  # four items never taken: the window no longer holds the producer
    assert rj.get(done, timeout=30) is None
    del done
    wait_for_condition(lambda: not objects_of(task_id), timeout=30)


@rj.remote
class Ticker:
    """An async generator method that counts until cancelled, and reports both."""

    def __init__(self) -> None:
        self.made = 0
        self.cancelled = False

    async def ticks(self) -> object:
        try:
            while True:
                self.made += 1
                yield self.made
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def report(self) -> tuple[int, bool]:
        return self.made, self.cancelled


def check_ticker_backpressure_and_cancel(ticker: Any) -> None:
    """A window of 2 holds a Ticker's stream two items ahead; a cancel reaches the method."""
    gen = ticker.ticks.options(_generator_backpressure_num_objects=2).remote()
    assert rj.get(next(gen), timeout=30) == 1
    wait_for_condition(lambda: rj.get(ticker.report.remote(), timeout=30)[0] == 3, timeout=30)
    rj.cancel(gen)
    wait_for_condition(lambda: rj.get(ticker.report.remote(), timeout=30)[1], timeout=30)
    made, _ = rj.get(ticker.report.remote(), timeout=30)
    assert made == 3  # item 1 taken, two ahead: held there until the cancel
    refs = list(gen)
    with pytest.raises(TaskCancelledError):
        rj.get(refs[-1], timeout=30)


def test_async_actor_generator_with_backpressure_and_cancel():
    check_ticker_backpressure_and_cancel(Ticker.remote())


def test_sync_actor_generator_stops_between_items_on_cancel():
    signal = Signal.remote()

    @rj.remote
    class Source:
        def numbers(self, signal):
            yield 0
            rj.get(signal.wait.remote())
            i = 1
            while True:
                yield i
                i += 1

    gen = Source.remote().numbers.remote(signal)
    assert rj.get(next(gen), timeout=30) == 0
    rj.cancel(gen)
    rj.get(signal.send.remote())
    refs = list(gen)  # ends: the call stops at its next item
    with pytest.raises(TaskCancelledError):
        rj.get(refs[-1], timeout=30)


def test_async_generator_function_as_a_task():
    @rj.remote
    async def agen(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    assert [rj.get(r, timeout=30) for r in agen.remote(3)] == [0, 1, 2]
