"""A local Ray started by the kernel dies with the kernel, even a killed one.

Ray's own fate sharing ends most of a driver-started Ray when the driver dies, but not all
(its per-node agents can outlive a SIGKILLed kernel). A small guard process holds the
PIDs (and start times, so a reused PID is never hit) of the Ray processes this kernel
started; when the kernel's end of its stdin pipe closes without a "stop" line (the kernel
died), it ends them and what they started. A normal ``%ray_disconnect`` stops Ray itself and
then tells the guard to stop.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from typing import IO, Any

GUARD_CODE = """
import sys, psutil
procs = []
for line in sys.stdin:
    line = line.strip()
    if line == "stop":
        sys.exit(0)
    pid, created = line.split()
    try:
        proc = psutil.Process(int(pid))
        if abs(proc.create_time() - float(created)) < 0.01:
            procs.append(proc)
    except psutil.Error:
        pass
found = list(procs)
for proc in procs:
    try:
        found += proc.children(recursive=True)
    except psutil.Error:
        pass
for proc in found:
    try:
        proc.kill()
    except psutil.Error:
        pass
psutil.wait_procs(found, timeout=10)
"""


class LocalRayGuard:
    """Watches this kernel on behalf of the local Ray processes it started."""

    def __init__(self, pids: set[int]) -> None:
        import psutil

        self.process = subprocess.Popen(
            [sys.executable, "-c", GUARD_CODE],
            stdin=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a Ctrl-C for the kernel is not for the guard
        )
        stdin: IO[str] | None = self.process.stdin
        assert stdin is not None
        for pid in sorted(pids):
            with contextlib.suppress(psutil.Error):
                stdin.write(f"{pid} {psutil.Process(pid).create_time()}\n")
        stdin.flush()

    def stop(self) -> None:
        """Ray was stopped normally: the guard leaves without touching anything."""
        stdin = self.process.stdin
        with contextlib.suppress(OSError, ValueError):
            if stdin is not None:
                stdin.write("stop\n")
                stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def children_now() -> set[int]:
    """PIDs of this process's descendants right now."""
    import psutil

    return {child.pid for child in psutil.Process().children(recursive=True)}


def guard_new_children(before: set[int]) -> Any:
    """A guard for the processes started since ``before`` (None if there are none)."""
    started = children_now() - before
    return LocalRayGuard(started) if started else None
