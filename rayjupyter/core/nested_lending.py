"""Nested tasks at the worker limit: a task blocked in get runs its child in its process.

A task that waits in ``get`` on a child it submitted lends its CPU, and the child needs a
worker process. Below the node's limit (``worker_limit.py``) one is started; at the limit
no process frees up while every one of them waits on a child (a chain of nested tasks
deeper than the limit), and the node would starve silently. Ray has no hard limit and
starts more workers; we keep the limit (it stands for the machine's descriptors, pids and
memory) and lend instead: when a start is refused, a queued task whose parent is blocked
in ``get`` of its result on this node is sent to the parent's own worker, which runs it
inside the wait (on the same stack) and then waits on. A chain of any depth completes on
the limit's processes, and other work gets processes again as the chain ends.

Only a child that its parent gets is lent (``WorkerBlocked.waiting_for``: a get returns
only once all it names exist, so the parent cannot go on before the child ends anyway).
Any other task (an unrelated one, a child it does not wait for, one of several awaited
by ``rj.wait``) might wait on what the parent does after its get, and would deadlock
above it on the same stack: it waits for a process. A worker nests at most
``MAX_NESTED`` levels (the stack is finite); past that, work waits. The drivers hear it
once per node (``WorkerLimit.refused``), with the depth and the setting to raise. A get
with a timeout may overrun it by the time the lent child runs.

Pure functions over ``NodeState``'s tables; ``NodeState.assign`` pairs what they find.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable
from itertools import islice

from rayjupyter.core.scheduler import (
    ResourcePool,
    TaskRecord,
    TaskState,
    WorkerRecord,
    WorkerState,
)

#: tasks a worker runs nested inside its waiting ones, at most: each level is about 8
#: Python frames (the worker raises its recursion limit to fit them); 3.11 runs a Python
#: call without a C frame, 3.10 does not, so there the stack bounds it lower
MAX_NESTED = 1000 if sys.version_info >= (3, 11) else 200
#: queued tasks looked at per scheduling turn for a blocked parent
SCAN = 256


def lend(
    workers: Iterable[WorkerRecord], ready: deque[TaskRecord], resources: ResourcePool
) -> list[tuple[TaskRecord, WorkerRecord]]:
    """Which queued children go to which waiting parents' workers now: taken off the
    queue here; ``NodeState._lend`` moves each parent onto its worker's suspended stack."""
    parents = blocked_parents(workers)
    if not parents:
        return []
    pairs = []
    for task in lendable(ready, parents):
        if resources.fits(task.demand):
            ready.remove(task)
            pairs.append((task, parents[task.parent or b""]))
    return pairs


def detail(
    workers: dict[bytes, WorkerRecord], tasks: dict[bytes, TaskRecord], ready: deque[TaskRecord]
) -> str:
    """For the warning at the limit: how many processes wait on nested tasks, how deep."""
    blocked = [w for w in workers.values() if w.state is WorkerState.BLOCKED]
    level = deepest(tasks, ready, blocked)
    if level < 2:
        return ""
    return (
        f"{len(blocked)} of them wait in get on nested tasks, {level} deep so far; a child "
        f"that its parent gets runs inside the parent's process meanwhile (at most "
        f"{MAX_NESTED} levels in one process)"
    )


def blocked_parents(workers: Iterable[WorkerRecord]) -> dict[bytes, WorkerRecord]:
    """Task id -> the plain pool worker where that task waits in get and may take a child."""
    return {
        worker.task.task_id: worker
        for worker in workers
        if worker.state is WorkerState.BLOCKED
        and worker.task is not None
        and not worker.actor_id
        and not worker.pool  # the plain pool's (worker_pool.py: no env, no GPU work)
        and not worker.task.gpu_ids
        and len(worker.suspended) < MAX_NESTED
    }


def lendable(ready: Iterable[TaskRecord], parents: dict[bytes, WorkerRecord]) -> list[TaskRecord]:
    """Queued children (among the first SCAN) that their waiting parents get (a get: the
    parent cannot go on before it has them anyway), one per parent: plain tasks of no
    runtime_env and no GPU (the parent's process has neither set up)."""
    found: list[TaskRecord] = []
    taken: set[bytes] = set()
    for task in islice(ready, SCAN):
        parent = task.parent
        if (
            parent is not None
            and parent in parents
            and parent not in taken
            and task.return_ids
            and task.return_ids[0] in _waits_for(parents[parent])
            and task.state is TaskState.READY
            and not task.pool  # the plain pool's: no runtime_env, no GPU (a bundle's too)
            and not task.actor_id
        ):
            taken.add(parent)
            found.append(task)
    return found


def _waits_for(worker: WorkerRecord) -> tuple[bytes, ...]:
    return worker.task.waits_for if worker.task is not None else ()


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
