"""Ray's worker-pool semantics on a real cluster: GPU work in workers of its own,
``max_calls`` (Ray's default of 1 for GPU functions) ending a worker, the ``memory``
resource, ``CUDA_VISIBLE_DEVICES`` (and Ray's switch that leaves it alone), oversized
definitions refused at ``.remote()``, and ``_system_config`` refused when connecting.
The decisions themselves are tested without processes in test_worker_pool.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import is_alive, wait_for_condition

import rayjupyter as rj

pytestmark = pytest.mark.timeout(120)


def _env_of_task() -> tuple[int, str | None]:
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


cpu_task = rj.remote(_env_of_task)
gpu_task = rj.remote(num_gpus=1)(_env_of_task)


@rj.remote(num_cpus=0)
def zero() -> int:
    return 0


@rj.remote(num_cpus=1, num_gpus=1, max_calls=1, max_retries=0)
def holds_the_gpu() -> list[rj.ObjectRef]:
    return [zero.remote()]


@rj.remote(max_calls=2)
def limited() -> int:
    return os.getpid()


@pytest.fixture
def gpu_cluster(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    rj.init(num_cpus=2, num_gpus=1)
    try:
        yield
    finally:
        rj.shutdown()


def test_gpu_tasks_run_apart_from_cpu_tasks_once_per_worker(gpu_cluster) -> None:
    cpu_pid, cpu_devices = rj.get(cpu_task.remote(), timeout=60)
    gpu_pids = set()
    for _ in range(3):
        pid, devices = rj.get(gpu_task.remote(), timeout=60)
        assert devices == "0" and pid != cpu_pid
        gpu_pids.add(pid)
    assert len(gpu_pids) == 3  # max_calls defaults to 1 for a GPU function, as in Ray
    assert cpu_devices is None  # work without GPUs leaves the variable alone (Ray 2.60)
    wait_for_condition(lambda: not any(is_alive(pid) for pid in gpu_pids), timeout=30)
    again, _ = rj.get(cpu_task.remote(), timeout=60)
    assert again not in gpu_pids


def test_max_calls_gives_the_gpu_back_each_time(gpu_cluster) -> None:
    for _ in range(10):  # Ray's issue 10960: hangs if the GPU is not released
        (ref,) = rj.get(holds_the_gpu.remote(), timeout=60)
        assert rj.get(ref, timeout=60) == 0
    wait_for_condition(lambda: rj.available_resources().get("GPU") == 1.0, timeout=30)


def test_max_calls_ends_a_cpu_worker_after_that_many_runs(cluster) -> None:
    pids = [rj.get(limited.remote(), timeout=60) for _ in range(6)]
    assert max(pids.count(pid) for pid in pids) <= 2, pids
    assert len(set(pids)) >= 3
    with pytest.raises(ValueError, match="max_calls cannot be set"):
        limited.options(max_calls=3)


@rj.remote(num_cpus=0)
def waits_for(path: str) -> int:
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return 7


@rj.remote(max_calls=1, max_retries=0)
def starts_a_child(path: str) -> tuple[int, list[rj.ObjectRef]]:
    return os.getpid(), [waits_for.remote(path)]


def test_a_worker_retired_by_max_calls_leaves_its_child_running(cluster, tmp_path: Path) -> None:
    """Its exit is the node's doing, not a failure: what it submitted is not fate-shared."""
    go = tmp_path / "go"
    pid, (child,) = rj.get(starts_a_child.remote(str(go)), timeout=60)
    wait_for_condition(lambda: not is_alive(pid), timeout=30)  # retired while the child waits
    go.touch()
    assert rj.get(child, timeout=60) == 7


def test_memory_is_reported_and_reserved(monkeypatch: pytest.MonkeyPatch) -> None:
    rj.init(num_cpus=2, _memory=2**30)
    try:
        assert rj.cluster_resources()["memory"] == 2**30
        assert rj.available_resources()["memory"] == 2**30

        @rj.remote(memory=2**28)
        def free_memory() -> float:
            return float(rj.available_resources()["memory"])

        assert rj.get(free_memory.remote(), timeout=60) == 2**30 - 2**28
        assert rj.get(free_memory.options(memory=2**29).remote(), timeout=60) == 2**29
    finally:
        rj.shutdown()


@pytest.mark.parametrize(
    "switch",
    ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", "RAYJUPYTER_NOSET_CUDA_VISIBLE_DEVICES"],
)
def test_the_noset_switch_leaves_cuda_visible_devices_alone(monkeypatch, switch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(switch, "1")
    rj.init(num_cpus=1, num_gpus=1)
    try:
        assert rj.get(gpu_task.remote(), timeout=60)[1] is None
        assert rj.get(cpu_task.remote(), timeout=60)[1] is None
    finally:
        rj.shutdown()


def test_an_oversized_definition_is_refused_at_remote(cluster, monkeypatch) -> None:
    monkeypatch.setenv("RAYJUPYTER_MAX_FUNCTION_BYTES", str(100_000))
    captured = bytes(200_000)

    @rj.remote
    class Actor:
        def size(self) -> int:
            return len(captured)

    @rj.remote
    def f() -> int:
        return len(captured)

    for _ in range(2):  # refused every time, never shipped
        with pytest.raises(ValueError, match=r"The remote function .*f is too large"):
            f.remote()
        with pytest.raises(ValueError, match="The actor Actor is too large"):
            Actor.remote()
    monkeypatch.delenv("RAYJUPYTER_MAX_FUNCTION_BYTES")
    assert rj.get(f.remote(), timeout=60) == 200_000


def test_system_config_is_refused_when_connecting() -> None:
    with pytest.raises(ValueError, match="when connecting to an existing cluster"):
        rj.init(address="rayjupyter://secret@127.0.0.1:9", _system_config={"a": 1})
    assert not rj.is_initialized()
