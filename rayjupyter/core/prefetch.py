"""Tasks sent ahead to busy workers: a worker starts its next task the moment one ends.

A worker that has to wait for the node between tasks sleeps, and each task then costs a
wake of the worker (the node's send) and a wake of the node (the worker's answer): on a
small VM, where a wake across CPUs is a VM exit, those wakes are most of a short task's
cost. So the node sends a busy worker its next task while the current one runs
(``WorkerRecord.prefetched``), and for functions that ran short here (under
``SHORT_TASK_S``) several more (``WorkerRecord.ahead``, up to ``PREFETCH_DEPTH`` in all):
the worker goes from one to the next without sleeping, and one frame carries several.

Only short functions go deeper: a task queued behind a long one waits for it while another
worker may sit idle, so the wait this allows is bounded by a few short tasks.

The worker runs what it was sent in order; ``prefetched`` is the next, ``ahead`` those
after it. When the worker blocks in a get, everything sent ahead is taken back together
(``take_back``: the worker starts nothing it got earlier until the node's answer is in, so
nothing taken back runs twice); a cancelled one is taken back alone (``drop``), and the
worker keeps the function its message carried for those sent after it. I/O-free, as
``node_state.NodeState``, whose part it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayjupyter.core.node_instructions import EXECUTE, REVOKE, UNPIN, Instruction
from rayjupyter.core.node_instructions import NONE as _NONE
from rayjupyter.core.placement_groups import gpu_amount
from rayjupyter.core.scheduler import TaskRecord, TaskState, WorkerRecord, WorkerState

if TYPE_CHECKING:
    from rayjupyter.core.node_state import NodeState

#: tasks a worker holds at most: the one it runs, plus those sent ahead
PREFETCH_DEPTH = 8
#: a function whose last run here took less (seconds) may have several tasks sent ahead
SHORT_TASK_S = 0.002
#: functions remembered as short; past this the set starts again (a cache: forgetting one
#: only sends its tasks one ahead until it runs once more)
SHORT_FUNCTIONS_MAX = 4096


class Prefetch:
    """What is sent ahead to which worker, and which functions are short enough."""

    def __init__(self, state: NodeState) -> None:
        self.state = state
        self.short: set[bytes] = set()  # function ids whose last run here was short

    def ran(self, func_id: bytes, seconds: float) -> None:
        """A task of ``func_id`` ran for ``seconds`` (from its start to its end here)."""
        short = self.short
        if seconds < SHORT_TASK_S:
            if func_id not in short:
                if len(short) >= SHORT_FUNCTIONS_MAX:
                    short.clear()
                short.add(func_id)
        elif func_id in short:
            short.discard(func_id)

    def send_ahead(self) -> list[Instruction]:
        """With more queued tasks than workers, send each busy worker its next tasks now.

        Only tasks with the demand and pool of the running one (each inherits the slot of
        the one before it), needing no GPU, behind a task without max_calls; beyond the
        first, only tasks of a short function behind a short one."""
        state = self.state
        ready = state.ready
        if len(ready) <= state.pool_size or state.scheduler.idle:
            return _NONE
        leased = state.leases.leases
        short = self.short
        out: list[Instruction] = []
        for worker in state.workers.values():
            if not ready:
                break
            running = worker.task
            if (
                worker.state is not WorkerState.BUSY
                or worker.suspended
                or worker.actor_id
                or running is None
                or running.max_calls
                or worker.client_id in leased  # lent to a driver
            ):
                continue
            held = 0 if worker.prefetched is None else 1 + len(worker.ahead)
            room = (PREFETCH_DEPTH - 1 if running.func_id in short else 1) - held
            while room > 0 and ready:
                task = ready[0]
                if task.state is not TaskState.READY:
                    ready.popleft()  # defensive: the queue holds READY tasks only
                    continue
                if task.demand != running.demand or task.pool != running.pool:
                    break
                if gpu_amount(task.demand) or task.max_calls:  # (its worker may exit after it)
                    break
                if held and task.func_id not in short:
                    break
                ready.popleft()
                task.transition(TaskState.RUNNING)
                task.worker = worker.client_id
                if worker.prefetched is None:
                    worker.prefetched = task
                else:
                    worker.ahead.append(task)
                out.append((EXECUTE, task, worker))
                held += 1
                room -= 1
        return out

    def next_of(self, worker: WorkerRecord) -> TaskRecord | None:
        """The worker ended its task and started the next one it was sent, if any."""
        following = worker.prefetched
        if following is not None:
            worker.prefetched = worker.ahead.pop(0) if worker.ahead else None
        return following

    def drop(self, worker: WorkerRecord, task: TaskRecord) -> None:
        """One task sent ahead is taken back alone (cancelled); those after it stay, and
        the worker keeps the function the dropped message carried (revoked_tasks.py)."""
        if worker.prefetched is task:
            worker.prefetched = worker.ahead.pop(0) if worker.ahead else None
        else:
            worker.ahead.remove(task)

    def take_back(self, worker: WorkerRecord, answers_block: bool) -> list[Instruction]:
        """Everything sent ahead goes first in the queue again, in its order. The worker
        drops the messages that sent them, which may have carried their function: it is
        sent again. ``answers_block``: the last REVOKE answers the worker's WorkerBlocked
        (it starts nothing it got earlier until that answer is in)."""
        first = worker.prefetched
        if first is None:
            return _NONE
        sent = [first, *worker.ahead]
        worker.prefetched = None
        worker.ahead.clear()
        ready = self.state.ready
        out: list[Instruction] = []
        for task in reversed(sent):
            worker.known_funcs.discard(task.func_id)
            task.worker = None
            task.transition(TaskState.READY)
            ready.appendleft(task)
            out.append((REVOKE, task, worker, False))
        out[-1] = (REVOKE, first, worker, answers_block)
        return out

    def lost_with(self, worker: WorkerRecord) -> tuple[TaskRecord | None, list[Instruction]]:
        """The worker died: the next task it was sent may have started (an attempt, the
        caller decides); those after it cannot have (it runs them in order, and every
        answer it sent was read before its exit) and go first in the queue again."""
        following = worker.prefetched
        if following is None:
            return None, _NONE
        worker.prefetched = None
        out: list[Instruction] = [(UNPIN, following)]
        ready = self.state.ready
        for task in reversed(worker.ahead):
            task.worker = None
            task.transition(TaskState.READY)
            ready.appendleft(task)
            out.append((UNPIN, task))
        worker.ahead.clear()
        following.worker = None
        return following, out
