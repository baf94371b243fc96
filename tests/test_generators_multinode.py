"""Streaming generators across nodes: a generator task (or an actor's generator method) that
runs on a peer streams its items back to the caller's node while it runs, with the same
semantics as on one node (see streams.py). Real nodes on loopback, as in test_multinode."""

from __future__ import annotations

import glob
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cluster_helpers import Nodes, alive_nodes, head_id, node_of, nodes_fixture
from helpers import wait_for_condition, wait_for_pids_gone
from test_generators import (
    Ledger,
    Signal,
    Ticker,
    check_cancel_ends_the_stream,
    check_ticker_backpressure_and_cancel,
    objects_of,
)

import rayjupyter as rj
from rayjupyter.exceptions import WorkerCrashedError

pytestmark = pytest.mark.timeout(120)


nodes = nodes_fixture(num_cpus=1, resources={"head": 1})


def wait_for_file(path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.02)


def test_items_stream_from_a_peer_before_its_task_ends(nodes: Nodes) -> None:
    nodes.join(n1=1)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=10)
    signal_actor = Signal.remote()

    @rj.remote(resources={"n1": 1})
    def produce(signal_actor: object) -> Iterator[object]:
        yield rj.get_runtime_context().get_node_id()
        rj.get(signal_actor.wait.remote())  # type: ignore[attr-defined]  # after item 0 is read
        yield 1
        yield 2

    gen = produce.remote(signal_actor)
    where = rj.get(next(gen), timeout=30)
    assert where != head_id()  # only the peer has "n1"
    ready, _ = rj.wait([gen.completed()], timeout=0)
    assert ready == []  # the producer is still running: it waits for our signal
    rj.get(signal_actor.send.remote(), timeout=30)
    assert [rj.get(ref, timeout=30) for ref in gen] == [1, 2]
    with pytest.raises(StopIteration):
        next(gen)
    assert rj.get(gen.completed(), timeout=30) is None

    @rj.remote(resources={"n1": 1}, num_returns="dynamic")
    def dynamic(n: int) -> Iterator[int]:
        yield from range(n)

    refs = rj.get(dynamic.remote(3), timeout=30)
    assert [rj.get(ref, timeout=30) for ref in refs] == [0, 1, 2]

    @rj.remote(resources={"n1": 1})
    def wrapped(n: int) -> Iterator[list[object]]:
        for i in range(n):
            yield [rj.put(i), rj.put(np.full(200_000, i))]  # refs made on the peer, inside

    got = [rj.get(rj.get(ref, timeout=30), timeout=60) for ref in wrapped.remote(2)]
    assert [(small, int(big[-1])) for small, big in got] == [(0, 0), (1, 1)]


def test_tasks_consume_generators_running_on_other_nodes(nodes: Nodes) -> None:
    nodes.join(n1=1)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=10)

    @rj.remote(num_cpus=0)
    def produce(n: int) -> Iterator[tuple[int, str]]:
        for i in range(n):
            yield i, rj.get_runtime_context().get_node_id()

    @rj.remote
    def consume(where: str, n: int) -> tuple[int, set[str], str]:
        gen = produce.options(resources={where: 1}).remote(n)
        pairs = [rj.get(ref, timeout=60) for ref in gen]
        return sum(i for i, _ in pairs), {w for _, w in pairs}, rj.get_runtime_context().node_id

    # a task on the peer reads a stream from the head, and one on the head from the peer
    total, producers, consumer = rj.get(
        consume.options(resources={"n1": 1}).remote("head", 4), timeout=60
    )
    assert (total, producers) == (6, {head_id()}) and consumer != head_id()
    total, producers, consumer = rj.get(
        consume.options(resources={"head": 1}).remote("n1", 4), timeout=60
    )
    assert (total, consumer) == (6, head_id()) and producers != {head_id()}


def test_large_items_and_an_error_mid_stream_from_a_peer(nodes: Nodes) -> None:
    nodes.join(n1=1)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=10)

    @rj.remote(resources={"n1": 1})
    def big(n: int) -> Iterator[np.ndarray]:
        for i in range(n):
            yield np.full(300_000, i, dtype=np.int64)  # 2.4 MB: stays in the peer's store

    gen = big.remote(3)
    task_id = gen.task_id()
    refs = list(gen)
    arrays = [rj.get(ref, timeout=60) for ref in refs]
    assert [(a.shape, int(a[0]), int(a[-1])) for a in arrays] == [
        ((300_000,), i, i) for i in range(3)
    ]
    assert not arrays[0].flags.writeable  # read zero-copy from this node's store
    copies = glob.glob(f"/dev/shm/rj-*{task_id.hex()}*")
    assert len(copies) == 6  # each item on the peer, and pulled here
    del arrays, refs, gen
    wait_for_condition(lambda: not objects_of(task_id), timeout=30)
    # the peer let go of its copies too (a freed file is renamed for reuse)
    wait_for_condition(lambda: not glob.glob(f"/dev/shm/rj-*{task_id.hex()}*"), timeout=30)

    @rj.remote(resources={"n1": 1})
    def fails_at_two() -> Iterator[int]:
        yield 0
        yield 1
        raise KeyError("on a peer, at item 2")

    gen = fails_at_two.remote()
    refs = list(gen)
    assert len(refs) == 3
    assert [rj.get(ref, timeout=30) for ref in refs[:2]] == [0, 1]
    with pytest.raises(KeyError, match="at item 2"):
        rj.get(refs[2], timeout=30)
    with pytest.raises(KeyError):
        rj.get(gen.completed(), timeout=30)


def test_cancel_and_backpressure_reach_a_producer_on_a_peer(nodes: Nodes, tmp_path: Path) -> None:
    nodes.join(n1=1)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=10)
    ledger = Ledger.remote()

    @rj.remote(resources={"n1": 1})
    def produce(ledger: object, n: int) -> Iterator[int]:
        for i in range(n):
            rj.get(ledger.make.remote())  # type: ignore[attr-defined]  # before it is yielded
            yield i

    gen = produce.options(_generator_backpressure_num_objects=2).remote(ledger, 8)
    wait_for_condition(lambda: rj.get(ledger.counts.remote(), timeout=30)[0] == 2, timeout=30)
    values = []
    while True:
        rj.get(ledger.take.remote(), timeout=30)  # the ledger hears of a take before the nodes do
        try:
            ref = next(gen)
        except StopIteration:
            break
        values.append(rj.get(ref, timeout=30))
    made, _, worst = rj.get(ledger.counts.remote(), timeout=30)
    assert (values, made) == (list(range(8)), 8)
    assert worst <= 2  # the window held the producer on the other node

    stopped = tmp_path / "stopped"

    @rj.remote(resources={"n1": 1})
    def endless(path: str) -> Iterator[int]:
        i = 0
        try:
            while True:
                yield i
                i += 1
        except KeyboardInterrupt:
            open(path, "w").close()
            raise

    gen = endless.options(_generator_backpressure_num_objects=1).remote(str(stopped))
    check_cancel_ends_the_stream(gen, stopped)

    # dropped before it was sent to the peer (its argument was not ready): no window there
    signal_actor = Signal.remote()

    @rj.remote(num_cpus=0)
    def after(signal_actor: object) -> int:
        rj.get(signal_actor.wait.remote())  # type: ignore[attr-defined]
        return 5

    gen = produce.options(_generator_backpressure_num_objects=1).remote(
        ledger, after.remote(signal_actor)
    )
    done = gen.completed()
    del gen
    rj.get(signal_actor.send.remote(), timeout=30)
    assert rj.get(done, timeout=30) is None

    # dropped while the window holds its producer: the producer runs on to its end
    gen = produce.options(_generator_backpressure_num_objects=1).remote(ledger, 5)
    done = gen.completed()
    assert rj.get(next(gen), timeout=30) == 0
    task_id = gen.task_id()
    del gen
    assert rj.get(done, timeout=30) is None
    del done
    wait_for_condition(lambda: not objects_of(task_id), timeout=30)


def test_generator_methods_of_an_actor_on_a_peer(nodes: Nodes) -> None:
    nodes.join(n1=2)  # room for two actors
    wait_for_condition(lambda: alive_nodes() == 2, timeout=10)

    @rj.remote(resources={"n1": 1})
    class Source:
        def where(self) -> str:
            return rj.get_runtime_context().get_node_id()

        def count(self, n: int) -> Iterator[int]:
            yield from range(n)

        def big(self, n: int) -> Iterator[np.ndarray]:
            for i in range(n):
                yield np.full(200_000, i, dtype=np.int64)

    source = Source.remote()
    assert rj.get(source.where.remote(), timeout=30) != head_id()
    assert [rj.get(ref, timeout=30) for ref in source.count.remote(5)] == list(range(5))
    assert [int(rj.get(ref, timeout=60)[-1]) for ref in source.big.remote(2)] == [0, 1]
    gen = source.count.options(_generator_backpressure_num_objects=1).remote(4)
    assert [rj.get(ref, timeout=30) for ref in gen] == list(range(4))
    assert rj.get(source.where.remote(), timeout=30) != head_id()  # still there, in order

    check_ticker_backpressure_and_cancel(Ticker.options(resources={"n1": 1}).remote())


def test_an_actor_on_a_peer_restarted_mid_stream_goes_on_without_repeats(
    nodes: Nodes, tmp_path: Path
) -> None:
    nodes.join(n1=1)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=10)
    go = tmp_path / "go"

    @rj.remote(resources={"n1": 1}, max_restarts=1, max_task_retries=1)
    class Source:
        def count(self, go: str, n: int) -> Iterator[int]:
            yield os.getpid()  # the retry's is dropped: the caller has item 0
            wait_for_file(go)
            yield from range(1, n)

    source = Source.remote()
    gen = source.count.remote(str(go), 5)
    pid = rj.get(next(gen), timeout=30)
    os.kill(pid, signal.SIGKILL)  # the actor's process on the peer, mid-stream
    wait_for_pids_gone([pid], timeout=10)
    go.touch()
    assert [rj.get(ref, timeout=60) for ref in gen] == [1, 2, 3, 4]
    assert rj.get(gen.completed(), timeout=30) is None


def test_a_peer_dying_mid_stream_retries_without_repeating_items(
    nodes: Nodes, tmp_path: Path
) -> None:
    by_tag = {"a": nodes.join(gen=1, a=1), "b": nodes.join(gen=1, b=1)}
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
    by_node = {
        rj.get(node_of.options(resources={tag: 1}).remote(), timeout=30): node
        for tag, node in by_tag.items()
    }
    go = tmp_path / "go"

    @rj.remote(resources={"gen": 1}, max_retries=1)
    def produce(go: str, n: int) -> Iterator[object]:
        yield rj.get_runtime_context().get_node_id()  # a retry makes it again: dropped
        wait_for_file(go)  # (the first attempt's node is killed while it waits here)
        yield from range(1, n)

    gen = produce.remote(str(go), 5)
    first = rj.get(next(gen), timeout=30)
    doomed = by_node[first]
    os.kill(doomed.pid, signal.SIGKILL)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=15)
    go.touch()
    assert [rj.get(ref, timeout=60) for ref in gen] == [1, 2, 3, 4]
    assert rj.get(gen.completed(), timeout=30) is None
    wait_for_pids_gone([doomed.pid], timeout=10)

    # out of retries: the node's death is the next item, then the stream ends
    go.unlink()
    gen = produce.options(max_retries=0).remote(str(go), 5)
    survivor = by_node[rj.get(next(gen), timeout=30)]
    assert survivor is not doomed
    os.kill(survivor.pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashedError, match="died"):
        rj.get(next(gen), timeout=60)
    with pytest.raises(StopIteration):
        next(gen)
    wait_for_pids_gone([survivor.pid], timeout=10)
