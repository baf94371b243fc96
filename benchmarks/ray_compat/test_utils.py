"""Ray's generic test helpers, written here over the public API (not Ray's code).

The shim serves this module as ``ray._private.test_utils``, ``ray._common.test_utils`` and
``ray.tests.client_test_utils``; any other name looked up in it is an ``Internal`` (the
test that uses it is skipped). ``import ray`` resolves to the shim or to Ray, so the same
helpers run on both.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.ray_compat.internals import Internal


def client_test_enabled() -> bool:
    """Ray's client mode is not what is measured here."""
    return False


def wait_for_condition(
    condition_predictor: Callable[..., Any],
    timeout: float = 10,
    retry_interval_ms: float = 100,
    raise_exceptions: bool = False,
    **kwargs: Any,
) -> None:
    """Poll ``condition_predictor(**kwargs)`` until it is true, else raise RuntimeError."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if condition_predictor(**kwargs):
                return
        except Exception as error:
            if raise_exceptions:
                raise
            last_error = error
        time.sleep(retry_interval_ms / 1000.0)
    message = "The condition wasn't met before the timeout expired."
    if last_error is not None:
        message += f" Last exception: {last_error!r}"
    raise RuntimeError(message)


async def async_wait_for_condition(
    condition_predictor: Callable[..., Any],
    timeout: float = 10,
    retry_interval_ms: float = 100,
    **kwargs: Any,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition_predictor(**kwargs)
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(retry_interval_ms / 1000.0)
    raise RuntimeError("The condition wasn't met before the timeout expired.")


def generate_system_config_map(**kwargs: Any) -> dict[str, Any]:
    """Fixture parameters setting Ray's internal tuning (the shim's init drops it)."""
    return {"_system_config": kwargs}


def wait_for_pid_to_exit(pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise TimeoutError(f"Timed out while waiting for process {pid} to exit.")


def run_string_as_driver(driver_script: str, env: dict[str, str] | None = None) -> str:
    """Run a driver script in a fresh interpreter (same ``ray`` as this one), return stdout."""
    proc = subprocess.run(
        [sys.executable, "-"],
        input=driver_script.encode(),
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    out = proc.stdout.decode()
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, out, proc.stderr.decode())
    return out


def run_string_as_driver_nonblocking(
    driver_script: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None
    proc.stdin.write(driver_script.encode())
    proc.stdin.close()
    return proc


def placement_group_assert_no_leak(groups: list[Any], timeout: float = 30) -> None:
    """Remove the groups, then wait until the table says so and every resource they held
    (their renamed bundle resources included) is free again."""
    ray = _ray()
    for group in groups:
        ray.util.remove_placement_group(group)

    def removed() -> bool:
        rows = ray.util.placement_group_table().values()
        return all(row["state"] == "REMOVED" for row in rows)

    def recovered() -> bool:
        total = ray.cluster_resources()
        free = ray.available_resources()
        if any("_group_" in name for name in free):
            return False
        stores = ("memory", "object_store_memory")  # objects live there, groups or not
        return all(
            free[name] == amount
            for name, amount in total.items()
            if name in free and name not in stores
        )

    wait_for_condition(removed, timeout=timeout)
    wait_for_condition(recovered, timeout=timeout)


def _ray() -> Any:
    import ray

    return ray


def _signal_actor_class() -> Any:
    """An actor that holds callers in ``wait`` until ``send``: ordering without sleeps."""
    ray = _ray()

    class SignalActor:
        def __init__(self) -> None:
            self.ready_event = asyncio.Event()
            self.num_waiters = 0

        def send(self, clear: bool = False) -> None:
            self.ready_event.set()
            if clear:
                self.ready_event.clear()

        async def wait(self, should_wait: bool = True) -> None:
            if should_wait:
                self.num_waiters += 1
                await self.ready_event.wait()
                self.num_waiters -= 1

        async def cur_num_waiters(self) -> int:
            return self.num_waiters

    return ray.remote(num_cpus=0)(SignalActor)


def _semaphore_class() -> Any:
    ray = _ray()

    class Semaphore:
        def __init__(self, value: int = 1) -> None:
            self._sema = asyncio.Semaphore(value=value)

        async def acquire(self) -> None:
            await self._sema.acquire()

        async def release(self) -> None:
            self._sema.release()

        async def locked(self) -> bool:
            return self._sema.locked()

    return ray.remote(num_cpus=0)(Semaphore)


def create_remote_signal_actor(ray: Any) -> Any:
    """Ray's client tests build the signal actor from the ``ray`` module they are given."""
    return _signal_actor_class()


def __getattr__(name: str) -> Any:
    if name == "SignalActor":
        return _signal_actor_class()
    if name == "Semaphore":
        return _semaphore_class()
    if name.startswith("__"):
        raise AttributeError(name)
    return Internal(f"ray._private.test_utils.{name}")
