"""Which worker a task may run on, and when a worker has run enough: the pool's policy.

Two rules of Ray's, as pure functions over the records (no I/O; ``NodeState`` and the
``Scheduler`` call them):

- **Isolation by resources.** A worker is started for one kind of work, its *pool*: the
  plain pool (``""``), a runtime_env's (its digest), or GPU work (``GPU_POOL`` + the env's
  digest). A task runs only on a worker of its own pool, so a process that ran GPU work
  (CUDA initialised, ``CUDA_VISIBLE_DEVICES`` set) never runs CPU-only work, nor the
  reverse. GPU workers are started on demand, like a runtime_env's, and are not counted
  in the plain pool (one per CPU).
- **max_calls.** A task's function with ``max_calls=N`` (``@remote(max_calls=N)``; Ray's
  default for a function that asks for GPUs is 1) makes its worker exit after the
  function's N-th run there: the worker is not given work again and is stopped; the
  task's resources come back when it finishes, as always.
"""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING

from rayjupyter.core.placement_groups import gpu_amount

if TYPE_CHECKING:  # (scheduler's records take their pool from here)
    from rayjupyter.core.scheduler import Scheduler, TaskRecord, WorkerRecord

#: a pool key that starts with this is GPU work's (in the runtime_env that follows it)
GPU_POOL = "gpu:"


def pool_of(env: str, demand: dict[str, float]) -> str:
    """The pool whose workers run a task of runtime_env ``env`` that needs ``demand``."""
    return GPU_POOL + env if gpu_amount(demand) else env


def env_of(pool: str) -> str:
    """The runtime_env digest a pool's workers start in ("" for none)."""
    return pool[len(GPU_POOL) :] if pool.startswith(GPU_POOL) else pool


def for_gpu(pool: str) -> bool:
    return pool.startswith(GPU_POOL)


def env_known(pool: str, known_envs: Container[str]) -> bool:
    """Whether a pool's workers can start: no runtime_env, or one set up on the node."""
    env = env_of(pool)
    return not env or env in known_envs


def ran(worker: WorkerRecord, task: TaskRecord) -> bool:
    """Count a run of ``task``'s function on ``worker``; True when that was its
    ``max_calls``-th there, so the worker must exit. Only functions with max_calls are
    counted (each worker's counts end with it)."""
    if task.max_calls <= 0:
        return False
    count = worker.calls.get(task.func_id, 0) + 1
    worker.calls[task.func_id] = count
    return count >= task.max_calls


def finished_on(scheduler: Scheduler, worker: WorkerRecord, task: TaskRecord) -> bool:
    """An idle worker after ``task``: back to its pool, or (False) retired by max_calls,
    out of every pool, for the node to stop."""
    if ran(worker, task):
        worker.retired = True
        return False
    scheduler.worker_idle(worker)
    return True
