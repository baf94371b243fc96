"""What happened to each task, kept in bounded memory on the head, for the state API and
the timeline (and the dashboard, later).

One small record per task, updated in place at submit, start and end: a few dictionary
writes on the hot path. When more than ``limit`` tasks are remembered
(``bounds.TASK_EVENTS``), the task that ended first is forgotten first, and only when none
has ended the oldest open one: both in O(1), since ended tasks are also kept in the order
they ended (a scan for the first ended task cost O(open tasks) on every submit once more
than ``limit`` were open, and wedged a node with a driver's 100,000 queued tasks).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rayjupyter.core.config import BOUNDS
from rayjupyter.core.state_names import (
    FAILED,
    FINISHED,
    PENDING_ARGS_AVAIL,
    PENDING_NODE_ASSIGNMENT,
    RUNNING,
    TaskStateName,
)

if TYPE_CHECKING:
    # the read models are imported where a query builds one: their dataclasses cost a few
    # milliseconds of the node's start (state_names.py)
    from rayjupyter.core.read_models import TaskRow, WorkerLogLines


@dataclass(slots=True)  # a node keeps 100,000 of them: no __dict__ each
class TaskEvent:
    """One task's record for the state API and the timeline (a docstring: without one,
    ``dataclass`` builds it from ``inspect.signature``, at every node's start)."""

    task_id: bytes
    name: str
    job_id: bytes
    actor_id: bytes
    state: TaskStateName
    submitted_at: float
    started_at: float = 0.0
    finished_at: float = 0.0
    worker_pid: int = 0
    attempt: int = 0

    def row(self, node_id: bytes) -> TaskRow:
        """A row shaped like Ray's ``list_tasks`` (ids as hex, times in seconds)."""
        from rayjupyter.core.read_models import TaskRow

        return TaskRow(
            task_id=self.task_id.hex(),
            name=self.name,
            func_or_class_name=self.name,
            state=self.state,
            job_id=self.job_id.hex(),
            actor_id=self.actor_id.hex() if self.actor_id else None,
            type="ACTOR_TASK" if self.actor_id else "NORMAL_TASK",
            node_id=node_id.hex(),
            worker_pid=self.worker_pid or None,
            attempt_number=self.attempt,
            submitted_at=self.submitted_at,
            start_time=self.started_at or None,
            end_time=self.finished_at or None,
            error_type="TASK_EXECUTION_EXCEPTION" if self.state == FAILED else None,
            creation_time_ms=int(self.submitted_at * 1000),
            start_time_ms=int(self.started_at * 1000) if self.started_at else None,
            end_time_ms=int(self.finished_at * 1000) if self.finished_at else None,
        )


class TaskEventLog:
    """The last ``limit`` tasks, by task id."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self.events: OrderedDict[bytes, TaskEvent] = OrderedDict()  # in the order submitted
        # the ended ones again, in the order they ended: the next to forget is the first;
        # an OrderedDict, since a dict's first key costs a walk over the deleted slots
        self._ended: OrderedDict[bytes, None] = OrderedDict()
        # told once when a task that has not ended is forgotten (the node warns its drivers)
        self.warn: Callable[[str], None] | None = None
        self.open_forgotten = 0

    def submitted(
        self, task_id: bytes, name: str, job_id: bytes, actor_id: bytes, waiting: bool
    ) -> None:
        state = PENDING_ARGS_AVAIL if waiting else PENDING_NODE_ASSIGNMENT
        self.events[task_id] = TaskEvent(task_id, name, job_id, actor_id, state, time.time())
        if self._ended and task_id in self._ended:  # submitted again (a lineage rebuild)
            del self._ended[task_id]
        if len(self.events) > self.limit:
            self._forget_oldest()

    def ready(self, task_id: bytes) -> None:
        event = self.events.get(task_id)
        if event is not None:
            event.state = PENDING_NODE_ASSIGNMENT

    def started(self, task_id: bytes, worker_pid: int, attempt: int) -> None:
        event = self.events.get(task_id)
        if event is not None:
            event.state = RUNNING
            event.started_at = time.time()
            event.worker_pid = worker_pid
            event.attempt = attempt

    def ended(self, task_id: bytes, failed: bool) -> float | None:
        """Record its end; how long it ran (seconds), if its start was recorded."""
        event = self.events.get(task_id)
        if event is None:
            return None
        event.state = FAILED if failed else FINISHED
        event.finished_at = now = time.time()
        self._ended[task_id] = None
        return now - event.started_at if event.started_at else None

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts per name and state, built here: much less to send than every row."""
        counts: dict[str, dict[str, int]] = {}
        for event in self.events.values():
            states = counts.setdefault(event.name, {})
            states[event.state] = states.get(event.state, 0) + 1
        return counts

    def _forget_oldest(self) -> None:
        """O(1): the task that ended first, else (all open) the oldest open one."""
        if self._ended:
            task_id, _ = self._ended.popitem(last=False)
            del self.events[task_id]
        else:
            self.events.popitem(last=False)
            self.open_forgotten += 1
            if self.open_forgotten == 1 and self.warn is not None:
                env = BOUNDS["task_events"].env
                self.warn(
                    f"Warning: more than {self.limit:,} tasks are open on this node: the state "
                    f"API and the timeline forget the oldest ones (the tasks themselves run). "
                    f"Set {env} where the cluster starts to keep more.\n"
                )


def chrome_trace(rows: list[TaskRow]) -> list[dict[str, Any]]:
    """Complete events ("ph": "X") for tasks that ran: one lane per worker process."""
    trace = []
    for row in rows:
        if row.start_time and row.end_time:
            trace.append(
                {
                    "name": row.name,
                    "cat": row.type.lower(),
                    "ph": "X",
                    "ts": row.start_time * 1e6,
                    "dur": (row.end_time - row.start_time) * 1e6,
                    "pid": f"node {row.node_id[:8]}",
                    "tid": f"worker {row.worker_pid}",
                    "args": {"task_id": row.task_id, "state": row.state},
                }
            )
    return trace


class RecentLogs:
    """The last lines each worker printed, bounded per worker and in the number of workers,
    so a dashboard can show a worker's recent output without the node keeping it all."""

    def __init__(self, lines_per_worker: int = 500, max_workers: int = 256) -> None:
        self.lines_per_worker = lines_per_worker
        self.max_workers = max_workers
        self.by_pid: OrderedDict[int, dict[str, Any]] = OrderedDict()

    def add(self, pid: int, name: str, stream: int, lines: list[str]) -> None:
        entry = self.by_pid.pop(pid, None)
        if entry is None:
            entry = {"pid": pid, "name": name, "lines": deque(maxlen=self.lines_per_worker)}
            if len(self.by_pid) >= self.max_workers:
                self.by_pid.popitem(last=False)  # the longest silent worker goes first
        self.by_pid[pid] = entry
        entry["name"] = name
        now = time.time()
        entry["lines"].extend((now, stream, line) for line in lines)

    def snapshot(self, pid: int | None = None, limit: int = 100) -> list[WorkerLogLines]:
        """Per worker: pid, the name of what it ran last, and its last ``limit`` lines as
        (unix time, stream 1=stdout 2=stderr, text); the most recently heard worker last."""
        from rayjupyter.core.read_models import WorkerLogLines

        if pid is None:
            entries = list(self.by_pid.values())
        else:
            entries = [self.by_pid[pid]] if pid in self.by_pid else []
        return [
            WorkerLogLines(int(e["pid"]), str(e["name"]), list(e["lines"])[-limit:])
            for e in entries
        ]
