"""The errors a task ends with when the node, not its code, ends it (pickled for its returns).

Shared by the state machines (``node_state``, ``actor_state``) that decide those ends.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from rayjupyter.core.exceptions import (
    ActorUnavailableError,
    RayError,
    RayTaskError,
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


def dependency_failed(task: TaskRecord, error_blob: bytes) -> bytes:
    """The error a task ends with when one of its arguments is an error (Ray's semantics:
    the argument's error comes through the task). A task's own error (a RayTaskError) is
    passed on as it is; an error the cluster made (the value was lost, its worker crashed,
    it was cancelled) is wrapped in a RayTaskError of this task, with that error as its
    cause, so a get raises a RayTaskError that is also an instance of the cause's type."""
    cause = _cluster_error(error_blob)
    if cause is None:
        return error_blob
    text = (
        f"An argument of task {task.name!r} is an error, so the task did not run:\n"
        f"{type(cause).__name__}: {cause}\n"
    )
    wrapped = RayTaskError(task.name, text, cause).as_instanceof_cause()
    return pickle.dumps(wrapped, protocol=5)


class _ClusterErrorsOnly(pickle.Unpickler):
    """Loads only errors of this package's own (never a user's class: the node may not be
    able to import it, and must not run its code)."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("rayjupyter.core.exceptions"):
            return super().find_class(module, name)
        found = super().find_class(module, name) if module == "builtins" else None
        if isinstance(found, type) and issubclass(found, BaseException):
            return found
        raise pickle.UnpicklingError(f"not a cluster error: {module}.{name}")


def _cluster_error(error_blob: bytes) -> RayError | None:
    """The error in ``error_blob`` if the cluster made it (not a task's RayTaskError)."""
    try:
        error = _ClusterErrorsOnly(io.BytesIO(error_blob)).load()
    except Exception:
        return None
    if isinstance(error, RayTaskError) or not isinstance(error, RayError):
        return None
    return error
