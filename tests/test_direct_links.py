"""Workers answer a local driver directly (direct_links.py), on real processes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.core.driver import _client
from rayjupyter.exceptions import ActorDiedError, WorkerCrashedError

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def start(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """rj.init(num_cpus=2) with the given environment for the node and its workers."""

    def init(**env: str) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        rj.init(num_cpus=2)

    try:
        yield init
    finally:
        rj.shutdown()


def links():  # the driver's ends
    link_ends = _client().transport.links
    assert link_ends is not None
    return link_ends


@rj.remote
def one():
    return 1


@rj.remote
def pid_and_sleep(seconds):
    time.sleep(seconds)
    return os.getpid()


def test_a_sync_result_comes_over_the_link(start):
    start()
    assert rj.get(one.remote(), timeout=30) == 1  # (the link is made at this dispatch)
    before = links().sent
    for _ in range(20):
        assert rj.get(one.remote(), timeout=30) == 1
    assert links().sent - before == 20
    assert 1 <= len(links().readers) <= 2


def test_large_results_and_results_holding_refs_go_through_the_node(start):
    # (on a lease the worker also sends a marker frame on the link: counted here)
    start(RAYJUPYTER_WORKER_LEASES="0")

    @rj.remote
    def big():
        return np.arange(1_000_000)

    @rj.remote
    def holds_ref():
        return [rj.put(7)]

    rj.get(one.remote(), timeout=30)
    before = links().sent
    assert rj.get(big.remote(), timeout=30)[-1] == 999_999
    assert rj.get(rj.get(holds_ref.remote(), timeout=30)[0], timeout=30) == 7
    assert links().sent == before


def test_errors_go_through_the_node(start):
    start(RAYJUPYTER_WORKER_LEASES="0")  # (as above)

    @rj.remote
    def fails():
        raise KeyError("nope")

    rj.get(one.remote(), timeout=30)
    before = links().sent
    with pytest.raises(KeyError):
        rj.get(fails.remote(), timeout=30)
    assert links().sent == before


def test_a_worker_gone_between_its_finish_and_its_answer_loses_nothing(start):
    start(RAYJUPYTER_TEST_EXIT_BEFORE_DIRECT="1")
    for _ in range(3):  # each worker exits right after telling the node
        assert rj.get(one.remote(), timeout=30) == 1
    assert links().sent == 0 and links().lost >= 1


def test_a_worker_killed_mid_task_gives_the_same_error(start, tmp_path):
    start()
    rj.get([one.remote() for _ in range(4)], timeout=30)  # links to the pool's workers
    marker = tmp_path / "pid"

    @rj.remote(max_retries=0)
    def hang(path):
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
        time.sleep(60)

    ref = hang.remote(str(marker))
    wait_for_condition(marker.exists, timeout=30)
    os.kill(int(marker.read_text()), signal.SIGKILL)
    with pytest.raises(WorkerCrashedError):
        rj.get(ref, timeout=30)
    assert rj.get(one.remote(), timeout=30) == 1


def test_an_actor_answers_its_caller_directly_and_dies_as_before(start):
    start()

    @rj.remote
    class Actor:
        def pid(self):
            return os.getpid()

        def sleep(self, seconds):
            time.sleep(seconds)
            return 1

    actor = Actor.remote()
    pid = rj.get(actor.pid.remote(), timeout=30)
    before = links().sent
    assert rj.get(actor.pid.remote(), timeout=30) == pid
    assert links().sent == before + 1
    ref = actor.sleep.remote(60)
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorDiedError):
        rj.get(ref, timeout=30)


def test_links_beyond_the_bound_use_the_node(start):
    start(RAYJUPYTER_DIRECT_LINKS="1")
    for _ in range(5):  # both workers run some: one answers directly, the other not
        pids = rj.get([pid_and_sleep.remote(0.2) for _ in range(2)], timeout=30)
        assert len(pids) == 2
    assert len(links().readers) == 1
    assert links().sent >= 1


def test_links_can_be_turned_off(start):
    start(RAYJUPYTER_DIRECT_LINKS="0")
    assert rj.get([one.remote() for _ in range(10)], timeout=30) == [1] * 10
    assert rj.get(one.remote(), timeout=30) == 1
    assert links().sent == 0 and not links().readers


def test_a_burst_is_answered_by_the_node(start):
    start()
    rj.get(one.remote(), timeout=30)
    before = links().sent
    assert rj.get([one.remote() for _ in range(200)], timeout=60) == [1] * 200
    assert links().sent - before < 100  # (only its tail, with few tasks left, goes direct)
