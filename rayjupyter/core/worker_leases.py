"""Workers a node lends its local drivers (Ray's worker leases): the decisions, no I/O.

A sync task went driver -> node -> worker -> driver (the worker answers directly,
direct_links.py): the node's turn sat on every task's path, and on a small machine its
wake-ups took the CPU the worker and the driver wanted. Now, when a driver's task ends on
a worker that answered it directly and nothing else waits, the node keeps that worker and
the task's resources for the driver: a lease. The driver sends its next tasks of the same
demand to the worker itself, on their link, and tells the node afterwards with the
``SubmitTask`` it would have sent (``sent_to`` names the worker), batched
(task_leases.py). The node keeps every book as before: events, refs, cancel, retries, the
worker's death.

A lease is the worker BUSY with a placeholder task that holds the demand: the resources,
the lending of a nested ``get`` and the invariants are what they are for any task. Direct
tasks hold nothing of their own. The node asks for the worker back when other work waits
(``revoke_all``); the driver answers with ``ReturnLease`` after its notices, and also gives
it back itself when it has not used it for a moment. The worker becomes idle once the
direct tasks the node heard of have ended.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rayjupyter.core import worker_pool
from rayjupyter.core.node_instructions import FAILED, FINISHED, KILL, LEASE, STARTED, Instruction
from rayjupyter.core.scheduler import OCCUPYING, TaskRecord, TaskState, WorkerRecord, WorkerState
from rayjupyter.core.task_errors import cancelled_error

if TYPE_CHECKING:
    from rayjupyter.core.node_state import NodeState

LEASES_ENV = "RAYJUPYTER_WORKER_LEASES"
#: leases out at once on a node (one per driver); beyond, tasks go by the node
DEFAULT_LEASES = 64


def leases_max() -> int:
    """How many leases a node may have out (RAYJUPYTER_WORKER_LEASES; 0 turns them off)."""
    raw = os.environ.get(LEASES_ENV, "")
    if not raw:
        return DEFAULT_LEASES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{LEASES_ENV} must be an integer >= 0 (0: no leases), not {raw!r}")
    return value


_NONE: list[Instruction] = []


@dataclass(eq=False, slots=True)
class Lease:
    """A worker lent to one driver, holding the demand of the task that ended on it."""

    worker: WorkerRecord
    owner: bytes
    record: TaskRecord  # the placeholder: worker.task while the lease holds
    revoking: bool = False  # the driver was asked for it back
    returned: bool = False  # the driver gave it back: it ends once its tasks have


@dataclass(eq=False)
class WorkerLeases:
    """The node's leases and the direct tasks running on leased workers."""

    state: NodeState
    leases: dict[bytes, Lease] = field(default_factory=dict)  # worker id -> lease
    by_owner: dict[bytes, bytes] = field(default_factory=dict)  # driver -> its leased worker
    # worker id -> direct tasks the node heard of that have not ended (after its lease
    # ended too: a driver's send can cross the node's revoke)
    running: dict[bytes, set[bytes]] = field(default_factory=dict)
    limit: int = field(default_factory=leases_max)

    def grantable(self, worker: WorkerRecord, task: TaskRecord) -> bool:
        """After ``task`` (answered to its driver directly) ended on ``worker``: may the
        worker stay with that driver? Only for plain one-CPU-shaped work, nothing queued."""
        return (
            not self.state.ready
            and task.owner not in self.by_owner
            and len(self.leases) < self.limit
            and not task.pool  # (GPU work and runtime_envs have pools of their own)
            and not task.strategy
            and not task.max_calls
            and task.parent is None
            and not task.retried_by_owner
            and not worker.pool
            and not worker.lent
            and not worker.suspended
        )

    def grant(self, worker: WorkerRecord, task: TaskRecord) -> list[Instruction]:
        """Keep ``worker`` BUSY for the task's driver, holding the task's demand again."""
        record = TaskRecord(
            task_id=b"lease:" + worker.client_id,
            owner=task.owner,
            name=task.name,  # (its output is named after the task running there)
            func_id=b"",
            args_blob=b"",
            deps=(),
            nested=(),
            return_ids=(),
            demand=task.demand,
            max_retries=0,
            retry_exceptions=False,
            state=TaskState.RUNNING,
            worker=worker.client_id,
            job=task.job,
            namespace=task.namespace,
        )
        self.state.resources.acquire(task.demand)
        worker.task = record
        self.leases[worker.client_id] = Lease(worker, task.owner, record)
        self.by_owner[task.owner] = worker.client_id
        return [(LEASE, worker, task.owner, task.demand, task.func_id, True)]

    # ------------------------------------------------------------------ direct tasks

    def notice(self, task: TaskRecord, ended: bool) -> list[Instruction]:
        """A driver's notice of a task it sent ``task.sent_to`` itself. ``ended``: that
        worker's TaskFinished came first (the shell kept it): ``finished`` follows now."""
        task.transition(TaskState.READY)
        task.transition(TaskState.RUNNING)
        worker = self.state.workers.get(task.sent_to)
        task.worker = task.sent_to
        lease = self.leases.get(task.sent_to)
        if lease is not None:  # its output goes out under the task's name
            lease.record.name = task.name
        if worker is None:
            if ended:
                return _NONE
            # it died before we heard of the task: it may have run there
            task.sent_to = b""
            task.worker = None
            return self.state._attempt_lost(task, 0, "its worker exited before the node knew")
        self.running.setdefault(worker.client_id, set()).add(task.task_id)
        return [(STARTED, task, worker)]

    def finished(self, task: TaskRecord, error: bytes | None, retryable: bool) -> list[Instruction]:
        """A direct task's worker answered the node: its end, and its lease's if returned."""
        worker_id = task.sent_to
        task.sent_to = b""
        running = self.running.get(worker_id)
        if running is not None:
            running.discard(task.task_id)
            if not running:
                del self.running[worker_id]
        out: list[Instruction]
        if error is None:
            task.transition(TaskState.FINISHED)
            out = [(FINISHED, task)]
        elif task.state is TaskState.CANCELLED:
            task.transition(TaskState.FAILED)
            out = [(FAILED, task, cancelled_error(task))]
        elif retryable and task.retry():  # again, by the node this time
            task.worker = None
            task.transition(TaskState.READY)
            self.state.ready.append(task)
            out = []
        else:
            task.transition(TaskState.FAILED)
            out = [(FAILED, task, error)]
        lease = self.leases.get(worker_id)
        if lease is not None and lease.returned:
            out += self._end(lease)
        return out

    # ------------------------------------------------------------------ lease ends

    def returned(self, owner: bytes, worker_id: bytes) -> list[Instruction]:
        """The driver gave the worker back (after its notices): it is free once the
        direct tasks the node heard of have ended."""
        lease = self.leases.get(worker_id)
        if lease is None or lease.owner != owner or lease.returned:
            return _NONE
        lease.returned = True
        if self.by_owner.get(owner) == worker_id:
            del self.by_owner[owner]
        return self._end(lease)

    def owner_gone(self, owner: bytes) -> list[Instruction]:
        worker_id = self.by_owner.get(owner)
        return self.returned(owner, worker_id) if worker_id is not None else _NONE

    def revoke_all(self) -> list[Instruction]:
        """Other work waits: ask every driver holding a lease to give it back (once)."""
        out: list[Instruction] = []
        for lease in self.leases.values():
            if not lease.revoking and not lease.returned:
                lease.revoking = True
                demand = lease.record.demand
                out.append((LEASE, lease.worker, lease.owner, demand, b"", False))
        return out

    def coming_back(self) -> bool:
        """Whether a driver was asked for a worker and has not given it back yet."""
        return any(lease.revoking and not lease.returned for lease in self.leases.values())

    def _end(self, lease: Lease) -> list[Instruction]:
        """A returned lease whose direct tasks have all ended: the worker is idle again."""
        worker = lease.worker
        if self.running.get(worker.client_id) or worker.task is not lease.record:
            return _NONE  # (later: its last direct task's end, or a lent child's)
        if worker.state is not WorkerState.BUSY:
            return _NONE
        del self.leases[worker.client_id]
        state = self.state
        state._release(lease.record, worker)
        lease.record.transition(TaskState.FINISHED)
        worker.task = None
        worker.transition(WorkerState.IDLE)
        if worker_pool.finished_on(state.scheduler, worker, lease.record):
            return _NONE
        return [(KILL, worker)]

    def worker_died(self, worker: WorkerRecord, cause: str) -> list[Instruction]:
        """Its process exited: its lease goes (the caller releases the placeholder as the
        worker's task) and the direct tasks it ran are lost attempts: retried or failed."""
        lease = self.leases.pop(worker.client_id, None)
        if lease is not None and self.by_owner.get(lease.owner) == worker.client_id:
            del self.by_owner[lease.owner]
        out: list[Instruction] = []
        for task_id in sorted(self.running.pop(worker.client_id, ())):
            task = self.state.tasks.get(task_id)
            if task is not None and task.state in OCCUPYING:
                task.sent_to = b""
                task.worker = None
                out += self.state._attempt_lost(task, worker.pid, cause)
        return out

    def validate(self) -> None:
        for worker_id, lease in self.leases.items():
            worker = lease.worker
            assert self.state.workers.get(worker_id) is worker, f"lease of gone {worker_id!r}"
            holds = worker.task is lease.record or any(
                parent is lease.record for parent, _lent in worker.suspended
            )
            assert holds, f"leased worker pid {worker.pid} does not hold its lease"
        for owner, worker_id in self.by_owner.items():
            held = self.leases.get(worker_id)
            assert held is not None and held.owner == owner, f"{owner!r} lease mislaid"
