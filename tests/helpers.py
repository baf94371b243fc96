"""Test helpers: wait on conditions (never fixed sleeps) and account for every child process."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable

import psutil

# Long-lived helpers that Python's stdlib starts once per session on first use; they are
# not leaks of the test that happened to trigger them.
_STDLIB_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def wait_for_condition(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str = "",
) -> None:
    """Poll predicate until it is truthy; AssertionError with message after timeout seconds.

    An exception from the predicate counts as "not yet" and is shown if time runs out.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if predicate():
                return
            last_error = None
        except Exception as exc:  # the state may be half-built while we poll
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"condition not met within {timeout}s: {what}{detail}")
        time.sleep(interval)


def mapped_file(address: int) -> str:
    """The file backing this address of this process's memory, from /proc/self/maps
    ("" if anonymous or unmapped): where a value a task reads really lies."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return fields[5] if len(fields) > 5 else ""
    return ""


def child_pids() -> set[int]:
    """PIDs of every descendant of this process (children, grandchildren, ...)."""
    return {proc.pid for proc in psutil.Process().children(recursive=True)}


def descendants(pids: Iterable[int]) -> set[int]:
    """The given PIDs plus all their current descendants, skipping ones already gone."""
    found: set[int] = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            found.add(pid)
            found.update(child.pid for child in proc.children(recursive=True))
    return found


def is_alive(pid: int) -> bool:
    """True while pid runs; a zombie counts as gone (and is reaped if it is our child)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    return False


def alive_pids(pids: Iterable[int]) -> set[int]:
    """The subset of pids still running (zombies excluded, see is_alive)."""
    return {pid for pid in pids if is_alive(pid)}


def wait_for_pids_gone(pids: Iterable[int], timeout: float = 10.0) -> None:
    """Wait until none of pids runs; AssertionError naming the survivors otherwise."""
    pids = set(pids)
    wait_for_condition(
        lambda: not alive_pids(pids),
        timeout=timeout,
        interval=0.02,
        message=f"processes {sorted(alive_pids(pids))} still running",
    )


def describe(pid: int) -> str:
    """'pid 123 (python -m x ...)' for error messages."""
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline()) or "?"
    except psutil.Error:
        cmdline = "gone"
    if len(cmdline) > 160:
        cmdline = cmdline[:157] + "..."
    return f"pid {pid} ({cmdline})"


def is_stdlib_helper(pid: int) -> bool:
    """True for multiprocessing's session-long resource tracker / forkserver."""
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False
    return any(marker in cmdline for marker in _STDLIB_HELPERS)


def assert_no_new_processes(
    before: set[int], grace: float = 10.0, *, ignore_roots: Iterable[int] = ()
) -> None:
    """Fail if descendants not in `before` outlive `grace` seconds; kill them by PID first.

    ignore_roots: PIDs whose process trees are expected to stay (a module-scoped cluster).
    """
    roots = set(ignore_roots)

    def leftovers() -> set[int]:
        allowed = before | descendants(roots)
        return {pid for pid in alive_pids(child_pids() - allowed) if not is_stdlib_helper(pid)}

    deadline = time.monotonic() + grace
    left = leftovers()
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = leftovers()
    if not left:
        return
    names = [describe(pid) for pid in sorted(left)]
    for _ in range(3):  # a parent may have started another child before it was stopped
        _kill(left)
        left = leftovers()
        if not left:
            break
    raise AssertionError(
        f"{len(names)} process(es) outlived the test by {grace}s and were killed: "
        + "; ".join(names)
    )


def _kill(pids: set[int]) -> None:
    """Freeze all first (so no parent restarts a child), then SIGKILL by PID and reap."""
    procs: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.suspend()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5.0)
    for proc in procs:
        is_alive(proc.pid)  # reaps zombies that are our own children
