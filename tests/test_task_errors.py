"""The error a task ends with when one of its arguments is an error (``task_errors``), without
processes: the cluster's own errors come through the task, a task's error passes as it is."""

from __future__ import annotations

import os
import pickle

import pytest

from rayjupyter.core.exceptions import (
    ObjectLostError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)
from rayjupyter.core.scheduler import TaskRecord
from rayjupyter.core.task_errors import dependency_failed


def _task(name: str) -> TaskRecord:
    return TaskRecord(b"t" * 20, b"c", name, b"f", b"", (), (), (b"r" * 20,), {}, 0, False)


class UsersOwnError(Exception):
    """Stands for an exception type the node could not import."""


@pytest.mark.parametrize("kind", [ObjectLostError, WorkerCrashedError, TaskCancelledError])
def test_a_cluster_error_comes_through_the_task_as_its_cause(kind: type[Exception]) -> None:
    blob = dependency_failed(_task("consume"), pickle.dumps(kind("gone for good"), protocol=5))
    error = pickle.loads(blob)
    assert isinstance(error, RayTaskError) and isinstance(error, kind)
    assert isinstance(error.cause, kind) and error.function_name == "consume"
    assert "gone for good" in str(error)


def test_a_task_s_own_error_is_passed_on_as_it_is() -> None:
    for cause in (ValueError("bad"), UsersOwnError("theirs")):
        blob = pickle.dumps(RayTaskError("make", "tb", cause).as_instanceof_cause(), protocol=5)
        assert dependency_failed(_task("consume"), blob) is blob


def test_a_blob_naming_anything_but_an_error_of_ours_is_not_loaded() -> None:
    class Loud:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.getenv, ("HOME",))

    blob = pickle.dumps(Loud(), protocol=5)
    assert dependency_failed(_task("consume"), blob) is blob
