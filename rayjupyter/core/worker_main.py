"""A pooled worker process: runs the tasks its node sends, one at a time, forever.

Forked from its node (``spawn.fork_worker``) with its identity and the cluster secret in
the environment. It dies with its node (PR_SET_PDEATHSIG), and its stdout/stderr are pipes
the node forwards to the driver with a ``(task pid=N)`` prefix. What it does with each
task is ``worker.TaskExecutor``'s.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import signal
import sys
from typing import Any

from rayjupyter.core import api, nested_lending, runtime_context, runtime_env, worker_output
from rayjupyter.core import protocol as P
from rayjupyter.core.client import Client
from rayjupyter.core.worker import TaskExecutor

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


def _on_sigint(executor: TaskExecutor, signum: int, frame: Any) -> None:
    """rj.cancel sends SIGINT: interrupt the running task, ignore it between tasks."""
    if executor.running is not None:
        raise KeyboardInterrupt
    executor.sigint_between_tasks = True


# The link is a socket pair from the node that forked us (no address to get wrong) and we
# die with it, so waiting long for its Welcome costs nothing; a burst of hundreds of actors
# on a busy machine can keep the node from answering within a client's 8 s.
HELLO_TIMEOUT_S = 600.0


def main() -> None:
    env = os.environ
    _die_with_parent(int(env["RAYJUPYTER_PARENT_PID"]))
    secret = env.pop("RAYJUPYTER_SECRET")
    for path in reversed(json.loads(env.get("RAYJUPYTER_SYS_PATH", "[]"))):
        if path not in sys.path:
            sys.path.insert(0, path)
    # a runtime_env worker: its packages come first (ahead of the driver's own copies), and
    # it runs in its working_dir, so relative paths open the shipped data files
    for path in reversed(json.loads(env.pop("RAYJUPYTER_ENV_PATHS", "[]"))):
        with contextlib.suppress(ValueError):
            sys.path.remove(path)
        sys.path.insert(0, path)
    working_dir = env.pop("RAYJUPYTER_WORKING_DIR", "")
    if working_dir:
        os.chdir(working_dir)
    job_env = runtime_env.job_env_of_worker()
    env.pop(runtime_env.WORKER_ENV_VAR, None)
    client = Client(
        env["RAYJUPYTER_NODE_ADDRESS"],
        secret,
        kind="worker",
        client_id=bytes.fromhex(env["RAYJUPYTER_CLIENT_ID"]),
        io_thread=False,
        channel_fd=int(env.pop("RAYJUPYTER_CHANNEL_FD")),
        timeout=HELLO_TIMEOUT_S,
    )
    if job_env is not None:  # the tasks it submits inherit its env
        client.runtime_env = job_env
        client.sent_envs.add(job_env.digest)
    api._set_worker_client(client)
    runtime_context.current.node_id = client.node_id
    runtime_context.current.worker_id = client.client_id
    worker_output.output.install()  # (a task that printed is answered by the node)
    executor = TaskExecutor(client)
    client.run_lent = executor.run  # children lent to a waiting task (nested_lending.py)
    # each nested level is about 8 frames: room for nested_lending.MAX_NESTED of them
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000 + 16 * nested_lending.MAX_NESTED))
    signal.signal(signal.SIGINT, functools.partial(_on_sigint, executor))
    while True:
        task = client.next_task()
        if task is None:
            break
        if isinstance(task, P.StartActor):
            executor.start_actor(task)
        elif isinstance(task, P.CancelCall):
            executor.cancel_call(task.task_id)
        elif isinstance(task, P.ExitActor):  # its handles all went: end it gracefully
            executor._exit_process()
        else:
            executor.run(task)
        del task
