"""Nested tasks at the worker limit: a blocked parent runs its child in its own process.

A task that waits in ``get`` on a child it submitted lends its CPU, and the child needs a
worker process. Below the node's limit (``worker_limit.py``) one is started; at the limit
no process frees up while every one of them waits on a child (a chain of nested tasks
deeper than the limit), and the node would starve silently. Ray has no hard limit and
starts more workers; we keep the limit (it stands for the machine's descriptors, pids and
memory) and lend instead: when a start is refused, a ready task whose parent is blocked in
``get`` on this node is sent to the parent's own worker, which runs it inside the wait (on
the same stack) and then goes back to waiting. A child is the safe thing to lend: its
parent cannot go on before its children anyway, whereas an unrelated task would hold the
parent back for no reason. A chain of any depth then completes on the limit's processes,
each lending at most ``MAX_NESTED`` levels deep (the stack is finite); past that, work
waits, and the warning (once per episode, naming the setting and the depth) says why.

Pure functions over ``NodeState``'s tables; ``NodeState.assign`` pairs what they find.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from itertools import islice

from rayjupyter.core.scheduler import TaskRecord, TaskState, WorkerRecord, WorkerState

#: tasks a worker runs nested inside its waiting ones, at most: each level is about 8
#: Python frames (the worker raises its recursion limit to fit them); 3.11 runs a Python
#: call without a C frame, 3.10 does not, so there the stack bounds it lower
MAX_NESTED = 1000 if sys.version_info >= (3, 11) else 200
#: queued tasks looked at per scheduling turn for a blocked parent
SCAN = 256


def blocked_parents(workers: Iterable[WorkerRecord]) -> dict[bytes, WorkerRecord]:
    """Task id -> the plain pool worker where that task waits in get and may take a child."""
    return {
        worker.task.task_id: worker
        for worker in workers
        if worker.state is WorkerState.BLOCKED
        and worker.task is not None
        and not worker.actor_id
        and not worker.env
        and len(worker.suspended) < MAX_NESTED
    }


def lendable(ready: Iterable[TaskRecord], parents: dict[bytes, WorkerRecord]) -> list[TaskRecord]:
    """Queued children (among the first SCAN) of the waiting tasks, one per parent: plain
    tasks of no runtime_env and no GPU (the parent's process has neither set up)."""
    found: list[TaskRecord] = []
    taken: set[bytes] = set()
    for task in islice(ready, SCAN):
        parent = task.parent
        if (
            parent is not None
            and parent in parents
            and parent not in taken
            and task.state is TaskState.READY
            and not task.env
            and not task.actor_id
            and not task.demand.get("GPU")
        ):
            taken.add(parent)
            found.append(task)
    return found


def depth(tasks: dict[bytes, TaskRecord], task: TaskRecord) -> int:
    """How many tasks deep ``task`` is (1: submitted by a driver), as far as this node knows."""
    level, parent = 1, task.parent
    while parent is not None and parent in tasks and level <= len(tasks):
        level += 1
        parent = tasks[parent].parent
    return level


def deepest(
    tasks: dict[bytes, TaskRecord], ready: Iterable[TaskRecord], blocked: list[WorkerRecord]
) -> int:
    """How deep the nested tasks go: the first SCAN queued ones, and the children that
    the tasks blocked in get (on ``blocked`` workers) wait for."""
    queued = max((depth(tasks, t) for t in islice(ready, SCAN) if t.parent), default=0)
    waiting = max((depth(tasks, w.task) + 1 for w in blocked if w.task), default=0)
    return max(queued, waiting)
