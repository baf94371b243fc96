"""A driver sends actor calls to the actor's process itself (direct_calls.py), on real
processes: values, order, the node's books, and deaths in the middle of calls."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.core.driver import _client
from rayjupyter.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    PendingCallsLimitExceeded,
    RayTaskError,
)
from rayjupyter.util.state import list_tasks

pytestmark = pytest.mark.timeout(120)


def direct_sent() -> int:
    return _client().direct_calls.sent


@rj.remote
class Log:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def add(self, item: int, *_unused: object) -> int:
        self.seen.append(item)
        return len(self.seen)

    def items(self) -> list[int]:
        return self.seen

    def big(self) -> np.ndarray:
        return np.arange(1_000_000)

    def fail(self) -> None:
        raise ValueError("no")

    def pid(self) -> int:
        return os.getpid()

    def sleep_then_pid(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    def die(self) -> None:
        os._exit(1)


@rj.remote
def slow(value: int, seconds: float) -> int:
    time.sleep(seconds)
    return value


def test_sync_calls_go_direct_and_the_node_keeps_the_books(cluster):
    log = Log.remote()
    assert rj.get(log.add.remote(0), timeout=30) == 1  # (by the node: the link is made)
    before = direct_sent()
    refs = [log.add.remote(i) for i in range(1, 6)]
    assert rj.get(refs, timeout=30) == [2, 3, 4, 5, 6]
    for i in range(6, 26):
        assert rj.get(log.add.remote(i), timeout=30) == i + 1
    assert direct_sent() - before >= 20
    # the node hears of every call (its notices ride later) and ends each one
    ids = {ref.task_id().hex() for ref in refs}

    def all_finished() -> bool:
        rows = list_tasks(filters=[("name", "=", "Log.add")], limit=1000)
        return sum(row.state == "FINISHED" for row in rows) == 26 and ids <= {
            row.task_id for row in rows
        }

    wait_for_condition(all_finished, timeout=30)


def test_a_call_by_the_node_is_never_overtaken_by_a_direct_one(cluster):
    log = Log.remote()
    rj.get(log.add.remote(0), timeout=30)
    pending = slow.remote(1, 0.5)  # the next call waits at the node for this argument
    sent = direct_sent()
    refs = [log.add.remote(1, pending)] + [log.add.remote(i) for i in range(2, 6)]
    assert direct_sent() == sent  # (all by the node while the first waits)
    assert rj.get(refs, timeout=30) == [2, 3, 4, 5, 6]
    assert rj.get(log.items.remote(), timeout=30) == [0, 1, 2, 3, 4, 5]
    # and a direct call followed by one by the node run in that order too
    first = log.add.remote(6)
    second = log.add.remote(7, rj.put(0))  # a ref argument: by the node
    assert rj.get([first, second], timeout=30) == [7, 8]


def test_large_results_and_errors_come_by_the_node(cluster):
    log = Log.remote()
    rj.get(log.add.remote(0), timeout=30)
    sent = direct_sent()
    for _ in range(3):
        assert rj.get(log.big.remote(), timeout=30)[-1] == 999_999
        with pytest.raises(RayTaskError, match="no"):
            rj.get(log.fail.remote(), timeout=30)
    assert direct_sent() - sent == 6  # sent direct, answered by the node


def test_a_killed_actor_fails_its_direct_call_in_flight(cluster):
    log = Log.remote()
    rj.get(log.add.remote(0), timeout=30)
    sent = direct_sent()
    ref = log.sleep_then_pid.remote(30)
    assert direct_sent() == sent + 1
    time.sleep(0.5)
    rj.kill(log)
    with pytest.raises(ActorDiedError):
        rj.get(ref, timeout=30)


def test_a_process_that_dies_mid_call_is_restarted_and_the_call_retried(cluster):
    log = Log.options(max_restarts=1, max_task_retries=1).remote()
    first_pid = rj.get(log.pid.remote(), timeout=30)
    sent = direct_sent()
    dying = log.die.remote()
    assert direct_sent() == sent + 1
    with pytest.raises(ActorDiedError):  # retried once, and it dies again: no restart left
        rj.get(dying, timeout=60)
    log2 = Log.options(max_restarts=1).remote()
    pid = rj.get(log2.pid.remote(), timeout=30)
    rj.get(log2.add.remote(1), timeout=30)
    ref = log2.die.remote()  # no retries: the call fails, the actor restarts
    with pytest.raises(ActorDiedError):
        rj.get(ref, timeout=60)

    def restarted_pid() -> int | None:
        try:  # (calls fail at once while it restarts: max_task_retries=0)
            return rj.get(log2.pid.remote(), timeout=30)
        except ActorUnavailableError:
            return None

    wait_for_condition(lambda: restarted_pid() not in (None, pid, first_pid), timeout=60)
    assert rj.get(log2.items.remote(), timeout=30) == []  # a new instance


def test_answers_before_a_death_keep_their_values(cluster):
    """The node hears of direct calls late (their notices ride on later messages): calls
    answered just before the process died are ended with their values, not failed."""
    log = Log.remote()
    rj.get(log.add.remote(0), timeout=30)
    refs = [log.add.remote(i) for i in range(1, 4)]
    assert rj.get(refs, timeout=30) == [2, 3, 4]
    pid = rj.get(log.pid.remote(), timeout=30)
    os.kill(pid, 9)  # before the driver sent the node its notices of those calls
    time.sleep(0.5)
    assert rj.get(refs, timeout=30) == [2, 3, 4]

    def ended_with_values() -> bool:
        rows = list_tasks(filters=[("name", "=", "Log.add")], limit=100)
        return sorted(row.state for row in rows) == ["FINISHED"] * 4

    wait_for_condition(ended_with_values, timeout=30)


def test_threaded_and_async_actors_take_direct_calls(cluster):
    @rj.remote(max_concurrency=4)
    class Threaded:
        def where(self, item: int) -> int:
            return item

    @rj.remote
    class Async:
        async def where(self, item: int) -> int:
            await asyncio.sleep(0)
            return item

    for cls in (Threaded, Async):
        actor = cls.remote()
        rj.get(actor.where.remote(0), timeout=30)
        sent = direct_sent()
        assert [rj.get(actor.where.remote(i), timeout=30) for i in range(10)] == list(range(10))
        assert direct_sent() - sent == 10


def test_a_burst_goes_by_the_node(cluster):
    log = Log.remote()
    rj.get(log.add.remote(0), timeout=30)
    sent = direct_sent()
    refs = [log.add.remote(i) for i in range(1, 2001)]
    assert rj.get(refs, timeout=60)[-1] == 2001
    # at most IN_FLIGHT (8) unanswered direct calls: the rest go by the node, in order,
    # until every call it took has ended (then a few go direct again)
    assert direct_sent() - sent < 1000
    assert rj.get(log.items.remote(), timeout=30) == list(range(2001))


def test_max_pending_calls_still_holds(cluster):
    log = Log.options(max_pending_calls=2).remote()
    rj.get(log.add.remote(0), timeout=30)
    refs = [log.sleep_then_pid.remote(0.5), log.sleep_then_pid.remote(0.5)]
    with pytest.raises(PendingCallsLimitExceeded):
        log.add.remote(1)
    rj.get(refs, timeout=30)
    assert rj.get(log.add.remote(2), timeout=30) == 2


@rj.remote
def hello(name: str) -> int:
    print(f"hello, {name}")
    return len(name)


@rj.remote
class Talker:
    def say(self, text: str) -> str:
        print(f"says {text}")
        return text

    def quiet(self) -> int:
        return 0


def test_a_task_that_printed_shows_its_output_before_its_result(cluster, capsys):
    """Its result comes by the node, which forwards the worker's output first: a notebook
    cell does not end before the task's prints show (worker_output.py)."""
    rj.get(hello.remote("warm"), timeout=30)
    talker = Talker.remote()
    rj.get(talker.quiet.remote(), timeout=30)
    for i in range(20):
        assert rj.get(hello.remote(f"world {i}"), timeout=30) == len(f"world {i}")
        assert f"hello, world {i}" in capsys.readouterr().out
        assert rj.get(talker.say.remote(f"call {i}"), timeout=30) == f"call {i}"
        assert f"says call {i}" in capsys.readouterr().out
    sent = direct_sent()
    assert rj.get(talker.quiet.remote(), timeout=30) == 0  # (a quiet call stays direct)
    assert direct_sent() == sent + 1


def test_a_link_closing_while_a_call_is_sent_does_not_lose_that_call(cluster, monkeypatch):
    """Another actor's link closes between a direct call's send and its notice to the
    node: the driver then asks the node again for what it waits on, and must not ask for
    that call's result before its notice (the node would say it knows no such object)."""
    caller, doomed = Log.remote(), Log.remote()
    rj.get(caller.add.remote(0), timeout=30)
    doomed_pid = rj.get(doomed.pid.remote(), timeout=30)
    client = _client()
    links = client.transport.links
    send_on_link = links.call

    def call_as_another_link_closes(worker, task):
        lost = links.lost
        os.kill(doomed_pid, 9)
        wait_for_condition(lambda: client._links_lost > lost, timeout=30)
        time.sleep(0.2)  # (the reader has acted on the loss)
        monkeypatch.setattr(links, "call", send_on_link)
        return send_on_link(worker, task)

    monkeypatch.setattr(links, "call", call_as_another_link_closes)
    sent = direct_sent()
    ref = caller.add.remote(1)
    assert direct_sent() == sent + 1
    assert rj.get(ref, timeout=30) == 2
    assert rj.get(caller.add.remote(2), timeout=30) == 3
