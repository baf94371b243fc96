"""A pooled worker process: runs the tasks its node sends, one at a time, forever.

Started by the node as ``python -m rayjupyter.core.worker`` with its identity and the
cluster secret in the environment. It dies with its node (PR_SET_PDEATHSIG), and its
stdout/stderr are pipes the node forwards to the driver with a ``(task pid=N)`` prefix.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import cloudpickle

from rayjupyter.core import api
from rayjupyter.core import protocol as P
from rayjupyter.core.client import Client
from rayjupyter.core.exceptions import RayTaskError
from rayjupyter.core.object_store import shm_path, write_object
from rayjupyter.core.serialization import INLINE_THRESHOLD, deserialize, serialize
from rayjupyter.core.task_args import unpack_args

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGKILL when the node goes, then check it has not gone already."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the node's exit still closes our socket
        return
    if os.getppid() != parent_pid:
        os._exit(1)


class TaskExecutor:
    """Runs ExecuteTask messages and reports TaskFinished."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.functions: dict[bytes, Callable[..., Any]] = {}
        self.pid = os.getpid()

    def run(self, task: P.ExecuteTask) -> None:
        try:
            function = self.functions.get(task.func_id)
            if function is None:
                function = cloudpickle.loads(task.func_blob or b"")
                self.functions[task.func_id] = function
            dep_values = [self.client.materialize(info) for info in task.deps]
            args, kwargs = unpack_args(task.args_blob, dep_values, deserialize)
            result = function(*args, **kwargs)
            del args, kwargs, dep_values
            message = P.TaskFinished(task.task_id, self._store(task, result), None, False)
        except Exception as exc:
            message = self._failure(task, exc)
        sys.stdout.flush()
        sys.stderr.flush()
        self.client.send([message])

    def _store(
        self, task: P.ExecuteTask, result: Any
    ) -> tuple[tuple[bytes, bytes | None, int, tuple[bytes, ...]], ...]:
        count = len(task.return_ids)
        if count == 1:
            values = [result]
        elif count == 0:
            values = []
        else:
            if not isinstance(result, list | tuple) or len(result) != count:
                got = len(result) if isinstance(result, list | tuple) else type(result).__name__
                raise ValueError(
                    f"Task {task.name!r} has num_returns={count} but returned {got}; return a "
                    f"tuple or list of exactly {count} values."
                )
            values = list(result)
        out: list[tuple[bytes, bytes | None, int, tuple[bytes, ...]]] = []
        for object_id, value in zip(task.return_ids, values, strict=True):
            sobj = serialize(value, what=f"the return value of task {task.name!r}")
            contained = tuple(ref.binary() for ref in sobj.contained_refs)
            if sobj.nbytes <= INLINE_THRESHOLD:
                out.append((object_id, sobj.to_bytes(), sobj.nbytes, contained))
            else:
                path = shm_path(self.client.session, object_id)
                if task.attempt:
                    _remove(path)  # a crashed earlier attempt may have left it half written
                size = write_object(path, sobj)
                out.append((object_id, None, size, contained))
        return tuple(out)

    def _failure(self, task: P.ExecuteTask, exc: Exception) -> P.TaskFinished:
        error = RayTaskError.from_exception(exc, task.name, self.pid)
        try:
            blob = cloudpickle.dumps(error)
        except Exception:
            blob = cloudpickle.dumps(RayTaskError(task.name, error.traceback_str, None, self.pid))
        return P.TaskFinished(task.task_id, (), blob, _retryable(task.retry_exceptions, exc))


def _retryable(retry_exceptions: bool | bytes, exc: Exception) -> bool:
    if isinstance(retry_exceptions, bool):
        return retry_exceptions
    kinds = tuple(cloudpickle.loads(retry_exceptions))
    return isinstance(exc, kinds)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def main() -> None:
    env = os.environ
    _die_with_parent(int(env["RAYJUPYTER_PARENT_PID"]))
    secret = env.pop("RAYJUPYTER_SECRET")
    for path in reversed(json.loads(env.get("RAYJUPYTER_SYS_PATH", "[]"))):
        if path not in sys.path:
            sys.path.insert(0, path)
    client = Client(
        env["RAYJUPYTER_NODE_ADDRESS"],
        secret,
        kind="worker",
        client_id=bytes.fromhex(env["RAYJUPYTER_CLIENT_ID"]),
        io_thread=False,
    )
    api._set_worker_client(client)
    executor = TaskExecutor(client)
    while True:
        task = client.next_task()
        if task is None:
            break
        executor.run(task)
        del task


if __name__ == "__main__":
    main()
