"""Process-tree helpers: which processes exist, what memory they hold, waiting for them to end."""

from __future__ import annotations

import time
from collections.abc import Iterable

import psutil


def tree_memory(pids: list[int]) -> tuple[int, int, int]:
    """Summed RSS and PSS in bytes, and how many processes were measured (vanished ones skipped)."""
    rss = pss = count = 0
    for proc in processes(pids):
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)  # PSS is Linux-only; RSS is the fallback
        count += 1
    return rss, pss, count


def processes(pids: Iterable[int]) -> list[psutil.Process]:
    """psutil handles for the PIDs that still exist."""
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return found


def alive(proc: psutil.Process) -> bool:
    """True while ``proc`` runs; a zombie has exited and only waits for its parent to reap it."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(procs: list[psutil.Process], limit_s: float) -> list[psutil.Process]:
    """Poll until every process has exited or ``limit_s`` passes; return the ones still alive."""
    deadline = time.perf_counter() + limit_s
    left = [p for p in procs if alive(p)]
    while left and time.perf_counter() < deadline:
        time.sleep(0.005)
        left = [p for p in left if alive(p)]
    return left


def dump_stacks_later(seconds: float) -> None:
    """Print every thread's Python stack to stderr once ``seconds`` have passed (a row that
    hangs leaves where it hung in its log). A timer thread that takes the GIL, not
    ``faulthandler.dump_traceback_later``: that one reads other threads' frames without
    the GIL, and a row's child died of SIGSEGV right after its dump (CI8)."""
    import sys
    import threading
    import traceback

    def dump() -> None:
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        lines = [f"--- stacks after {seconds:.0f} s ---\n"]
        for ident, frame in sys._current_frames().items():
            if ident == threading.get_ident():
                continue
            lines.append(f"Thread {names.get(ident, ident)}:\n")
            lines += traceback.format_stack(frame)
        sys.stderr.write("".join(lines))
        sys.stderr.flush()

    timer = threading.Timer(seconds, dump)
    timer.daemon = True
    timer.start()
