"""The node's limit on worker processes: derived from the machine, a setting, never silent."""

from __future__ import annotations

import os
import re
import resource
import time

import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.core import worker_limit
from rayjupyter.core.worker_limit import MAX_WORKERS_ENV, WorkerLimit
from rayjupyter.util import state

# ---------------------------------------------------------------- the decisions, no processes


def test_an_episode_warns_once_and_the_next_episode_warns_again():
    limit = WorkerLimit(4)
    assert limit.room(1) == 3 and limit.room(4) == 0 and limit.room(9) == 0
    first = limit.refused(4, 2, "actors")
    assert first is not None and MAX_WORKERS_ENV in first and "--max-workers" in first
    assert "2 actors" in first and "(now 4)" in first and first.count("\n") == 1
    limit.turn_ended()
    assert limit.refused(4, 3, "actors") is None  # the same episode, turn after turn
    assert limit.refused(4, 1, "tasks") is None
    limit.turn_ended()
    limit.turn_ended()  # a turn with nothing refused: the episode is over
    assert not limit.reached
    assert limit.refused(4, 1, "tasks") is not None
    limit.validate()


def test_settings_that_cannot_work_are_refused_with_the_fix(monkeypatch):
    with pytest.raises(ValueError, match=MAX_WORKERS_ENV):
        worker_limit.check(2, 2.0)  # no room beyond the CPU pool
    with pytest.raises(ValueError, match=">= 0"):
        worker_limit.check(-1, 2.0)
    assert worker_limit.check(0, 2.0) == 0 and worker_limit.check(3, 2.0) == 3
    monkeypatch.setenv(MAX_WORKERS_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_WORKERS_ENV):
        worker_limit.from_env()
    monkeypatch.setenv(MAX_WORKERS_ENV, "500")
    assert worker_limit.from_env() == 500
    with pytest.raises(ValueError, match=MAX_WORKERS_ENV):
        rj.init(num_cpus=600)  # refused before anything starts


def test_the_machine_limit_has_a_floor_and_respects_descriptors():
    limit = worker_limit.machine_max_workers()
    assert limit >= worker_limit.FLOOR
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        assert limit <= max(worker_limit.FLOOR, soft // worker_limit.FDS_PER_WORKER)


# ---------------------------------------------------------------- on real clusters


def check_actors_in_processes_of_their_own(count: int, timeout: float) -> None:
    """count actors alive at once each answer, in order, from a process of its own."""

    @rj.remote
    class Cell:
        def __init__(self, index: int) -> None:
            self.index = index

        def where(self) -> tuple[int, int]:
            return self.index, os.getpid()

    cells = [Cell.remote(i) for i in range(count)]
    answers = rj.get([cell.where.remote() for cell in cells], timeout=timeout)
    assert [index for index, _ in answers] == list(range(count))
    assert len({pid for _, pid in answers}) == count


def test_three_hundred_actors_start_and_answer_on_two_cpus(cluster):
    """Each actor is a forked process of its own (~4 MiB of its own memory): 300 of them
    pass the node's 1024th descriptor, where select() used to fail, and the old cap of 256."""

    check_actors_in_processes_of_their_own(300, timeout=100)


@pytest.fixture
def capped_cluster(monkeypatch):
    """2 CPUs and 4 worker processes at most: the pool's 2 and room for 2 actors."""
    monkeypatch.setenv(MAX_WORKERS_ENV, "4")
    rj.init(num_cpus=2)
    try:
        yield
    finally:
        rj.shutdown()


@rj.remote
class Holder:
    def pid(self):
        return os.getpid()


def test_a_reached_limit_is_said_once_and_work_goes_on_when_processes_free(capped_cluster, capfd):
    first, second = Holder.remote(), Holder.remote()
    assert len(set(rj.get([first.pid.remote(), second.pid.remote()], timeout=30))) == 2
    waiting = [Holder.remote(), Holder.remote()]  # no process for these two
    refs = [actor.pid.remote() for actor in waiting]
    seen = {"err": ""}

    def warned():
        seen["err"] += capfd.readouterr().err
        return MAX_WORKERS_ENV in seen["err"]

    wait_for_condition(warned, timeout=10)
    assert "worker processes, its limit" in seen["err"]

    def pending_reasons():
        rows = state.list_actors(filters=[("state", "=", "PENDING_CREATION")])
        return [row["pending_reason"] or "" for row in rows]

    wait_for_condition(lambda: len(pending_reasons()) == 2, timeout=10)
    assert all(MAX_WORKERS_ENV in reason for reason in pending_reasons())
    assert rj.wait(refs, num_returns=1, timeout=0.3)[0] == []  # they wait; they do not fail

    rj.kill(first)  # one process frees: one waiting actor starts, the other keeps waiting
    ready, not_ready = rj.wait(refs, num_returns=1, timeout=30)
    assert len(ready) == 1
    rj.kill(second)
    assert len(rj.get(not_ready, timeout=30)) == 1
    seen["err"] += capfd.readouterr().err
    assert seen["err"].count(MAX_WORKERS_ENV) == 1  # one warning for the whole episode
    assert not any(pending_reasons())


@rj.remote
def nested(depth: int, delay: float) -> list[int]:
    """A task that submits itself ``depth`` deep, each waiting in get on its child: the
    pids that ran the levels, outermost first."""
    time.sleep(delay)
    below = rj.get(nested.remote(depth - 1, delay), timeout=60) if depth > 1 else []
    return [os.getpid(), *below]


@rj.remote
def plain(i: int) -> int:
    return i * i


def test_nested_blocking_tasks_deeper_than_the_limit_complete_and_say_so(monkeypatch, capfd):
    """Issue 16, 4: a chain of nested blocking tasks deeper than the worker limit held
    every process in get and starved the node silently. At the limit a waiting parent now
    runs its child in its own process; the drivers hear it once, with the setting and the
    depth, and other work goes on."""
    monkeypatch.setenv(MAX_WORKERS_ENV, "8")
    rj.init(num_cpus=2)
    try:
        depth = 40
        chain = nested.remote(depth, 0.02)
        time.sleep(0.3)  # the chain is under way, deeper than 8 processes
        others = [plain.remote(i) for i in range(5)]
        pids = rj.get(chain, timeout=60)
        assert len(pids) == depth and len(set(pids)) <= 8
        assert rj.get(others, timeout=30) == [i * i for i in range(5)]
        err = capfd.readouterr().err
        assert err.count(MAX_WORKERS_ENV) == 1, err  # told once, not once per level
        assert "--max-workers" in err and "(now 8)" in err
        assert re.search(r"nested tasks, \d+ deep", err), err
        assert rj.get(nested.remote(12, 0.0), timeout=30)[-1] > 0  # and again, quietly
        assert MAX_WORKERS_ENV not in capfd.readouterr().err
    finally:
        rj.shutdown()


def test_the_cli_refuses_a_cap_below_the_pool_before_starting_anything(capsys):
    from rayjupyter import cli

    argv = ["start", "--address", "rayjupyter://s3cret@127.0.0.1:9", "--num-cpus", "2"]
    assert cli.main([*argv, "--max-workers", "2"]) == 1
    assert "--max-workers" in capsys.readouterr().err
