"""Starting worker processes by fork from the node, which has no Python thread but its loop.

A forked worker skips a Python start and the imports (about 0.2 s of CPU each on a small
machine, 35 s for 200 actors) and shares the imported code's pages with the node and the
other workers, which is most of a worker's memory. The child closes every descriptor it
inherited (the node's sockets, pipes and zmq's internals) and makes its own zmq context,
the pattern libzmq supports after fork; zmq's C threads in the node hold no Python state.

Processes that tasks start are the node's too. The node is a child subreaper
(``become_subreaper``): a process a task detached (forked twice, setsid) is re-parented to
the node, not to init, so it stays below the node; the node reaps such adopted children
as they exit (``reap_adopted``) and kills everything below it when it stops
(``kill_descendants``), so nothing a task started outlives ``rj.shutdown()``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import select
import signal
import sys
import time
from collections.abc import Container
from typing import NamedTuple, NoReturn

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


class StartedProcess(NamedTuple):
    pid: int
    stdout_fd: int  # read ends of the worker's stdout and stderr pipes (non-blocking)
    stderr_fd: int
    fork_s: float = 0.0  # how long the fork took the node (fork_server.py weighs it)


def output_pipes() -> tuple[int, int, int, int]:
    """A worker's stdout and stderr pipes: (out_r, out_w, err_r, err_w), read ends non-blocking."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    os.set_blocking(out_r, False)
    os.set_blocking(err_r, False)
    return out_r, out_w, err_r, err_w


def fork_worker(env: dict[str, str], keep_fd: int) -> StartedProcess:
    """Fork a worker that runs ``worker_main.main`` with ``env`` added to its environment; of
    the node's descriptors it keeps only ``keep_fd`` (its end of the node's channel)."""
    out_r, out_w, err_r, err_w = output_pipes()
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: become a worker and never return into the node's code
        become_worker(env, keep_fd, out_w, err_w)
    took = time.perf_counter() - started
    os.close(out_w)
    os.close(err_w)
    return StartedProcess(pid, out_r, err_r, took)


def become_worker(
    env: dict[str, str], keep_fd: int, out_w: int, err_w: int, reparented_from: int = 0
) -> NoReturn:
    """In a fresh child: run ``worker_main.main`` with ``env`` added to the environment,
    ``out_w`` and ``err_w`` as stdout and stderr, and no descriptor but ``keep_fd`` besides.

    ``reparented_from``: a parent about to exit (the fork server's intermediate process):
    wait until the node has adopted us, since the worker dies with its parent from then on
    (PR_SET_PDEATHSIG) and checks that parent is the node."""
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        close_inherited_fds(keep_fd)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.update(env)
        if reparented_from:
            _wait_for_adoption(reparented_from)
        from rayjupyter.core import worker_main

        worker_main.main()
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait_for_adoption(parent: int, timeout: float = 10.0) -> None:
    """Until ``parent`` (which exits right after forking us) is gone: a pidfd turns readable
    once it has exited, and its children (us) are re-parented before that."""
    try:
        pidfd = os.pidfd_open(parent)
    except ProcessLookupError:  # gone and reaped already
        return
    try:
        waiter = select.poll()
        waiter.register(pidfd, select.POLLIN)
        waiter.poll(timeout * 1000)
    finally:
        os.close(pidfd)


def close_inherited_fds(keep_fd: int) -> None:
    """In a fresh child: close everything but stdin, stdout, stderr and ``keep_fd``.

    ``os.closerange`` is one close_range() call on Linux 5.9+: the node holds four
    descriptors per worker, and closing them one by one from a listing of /proc/self/fd
    cost each new worker time in proportion to the workers already started (12 ms a worker
    at 1,000 actors), so starting N actors took time in proportion to N squared."""
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, _fd_limit())


def _fd_limit() -> int:
    """One more than the highest descriptor this process may have open."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 30 if soft == resource.RLIM_INFINITY or soft > 1 << 30 else max(soft, 3)


def exit_code(status: int) -> int:
    """Like Popen.returncode: negative for a signal."""
    return os.waitstatus_to_exitcode(status)


def become_subreaper() -> bool:
    """Make orphaned descendants (a task's detached processes) our children, not init's.

    Not inherited across fork: workers stay ordinary, so an orphan climbs to the node."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux
        return False


def reap_adopted(own: Container[int]) -> list[int]:
    """Reap exited children that are not ``own`` (the workers, which their exit handler
    waits for): the orphans the kernel gave us. Their pids; [] when none has exited."""
    reaped: list[int] = []
    while True:
        try:  # peek (WNOWAIT): a worker's status is its exit handler's to collect
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if info is None or info.si_pid in own:
            return reaped  # nothing exited, or a worker whose handler comes next
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)
        reaped.append(info.si_pid)


def kill_descendants(timeout: float = 5.0) -> int:
    """SIGKILL every process below this one and reap them; how many there were.

    Rounds, because a process killed while its parent lives is re-parented (to us) only
    when that parent dies too; bounded in time whatever they do."""
    import psutil

    me = psutil.Process()
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = me.children(recursive=True)
        if not procs:
            break
        for proc in procs:
            seen.add(proc.pid)
            with contextlib.suppress(psutil.Error):
                proc.kill()
        _reap_all()
        time.sleep(0.01)
    _reap_all()
    return len(seen)


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
