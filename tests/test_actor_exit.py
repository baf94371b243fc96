"""How actors end, on real processes: the graceful end of an actor whose handles all
went (``__ray_shutdown__``, then atexit handlers), ``rj.kill`` staying a hard kill, calls
queued behind ``exit_actor()`` never running, an async actor's ``__init__`` inside its
event loop, and an actor dying with the process that created it."""

from __future__ import annotations

import asyncio
import atexit
import os
import time

import pytest
from helpers import wait_for_condition, wait_for_pids_gone

import rayjupyter as rj
from rayjupyter.actor import exit_actor
from rayjupyter.exceptions import ActorDiedError, GetTimeoutError

pytestmark = pytest.mark.usefixtures("shared_cluster")


def _written(path) -> str:
    return path.read_text() if path.exists() else ""


@rj.remote
class Tidy:
    """Writes ``shutdown`` from __ray_shutdown__ and ``atexit`` from an atexit handler."""

    def __init__(self, log):
        self.log = str(log)
        atexit.register(self._note, "atexit")

    def _note(self, what):
        with open(self.log, "a") as out:
            out.write(what + "\n")

    def __ray_shutdown__(self):
        self._note("shutdown")

    def pid(self):
        return os.getpid()


def test_deleting_the_last_handle_runs_ray_shutdown_then_atexit(tmp_path):
    log = tmp_path / "log"
    actor = Tidy.remote(log)
    pid = rj.get(actor.pid.remote(), timeout=30)
    del actor
    wait_for_condition(lambda: _written(log) == "shutdown\natexit\n", timeout=20)
    wait_for_pids_gone([pid])


def test_an_actor_made_in_a_function_ends_gracefully_when_it_returns(tmp_path):
    log = tmp_path / "log"

    def use_one():
        actor = Tidy.remote(log)
        return rj.get(actor.pid.remote(), timeout=30)

    pid = use_one()
    wait_for_condition(lambda: "shutdown" in _written(log), timeout=20)
    wait_for_pids_gone([pid])


def test_a_busy_actor_ends_gracefully_once_its_calls_are_done(tmp_path):
    log = tmp_path / "log"

    @rj.remote
    class Slow:
        def __init__(self, log):
            self.log = str(log)

        def __ray_shutdown__(self):
            with open(self.log, "a") as out:
                out.write("shutdown\n")

        def work(self):
            time.sleep(1.0)
            with open(self.log, "a") as out:
                out.write("work\n")
            return os.getpid()

    actor = Slow.remote(log)
    ref = actor.work.remote()
    del actor
    pid = rj.get(ref, timeout=30)
    wait_for_condition(lambda: _written(log) == "work\nshutdown\n", timeout=20)
    wait_for_pids_gone([pid])


def test_rj_kill_stays_a_hard_kill(tmp_path):
    log = tmp_path / "log"
    actor = Tidy.remote(log)
    pid = rj.get(actor.pid.remote(), timeout=30)
    rj.kill(actor)
    wait_for_pids_gone([pid])
    time.sleep(0.5)
    assert _written(log) == ""  # neither __ray_shutdown__ nor atexit ran


# ---------------------------------------------------------------- exit_actor, queued calls


@rj.remote(max_concurrency=2)
class Threaded:
    def __init__(self, log):
        self.log = str(log)

    def __ray_shutdown__(self):
        with open(self.log, "a") as out:
            out.write(f"shutdown {time.time()}\n")
        time.sleep(1.0)  # a wide window: a queued call must not start in it

    def stop(self):
        time.sleep(0.3)
        exit_actor()

    def ping(self):
        with open(self.log, "a") as out:
            out.write(f"ping {time.time()}\n")
        time.sleep(0.01)


def test_calls_queued_behind_exit_actor_never_run_on_a_threaded_actor(tmp_path):
    log = tmp_path / "log"
    actor = Threaded.remote(log)
    actor.stop.remote()
    pings = [actor.ping.remote() for _ in range(300)]
    ran = failed = 0
    for ref in pings:
        try:
            rj.get(ref, timeout=60)
            ran += 1
        except ActorDiedError as error:
            assert "exit_actor" in str(error)
            failed += 1
    assert failed > 0
    lines = _written(log).split("\n")
    shutdown_at = next(float(line.split()[1]) for line in lines if line.startswith("shutdown"))
    pings_at = [float(line.split()[1]) for line in lines if line.startswith("ping")]
    # (a margin: a call that began just as exit_actor() was called may log just after)
    late = [at for at in pings_at if at > shutdown_at + 0.05]
    assert late == [], f"{len(late)} calls ran after exit_actor() (of {ran} that ran)"


@rj.remote(max_concurrency=1)
class AsyncStopper:
    async def stop(self):
        await asyncio.sleep(0.5)
        exit_actor()

    async def ping(self):
        return 1


def test_calls_queued_behind_exit_actor_fail_on_an_async_actor():
    actor = AsyncStopper.remote()
    actor.stop.remote()
    pings = [actor.ping.remote() for _ in range(50)]
    for ref in pings:
        with pytest.raises(ActorDiedError, match="exit_actor"):
            rj.get(ref, timeout=30)


# ---------------------------------------------------------------- async __init__


@rj.remote
class StartsATask:
    def __init__(self):
        self.loop = asyncio.get_running_loop()  # __init__ runs inside the actor's loop
        self.ticks = 0
        self.task = asyncio.create_task(self._tick())

    async def _tick(self):
        while True:
            self.ticks += 1
            await asyncio.sleep(0.01)

    async def ticks_and_same_loop(self):
        return self.ticks, asyncio.get_running_loop() is self.loop


def test_an_async_actors_init_runs_in_its_event_loop():
    actor = StartsATask.remote()
    wait_for_condition(lambda: rj.get(actor.ticks_and_same_loop.remote(), timeout=30)[0] > 3)
    assert rj.get(actor.ticks_and_same_loop.remote(), timeout=30)[1] is True
    rj.kill(actor)


def test_exit_actor_in_a_task_started_by_init_ends_the_actor(tmp_path):
    atexit_ran, after_exit = tmp_path / "atexit", tmp_path / "after"

    @rj.remote
    class ExitsFromInit:
        def __init__(self):
            atexit.register(atexit_ran.touch)
            self.leaving = asyncio.create_task(self.leave())

        async def leave(self):
            exit_actor()
            after_exit.touch()  # never reached

        async def ping(self):
            return 1

    actor = ExitsFromInit.remote()
    wait_for_condition(atexit_ran.exists, timeout=20)
    with pytest.raises(ActorDiedError):
        rj.get(actor.ping.remote(), timeout=30)
    assert not after_exit.exists()


# ---------------------------------------------------------------- the owner's fate


@rj.remote
class Blocker:
    async def wait(self):
        await asyncio.sleep(3600)


@rj.remote
class Child:
    def __init__(self, dependency):
        self.dependency = dependency

    def f(self):
        return self.dependency


@rj.remote
class Parent:
    def create(self):
        blocker = Blocker.remote()
        self.blocker = blocker
        return [Child.remote(blocker.wait.remote())]  # its argument never comes

    def pid(self):
        return os.getpid()

    def die(self):
        os._exit(0)


def test_an_actor_whose_owner_died_before_its_arguments_came_fails_its_calls():
    """Ray's test_actor_owner_worker_dies_before_dependency_ready: another process holds
    a handle to an actor whose creator died while its __init__ waited for an argument."""
    parent = Parent.remote()
    pid = rj.get(parent.pid.remote(), timeout=30)
    (child,) = rj.get(parent.create.remote(), timeout=30)
    with pytest.raises(GetTimeoutError):
        rj.get(child.f.remote(), timeout=0.5)  # waits for its __init__'s argument
    parent.die.remote()
    wait_for_pids_gone([pid])
    with pytest.raises(ActorDiedError, match="owner"):
        rj.get(child.f.remote(), timeout=30)
