"""One daemon thread that runs every periodic display update (progress bars, charts).

Jobs are plain callables run every ``interval`` seconds until they return False. Adding a
job never wakes the thread when it is already ticking, so the hot path (a ``get`` that
registers a possible progress bar) costs an append under a lock.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable

TICK_S = 0.05  # the finest interval a job gets


class Job:
    """A periodic callable; ``cancel()`` stops it before its next run."""

    __slots__ = ("cancelled", "due", "fn", "interval")

    def __init__(self, fn: Callable[[], bool], interval: float, delay: float) -> None:
        self.fn = fn
        self.interval = interval
        self.due = time.monotonic() + delay
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Ticker:
    """Runs jobs on one background thread; sleeps (no ticks) while there are none."""

    def __init__(self) -> None:
        self._jobs: list[Job] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def every(self, interval: float, fn: Callable[[], bool], *, delay: float | None = None) -> Job:
        """Run fn every interval seconds (first after delay, default interval) until False."""
        job = Job(fn, interval, interval if delay is None else delay)
        with self._lock:
            idle = not self._jobs
            self._jobs.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="rayjupyter-notebook-ticker", daemon=True
                )
                self._thread.start()
            elif idle:
                self._wake.set()
        return job

    def _run(self) -> None:
        while True:
            with self._lock:
                self._jobs = [job for job in self._jobs if not job.cancelled]
                jobs = list(self._jobs)
            if not jobs:
                self._wake.wait()
                self._wake.clear()
                continue
            now = time.monotonic()
            for job in jobs:
                if job.cancelled or job.due > now:
                    continue
                job.due = now + job.interval
                if not self._call(job):
                    job.cancel()
            with self._lock:
                pending = [job.due for job in self._jobs if not job.cancelled]
            if pending:
                time.sleep(min(max(min(pending) - time.monotonic(), 0.0), TICK_S))

    @staticmethod
    def _call(job: Job) -> bool:
        try:
            return bool(job.fn())
        except Exception:  # a display bug must not kill the thread every display shares
            stream = sys.__stderr__
            if stream is not None:
                stream.write("rayjupyter: a display update failed and was stopped:\n")
                traceback.print_exc(file=stream)
            return False


TICKER = Ticker()
