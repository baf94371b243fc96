"""Resources (CPUs, GPUs, custom), infeasible requests, cancellation, many actors."""

from __future__ import annotations

import os
import time

import pytest
from helpers import wait_for_condition
from test_worker_limit import check_actors_in_processes_of_their_own

import rayjupyter as rj
from rayjupyter.exceptions import TaskCancelledError


@pytest.fixture
def gpu_cluster():
    rj.init(num_cpus=2, num_gpus=2, resources={"accelerator": 1})
    yield
    rj.shutdown()


def test_gpu_tasks_get_their_ids_and_cuda_visible_devices(gpu_cluster):
    @rj.remote(num_gpus=1)
    def which():
        time.sleep(0.5)
        return rj.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    results = rj.get([which.remote(), which.remote()], timeout=60)
    assert sorted(ids[0] for ids, _ in results) == [0, 1]
    assert all(env == str(ids[0]) for ids, env in results)

    @rj.remote(num_gpus=0.5)
    def half():
        return rj.get_gpu_ids()

    assert len(rj.get(half.remote(), timeout=30)) == 1


def test_gpu_actor_and_custom_resources(gpu_cluster):
    @rj.remote(num_gpus=1, resources={"accelerator": 1})
    class Model:
        def devices(self):
            return rj.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    model = Model.remote()
    ids, env = rj.get(model.devices.remote(), timeout=30)
    assert len(ids) == 1 and env == str(ids[0])
    wait_for_condition(lambda: rj.available_resources().get("GPU", 0) == 1.0, timeout=10)
    assert "accelerator" not in rj.available_resources()  # fully used: left out, as in Ray


def test_work_waits_while_resources_are_busy(gpu_cluster):
    @rj.remote(resources={"accelerator": 1})
    def exclusive(seconds):
        start = time.monotonic()
        time.sleep(seconds)
        return start, time.monotonic()

    first, second = rj.get([exclusive.remote(0.5), exclusive.remote(0.5)], timeout=60)
    spans = sorted([first, second])
    assert spans[1][0] >= spans[0][1]  # never at the same time


def test_infeasible_request_is_reported_with_the_cluster_resources(cluster, capfd):
    @rj.remote(num_gpus=4)
    def needs_gpus():
        return 1

    ref = needs_gpus.remote()
    seen = {"err": ""}

    def reported():
        seen["err"] += capfd.readouterr().err
        return "needs_gpus" in seen["err"]

    wait_for_condition(reported, timeout=5)
    assert "'GPU': 4.0" in seen["err"] and "'CPU': 2.0" in seen["err"]
    ready, _ = rj.wait([ref], timeout=0.5)
    assert ready == []  # it waits for a node that can run it; it does not fail


@rj.remote
def sleeper(seconds, marker=None):
    if marker:
        open(marker, "w").close()
    time.sleep(seconds)
    return "finished"


def test_cancel_running_task_raises_task_cancelled_error(cluster, tmp_path):
    marker = str(tmp_path / "started")
    ref = sleeper.remote(60, marker)
    wait_for_condition(lambda: os.path.exists(marker), timeout=30)
    rj.cancel(ref)
    with pytest.raises(TaskCancelledError):
        rj.get(ref, timeout=30)
    assert rj.get(sleeper.remote(0), timeout=30) == "finished"  # the worker lives on


class SlowToLoad:
    """An argument whose unpickling in the worker takes a while and leaves a mark."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_load_slowly, (self.marker,))


def _load_slowly(marker: str) -> str:
    open(marker, "w").close()
    time.sleep(1.0)
    return marker


def test_cancel_while_the_worker_sets_the_task_up(cluster, tmp_path):
    """The cancel lands before the task's code runs (its SIGINT comes between tasks)."""
    marker = str(tmp_path / "loading")
    ref = sleeper.remote(60, SlowToLoad(marker))
    wait_for_condition(lambda: os.path.exists(marker), timeout=30)
    rj.cancel(ref)
    with pytest.raises(TaskCancelledError):
        rj.get(ref, timeout=30)
    wait_for_condition(lambda: rj.available_resources().get("CPU", 0) == 2.0, timeout=15)


def test_cancel_queued_task_never_starts_and_force_kills(cluster, tmp_path):
    busy = [sleeper.remote(3) for _ in range(2)]  # both CPUs
    never = str(tmp_path / "never")
    queued = sleeper.remote(0, never)
    rj.cancel(queued)
    with pytest.raises(TaskCancelledError):
        rj.get(queued, timeout=30)
    rj.cancel(busy[0], force=True)
    with pytest.raises(TaskCancelledError):
        rj.get(busy[0], timeout=30)
    assert rj.get(busy[1], timeout=30) == "finished"
    assert not os.path.exists(never)


def test_cancel_is_recursive(cluster, tmp_path):
    marker = str(tmp_path / "child")

    @rj.remote
    def parent(path):
        return rj.get(sleeper.remote(60, path), timeout=120)

    ref = parent.remote(marker)
    wait_for_condition(lambda: os.path.exists(marker), timeout=30)
    rj.cancel(ref)
    with pytest.raises(TaskCancelledError):
        rj.get(ref, timeout=30)
    wait_for_condition(lambda: rj.available_resources().get("CPU", 0) == 2.0, timeout=15)


@pytest.mark.timeout(300)
def test_two_hundred_actors_alive_at_once_on_two_cpus(cluster):
    check_actors_in_processes_of_their_own(200, timeout=240)


def test_ctrl_c_while_waiting_cancels_the_tasks_waited_on(tmp_path):
    """The driver is interrupted in get (as a kernel interrupt does): the task is cancelled."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import os, signal, threading, time
        import rayjupyter as rj
        from rayjupyter.exceptions import TaskCancelledError
        # a shell's background job starts with SIGINT ignored; a kernel has a handler
        signal.signal(signal.SIGINT, signal.default_int_handler)
        rj.init(num_cpus=1)

        @rj.remote
        def forever(path):
            open(path, "w").close()
            time.sleep(600)

        marker = os.path.join(os.environ["TMP_DIR"], "started")
        ref = forever.remote(marker)
        while not os.path.exists(marker):
            time.sleep(0.01)
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            rj.get(ref, timeout=60)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        try:
            rj.get(ref, timeout=30)
        except TaskCancelledError:
            print("cancelled", flush=True)
        rj.shutdown()
        """
    )
    env = dict(os.environ, TMP_DIR=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.stdout.split() == ["interrupted", "cancelled"], out.stderr


def test_cancel_a_running_async_actor_call(cluster):
    import asyncio

    @rj.remote
    class Waiter:
        async def forever(self):
            await asyncio.Event().wait()

        async def ping(self):
            return "pong"

    actor = Waiter.remote()
    assert rj.get(actor.ping.remote(), timeout=30) == "pong"
    stuck = actor.forever.remote()
    ready, _ = rj.wait([stuck], timeout=0.3)
    assert ready == []
    rj.cancel(stuck)
    with pytest.raises(TaskCancelledError):
        rj.get(stuck, timeout=30)
    assert rj.get(actor.ping.remote(), timeout=30) == "pong"  # the actor lives on


def test_a_cancelled_actor_call_is_not_retried_when_its_actor_restarts(cluster, tmp_path):
    """As in Ray: a running call of a regular actor is not interrupted by rj.cancel, and a
    cancelled call is never retried, whatever max_task_retries allows."""
    import signal

    runs = tmp_path / "runs"

    @rj.remote(max_restarts=1, max_task_retries=3)
    class Holder:
        def pid(self):
            return os.getpid()

        def hold(self, path, release):
            with open(path, "a") as log:
                log.write("run\n")
            deadline = time.monotonic() + 60
            while not os.path.exists(release) and time.monotonic() < deadline:
                time.sleep(0.02)  # a long call, ended by the actor's death
            return "released"

    holder = Holder.remote()
    pid = rj.get(holder.pid.remote(), timeout=30)
    call = holder.hold.remote(str(runs), str(tmp_path / "never"))
    wait_for_condition(lambda: runs.exists(), timeout=30)
    rj.cancel(call)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(TaskCancelledError):
        rj.get(call, timeout=30)
    assert rj.get(holder.pid.remote(), timeout=30) != pid  # restarted, and usable
    assert runs.read_text() == "run\n"  # the cancelled call did not run again


def test_a_cancelled_async_call_raises_even_when_the_method_catches_the_cancel(cluster):
    """Ray's documented example: the method catches CancelledError and returns; get still
    raises TaskCancelledError (it used to return None)."""
    import asyncio

    @rj.remote
    class Catcher:
        def __init__(self):
            self.started = asyncio.Event()

        async def f(self):
            self.started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                return "swallowed"

        async def started_yet(self):
            await self.started.wait()
            return True

    actor = Catcher.remote()
    ref = actor.f.remote()
    assert rj.get(actor.started_yet.remote(), timeout=30)
    rj.cancel(ref)
    with pytest.raises(TaskCancelledError):
        rj.get(ref, timeout=30)


def test_cancel_leaves_the_tasks_a_task_waits_on_running(cluster, tmp_path):
    """As in Ray: a non-forced cancel of a task blocked in get stops that task only; the
    tasks it waits on (and their own waits) keep running and finish."""
    import asyncio

    from rayjupyter.exceptions import GetTimeoutError

    @rj.remote(num_cpus=0)
    class Gate:
        def __init__(self):
            self.open = asyncio.Event()

        async def wait(self):
            await self.open.wait()
            return "opened"

        async def release(self):
            self.open.set()

    @rj.remote
    def wait_for(refs, marker):
        open(marker, "w").close()
        return rj.get(refs[0])

    gate = Gate.remote()
    markers = [str(tmp_path / str(i)) for i in range(3)]
    first = wait_for.remote([gate.wait.remote()], markers[0])
    second = wait_for.remote([first], markers[1])
    third = wait_for.remote([second], markers[2])
    # all three run, blocked in get (a blocked task lends its CPU to the next)
    wait_for_condition(lambda: all(map(os.path.exists, markers)), timeout=30)
    rj.cancel(third, recursive=False)
    with pytest.raises(TaskCancelledError):
        rj.get(third, timeout=30)
    for ref in (first, second):
        with pytest.raises(GetTimeoutError):
            rj.get(ref, timeout=0.5)
    gate.release.remote()
    assert rj.get([first, second], timeout=30) == ["opened", "opened"]
