"""The node's task and worker decisions as one state machine: events in, instructions out.

``NodeState`` owns the tasks table, the workers table, the resource pool, the ready queue
(with its idle pools per runtime_env, ``scheduler.Scheduler``), prefetch (tasks sent ahead
to busy workers) and cancellation. It does no I/O: each event is a method that changes
the tables and returns what the node must do as a list of instructions, plain tuples whose
first item is an opcode of ``node_instructions``. The node (``node.py``) is the shell that sends the
messages, signals the processes and fills in the objects. So every decision here is tested
with no process at all (``tests/test_scheduler.py``), and ``validate`` checks the tables'
invariants after any step.

It composes the actors' state machine (``actor_state.ActorTable``: lifecycle, call queues
per caller, placement, restarts) and decides what goes to peers (``spill_over``, with the
policy of ``peer_placement``) from its view of them (``nodes``, set by the node).
"""

from __future__ import annotations

import contextlib
from collections.abc import Container, Mapping

from rayjupyter.core import env_workers, nested_lending, peer_placement, worker_pool
from rayjupyter.core.actor_state import ActorTable
from rayjupyter.core.head import NodeInfo
from rayjupyter.core.node_instructions import (  # (the tests read them as node_state.X)
    ACTOR_PROCESS_DIED,
    ATTEMPT_LOST,
    CANCEL_CALL,
    CANCEL_FORWARDED,
    DROP_ACTOR_CALL,
    EXECUTE,
    FAILED,
    FINISHED,
    FORWARD,
    INTERRUPT,
    KILL,
    REVOKE,
    SPAWN,
    START_ACTOR,
    STARTED,
    UNPIN,
    WARN,
    Instruction,
)
from rayjupyter.core.node_instructions import NONE as _NONE
from rayjupyter.core.node_instructions import OPCODE_NAMES as OPCODE_NAMES
from rayjupyter.core.placement_groups import cpu_share, gpu_amount
from rayjupyter.core.prefetch import Prefetch
from rayjupyter.core.scheduler import OCCUPYING as OCCUPYING
from rayjupyter.core.scheduler import (
    ResourcePool,
    Scheduler,
    TaskRecord,
    TaskState,
    WorkerRecord,
    WorkerState,
)
from rayjupyter.core.task_errors import cancelled_error as cancelled_error
from rayjupyter.core.task_errors import crashed_error as crashed_error
from rayjupyter.core.task_errors import unschedulable_error as unschedulable_error
from rayjupyter.core.worker_leases import WorkerLeases
from rayjupyter.core.worker_limit import WorkerLimit

ENV_WORKER_IDLE_S = env_workers.IDLE_S  # runtime_env workers idle this long are stopped
#: a queue this short gives a failing task up at once (longer: see NodeState.stale)
STALE_SCAN = 256


class NodeState:
    """Tasks, workers, resources, ready queue, prefetch and cancellation of one node."""

    def __init__(self, resources: ResourcePool, pool_size: int, limit: WorkerLimit) -> None:
        self.resources = resources
        self.scheduler = Scheduler(resources)
        self.ready = self.scheduler.ready  # the same deque: FIFO of READY plain tasks
        self.tasks: dict[bytes, TaskRecord] = {}
        self.workers: dict[bytes, WorkerRecord] = {}
        self.pool_size = pool_size  # plain workers kept alive (one per CPU)
        # worker processes at most (pool, runtime_env and actor workers: worker_limit.py);
        # it also decides when the drivers hear that work waits for one (once per episode)
        self.limit = limit
        # tasks failed while queued in a long queue stay in it until popped (every reader
        # skips them) or until they are half of it: removing each one would cost O(queue)
        self.stale = 0
        # what each actor's process here holds: (demand, GPU ids), from placement to its end
        self.actor_slots: dict[bytes, tuple[dict[str, float], tuple[int, ...]]] = {}
        # tasks in the table per submitting client: bounded (config.BOUNDS "tasks_per_client")
        self.owned: dict[bytes, int] = {}
        # the cluster as this node last heard of it (the head's node table), and its own id
        self.nodes: Mapping[bytes, NodeInfo] = {}
        self.node_id = b""
        self.actor_table = ActorTable(self)
        self.leases = WorkerLeases(self)  # workers lent to local drivers (worker_leases.py)
        self.prefetching = Prefetch(self)  # tasks sent ahead to busy workers (prefetch.py)

    # ------------------------------------------------------------------ tasks

    def submit(self, task: TaskRecord) -> None:
        """A new task (or actor call or creation): known from now on; its parent learns
        of it (recursive cancel). The shell counts its missing dependencies next."""
        self.tasks[task.task_id] = task
        owned = self.owned
        owned[task.owner] = owned.get(task.owner, 0) + 1
        parent = task.parent
        if parent is not None:
            record = self.tasks.get(parent)
            if record is not None:
                record.children.append(task.task_id)

    def dependency_ready(self, task: TaskRecord) -> bool:
        """One of a waiting task's values exists now: True when it has them all (the
        shell then places it: here, on the peer that holds its values, or in its actor's
        queue). A failed dependency fails the task instead (``fail``)."""
        if task.state is not TaskState.WAITING:
            return False  # failed or cancelled meanwhile
        task.missing -= 1
        return task.missing == 0

    def task_ready(self, task: TaskRecord) -> None:
        """Its dependencies exist (here): queue it for a worker."""
        self.scheduler.make_ready(task)

    def fail(self, task: TaskRecord) -> None:
        """The task fails now (the shell turns its returns into the error): leave the queue."""
        if task.state is TaskState.READY and not task.actor_id:
            self._unqueue(task)
        task.transition(TaskState.FAILED)

    def _unqueue(self, task: TaskRecord) -> None:
        """A queued task leaves the queue (it is failing): now if that is cheap, else later."""
        ready = self.ready
        if ready and ready[0] is task:
            ready.popleft()
        elif len(ready) <= STALE_SCAN:
            with contextlib.suppress(ValueError):
                ready.remove(task)
        else:
            self.stale += 1
            if self.stale * 2 > len(ready):
                kept = [t for t in ready if t is not task and t.state is TaskState.READY]
                ready.clear()
                ready.extend(kept)
                self.stale = 0

    def retry_or_fail(
        self, task: TaskRecord, error: bytes, dead_node: bytes = b""
    ) -> list[Instruction]:
        """A task whose attempt was lost (its worker or its node died): queue it again first
        within max_retries, else fail it with ``error``; cancelled, it fails as cancelled.
        ``dead_node``: the node it ran on died; pinned there by a hard node affinity it
        cannot run anywhere else (TaskUnschedulableError), a soft one lets it go anywhere."""
        if task.state is TaskState.CANCELLED:
            task.transition(TaskState.FAILED)
            return [(FAILED, task, cancelled_error(task))]
        if not task.retry():
            task.transition(TaskState.FAILED)
            return [(FAILED, task, error)]
        if dead_node and task.strategy.startswith(f"node:{dead_node.hex()}:"):
            if not task.strategy.endswith(":1"):
                task.transition(TaskState.FAILED)
                return [(FAILED, task, unschedulable_error(task, dead_node))]
            task.strategy = ""  # soft: anywhere now
        task.transition(TaskState.READY)
        self.ready.appendleft(task)
        return _NONE

    def peer_attempt_lost(
        self, task: TaskRecord, error: bytes, pid: int, cause: str, address: str
    ) -> list[Instruction]:
        """A task of ours that a peer ran lost its attempt there (``AttemptLost``): its
        worker there died (``pid``, ``cause``) or it raised ``error`` that its
        retry_exceptions names. Attempts are counted here only (the peer runs it with
        max_retries=0 and never retries it itself), so max_retries holds once in all."""
        if task.state not in OCCUPYING:
            return _NONE  # ended or retried already
        if pid:
            error = crashed_error(task, pid, f"{cause}, on node {address}")
        return self.retry_or_fail(task, error)

    def _attempt_lost(self, task: TaskRecord, pid: int, cause: str) -> list[Instruction]:
        """Its worker died: retry or fail it here, or, if a peer node's, tell that node."""
        if task.retried_by_owner and task.state is not TaskState.CANCELLED:
            task.transition(TaskState.FAILED)
            return [(ATTEMPT_LOST, task, b"", pid, cause)]
        return self.retry_or_fail(task, crashed_error(task, pid, cause))

    def forwarded(self, task: TaskRecord) -> None:
        """The task runs on a peer now (taken off the queue by the caller, or placed the
        moment its values exist); its worker there is the peer's business."""
        if task.state is TaskState.WAITING:
            task.transition(TaskState.READY)
        task.transition(TaskState.RUNNING)

    def forget(self, task: TaskRecord) -> bool:
        """Drop a finished or failed task from the table; False if it was gone already."""
        if self.tasks.pop(task.task_id, None) is None:
            return False
        owned = self.owned
        left = owned.get(task.owner, 0) - 1
        if left > 0:
            owned[task.owner] = left
        else:  # (>= 0: a lineage rebuild re-enters the table without a submit)
            owned.pop(task.owner, None)
        return True

    def over_limit(self, task: TaskRecord, limit: int) -> bool:
        """True if the task's submitter has more than ``limit`` tasks here with it (it was
        just submitted): it must fail at once (config.BOUNDS "tasks_per_client")."""
        return self.owned.get(task.owner, 0) > limit

    # ------------------------------------------------------------------ workers

    def worker_spawned(self, worker: WorkerRecord) -> None:
        self.workers[worker.client_id] = worker

    def worker_connected(self, worker: WorkerRecord) -> list[Instruction]:
        """Its Hello arrived: an actor's process gets its class, a pool worker work."""
        if worker.state is not WorkerState.STARTING:
            return _NONE
        worker.transition(WorkerState.IDLE)
        if worker.actor_id:
            return [(START_ACTOR, worker)]
        self.scheduler.worker_idle(worker)
        return _NONE

    def _release(self, task: TaskRecord, worker: WorkerRecord) -> None:
        """The resources a task held, less what its worker lent while blocked, come back."""
        lent = worker.lent
        if lent:
            demand = dict(task.demand)
            for key, value in lent.items():
                demand[key] = demand.get(key, 0.0) - value
            worker.lent = {}
            self.resources.release(demand)
        else:
            self.resources.release(task.demand)
        if task.gpu_ids:
            self.resources.return_gpus(task.gpu_ids, gpu_amount(task.demand))
            task.gpu_ids = ()

    def task_finished(
        self,
        worker: WorkerRecord,
        task: TaskRecord,
        error: bytes | None,
        retryable: bool,
        answered: bool = False,
    ) -> list[Instruction]:
        """The hot path: a pool worker answered for its task (the shell checked that
        ``worker.task is task``). A task sent ahead starts at once and inherits the slot.
        ``answered``: its results went to its driver directly: the worker may stay lent
        to that driver (worker_leases.py)."""
        self._release(task, worker)
        following = self.prefetching.next_of(worker)
        if following is not None:  # the worker has started it already
            worker.task = following
            self.resources.acquire(following.demand)
            out: list[Instruction] = [(STARTED, following, worker)]
        elif worker.suspended:  # it ran lent to its waiting parent: back to that wait
            worker.task, worker.lent = worker.suspended.pop()
            worker.transition(WorkerState.BLOCKED)
            out = []
        elif answered and error is None and self.leases.grantable(worker, task):
            out = self.leases.grant(worker, task)
        else:
            worker.task = None
            worker.transition(WorkerState.IDLE)
            out = [] if worker_pool.finished_on(self.scheduler, worker, task) else [(KILL, worker)]
        if error is None:
            task.transition(TaskState.FINISHED)
            out.append((FINISHED, task))
        elif task.state is TaskState.CANCELLED:
            task.transition(TaskState.FAILED)
            out.append((FAILED, task, cancelled_error(task)))
        elif retryable and task.retried_by_owner:  # its node counts (peer_attempt_lost)
            task.transition(TaskState.FAILED)
            out.append((ATTEMPT_LOST, task, error, 0, ""))
        elif retryable and task.retry():
            task.worker = None
            task.transition(TaskState.READY)
            self.ready.append(task)
        else:
            task.transition(TaskState.FAILED)
            out.append((FAILED, task, error))
        return out

    def worker_blocked(
        self, worker: WorkerRecord, waiting_for: tuple[bytes, ...] = ()
    ) -> list[Instruction]:
        """Its task waits in get/wait: lend its CPUs out (a bundle's too), take back a task
        sent ahead (it may be the very one it waits for). Always answered with one REVOKE
        (of nothing, if nothing was sent ahead): the worker waits for it before starting
        anything it got earlier, so a task taken back never runs twice. ``waiting_for``:
        a get's objects, whose tasks may run inside the wait at the limit (``_lend``)."""
        if worker.task is None or worker.state is not WorkerState.BUSY:
            return [(REVOKE, None, worker, True)]
        worker.task.waits_for = waiting_for
        out = self.prefetching.take_back(worker, answers_block=True)
        out = out or [(REVOKE, None, worker, True)]
        total = self.resources.total
        lending = {k: v for k, v in cpu_share(worker.task.demand).items() if k in total}
        self.resources.release(lending)
        worker.lent = {**worker.lent, **lending}  # (kept: what a removed bundle had)
        worker.transition(WorkerState.BLOCKED)
        return out

    def worker_unblocked(self, worker: WorkerRecord) -> None:
        """Back from get: it takes its CPUs again (may overcommit for a moment, as in
        Ray). A bundle given back while it waited (its group removed) is not taken
        again: that share stays lent, and the task gives nothing back for it."""
        if worker.task is None:
            return
        if worker.state is WorkerState.BUSY and worker.suspended:
            self._unlend(worker)
        if worker.state is not WorkerState.BLOCKED:
            return
        worker.task.waits_for = ()
        total = self.resources.total
        lent = worker.lent
        if all(key in total for key in lent):
            self.resources.acquire(lent)
            worker.lent = {}
        else:
            self.resources.acquire({k: v for k, v in lent.items() if k in total})
            worker.lent = {k: v for k, v in lent.items() if k not in total}
        worker.transition(WorkerState.BUSY)

    def _unlend(self, worker: WorkerRecord) -> None:
        """The wait a child was lent to ended before the child started there (the worker
        says so by leaving it): the child waits in that process as a task sent ahead (it
        starts when its parent ends, or is taken back if the parent blocks again)."""
        child = worker.task
        assert child is not None
        self._release(child, worker)
        worker.task, worker.lent = worker.suspended.pop()
        worker.prefetched = child
        worker.transition(WorkerState.BLOCKED)

    def worker_died(self, worker: WorkerRecord, cause: str, respawn: bool) -> list[Instruction]:
        """Its process exited: retry or fail what it ran, hand an actor's death on, and
        keep the plain pool at its size (``respawn``: the node still runs)."""
        self.scheduler.forget_worker(worker)
        task = worker.task
        leased = self.leases.leases.get(worker.client_id)
        lease = leased.record if leased is not None else None
        worker.transition(WorkerState.DEAD)
        del self.workers[worker.client_id]
        out: list[Instruction] = self.leases.worker_died(worker, cause)
        following, requeued = self.prefetching.lost_with(worker)
        out += requeued
        if following is not None:  # sent ahead: it may have started as the worker died
            out += self._attempt_lost(following, worker.pid, cause)
        if worker.actor_id:
            out.append((ACTOR_PROCESS_DIED, worker, cause))
        elif task is not None and task.state in OCCUPYING:
            self._release(task, worker)
            task.worker = None
            if task is not lease:  # (a lease's placeholder only held resources)
                out.append((UNPIN, task))
                out += self._attempt_lost(task, worker.pid, cause)
        while worker.suspended:  # the waiting parents a child was lent to die with it
            parent, worker.lent = worker.suspended.pop()
            self._release(parent, worker)
            parent.worker = None
            if parent is not lease:
                out.append((UNPIN, parent))
                out += self._attempt_lost(parent, worker.pid, cause)
        if respawn and self.live_pool_workers() < self.pool_size:
            out.append((SPAWN, "", 1))
        return out

    def actor_placed(self, actor_id: bytes, demand: dict[str, float]) -> tuple[int, ...]:
        """An actor's process starts here: it holds ``demand`` (and GPU ids) until
        ``actor_released``; placed again (a restart), its old slot goes first. The actor's
        own queue and restarts are decided in node_actors."""
        self.actor_released(actor_id)
        self.resources.acquire(demand)
        gpu_ids = self.resources.assign_gpus(gpu_amount(demand))
        self.actor_slots[actor_id] = (demand, gpu_ids)
        return gpu_ids

    def actor_released(self, actor_id: bytes) -> None:
        """An actor's process ended (or will: it is being killed): its slot is free. Once."""
        slot = self.actor_slots.pop(actor_id, None)
        if slot is not None:
            demand, gpu_ids = slot
            self.resources.release(demand)
            self.resources.return_gpus(gpu_ids, gpu_amount(demand))

    def live_pool_workers(self) -> int:
        """The plain pool: actors' and envs' workers come and go with their work."""
        return sum(
            1
            for w in self.workers.values()
            if w.state is not WorkerState.DEAD and not w.actor_id and not w.pool
        )

    # ------------------------------------------------------------------ scheduling

    def assign(self) -> list[Instruction]:
        """Pair ready tasks with idle workers and free resources; say how many plain
        workers to start for tasks that fit but lack one (``env_unplaced``: env ones)."""
        pairs, unplaced = self.scheduler.assignments()
        if not pairs and not unplaced:
            return _NONE  # most loop turns
        out: list[Instruction] = []
        resources = self.resources
        for task, worker in pairs:
            gpus = gpu_amount(task.demand)  # a bundle's GPUs get device ids the same way
            if gpus:
                task.gpu_ids = resources.assign_gpus(gpus)
            out.append((EXECUTE, task, worker))
        if unplaced:  # only then count starting workers: a scan of all workers
            starting = sum(
                1 for w in self.workers.values() if w.state is WorkerState.STARTING and not w.pool
            )
            missing = unplaced - starting
            count = min(missing, self.limit.room(len(self.workers)))
            if count > 0:
                out.append((SPAWN, "", count))
            if missing > max(count, 0):
                detail = (  # (told once: no scan while an episode is on)
                    ""
                    if self.limit.reached
                    else nested_lending.detail(self.workers, self.tasks, self.ready)
                )
                if count <= 0:  # at the limit: waiting parents run their children
                    out += self._lend()
                out += self.limit_reached(missing - max(count, 0), "tasks", max(count, 0), detail)
        return out

    def _lend(self) -> list[Instruction]:
        """At the limit, a queued task that a task blocked in get waits for (its child)
        runs inside the waiting task's process (``nested_lending``)."""
        out: list[Instruction] = []
        for task, worker in nested_lending.lend(self.workers.values(), self.ready, self.resources):
            parent = worker.task
            assert parent is not None  # (blocked in get: nested_lending.blocked_parents)
            worker.suspended.append((parent, worker.lent))
            worker.task, worker.lent = task, {}
            self.resources.acquire(task.demand)
            task.transition(TaskState.RUNNING)
            task.worker = worker.client_id
            worker.transition(WorkerState.BUSY)
            out.append((EXECUTE, task, worker))
        return out

    def limit_reached(
        self, waiting: int, what: str, planned: int = 0, detail: str = ""
    ) -> list[Instruction]:
        """``waiting`` tasks or actors (``what``) found no worker process (the limit): the
        drivers hear it once per episode (``WorkerLimit``). ``planned``: processes this
        turn starts that are not in the table yet; ``detail``: what the node does about it."""
        text = self.limit.refused(len(self.workers) + planned, waiting, what, detail)
        return [(WARN, text)] if text is not None else _NONE

    def turn_ended(self) -> None:
        """After each scheduling turn: a turn that refused no start ends the episode."""
        self.limit.turn_ended()

    def env_spawns(self, known_envs: Container[str], now: float) -> list[Instruction]:
        """Workers for pools (runtime_envs, GPU work: ``worker_pool``) whose tasks fit now
        but have no idle worker of theirs (``env_workers.spawns``)."""
        return env_workers.spawns(self, known_envs, now)

    def reap_env_workers(
        self, now: float, crowded_by: str = "", planned: int = 0
    ) -> list[Instruction]:
        """Stop env workers idle for ENV_WORKER_IDLE_S, or with ``crowded_by`` make room for
        that env's (``env_workers.reap``; ``planned``: env workers about to start)."""
        if not self.scheduler.idle_env:
            return _NONE
        victims = env_workers.reap(self, now, crowded_by, planned)
        return [(KILL, worker) for worker in victims] if victims else _NONE

    def prefetch(self) -> list[Instruction]:
        """Busy workers get their next tasks now (``prefetch.Prefetch.send_ahead``)."""
        return self.prefetching.send_ahead()

    # ------------------------------------------------------------------ peers

    def peers(self) -> list[NodeInfo]:
        """The other live nodes, as of the last view."""
        return peer_placement.live_peers(self.nodes, self.node_id)

    def spill_over(self, from_peers: Container[bytes]) -> list[Instruction]:
        """Queued tasks that this node cannot run now go to peers that have the resources
        free (``peer_placement.spill``); tasks a peer sent us (their owner is in
        ``from_peers``) and tasks pinned here by node affinity stay."""
        if not self.ready:
            return _NONE
        peers = self.peers()
        if not peers:
            return _NONE
        moves = peer_placement.spill(self.ready, peers, self.resources, from_peers)
        return [(FORWARD, task, peer) for task, peer in moves]

    # ------------------------------------------------------------------ cancel

    def cancel(
        self, task: TaskRecord, force: bool, recursive: bool, forwarded: Container[bytes]
    ) -> list[Instruction]:
        """Queued: it fails now. Running: it is CANCELLED until its worker answers (an
        interrupt, or a kill with ``force``), then fails with TaskCancelledError.
        ``forwarded``: ids of the tasks that run on peers (the peer is told)."""
        out: list[Instruction] = []
        if recursive:
            for child_id in task.children:
                child = self.tasks.get(child_id)
                if child is not None:
                    out += self.cancel(child, force, recursive, forwarded)
        state = task.state
        if state in (TaskState.WAITING, TaskState.READY):
            if state is TaskState.READY and not task.actor_id:
                self._unqueue(task)
            task.transition(TaskState.CANCELLED)
            if task.actor_id:
                out.append((DROP_ACTOR_CALL, task))
            task.transition(TaskState.FAILED)
            out.append((FAILED, task, cancelled_error(task)))
        elif state is not TaskState.RUNNING:
            return out  # ended, or cancelled already
        elif task.task_id in forwarded:
            task.transition(TaskState.CANCELLED)
            out.append((CANCEL_FORWARDED, task, force))
        elif task.worker is not None and task.worker in self.workers:
            worker = self.workers[task.worker]
            if task.actor_id:  # only an async actor can stop a running call (as in Ray)
                task.transition(TaskState.CANCELLED)
                out.append((CANCEL_CALL, task, worker))
            elif worker.prefetched is task or task in worker.ahead:  # sent ahead, not started
                self.prefetching.drop(worker, task)  # (those sent after it stay there)
                worker.known_funcs.discard(task.func_id)  # (the dropped message had it)
                task.worker = None
                task.transition(TaskState.CANCELLED)
                task.transition(TaskState.FAILED)
                out.append((REVOKE, task, worker, False))
                out.append((FAILED, task, cancelled_error(task)))
            else:
                task.transition(TaskState.CANCELLED)
                out.append((KILL, worker) if force else (INTERRUPT, task, worker))
        return out

    # ------------------------------------------------------------------ checks

    def validate(self, held_elsewhere: dict[str, float] | None = None) -> None:
        """Raise AssertionError naming the first broken invariant of the tasks, workers,
        resources (``state_checks``) and actors (``ActorTable.validate``).
        ``held_elsewhere``: resources that a part of the node holds outside these tables
        (the placement groups' bundles: ``BundleLedger.reserved``)."""
        assert not _NONE, f"the shared empty instruction list was changed: {_NONE}"
        from rayjupyter.core import state_checks  # tests only: not at every node's start

        state_checks.validate(self, held_elsewhere or {})
        self.actor_table.validate()
        self.leases.validate()
