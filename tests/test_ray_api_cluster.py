"""Ray's API surface on a real cluster: the runtime context, ObjectRef's extras, actors'
built-in methods, concurrency groups, exit_actor's atexit handlers, ray.util helpers."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import warnings

import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.util import as_completed, get_node_ip_address, map_unordered

pytestmark = pytest.mark.usefixtures("shared_cluster")


@rj.remote
def context_of_task():
    ctx = rj.get_runtime_context()
    return {
        "name": ctx.get_task_name(),
        "function": ctx.get_task_function_name(),
        "resources": ctx.get_assigned_resources(),
        "dict": ctx.get(),
        "task_id": ctx.get_task_id(),
        "actor_name": ctx.get_actor_name(),
        "accelerators": ctx.get_accelerator_ids(),
        "namespace": ctx.namespace,
    }


@rj.remote
class Probe:
    def context(self):
        ctx = rj.get_runtime_context()
        return {
            "name": ctx.get_task_name(),
            "function": ctx.get_task_function_name(),
            "resources": ctx.get_assigned_resources(),
            "dict": ctx.get(),
            "actor_name": ctx.get_actor_name(),
            "namespace": ctx.namespace,
        }

    def echo_through_current_actor(self, value):
        return rj.get_runtime_context().current_actor.echo.remote(value)

    def echo(self, value):
        return value

    def pid(self):
        return os.getpid()

    def reconstructed(self):
        return rj.get_runtime_context().was_current_actor_reconstructed


def test_runtime_context_in_a_task():
    info = rj.get(context_of_task.remote(), timeout=60)
    assert info["name"] == "context_of_task"
    assert info["function"] == f"{__name__}.context_of_task"
    assert info["resources"] == {"CPU": 1.0}
    assert set(info["dict"]) == {"job_id", "node_id", "namespace", "task_id"}
    assert info["dict"]["task_id"] == rj.TaskID.from_hex(info["task_id"])
    assert info["actor_name"] is None
    assert info["accelerators"] == {"GPU": []}
    named = rj.get(context_of_task.options(name="renamed", num_cpus=2).remote(), timeout=60)
    assert named["name"] == "renamed"
    assert named["resources"] == {"CPU": 2.0}
    assert rj.get(context_of_task.options(num_cpus=0.5).remote())["resources"] == {"CPU": 0.5}


def test_runtime_context_in_an_actor():
    plain = Probe.remote()
    info = rj.get(plain.context.remote(), timeout=60)
    assert info["name"] == "Probe.context"
    assert info["function"] == f"{__name__}.Probe.context"
    assert info["resources"] == {}  # an actor holds no CPU while it runs, as in Ray
    assert "actor_id" in info["dict"] and "task_id" in info["dict"]
    assert info["actor_name"] == ""
    named = Probe.options(name="compat-probe", namespace="compat-ns", num_cpus=1).remote()
    info = rj.get(named.context.remote(), timeout=60)
    assert info["actor_name"] == "compat-probe"
    assert info["namespace"] == "compat-ns"
    assert info["resources"] == {"CPU": 1.0}
    assert rj.get(rj.get(plain.echo_through_current_actor.remote(7), timeout=60)) == 7
    rj.kill(named)


def test_runtime_context_in_the_driver():
    ctx = rj.get_runtime_context()
    assert ctx.get_task_id() is None and ctx.get_actor_id() is None
    assert ctx.get_actor_name() is None
    assert set(ctx.get()) == {"job_id", "node_id", "namespace"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ctx.node_id == rj.NodeID.from_hex(ctx.get_node_id())
        assert ctx.job_id.hex() == ctx.get_job_id()
    assert any("Use get_node_id() instead" in str(w.message) for w in caught)
    assert ctx.get_session_name() and os.path.isdir(ctx.get_temp_dir())
    assert ctx.gcs_address
    assert ctx.get_node_labels() == {}
    assert ctx.get_dashboard_url() == ""
    assert ctx.runtime_env == {}
    with pytest.raises(RuntimeError, match="inside a task"):
        ctx.is_canceled()
    with pytest.raises(RuntimeError, match="inside an actor"):
        _ = ctx.current_actor


def test_was_current_actor_reconstructed_after_a_restart():
    actor = Probe.options(max_restarts=1).remote()
    assert rj.get(actor.reconstructed.remote(), timeout=60) is False
    os.kill(rj.get(actor.pid.remote(), timeout=60), signal.SIGKILL)
    wait_for_condition(lambda: _reconstructed(actor), timeout=60)


def _reconstructed(actor):
    try:
        return rj.get(actor.reconstructed.remote(), timeout=30)
    except rj.exceptions.RayActorError:
        return False


@rj.remote
def wait_until_cancelled():
    ctx = rj.get_runtime_context()
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            time.sleep(0.05)
    except KeyboardInterrupt:
        return ctx.is_canceled()
    return False


def test_is_canceled_inside_a_cancelled_async_call():
    @rj.remote
    class Slow:
        async def run(self):
            ctx = rj.get_runtime_context()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                assert ctx.is_canceled()
                raise

        async def ready(self):
            return True

    slow = Slow.remote()
    rj.get(slow.ready.remote(), timeout=60)
    ref = slow.run.remote()
    time.sleep(0.5)
    rj.cancel(ref)
    with pytest.raises(rj.exceptions.TaskCancelledError):
        rj.get(ref, timeout=30)


def test_object_ref_as_future_task_id_and_job_id():
    ref = context_of_task.remote()

    async def main():
        return await ref.as_future()

    assert asyncio.run(main())["name"] == "context_of_task"
    assert isinstance(ref.task_id(), rj.TaskID)
    assert ref.task_id().binary() == ref.binary()[:16]
    assert ref.job_id().hex() == rj.get_runtime_context().get_job_id()


def test_wait_on_no_refs():
    assert rj.wait([]) == ([], [])


def _write_bye(path):
    with open(path, "w") as f:
        f.write("bye")


def test_ray_ready_and_terminate_run_atexit(tmp_path):
    marker = tmp_path / "exited"

    @rj.remote
    class WithExitHook:
        def __init__(self, path):
            import atexit

            atexit.register(_write_bye, path)

        def ping(self):
            return "pong"

    actor = WithExitHook.remote(str(marker))
    assert rj.get(actor.__ray_ready__.remote(), timeout=60) is True
    assert "__ray_terminate__" in dir(actor) and "ping" in dir(actor)
    rj.wait([actor.__ray_terminate__.remote()], timeout=60)
    wait_for_condition(lambda: marker.exists() and marker.read_text() == "bye", timeout=30)
    with pytest.raises(rj.exceptions.RayActorError):
        rj.get(actor.ping.remote(), timeout=30)


def test_exit_actor_runs_atexit_handlers_and_kill_does_not(tmp_path):
    @rj.remote
    class Leaves:
        def __init__(self, path):
            import atexit

            atexit.register(_write_bye, path)

        def leave(self):
            rj.actor.exit_actor()

        def ready(self):
            return True

    by_exit, by_kill = tmp_path / "exit", tmp_path / "kill"
    leaving = Leaves.remote(str(by_exit))
    rj.get(leaving.ready.remote(), timeout=60)
    rj.wait([leaving.leave.remote()], timeout=30)
    wait_for_condition(by_exit.exists, timeout=30)
    killed = Leaves.remote(str(by_kill))
    rj.get(killed.ready.remote(), timeout=60)
    rj.kill(killed)
    time.sleep(1)
    assert not by_kill.exists()


@rj.remote(concurrency_groups={"io": 2})
class Grouped:
    def __init__(self):
        self.release = threading.Event()
        self.threads = set()

    @rj.method(concurrency_group="io")
    def block(self):
        self.threads.add(threading.current_thread().name)
        return self.release.wait(30)

    def open_gate(self):  # the default group: runs while both io calls wait
        self.release.set()
        return threading.current_thread().name


def test_concurrency_groups_run_beside_the_default_group():
    actor = Grouped.remote()
    blocked = [actor.block.remote(), actor.block.remote()]  # both io slots, waiting
    time.sleep(0.5)
    default_thread = rj.get(actor.open_gate.remote(), timeout=30)
    assert rj.get(blocked, timeout=30) == [True, True]
    assert not default_thread.startswith("io")


@rj.remote(concurrency_groups={"io": 1})
class AsyncGrouped:
    def __init__(self):
        self.release = asyncio.Event()

    @rj.method(concurrency_group="io")
    async def block(self):
        await asyncio.wait_for(self.release.wait(), 30)
        return "done"

    async def open_gate(self):
        self.release.set()


def test_concurrency_groups_of_an_async_actor():
    actor = AsyncGrouped.remote()
    blocked = actor.block.remote()
    time.sleep(0.3)
    rj.get(actor.open_gate.remote(), timeout=30)
    assert rj.get(blocked, timeout=30) == "done"


@rj.remote
def identity(x, seconds=0.0):
    time.sleep(seconds)
    return x


def test_as_completed_as_ray_has_it():
    refs = [identity.remote(1, 1.0), identity.remote(2)]
    assert list(as_completed(refs, chunk_size=1)) == [2, 1]  # values, in finishing order
    refs = [identity.remote(i) for i in range(5)]
    assert sorted(as_completed(refs)) == list(range(5))
    yielded = list(as_completed(refs, yield_obj_refs=True))
    assert all(isinstance(ref, rj.ObjectRef) for ref in yielded)
    with pytest.raises(ValueError, match="chunk_size"):
        next(as_completed(refs, chunk_size=0))
    with pytest.raises(ValueError, match="num_returns"):
        next(as_completed(refs, num_returns=2))


def test_map_unordered_bounds_what_is_in_flight():
    results = list(map_unordered(identity, range(12), backpressure_size=3, chunk_size=2))
    assert sorted(results) == list(range(12))
    with pytest.raises(TypeError):
        next(map_unordered(lambda x: x, [1]))


def test_get_node_ip_address():
    address = get_node_ip_address()
    assert address.count(".") == 3
    assert rj.get(rj.remote(get_node_ip_address).remote(), timeout=60) == address


def test_duplicate_actor_name_raises_actor_already_exists():
    first = Probe.options(name="compat-dup").remote()
    rj.get(first.echo.remote(1), timeout=60)
    with pytest.raises(rj.exceptions.ActorAlreadyExistsError) as caught:
        Probe.options(name="compat-dup").remote()
    assert isinstance(caught.value, ValueError)
    rj.kill(first)


@rj.remote
def omp_threads():
    return os.environ.get("OMP_NUM_THREADS")


@pytest.mark.skipif("OMP_NUM_THREADS" in os.environ, reason="set here: workers keep it")
def test_omp_num_threads_follows_the_tasks_cpus():
    assert rj.get(omp_threads.remote(), timeout=60) == "1"
    assert rj.get(omp_threads.options(num_cpus=2).remote(), timeout=60) == "2"
    assert rj.get(omp_threads.options(num_cpus=0.25).remote(), timeout=60) == "1"
    env = {"env_vars": {"OMP_NUM_THREADS": "3"}}
    assert rj.get(omp_threads.options(runtime_env=env).remote(), timeout=60) == "3"


def test_nil_and_random_refs():
    assert rj.ObjectRef.nil().is_nil()
    random_ref = rj.ObjectRef.from_random()
    assert not random_ref.is_nil() and random_ref != rj.ObjectRef.from_random()
    assert rj.wait([random_ref], timeout=0.1) == ([], [random_ref])


def test_exit_actor_fails_its_own_call_even_when_caught(tmp_path):
    @rj.remote
    class Stubborn:
        def __init__(self, path):
            self.path = path

        def leave(self, catch):
            try:
                rj.actor.exit_actor()
            except SystemExit:
                if not catch:
                    raise
            return "kept running"  # never reaches the caller: the actor ends anyway

        def __ray_shutdown__(self):
            with open(self.path, "w") as f:
                f.write("shutdown")

    for catch in (False, True):
        marker = tmp_path / f"shutdown-{catch}"
        actor = Stubborn.remote(str(marker))
        with pytest.raises(rj.exceptions.ActorDiedError, match=r"exit_actor\(\)"):
            rj.get(actor.leave.remote(catch), timeout=60)
        with pytest.raises(rj.exceptions.ActorDiedError):
            rj.get(actor.__ray_ready__.remote(), timeout=30)
        assert marker.read_text() == "shutdown"  # __ray_shutdown__ ran before the end
    with pytest.raises(TypeError, match="non-actor worker"):
        rj.actor.exit_actor()


def test_exit_actor_in_init_and_from_an_async_actors_own_task(tmp_path):
    @rj.remote
    class LeavesAtOnce:
        def __init__(self, path):
            import atexit

            atexit.register(_write_bye, path)
            rj.actor.exit_actor()

        def ping(self):
            return "pong"

    first = tmp_path / "init"
    gone = LeavesAtOnce.remote(str(first))
    wait_for_condition(first.exists, timeout=30)
    with pytest.raises(rj.exceptions.ActorDiedError):
        rj.get(gone.ping.remote(), timeout=30)

    @rj.remote
    class AsyncLeaver:
        def __init__(self, path):
            import atexit

            atexit.register(_write_bye, path)

        async def leave_later(self):
            async def leave():
                await asyncio.sleep(0.2)
                rj.actor.exit_actor()

            self.task = asyncio.get_running_loop().create_task(leave())
            return "scheduled"

    second = tmp_path / "async"
    leaver = AsyncLeaver.remote(str(second))
    assert rj.get(leaver.leave_later.remote(), timeout=60) == "scheduled"
    wait_for_condition(second.exists, timeout=30)


def test_actor_died_error_names_the_actor():
    actor = Probe.remote()
    rj.get(actor.echo.remote(1), timeout=60)
    rj.kill(actor)
    with pytest.raises(rj.exceptions.RayActorError) as caught:
        rj.get(actor.echo.remote(2), timeout=30)
    assert caught.value.actor_id == actor._actor_id.hex()
