"""The worker pool's policy without processes: GPU work on workers of its own (Ray's
isolation by resources), ``max_calls`` retiring a worker, and the pure parts of the other
Ray semantics checked against a cluster in test_compat_workers.py (CUDA_VISIBLE_DEVICES,
the memory resource, oversized definitions, ``_system_config``)."""

from __future__ import annotations

import pytest
from test_scheduler import make_task, node, ops

from rayjupyter.core import config, gpu_visibility, init_options, worker_pool
from rayjupyter.core import node_state as ns
from rayjupyter.core import placement_groups as pgs
from rayjupyter.core.options import resource_demand
from rayjupyter.core.remote_function import RemoteFunction
from rayjupyter.core.scheduler import TaskState, WorkerState

GPU = {"CPU": 1.0, "GPU": 1.0}


def test_pool_keys_keep_gpu_work_apart_within_its_env() -> None:
    assert worker_pool.pool_of("", {"CPU": 1.0}) == ""
    assert worker_pool.pool_of("env1", {"CPU": 1.0}) == "env1"
    assert worker_pool.pool_of("", GPU) == worker_pool.GPU_POOL
    key = worker_pool.pool_of("env1", {"GPU": 0.5})
    assert worker_pool.for_gpu(key) and worker_pool.env_of(key) == "env1"
    assert worker_pool.env_of("env1") == "env1" and not worker_pool.for_gpu("env1")
    assert worker_pool.env_known(worker_pool.GPU_POOL, ()) and worker_pool.env_known("e", {"e"})
    assert not worker_pool.env_known(worker_pool.GPU_POOL + "e", ())
    # a task record takes its pool from its env and demand (a bundle's GPUs count too)
    assert make_task("g", {"GPU": 1.0}).pool == worker_pool.GPU_POOL
    assert make_task("e", {"CPU": 1.0}, env="env1").pool == "env1"
    in_bundle = pgs.group_demand({"CPU": 1.0, "GPU": 1.0}, b"\x07" * 4, 0)
    assert make_task("b", in_bundle).pool == worker_pool.GPU_POOL
    assert make_task("c", pgs.group_demand({"CPU": 1.0}, b"\x07" * 4, 0)).pool == ""


def test_a_gpu_task_gets_a_worker_of_its_own_and_cpu_work_never_uses_it() -> None:
    shell = node(cpus=2, gpus=1, workers=2)
    plain = set(shell.state.workers)
    gpu_task = shell.submit(make_task("gpu", GPU))
    shell.schedule()
    assert gpu_task.state is TaskState.READY  # two idle plain workers, yet it waits
    assert (ns.SPAWN, worker_pool.GPU_POOL, 1) in shell.log
    shell.connect_all()
    shell.schedule()
    assert gpu_task.state is TaskState.RUNNING and gpu_task.worker not in plain
    gpu_worker = shell.state.workers[gpu_task.worker or b""]
    assert gpu_worker.pool == worker_pool.GPU_POOL and gpu_worker.env == ""
    assert gpu_task.gpu_ids == (0,)
    shell.finish(gpu_worker)
    assert gpu_worker.state is WorkerState.IDLE  # max_calls 0 here: kept for GPU work
    cpu_tasks = [shell.submit(make_task(f"cpu{i}")) for i in range(3)]
    shell.schedule()
    assert all(t.worker in plain for t in cpu_tasks if t.state is TaskState.RUNNING)
    assert gpu_worker.task is None  # a third CPU task waits rather than take it
    assert cpu_tasks[2].state is TaskState.READY
    assert shell.state.live_pool_workers() == 2  # GPU workers are not the plain pool's


def test_max_calls_retires_the_worker_after_that_many_runs_and_frees_its_resources() -> None:
    shell = node(cpus=1, workers=1)
    (worker,) = shell.state.workers.values()
    first = shell.submit(make_task("f", max_calls=2))
    shell.schedule()
    assert ops(shell.finish(worker)) == ["FINISHED"] and worker.state is WorkerState.IDLE
    second = shell.submit(make_task("f", max_calls=2))
    shell.schedule()
    assert second.worker == worker.client_id
    out = shell.finish(worker)
    assert ops(out) == ["KILL", "FINISHED"] and out[0][1] is worker
    assert first.state is second.state is TaskState.FINISHED
    assert worker not in shell.state.scheduler.idle  # never given work again
    assert shell.state.resources.available["CPU"] == 1.0  # released at once
    waiting = shell.submit(make_task("g"))
    mark = len(shell.log)
    shell.schedule()
    assert waiting.state is TaskState.READY  # not on the retiring worker: a new one starts
    assert ops(shell.log[mark:]) == ["SPAWN"]
    assert ops(shell.die(worker)) == []  # the pool is whole again without it
    shell.connect_all()
    shell.schedule()
    assert waiting.state is TaskState.RUNNING and waiting.worker != worker.client_id


def test_max_calls_counts_per_function_and_blocks_prefetch() -> None:
    shell = node(cpus=1, workers=1)
    (worker,) = shell.state.workers.values()
    limited = make_task("limited", max_calls=1)
    limited.func_id = b"other"
    shell.submit(limited)
    for i in range(3):  # a queue longer than the pool: prefetch would send one ahead
        shell.submit(make_task(f"plain{i}"))
    shell.schedule()
    assert worker.task is limited and worker.prefetched is None
    assert ops(shell.finish(worker)) == ["KILL", "FINISHED"]
    assert worker_pool.ran(worker, make_task("f", max_calls=3)) is False
    assert worker.calls == {b"other": 1, b"func": 1}


def test_cuda_visible_devices_follows_ray_2_60() -> None:
    assert gpu_visibility.visible_devices((0, 2), {}) == "0,2"
    assert gpu_visibility.visible_devices((), {}) is None  # no GPU: left as inherited
    assert gpu_visibility.visible_devices((), {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}) == ""
    for name in gpu_visibility.NOSET_VARIABLES:
        assert gpu_visibility.visible_devices((1,), {name: "1"}) is None
        assert gpu_visibility.visible_devices((1,), {name: "true"}) is None
        assert gpu_visibility.visible_devices((1,), {name: "0"}) == "1"
    environ: dict[str, str] = {"CUDA_VISIBLE_DEVICES": "7"}
    gpu_visibility.apply((), environ)
    assert environ == {"CUDA_VISIBLE_DEVICES": "7"}
    gpu_visibility.apply((3,), environ)
    assert environ == {"CUDA_VISIBLE_DEVICES": "3"}


def test_max_calls_option_as_ray() -> None:
    def f() -> None:
        pass

    assert RemoteFunction(f, {})._options["max_calls"] == 0
    assert RemoteFunction(f, {"num_gpus": 1})._options["max_calls"] == 1  # Ray's GPU default
    assert RemoteFunction(f, {"num_gpus": 1, "max_calls": 0})._options["max_calls"] == 0
    limited = RemoteFunction(f, {"max_calls": 5})
    assert limited.options(num_cpus=2)._options["max_calls"] == 5  # the definition's
    with pytest.raises(ValueError, match=r"max_calls cannot be set in \.options\(\)"):
        limited.options(max_calls=1)
    with pytest.raises(ValueError, match="max_calls must be >= 0"):
        RemoteFunction(f, {"max_calls": -1})
    assert RemoteFunction(f, {}).options(num_gpus=1)._options["max_calls"] == 0  # as Ray


def test_memory_is_a_resource_in_bytes() -> None:
    assert resource_demand({"num_cpus": 1, "memory": 150 * 2**20}) == {
        "CPU": 1.0,
        "memory": 150.0 * 2**20,
    }
    assert "memory" not in resource_demand({"num_cpus": 1, "memory": None})
    given = config.NodeConfig(num_cpus=2, memory=2**30, object_store_memory=2**28)
    assert config.node_totals(given)["memory"] == 2**30
    derived = config.node_totals(config.NodeConfig(num_cpus=2, object_store_memory=2**28))
    assert derived["memory"] > 0 and derived["CPU"] == 2.0


def test_a_definition_past_the_bound_is_refused_naming_the_setting(monkeypatch) -> None:
    monkeypatch.setenv("RAYJUPYTER_MAX_FUNCTION_BYTES", "1000")
    config.check_definition_size(b"x" * 1000, "remote function m.f")
    with pytest.raises(ValueError, match=r"The remote function m\.f is too large") as info:
        config.check_definition_size(b"x" * 1001, "remote function m.f")
    assert "RAYJUPYTER_MAX_FUNCTION_BYTES" in str(info.value)
    assert "\n" not in str(info.value)


def test_system_config_is_refused_when_connecting_as_ray_does() -> None:
    with pytest.raises(ValueError, match="when connecting to an existing cluster"):
        init_options.check_extra({"_system_config": {"a": 1}}, attaching=True)
    with pytest.raises(ValueError, match="has no counterpart"):
        init_options.check_extra({"_system_config": {"a": 1}}, attaching=False)
    init_options.check_extra({"_system_config": {}, "_memory": 2**30}, attaching=False)
