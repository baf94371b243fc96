"""Starting worker processes: by fork while the node has no threads yet, by posix_spawn after.

Forking the first workers from the freshly imported node skips a Python start and the
imports (about 0.2 s each on a small machine) and shares the imported code's pages
between node and workers, which is most of a worker's memory. Once the node runs its
authenticator thread and zmq's IO threads, fork is no longer safe, so replacement and
extra workers start as new interpreters.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NamedTuple


class StartedProcess(NamedTuple):
    pid: int
    stdout_fd: int  # read ends of the worker's stdout and stderr pipes (non-blocking)
    stderr_fd: int


def _pipes() -> tuple[int, int, int, int]:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    os.set_blocking(out_r, False)
    os.set_blocking(err_r, False)
    return out_r, out_w, err_r, err_w


def fork_worker(env: dict[str, str]) -> StartedProcess:
    """Fork a worker from this (still single-threaded) process."""
    out_r, out_w, err_r, err_w = _pipes()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: become a worker and never return into the node's code
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for fd in (devnull, out_r, out_w, err_r, err_w):
                os.close(fd)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.environ.update(env)
            from rayjupyter.core import worker

            worker.main()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    return StartedProcess(pid, out_r, err_r)


def spawn_worker(env: dict[str, str]) -> StartedProcess:
    """Start a worker as a new interpreter; safe from a process with threads."""
    out_r, out_w, err_r, err_w = _pipes()
    full_env = dict(os.environ)
    full_env.update(env)
    try:
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-m", "rayjupyter.core.worker"],
            full_env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
            ],
        )
    finally:
        os.close(out_w)
        os.close(err_w)
    return StartedProcess(pid, out_r, err_r)


def exit_code(status: int) -> int:
    """Like Popen.returncode: negative for a signal."""
    return os.waitstatus_to_exitcode(status)
