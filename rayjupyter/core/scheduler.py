"""Task and worker states, their transitions, resources, and the choice of what runs next.

No sockets or processes here: the node daemon feeds events in and acts on what comes out,
so this logic is tested without starting anything.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rayjupyter.core import worker_pool

#: resources that queued work asks for beside others (CPUs), never alone: their being free
#: does not say that a queued task could run (``Scheduler._unplaced``'s quick answer)
_BESIDE = frozenset({"memory", "object_store_memory"})


# IntEnum: members hash as ints (in C); a plain Enum hashes in Python, on every transition
class TaskState(enum.IntEnum):
    WAITING = 1  # for dependencies
    READY = 2  # dependencies met, waiting for resources and a worker
    RUNNING = 3
    FINISHED = 4
    FAILED = 5
    # rj.cancel reached it while it ran (on a worker or a peer): it ends FAILED with
    # TaskCancelledError, or FINISHED if it completed before the interrupt landed. A queued
    # task passes through on its way to FAILED, so its history shows why it failed.
    CANCELLED = 6


#: states of a task that holds a worker (or a peer's slot) for now
OCCUPYING = (TaskState.RUNNING, TaskState.CANCELLED)


class WorkerState(enum.IntEnum):
    STARTING = 1  # process spawned, not yet connected
    IDLE = 2
    BUSY = 3
    BLOCKED = 4  # running a task that waits in get/wait; its CPU is lent out
    DEAD = 5


TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.WAITING: frozenset({TaskState.READY, TaskState.FAILED, TaskState.CANCELLED}),
    TaskState.READY: frozenset({TaskState.RUNNING, TaskState.FAILED, TaskState.CANCELLED}),
    # RUNNING -> READY is a retry after a crash or a retryable exception, or a task sent
    # ahead to a worker (prefetch) taken back
    TaskState.RUNNING: frozenset(
        {TaskState.FINISHED, TaskState.FAILED, TaskState.READY, TaskState.CANCELLED}
    ),
    TaskState.CANCELLED: frozenset({TaskState.FAILED, TaskState.FINISHED}),
    TaskState.FINISHED: frozenset(),
    TaskState.FAILED: frozenset(),
}

WORKER_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.IDLE, WorkerState.DEAD}),
    WorkerState.IDLE: frozenset({WorkerState.BUSY, WorkerState.DEAD}),
    WorkerState.BUSY: frozenset({WorkerState.IDLE, WorkerState.BLOCKED, WorkerState.DEAD}),
    WorkerState.BLOCKED: frozenset({WorkerState.BUSY, WorkerState.IDLE, WorkerState.DEAD}),
    WorkerState.DEAD: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A state change the tables above do not allow: a bug in the node, never user error."""


# slots: no per-task __dict__ (about 1 KB of the node's memory per queued task)
@dataclass(eq=False, slots=True)
class TaskRecord:
    """Everything the node knows about one task, from submit until its results exist."""

    task_id: bytes
    owner: bytes  # client id of the submitter
    name: str
    func_id: bytes
    args_blob: bytes
    deps: tuple[bytes, ...]
    nested: tuple[bytes, ...]
    return_ids: tuple[bytes, ...]
    demand: dict[str, float]
    max_retries: int
    retry_exceptions: bool | bytes
    state: TaskState = TaskState.WAITING
    missing: int = 0  # dependencies not yet available
    attempt: int = 0
    worker: bytes | None = None
    history: list[TaskState] = field(default_factory=list)
    actor_id: bytes = b""  # an actor method call, run by that actor's process
    method: str = ""
    job: bytes = b""  # the driver this work belongs to
    namespace: str = ""  # for named actors looked up from inside the task
    parent: bytes | None = None  # the task that submitted this one (recursive cancel)
    children: list[bytes] = field(default_factory=list)
    gpu_ids: tuple[int, ...] = ()
    env: str = ""  # runtime_env digest: runs only on a worker started in that env
    # the pool of workers it may run on (worker_pool.pool_of: its env, GPU work apart)
    pool: str = field(init=False, default="")
    max_calls: int = 0  # its function's runs a worker makes before it exits (0: no limit)
    strategy: str = ""  # scheduling strategy string (scheduling_strategies.resolve)
    # forwarded here by a peer node, which counts its attempts: a retryable loss goes back
    # to it (AttemptLost) instead of failing or being retried here
    retried_by_owner: bool = False
    # blocked in a get of these objects (WorkerBlocked.waiting_for): the tasks that make
    # them may run inside the wait at the worker limit (nested_lending.py)
    waits_for: tuple[bytes, ...] = ()
    # an actor call its caller sent this worker itself (direct_calls.py): not sent again
    sent_to: bytes = b""

    def __post_init__(self) -> None:
        demand = self.demand  # (most demands are {"CPU": n}: no call for them)
        gpu = len(demand) > 1 or "GPU" in demand
        self.pool = worker_pool.pool_of(self.env, demand) if gpu else self.env

    def transition(self, new: TaskState) -> None:
        if new not in TASK_TRANSITIONS[self.state]:
            recent = " -> ".join(s.name for s in self.history[-5:])
            raise InvalidTransition(
                f"task {self.name!r} ({self.task_id.hex()}): {self.state.name} -> {new.name} "
                f"is not allowed (recent: {recent or 'none'})"
            )
        self.history.append(self.state)
        self.state = new

    @property
    def cancelled(self) -> bool:
        """rj.cancel reached it while it ran (read-only: cancelling is NodeState.cancel)."""
        return self.state is TaskState.CANCELLED

    def retry(self) -> bool:
        """Count a failed attempt; True if max_retries allows another (-1: always)."""
        self.attempt += 1
        return self.max_retries < 0 or self.attempt <= self.max_retries


@dataclass(eq=False)
class WorkerRecord:
    """A worker process in the pool."""

    client_id: bytes
    pid: int
    state: WorkerState = WorkerState.STARTING
    task: TaskRecord | None = None
    known_funcs: set[bytes] = field(default_factory=set)
    lent: dict[str, float] = field(default_factory=dict)  # resources given back while blocked
    actor_id: bytes = b""  # set for a process dedicated to an actor
    prefetched: TaskRecord | None = None  # sent ahead, to start when the current task ends
    ahead: list[TaskRecord] = field(default_factory=list)  # sent after it (prefetch.py)
    handle: Any = None  # the node's process handle (Popen), opaque here
    env: str = ""  # runtime_env digest it was started in ("" for the plain pool)
    pool: str = ""  # what it was started for (worker_pool.pool_of); "" for the plain pool
    # runs of each function with max_calls it made (worker_pool.ran): it exits at the max
    calls: dict[bytes, int] = field(default_factory=dict)
    retired: bool = False  # stopped by the node after max_calls: its exit is no failure
    idle_since: float = 0.0  # monotonic time it last became idle (env workers are reaped)
    # tasks blocked in get beneath ``task``, which a child of theirs was lent to run inside
    # their process (nested_lending.py), innermost last, each with what it lent
    suspended: list[tuple[TaskRecord, dict[str, float]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.env and not self.pool:  # started in an env, not said for what: its tasks
            self.pool = self.env

    def transition(self, new: WorkerState) -> None:
        if new not in WORKER_TRANSITIONS[self.state]:
            raise InvalidTransition(
                f"worker pid={self.pid} ({self.client_id.hex()}): {self.state.name} -> "
                f"{new.name} is not allowed (task: {self.task.name if self.task else 'none'})"
            )
        self.state = new


class ResourcePool:
    """Total and available resources of one node; fractions allowed."""

    def __init__(self, total: dict[str, float]) -> None:
        self.total = {k: float(v) for k, v in total.items() if v > 0}
        self.available = dict(self.total)
        self.gpu_free = [1.0] * int(self.total.get("GPU", 0))  # free fraction per GPU id
        # a placement group's resources given back while work still held them: that work
        # returns its share to the plain resource named here ("" : to none)
        self.redirect: dict[str, str] = {}

    def assign_gpus(self, amount: float) -> tuple[int, ...]:
        """Pick GPU ids for a demand: whole GPUs, or a share of one (fractions share an id)."""
        if amount <= 0:
            return ()
        free = self.gpu_free
        if amount < 1:
            candidates = [i for i, f in enumerate(free) if f + 1e-9 >= amount]
            if not candidates:
                return ()
            best = min(candidates, key=lambda i: free[i])  # pack shares onto used GPUs
            free[best] -= amount
            return (best,)
        chosen = [i for i, f in enumerate(free) if f >= 1 - 1e-9][: int(amount)]
        for i in chosen:
            free[i] = 0.0
        return tuple(chosen)

    def return_gpus(self, ids: tuple[int, ...], amount: float) -> None:
        share = amount if amount < 1 else 1.0
        for i in ids:
            self.gpu_free[i] = min(1.0, self.gpu_free[i] + share)

    def feasible(self, demand: dict[str, float]) -> bool:
        """Could this demand ever be met here, with nothing else running?"""
        return all(self.total.get(k, 0.0) + 1e-9 >= v for k, v in demand.items())

    def fits(self, demand: dict[str, float]) -> bool:
        return all(self.available.get(k, 0.0) + 1e-9 >= v for k, v in demand.items())

    def acquire(self, demand: dict[str, float]) -> None:
        for k, v in demand.items():
            self.available[k] = self.available.get(k, 0.0) - v

    def release(self, demand: dict[str, float]) -> None:
        redirect = self.redirect
        for k, v in demand.items():
            if redirect and k in redirect and k not in self.total:
                k = redirect[k]
                if not k:
                    continue
            self.available[k] = self.available.get(k, 0.0) + v


class Scheduler:
    """FIFO among ready tasks, skipping those whose resources are busy (no head-of-line block).

    A task runs only on a worker of its pool (``worker_pool``: a runtime_env's workers, GPU
    work's apart): idle workers are kept per pool (``idle`` is the plain pool,
    ``idle_env`` the others by pool key), and ``env_unplaced`` says how many workers each
    other pool lacks for tasks that fit now.
    """

    def __init__(self, resources: ResourcePool) -> None:
        self.resources = resources
        self.ready: deque[TaskRecord] = deque()
        self.idle: deque[WorkerRecord] = deque()
        self.idle_env: dict[str, deque[WorkerRecord]] = {}
        self.env_unplaced: dict[str, int] = {}

    def make_ready(self, task: TaskRecord) -> None:
        task.transition(TaskState.READY)
        self.ready.append(task)

    def worker_idle(self, worker: WorkerRecord) -> None:
        if worker.pool:
            worker.idle_since = time.monotonic()
            self.idle_env.setdefault(worker.pool, deque()).append(worker)
        else:
            self.idle.append(worker)

    def forget_worker(self, worker: WorkerRecord) -> None:
        pool = self.idle_env.get(worker.pool) if worker.pool else self.idle
        if pool is not None and worker in pool:
            pool.remove(worker)
            if worker.pool and not pool:
                del self.idle_env[worker.pool]

    def assignments(self) -> tuple[list[tuple[TaskRecord, WorkerRecord]], int]:
        """Pair ready tasks with idle workers; also count tasks that fit but lack a worker
        (the plain pool's count is returned; other envs' counts go to ``env_unplaced``)."""
        if not self.ready:  # most loop turns: nothing queued
            if self.env_unplaced:
                self.env_unplaced = {}
            return [], 0
        out: list[tuple[TaskRecord, WorkerRecord]] = []
        skipped: list[TaskRecord] = []
        ready = self.ready
        lacks_env_worker = False
        while ready and (self.idle or self.idle_env):
            task = ready[0]
            if task.state is not TaskState.READY:  # failed or cancelled while queued
                ready.popleft()
                continue
            pool = self.idle_env.get(task.pool) if task.pool else self.idle
            if not pool or not self.resources.fits(task.demand):
                lacks_env_worker = lacks_env_worker or (bool(task.pool) and not pool)
                skipped.append(ready.popleft())
                if len(skipped) > 64:  # bound the scan; the rest waits for a release
                    break
                continue
            ready.popleft()
            worker = pool.popleft()
            if task.pool and not pool:
                del self.idle_env[task.pool]
            self.resources.acquire(task.demand)
            task.transition(TaskState.RUNNING)
            task.worker = worker.client_id
            worker.transition(WorkerState.BUSY)
            worker.task = task
            out.append((task, worker))
        ready.extendleft(reversed(skipped))
        self.env_unplaced = {}
        if not ready or (self.idle and not lacks_env_worker):
            return out, 0
        counts = self._unplaced()
        plain = counts.pop("", 0)
        self.env_unplaced = counts
        return out, plain if not self.idle else 0

    def _unplaced(self, limit: int = 64) -> dict[str, int]:
        """How many queued tasks (per env) the free resources could run now if there were
        workers for them."""
        available = dict(self.resources.available)
        # (node:<ip> is never used up: only work pinned to this node asks for a share of it;
        # nor, mostly, is memory, which work asks for beside CPUs, not alone)
        if all(v <= 1e-9 for k, v in available.items() if k[:5] != "node:" and k not in _BESIDE):
            return {}  # the common case under load: everything is in use
        counts: dict[str, int] = {}
        for task in itertools.islice(self.ready, limit):
            if task.state is TaskState.READY and all(
                available.get(k, 0.0) + 1e-9 >= v for k, v in task.demand.items()
            ):
                for k, v in task.demand.items():
                    available[k] = available.get(k, 0.0) - v
                counts[task.pool] = counts.get(task.pool, 0) + 1
        return counts
