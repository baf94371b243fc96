"""The errors a task ends with when the node, not its code, ends it (pickled for its returns).

Shared by the state machines (``node_state``, ``actor_state``) that decide those ends.
"""

from __future__ import annotations

import pickle

from rayjupyter.core.exceptions import (
    ActorUnavailableError,
    TaskCancelledError,
    TaskUnschedulableError,
    WorkerCrashedError,
)
from rayjupyter.core.scheduler import TaskRecord


def cancelled_error(task: TaskRecord) -> bytes:
    error = TaskCancelledError(f"Task {task.name!r} was cancelled (rj.cancel).")
    return pickle.dumps(error, protocol=5)


def unschedulable_error(task: TaskRecord, node_id: bytes) -> bytes:
    error = TaskUnschedulableError(
        f"Task {task.name!r} cannot be scheduled: its node {node_id.hex()} died "
        f"(NodeAffinitySchedulingStrategy, soft=False)."
    )
    return pickle.dumps(error, protocol=5)


def crashed_error(task: TaskRecord, pid: int, cause: str) -> bytes:
    error = WorkerCrashedError(
        f"The worker running task {task.name!r} died unexpectedly (pid "
        f"{pid}, {cause}); it was tried {task.attempt + 1} time(s) and "
        f"max_retries={task.max_retries} allows no more. Raise max_retries or "
        f"find why the process dies (out of memory, a segfault, os._exit)."
    )
    return pickle.dumps(error, protocol=5)


def restarting_error(task: TaskRecord, actor_id: bytes) -> bytes:
    error = ActorUnavailableError(
        f"The actor {actor_id.hex()[:12]} is restarting: the call {task.name!r} was not sent "
        f"(max_task_retries=0 fails calls at once while it restarts; raise it to wait)."
    )
    error.actor_id = actor_id.hex()  # Ray's attribute (travels with the pickle)
    return pickle.dumps(error, protocol=5)
