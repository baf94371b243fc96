"""Progress of a set of tasks, counted per remote function: a model with no I/O.

It is fed snapshots (which objects are finished, and whether with an error; how many tasks
the cluster runs) and answers rows for the views. Which of our unfinished tasks run is an
estimate: the cluster reports running tasks as a count, so the oldest unfinished ones are
taken to be the running ones (the node starts ready tasks in submission order).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One remote function's tasks among those watched."""

    name: str
    total: int
    done: int
    failed: int
    running: int
    errors: tuple[str, ...] = ()  # why its failed tasks failed, where the engine says

    @property
    def pending(self) -> int:
        return self.total - self.done - self.failed - self.running

    @property
    def finished(self) -> int:
        return self.done + self.failed


class ProgressModel:
    """Done, failed, running and pending counts per function name for some object ids."""

    def __init__(
        self,
        object_ids: Sequence[bytes],
        names: Mapping[bytes, str],
        *,
        started: float | None = None,
    ) -> None:
        self.object_ids = list(dict.fromkeys(object_ids))
        self.names = {oid: names.get(oid, "task") for oid in self.object_ids}
        self.order = list(dict.fromkeys(self.names[oid] for oid in self.object_ids))
        self.started = time.monotonic() if started is None else started
        self.ended: float | None = None
        self._state: dict[bytes, str] = {}  # "done" | "failed"; absent while unfinished
        self._errors: dict[bytes, str] = {}  # failed object -> why, where known
        self._running = 0
        self.rows: list[Row] = self._rows()

    def add(self, object_ids: Sequence[bytes], names: Mapping[bytes, str]) -> None:
        """Watch more objects too (a joblib call submits batches as earlier ones finish)."""
        for oid in object_ids:
            if oid not in self.names:
                self.object_ids.append(oid)
                self.names[oid] = name = names.get(oid, "task")
                if name not in self.order:
                    self.order.append(name)
        if not self.complete:
            self.ended = None
        self.rows = self._rows()

    def rename(self, names: Mapping[bytes, str]) -> None:
        """Names learned late (Ray's state API reports a task after its submit): the objects
        move to their function's row; a row left empty goes."""
        changed = False
        for oid, name in names.items():
            if oid in self.names and name and self.names[oid] != name:
                self.names[oid] = name
                changed = True
        if changed:
            self.order = list(dict.fromkeys(self.names[oid] for oid in self.object_ids))
            self.rows = self._rows()

    def unnamed(self) -> list[bytes]:
        """Objects whose function is not known yet (named "task")."""
        return [oid for oid, name in self.names.items() if name == "task"]

    def update(
        self,
        finished: Mapping[bytes, bool],
        cluster_running: int,
        errors: Mapping[bytes, str] | None = None,
    ) -> bool:
        """Take a snapshot: finished maps object id -> failed? True if any count changed.

        A failure learned after the object was counted done wins (Ray reports a task's
        failure a moment after its result is ready); errors: why, for failed objects."""
        for oid in self.object_ids:
            if oid not in finished:
                continue
            if oid not in self._state or (finished[oid] and self._state[oid] == "done"):
                self._state[oid] = "failed" if finished[oid] else "done"
        for oid, why in (errors or {}).items():
            if why and self._state.get(oid) == "failed":
                self._errors[oid] = why
        unfinished = len(self.object_ids) - len(self._state)
        self._running = max(0, min(cluster_running, unfinished))
        rows = self._rows()
        changed = rows != self.rows
        self.rows = rows
        if self.complete and self.ended is None:
            self.ended = time.monotonic()
        return changed

    def _rows(self) -> list[Row]:
        counts = {name: [0, 0, 0, 0] for name in self.order}  # total, done, failed, running
        errors: dict[str, set[str]] = {name: set() for name in self.order}
        budget = self._running
        for oid in self.object_ids:
            name = self.names[oid]
            row = counts[name]
            row[0] += 1
            state = self._state.get(oid)
            if state == "done":
                row[1] += 1
            elif state == "failed":
                row[2] += 1
                if oid in self._errors:
                    errors[name].add(self._errors[oid])
            elif budget > 0:
                row[3] += 1
                budget -= 1
        rows = []
        for name in self.order:
            total, done, failed, running = counts[name]
            rows.append(Row(name, total, done, failed, running, tuple(sorted(errors[name]))))
        return rows

    @property
    def total(self) -> int:
        return len(self.object_ids)

    @property
    def finished(self) -> int:
        return len(self._state)

    @property
    def failed(self) -> int:
        return sum(1 for state in self._state.values() if state == "failed")

    @property
    def complete(self) -> bool:
        return len(self._state) == len(self.object_ids)

    def elapsed(self, now: float | None = None) -> float:
        end = self.ended if self.ended is not None else (now or time.monotonic())
        return max(0.0, end - self.started)


def format_elapsed(seconds: float) -> str:
    """3.2 -> '3.2 s', 75 -> '1m 15s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def row_summary(row: Row) -> str:
    """'5/8 done · 2 running · 1 pending · 0 failed' ('1 failed (ValueError)')."""
    why = f" ({', '.join(row.errors)})" if row.errors else ""
    return (
        f"{row.done}/{row.total} done · {row.running} running · {row.pending} pending · "
        f"{row.failed} failed{why}"
    )
