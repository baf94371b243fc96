"""Actors on real processes: ordering, handles, names, failures, restarts, concurrency."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.exceptions import ActorDiedError, RayActorError

pytestmark = pytest.mark.usefixtures("shared_cluster")


@rj.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, by=1):
        self.value += by
        return self.value

    def get(self):
        return self.value

    def pid(self):
        return os.getpid()

    def fail(self):
        raise KeyError("no such thing")

    @rj.method(num_returns=2)
    def pair(self):
        return self.value, -self.value


def test_seed_counter_called_1000_times_in_order():
    counter = Counter.remote()
    refs = [counter.increment.remote() for _ in range(1000)]
    assert rj.get(refs, timeout=60) == list(range(1, 1001))
    assert rj.get(counter.get.remote(), timeout=30) == 1000


def test_actor_runs_in_its_own_process_and_keeps_state():
    counter = Counter.remote(10)
    assert rj.get(counter.pid.remote(), timeout=30) != os.getpid()
    counter.increment.remote(5)
    assert rj.get(counter.get.remote(), timeout=30) == 15
    low, high = counter.pair.remote()
    assert rj.get([low, high], timeout=30) == [15, -15]


def test_method_error_raises_at_get_and_the_actor_stays_alive():
    counter = Counter.remote(1)
    with pytest.raises(KeyError) as info:
        rj.get(counter.fail.remote(), timeout=30)
    assert isinstance(info.value, rj.exceptions.RayTaskError)
    assert rj.get(counter.increment.remote(), timeout=30) == 2


def test_handle_used_by_ten_concurrent_tasks():
    counter = Counter.remote()

    @rj.remote
    def bump(handle, times):
        return rj.get([handle.increment.remote() for _ in range(times)], timeout=60)[-1]

    rj.get([bump.remote(counter, 20) for _ in range(10)], timeout=120)
    assert rj.get(counter.get.remote(), timeout=30) == 200


def test_named_actor_is_found_from_a_task():
    keep = Counter.options(name="global_counter").remote(7)  # named, still refcounted (Ray)

    @rj.remote
    def read_named():
        return rj.get(rj.get_actor("global_counter").get.remote(), timeout=30)

    assert rj.get(read_named.remote(), timeout=60) == 7
    with pytest.raises(ValueError, match="already taken"):
        Counter.options(name="global_counter").remote()
    same = Counter.options(name="global_counter", get_if_exists=True).remote()
    assert rj.get(same.get.remote(), timeout=30) == 7
    with pytest.raises(ValueError, match="Failed to look up actor"):
        rj.get_actor("no_such_actor")
    del keep, same


def test_kill_then_a_call_raises_ray_actor_error():
    counter = Counter.remote()
    assert rj.get(counter.increment.remote(), timeout=30) == 1
    rj.kill(counter)
    with pytest.raises(RayActorError, match="killed"):
        rj.get(counter.increment.remote(), timeout=30)


@rj.remote
class Dependent:
    def dep(self, seconds):
        time.sleep(seconds)
        return 7

    def foo(self, x):
        return x


@rj.remote
def answer():
    return 42


@pytest.mark.parametrize("calls_first", [False, True], ids=["kill_first", "calls_first"])
def test_a_killed_actors_call_waiting_on_its_own_call_fails_and_the_node_lives(calls_first):
    """Ray's test_failure_during_dependency_resolution: kill(no_restart=False) of an actor
    without restarts, and a call whose argument is another call of it, made after the kill
    (racing the process's end) or before it (dep runs, foo waits on it: always the case
    that crashed). Both fail with ActorDiedError; the node used to fail foo twice."""
    actor = Dependent.remote()
    assert rj.get(actor.foo.remote(1), timeout=30) == 1
    if calls_first:
        dep = actor.dep.remote(3600)
        ref = actor.foo.remote(dep)
        assert rj.wait([ref], timeout=0.5)[0] == []  # dep runs; foo waits on it
    rj.kill(actor, no_restart=False)
    if not calls_first:
        dep = actor.dep.remote(3600)
        ref = actor.foo.remote(dep)
    for each in (dep, ref):
        with pytest.raises(ActorDiedError, match="killed"):
            rj.get(each, timeout=30)
    assert rj.get(answer.remote(), timeout=30) == 42  # the node still answers


def test_a_killed_actor_that_restarts_runs_a_call_waiting_on_its_own_call():
    actor = Dependent.options(max_restarts=1).remote()
    assert rj.get(actor.foo.remote(1), timeout=30) == 1
    rj.kill(actor, no_restart=False)
    dep = actor.dep.remote(0.2)
    assert rj.get(actor.foo.remote(dep), timeout=30) == 7
    assert rj.get(dep, timeout=30) == 7


def test_sigkilled_actor_restarts_with_new_pid_and_fresh_state():
    counter = Counter.options(max_restarts=1).remote(100)
    assert rj.get(counter.increment.remote(), timeout=30) == 101
    pid = rj.get(counter.pid.remote(), timeout=30)
    os.kill(pid, signal.SIGKILL)

    def restarted():
        try:
            return rj.get(counter.pid.remote(), timeout=30) != pid
        except ActorDiedError:  # a call that raced the death
            return False

    wait_for_condition(restarted, timeout=30)
    assert rj.get(counter.get.remote(), timeout=30) == 100  # __init__ ran again
    os.kill(rj.get(counter.pid.remote(), timeout=30), signal.SIGKILL)
    with pytest.raises(ActorDiedError, match="died"):
        for _ in range(100):  # out of restarts: every call fails from now on
            rj.get(counter.get.remote(), timeout=30)


def test_exit_actor_ends_it_without_restart():
    @rj.remote
    class Quitter:
        def quit(self):
            rj.actor.exit_actor()

        def ping(self):
            return "pong"

    actor = Quitter.options(max_restarts=3).remote()
    assert rj.get(actor.ping.remote(), timeout=30) == "pong"
    actor.quit.remote()
    with pytest.raises(ActorDiedError, match="exit_actor"):
        for _ in range(100):
            rj.get(actor.ping.remote(), timeout=30)


def test_init_error_makes_every_call_fail_with_the_cause():
    @rj.remote
    class Broken:
        def __init__(self):
            raise RuntimeError("cannot start")

        def ping(self):
            return "pong"

    actor = Broken.remote()
    with pytest.raises(ActorDiedError, match="cannot start"):
        rj.get(actor.ping.remote(), timeout=30)


@rj.remote
class AsyncGate:
    def __init__(self):
        self.event = asyncio.Event()

    async def wait(self):
        await self.event.wait()
        return "released"

    async def release(self):
        self.event.set()
        return "set"


def test_async_actor_runs_methods_concurrently():
    gate = AsyncGate.remote()
    waiters = [gate.wait.remote() for _ in range(5)]
    # the waiters can only finish if release runs while they wait: concurrency, not timing
    assert rj.get(gate.release.remote(), timeout=30) == "set"
    assert rj.get(waiters, timeout=30) == ["released"] * 5


@rj.remote
class ThreadGate:
    def __init__(self):
        self.event = threading.Event()

    def wait(self):
        return self.event.wait(timeout=60)

    def release(self):
        self.event.set()
        return threading.current_thread().name


def test_threaded_actor_with_max_concurrency_runs_calls_at_once():
    gate = ThreadGate.options(max_concurrency=4).remote()
    waiters = [gate.wait.remote() for _ in range(3)]
    rj.get(gate.release.remote(), timeout=30)
    assert rj.get(waiters, timeout=30) == [True, True, True]


def test_non_detached_actor_ends_when_its_handles_are_gone():
    counter = Counter.remote()
    pid = rj.get(counter.pid.remote(), timeout=30)
    del counter
    import psutil

    wait_for_condition(lambda: not psutil.pid_exists(pid), timeout=15)


def test_detached_actor_outlives_its_handles():
    Counter.options(name="keeper", lifetime="detached").remote(3)
    import gc

    gc.collect()
    assert rj.get(rj.get_actor("keeper").get.remote(), timeout=30) == 3
    rj.kill(rj.get_actor("keeper"))


def test_runtime_context_names_the_actor():
    @rj.remote
    class Who:
        def ids(self):
            context = rj.get_runtime_context()
            return context.get_actor_id(), context.get_task_id(), context.get_job_id()

    actor = Who.remote()
    actor_id, task_id, job_id = rj.get(actor.ids.remote(), timeout=30)
    assert actor_id and task_id and job_id == rj.get_runtime_context().get_job_id()


def test_actors_of_a_driver_that_dies_end_with_it(shared_cluster, tmp_path):
    """An attached driver is SIGKILLed: the node stops hearing it and lets its actors go."""
    import subprocess
    import sys
    import textwrap

    import psutil

    script = textwrap.dedent(
        f"""
        import os, time
        import rayjupyter as rj
        rj.init(address={shared_cluster.connect_address!r})

        @rj.remote
        class Pid:
            def pid(self):
                return os.getpid()

        keep = Pid.remote()
        print(rj.get(keep.pid.remote(), timeout=60), flush=True)
        time.sleep(600)
        """
    )
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        actor_pid = int(driver.stdout.readline())
        assert psutil.pid_exists(actor_pid)
    finally:
        driver.kill()
        driver.wait(10)
        driver.stdout.close()
    wait_for_condition(lambda: not psutil.pid_exists(actor_pid), timeout=20)


def test_max_task_retries_reruns_a_call_after_the_actor_restarts(tmp_path):
    marker = str(tmp_path / "crashed_once")

    @rj.remote(max_restarts=1, max_task_retries=1)
    class Fragile:
        def work(self, path):
            if not os.path.exists(path):
                open(path, "w").close()
                os._exit(1)  # the process dies mid-call, once
            return "done after restart"

    actor = Fragile.remote()
    assert rj.get(actor.work.remote(marker), timeout=60) == "done after restart"

    fragile_no_retry = Fragile.options(max_task_retries=0).remote()
    os.unlink(marker)
    with pytest.raises(ActorDiedError, match="not retried"):
        rj.get(fragile_no_retry.work.remote(marker), timeout=60)


def test_actor_output_is_prefixed_with_its_class(capfd):
    @rj.remote
    class Talker:
        def say(self, text):
            print(text)
            return os.getpid()

    pid = rj.get(Talker.remote().say.remote("hello from an actor"), timeout=30)
    seen = {"out": ""}

    def arrived():
        seen["out"] += capfd.readouterr().out
        return "hello from an actor" in seen["out"]

    wait_for_condition(arrived, timeout=10)
    assert f"(Talker pid={pid}) hello from an actor" in seen["out"]


@rj.remote
class Log:
    """Records the calls it runs, in the order it runs them."""

    def __init__(self):
        self.seen = []

    def record(self, tag, _after=None):
        self.seen.append(tag)
        return list(self.seen)


@rj.remote
def record_from_a_task(log, tag):
    return rj.get(log.record.remote(tag), timeout=30)


def test_a_callers_call_waits_only_on_its_own_callers_pending_arguments():
    """Ray orders calls per caller: the driver's call waiting for an argument holds back the
    driver's later calls, not a call another process (a task) makes meanwhile."""
    gate = AsyncGate.remote()
    log = Log.remote()
    opened = gate.wait.remote()  # ready only once the gate is released
    first = log.record.remote("driver-1", opened)
    second = log.record.remote("driver-2")
    # before the fix this waited behind driver-1 (its argument never came): a timeout
    assert rj.get(record_from_a_task.remote(log, "task"), timeout=30) == ["task"]
    rj.get(gate.release.remote(), timeout=30)
    assert rj.get(first, timeout=30) == ["task", "driver-1"]
    assert rj.get(second, timeout=30) == ["task", "driver-1", "driver-2"]


@rj.remote
def calls_past_the_limit_from_a_task(log, opened):
    from rayjupyter.exceptions import PendingCallsLimitExceeded

    kept = [log.record.remote(f"task-{n}", opened[0]) for n in range(2)]
    try:
        log.record.remote("task-2")
    except PendingCallsLimitExceeded:
        return "refused", len(kept)
    return "allowed", len(kept)


def test_max_pending_calls_refuses_a_call_past_the_limit_until_results_come():
    from rayjupyter.exceptions import PendingCallsLimitExceeded

    gate = AsyncGate.remote()
    log = Log.options(max_pending_calls=2).remote()
    opened = gate.wait.remote()
    pending = [log.record.remote(n, opened) for n in range(2)]
    with pytest.raises(PendingCallsLimitExceeded, match="max_pending_calls=2"):
        log.record.remote(2)
    # the limit travels with the handle, and counts per caller: a task has its own two
    answer = calls_past_the_limit_from_a_task.remote(log, [opened])
    assert rj.get(answer, timeout=30) == ("refused", 2)
    rj.get(gate.release.remote(), timeout=30)
    assert rj.get(pending, timeout=30)[0][-1] == 0

    def a_call_goes_again():
        try:
            return rj.get(log.record.remote(3), timeout=30)[-1] == 3
        except PendingCallsLimitExceeded:
            return False

    wait_for_condition(a_call_goes_again, timeout=10)
    unlimited = Log.remote()  # -1 by default: no limit
    assert len(rj.get([unlimited.record.remote(n) for n in range(50)], timeout=30)) == 50
    with pytest.raises(ValueError, match="max_pending_calls must be -1"):
        Log.options(max_pending_calls=0)
