"""When the node's Python collects cyclic garbage: never in the middle of a heavy load.

CPython's full collection (generation 2) walks every tracked object. A node holding a
driver's 150,000 queued tasks has a few million of them (each task's record, its dicts and
lists, its objects' entries), and one full collection paused the loop for 1.5 s: no
status, no results, no heartbeats for that long, and more with more tasks. So the node
turns the automatic full collection off (``start``) and runs one itself (``tick``, from the
loop's once-a-second work) only while its tables are small enough that it costs a few
tens of milliseconds. The young generations are still collected as usual (their cost
follows the young objects only), and nearly everything the node drops is freed by
reference counting at once; cyclic garbage made under a heavy load waits until the load
has drained.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable

#: a full collection runs only while the node holds at most this many tasks and objects
SMALL_TABLES = 20_000
#: and at most this often, and with at least this many times its last duration between
#: two (objects other than tasks, such as the task event log, make even a quiet node's
#: collection cost a little): at most 0.5% of the loop's time goes to them
FULL_EVERY_S = 10.0
SPACING = 200
#: generation 2's threshold while automatic full collections are off (never reached)
NEVER = 1 << 30


class GarbagePolicy:
    """Full collections at quiet moments only (see the module's docstring)."""

    def __init__(self, table_size: Callable[[], int]) -> None:
        self.table_size = table_size  # tasks + objects the node holds now
        self.last_full = 0.0
        self.last_duration = 0.0
        self.full_runs = 0

    def start(self) -> None:
        """What the node has built so far (imports, its parts) stays out of every scan.

        No collection first: imports leave next to no cyclic garbage (a handful of
        objects), and a full collection here held the first task up by 15-30 ms."""
        gc.freeze()
        saved = gc.get_threshold()
        gc.set_threshold(saved[0], saved[1], NEVER)
        # a worker forked from the node runs user code: it collects as Python always does
        os.register_at_fork(after_in_child=lambda: gc.set_threshold(*saved))

    def tick(self, now: float) -> None:
        """Once a second: a full collection if it is due and cheap now."""
        wait = max(FULL_EVERY_S, self.last_duration * SPACING)
        if now - self.last_full < wait or self.table_size() > SMALL_TABLES:
            return
        self.full_runs += 1
        started = time.perf_counter()
        gc.collect()
        self.last_duration = time.perf_counter() - started
        self.last_full = now + self.last_duration
