"""The small process that leads a submitted job's process group (run as a script by
``node_jobs``, standard library only, so it costs a bare interpreter).

It starts the entrypoint (``sh -c ENTRYPOINT``), waits for it and ends as it ended (the
same exit code, or killed by the same signal), so the head sees the entrypoint's status.
It is there for the head's death: the kernel tells it (PR_SET_PDEATHSIG), and it kills its
whole group, so nothing the job started outlives its cluster; the shell alone would leave
its children behind (dash runs ``sh -c "sleep 1"`` as a child, not by exec). A SIGTERM
sent to the group (``stop_job``) is for the entrypoint: this process waits it out, and
the SIGKILL that follows a grace period ends the group, this process included.

Usage: ``python job_supervisor.py ENTRYPOINT HEAD_PID``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
HEAD_DIED = signal.SIGRTMIN  # a signal nothing else sends to the group


def _kill_group(*_: object) -> None:
    os.killpg(0, signal.SIGKILL)


def main(argv: list[str]) -> None:
    entrypoint, head_pid = argv[1], int(argv[2])
    signal.signal(HEAD_DIED, _kill_group)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, HEAD_DIED)
    if os.getppid() != head_pid:  # the head died before the line above
        _kill_group()
    child = os.fork()
    if child == 0:
        signal.signal(HEAD_DIED, signal.SIG_DFL)
        os.execv("/bin/sh", ["sh", "-c", entrypoint])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the entrypoint's to act on
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
    os._exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main(sys.argv)
