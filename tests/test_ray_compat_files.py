"""What Ray's test_placement_group / test_failure_* files found: placement-group resource
names as Ray reports them, ``rj.util.state`` without an import, the legacy
``placement_group=`` option's deprecation, ``ObjectRef._on_completed``, and a driver that
keeps submitting work no node can run yet staying connected."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import warnings
from typing import Any

import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.util.scheduling_strategies import PlacementGroupSchedulingStrategy

pytestmark = pytest.mark.usefixtures("shared_cluster")


@rj.remote(num_cpus=1)
def assigned() -> dict[str, float]:
    return rj.get_runtime_context().get_assigned_resources()


def test_bundle_is_a_reserved_resource_name() -> None:
    with pytest.raises(ValueError, match="'bundle' is a reserved resource name"):
        rj.util.placement_group([{"bundle": 1}])


def test_assigned_resources_in_a_group_are_the_ones_asked_for() -> None:
    group = rj.util.placement_group([{"CPU": 1}])
    try:
        rj.get(group.ready(), timeout=60)
        for index in (-1, 0):
            strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)
            ref = assigned.options(scheduling_strategy=strategy).remote()
            assert rj.get(ref, timeout=60) == {"CPU": 1.0}
    finally:
        rj.util.remove_placement_group(group)


def test_legacy_placement_group_option_warns() -> None:
    group = rj.util.placement_group([{"CPU": 1}])
    try:
        rj.get(group.ready(), timeout=60)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ref = assigned.options(placement_group=group).remote()
        assert any(
            issubclass(w.category, DeprecationWarning)
            and str(w.message).startswith("placement_group parameter is deprecated")
            for w in caught
        )
        assert rj.get(ref, timeout=60) == {"CPU": 1.0}
    finally:
        rj.util.remove_placement_group(group)


def test_util_state_needs_no_import() -> None:
    code = "import rayjupyter as rj; print(callable(rj.util.state.list_actors))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "True"


@rj.remote
def echo(value: object) -> object:
    return value


@rj.remote(max_retries=0)
def fail() -> None:
    raise ValueError("boom")


def test_on_completed_gets_the_value_or_the_error_and_may_submit() -> None:
    results: list[object] = []
    done = threading.Event()

    def then_submit(value: object) -> None:
        results.append(value)
        results.append(rj.get(echo.remote("nested"), timeout=60))  # no deadlock
        done.set()

    echo.remote(41)._on_completed(then_submit)
    assert done.wait(60)
    assert results == [41, "nested"]

    errors: list[object] = []
    failed = threading.Event()

    def on_error(value: object) -> None:
        errors.append(value)
        failed.set()

    fail.remote()._on_completed(on_error)
    assert failed.wait(60)
    assert isinstance(errors[0], rj.exceptions.RayTaskError)
    assert "boom" in str(errors[0])


ATTACHED_DRIVER = """
import sys, time
import rayjupyter as rj
from rayjupyter.core import client
from rayjupyter.core.api import ADDRESS_SCHEME
from rayjupyter.core.config import NodeConfig
from rayjupyter.core.launcher import LocalCluster

def config(**kwargs):
    return NodeConfig(object_store_memory=100 << 20, sys_path=list(sys.path), **kwargs)


head = LocalCluster(config(num_cpus=0))
nodes = [head]
try:
    rj.init(address=f"{ADDRESS_SCHEME}{head.secret}@{head.address}")
    nodes.append(
        LocalCluster(config(num_cpus=1, resources={"r": 1}, head_address=head.address),
                     secret=head.secret)
    )
    while sum(1 for n in rj.nodes() if n["Alive"]) < 2:
        time.sleep(0.1)
    client.SILENCE_LIMIT_S = 2 * client.HEARTBEAT_S + 1

    @rj.remote(num_cpus=0, resources={"r": 1})
    def hold(seconds):
        time.sleep(seconds)

    holder = hold.remote(60)  # the one "r" stays taken: what follows waits for it
    rj.wait([holder], timeout=1)
    deadline = time.monotonic() + client.SILENCE_LIMIT_S + 2
    while time.monotonic() < deadline:  # a probe a second, never an answer
        assert not rj.wait([hold.remote(0)], timeout=1)[0]
    print("connected")
    rj.shutdown()
finally:
    for node in reversed(nodes):
        node.stop()
"""


def test_attached_driver_submitting_unanswered_work_stays_connected() -> None:
    """Probes queued behind a busy resource get no answer: the driver's own sends (the refs
    it drops) must not stand in for the heartbeat that tells it the node still lives."""
    out = subprocess.run(
        [sys.executable, "-c", ATTACHED_DRIVER], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "connected", out.stderr[-2000:]


def test_a_users_base_exception_fails_the_task_not_the_worker() -> None:
    class Interrupted(BaseException):
        pass

    @rj.remote(max_retries=0)
    def task() -> None:
        raise Interrupted("stop")

    @rj.remote
    class Actor:
        def call(self) -> None:
            raise Interrupted("stop")

        async def async_call(self) -> None:
            raise Interrupted("stop")

    @rj.remote
    class BrokenInit:
        def __init__(self) -> None:
            raise Interrupted("stop")

    with pytest.raises(Interrupted):
        rj.get(task.remote(), timeout=60)
    actor = Actor.remote()
    for call in (actor.call, actor.async_call):
        with pytest.raises(Interrupted):
            rj.get(call.remote(), timeout=60)
    with pytest.raises(rj.exceptions.ActorDiedError, match="Interrupted"):
        rj.get(BrokenInit.remote().__ray_ready__.remote(), timeout=60)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is Python 3.11+")
def test_an_exception_group_stays_a_group() -> None:
    @rj.remote(max_retries=0)
    def task() -> None:
        raise ExceptionGroup("two", [ValueError("a"), TypeError("b")])  # noqa: F821

    with pytest.raises(rj.exceptions.RayTaskError) as caught:
        rj.get(task.remote(), timeout=60)
    error = caught.value
    assert isinstance(error, ExceptionGroup)  # noqa: F821
    assert [type(e) for e in error.exceptions] == [ValueError, TypeError]
    matched, rest = error.split(ValueError)
    assert matched is not None and rest is not None


def test_calls_without_retries_fail_fast_while_the_actor_restarts(tmp_path: Any) -> None:
    release = tmp_path / "release"

    @rj.remote(max_restarts=1, max_task_retries=0)
    class SlowRestart:
        def __init__(self) -> None:
            while rj.get_runtime_context().was_current_actor_reconstructed:
                if release.exists():  # the restart's __init__ holds until the test says
                    break
                time.sleep(0.05)

        def ping(self) -> str:
            return "pong"

    actor = SlowRestart.remote()
    assert rj.get(actor.ping.remote(), timeout=60) == "pong"
    rj.kill(actor, no_restart=False)
    wait_for_condition(lambda: _unavailable(actor), timeout=60)
    release.write_text("go")
    wait_for_condition(lambda: _pong(actor), timeout=60)


def _unavailable(actor: Any) -> bool:
    """A call sent before the kill ended the process waits for the restart (GetTimeoutError,
    "not yet"); one sent while __init__ runs again fails at once."""
    try:
        rj.get(actor.ping.remote(), timeout=2)
    except rj.exceptions.ActorUnavailableError:
        return True
    return False


def _pong(actor: Any) -> bool:
    try:
        return bool(rj.get(actor.ping.remote(), timeout=60) == "pong")
    except rj.exceptions.ActorUnavailableError:
        return False
