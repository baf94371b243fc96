"""Queued work that actors starve is said, once per episode, instead of a silent hang."""

from __future__ import annotations

from helpers import wait_for_condition
from test_scheduler import make_task

import rayjupyter as rj
from rayjupyter.core.scheduler import TaskState, WorkerRecord
from rayjupyter.core.starvation import STARVED_ENV, StarvationWatch

TOTAL = {"CPU": 2.0}


def _ready(demand=None):
    task = make_task(demand=demand)
    task.state = TaskState.READY
    return task


def test_the_watch_warns_once_per_episode_and_only_when_actors_hold_what_is_needed():
    watch = StarvationWatch(after_s=5.0)
    queue = [_ready()]
    actors = [{"CPU": 1.0}, {"CPU": 1.0}]
    assert watch.check(0.0, queue, [], actors, TOTAL) is None  # the episode starts
    assert watch.check(4.0, queue, [], actors, TOTAL) is None  # not long enough yet
    text = watch.check(5.0, queue, [], actors, TOTAL)
    assert text is not None and "2 actor(s) hold CPU=2" in text and "num_cpus=0" in text
    assert watch.check(9.0, queue, [], actors, TOTAL) is None  # said once
    assert watch.check(10.0, [], [], actors, TOTAL) is None  # the queue emptied: episode over
    assert watch.check(11.0, queue, [], actors, TOTAL) is None  # a new episode starts
    assert watch.check(16.0, queue, [], actors, TOTAL) is not None


def test_no_warning_while_a_task_runs_or_for_work_actors_do_not_block():
    watch = StarvationWatch(after_s=0.0)
    queue = [_ready()]
    busy = WorkerRecord(b"w", 1)
    busy.task = make_task()
    assert watch.check(1.0, queue, [busy], [{"CPU": 2.0}], TOTAL) is None  # it will free a CPU
    assert watch.check(2.0, queue, [], [], TOTAL) is None  # no actor holds anything
    assert watch.check(3.0, [_ready({"CPU": 8.0})], [], [{"CPU": 2}], TOTAL) is None  # infeasible


def test_an_actor_waiting_to_be_placed_counts_as_waiting_work():
    watch = StarvationWatch(after_s=1.0)
    assert watch.check(0.0, [], [], [{"CPU": 2.0}], TOTAL, [{"CPU": 1.0}]) is None  # starts
    text = watch.check(1.0, [], [], [{"CPU": 2.0}], TOTAL, [{"CPU": 1.0}])
    assert text is not None and "1 task(s) or actor(s)" in text


def test_a_task_waiting_for_cpus_an_actor_holds_is_reported(monkeypatch, capfd):
    monkeypatch.setenv(STARVED_ENV, "1")
    rj.init(num_cpus=1)
    try:

        @rj.remote(num_cpus=1)
        class Holder:
            def ready(self):
                return True

        @rj.remote
        def queued():
            return 1

        holder = Holder.remote()
        assert rj.get(holder.ready.remote(), timeout=30)
        ref = queued.remote()
        other = Holder.remote()  # an actor waiting to be placed waits too
        seen = {"err": ""}

        def warned():
            seen["err"] += capfd.readouterr().err
            return "2 task(s) or actor(s)" in seen["err"] and "1 actor(s) hold CPU=1" in seen["err"]

        wait_for_condition(warned, timeout=30)
        rj.kill(other)
        rj.kill(holder)
        assert rj.get(ref, timeout=30) == 1  # it runs once the actors are gone
    finally:
        rj.shutdown()
