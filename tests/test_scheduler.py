"""The node's task and worker logic (``core/node_state.py``) driven with no process at all.

Every transition of every table is tried (the allowed ones work, the others raise an
InvalidTransition that names the record, both states and the recent history); scenarios
walk the hot path, prefetch, blocking, deaths, retries, runtime_env workers, the worker
limit, placement-group bundles and each kind of cancel, checking ``validate()`` after
every step; and seeded random sequences of events (bundles held and removed among them),
hundreds per run, keep ``validate()`` true and end with every task settled and every
resource back.
"""

from __future__ import annotations

import itertools
import pickle
import random
from typing import Any

import pytest

from rayjupyter.core import node_state as ns
from rayjupyter.core import placement_groups as pgs
from rayjupyter.core import worker_pool
from rayjupyter.core.exceptions import (
    TaskCancelledError,
    TaskUnschedulableError,
    WorkerCrashedError,
)
from rayjupyter.core.node_actors import ACTOR_TRANSITIONS, ActorRecord, ActorState
from rayjupyter.core.node_state import NodeState
from rayjupyter.core.scheduler import (
    TASK_TRANSITIONS,
    WORKER_TRANSITIONS,
    InvalidTransition,
    ResourcePool,
    TaskRecord,
    TaskState,
    WorkerRecord,
    WorkerState,
)
from rayjupyter.core.worker_limit import MAX_WORKERS_ENV, WorkerLimit

_ids = itertools.count(1)


def make_task(
    name: str = "f",
    demand: dict[str, float] | None = None,
    *,
    max_retries: int = 0,
    env: str = "",
    parent: bytes | None = None,
    strategy: str = "",
    max_calls: int = 0,
) -> TaskRecord:
    n = next(_ids)
    demand = {"CPU": 1.0} if demand is None else demand
    return TaskRecord(
        task_id=n.to_bytes(8, "big"),
        owner=b"driver",
        name=name,
        func_id=b"func",
        args_blob=b"",
        deps=(),
        nested=(),
        return_ids=(n.to_bytes(8, "big") + b"r",),
        demand=demand,
        max_retries=max_retries,
        retry_exceptions=False,
        env=env,
        max_calls=max_calls,
        parent=parent,
        strategy=strategy,
    )


class Shell:
    """What node.py does with instructions, reduced to bookkeeping: enough to drive the
    state machine through whole lifetimes and to see what it asked for."""

    def __init__(self, state: NodeState) -> None:
        self.state = state
        self.log: list[tuple[Any, ...]] = []
        self.doomed: set[bytes] = set()  # workers told to die (KILL, or an interrupt ignored)
        self.ended: dict[bytes, tuple[TaskState, bytes | None]] = {}
        self.pids = itertools.count(100)
        self.checking = True  # validate after each step (the drain checks now and then)
        self.ledger: pgs.BundleLedger | None = None  # placement-group bundles held here

    def check(self) -> None:
        """validate(), with what the bundles held here took out of the pool."""
        if self.ledger is None:
            self.state.validate()
            return
        self.ledger.validate()
        self.state.validate(held_elsewhere=self.ledger.reserved())

    def run(self, instructions: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        for instruction in instructions:
            self.log.append(instruction)
            op = instruction[0]
            if op == ns.SPAWN:
                for _ in range(instruction[2]):
                    self.spawn(instruction[1])
            elif op == ns.KILL:
                self.doomed.add(instruction[1].client_id)
            elif op in (ns.FAILED, ns.FINISHED):
                task = instruction[1]
                assert task.state.name == ns.OPCODE_NAMES[op], (op, task.state)
                self.ended[task.task_id] = (task.state, instruction[2] if op == ns.FAILED else None)
                self.state.forget(task)
            elif op == ns.ATTEMPT_LOST:  # the task's own node hears it (AttemptLost)
                task = instruction[1]
                assert task.state is TaskState.FAILED and task.retried_by_owner, task
                self.ended[task.task_id] = (task.state, None)
                self.state.forget(task)
            elif op == ns.START_ACTOR:
                raise AssertionError("no actor workers in these tests")
            elif op == ns.WARN:
                assert MAX_WORKERS_ENV in instruction[1], instruction
        if self.checking:
            self.check()
        return instructions

    def spawn(self, pool: str = "") -> WorkerRecord:
        pid = next(self.pids)
        env = worker_pool.env_of(pool)
        worker = WorkerRecord(client_id=b"w%d" % pid, pid=pid, env=env, pool=pool)
        self.state.worker_spawned(worker)
        return worker

    def connect_all(self) -> None:
        for worker in list(self.state.workers.values()):
            if worker.state is WorkerState.STARTING:
                self.run(self.state.worker_connected(worker))

    def schedule(self, known_envs: tuple[str, ...] = (), now: float = 0.0) -> None:
        state = self.state
        self.run(state.assign())
        if state.scheduler.env_unplaced:
            self.run(state.env_spawns(known_envs, now))
        state.turn_ended()
        self.run(state.prefetch())

    def submit(self, task: TaskRecord, missing: int = 0) -> TaskRecord:
        self.state.submit(task)
        task.missing = missing
        if missing == 0:
            self.state.task_ready(task)
        if self.checking:
            self.check()
        return task

    def finish(self, worker: WorkerRecord, error: bytes | None = None, retryable: bool = False):
        task = worker.task
        assert task is not None
        return self.run(self.state.task_finished(worker, task, error, retryable))

    def die(self, worker: WorkerRecord, respawn: bool = True) -> list[tuple[Any, ...]]:
        self.doomed.discard(worker.client_id)
        return self.run(self.state.worker_died(worker, "killed by SIGKILL", respawn))


def ops(instructions: list[tuple[Any, ...]]) -> list[str]:
    return [ns.OPCODE_NAMES[i[0]] for i in instructions]


def error_of(blob: bytes | None) -> BaseException:
    assert blob is not None
    value = pickle.loads(blob)
    assert isinstance(value, BaseException)
    return value


def node(
    cpus: float = 2,
    gpus: float = 0,
    workers: int = 2,
    max_workers: int = 256,
    gpu_workers: int = 0,
    **extra: float,
) -> Shell:
    """A node with ``workers`` plain workers and ``gpu_workers`` started for GPU work."""
    pool = ResourcePool({"CPU": cpus, "GPU": gpus, **extra})
    state = NodeState(pool, pool_size=workers, limit=WorkerLimit(max_workers))
    shell = Shell(state)
    for _ in range(workers):
        shell.spawn()
    for _ in range(gpu_workers):
        shell.spawn(worker_pool.GPU_POOL)
    shell.connect_all()
    return shell


# ------------------------------------------------------------------ the tables


def _task_in(state: TaskState) -> TaskRecord:
    task = make_task("probe")
    task.state = state
    task.history = [TaskState.WAITING, TaskState.READY]
    return task


@pytest.mark.parametrize(
    ("old", "new"), [(o, n) for o in TaskState for n in TaskState], ids=lambda s: s.name
)
def test_every_task_transition_is_allowed_or_named_when_refused(
    old: TaskState, new: TaskState
) -> None:
    task = _task_in(old)
    if new in TASK_TRANSITIONS[old]:
        task.transition(new)
        assert task.state is new and task.history[-1] is old
        return
    with pytest.raises(InvalidTransition) as info:
        task.transition(new)
    text = str(info.value)
    assert "'probe'" in text and task.task_id.hex() in text
    assert f"{old.name} -> {new.name}" in text and "recent: WAITING -> READY" in text
    assert task.state is old


@pytest.mark.parametrize(
    ("old", "new"), [(o, n) for o in WorkerState for n in WorkerState], ids=lambda s: s.name
)
def test_every_worker_transition_is_allowed_or_named_when_refused(
    old: WorkerState, new: WorkerState
) -> None:
    worker = WorkerRecord(client_id=b"w1", pid=7, state=old)
    if new in WORKER_TRANSITIONS[old]:
        worker.transition(new)
        assert worker.state is new
        return
    with pytest.raises(InvalidTransition, match=f"pid=7 .*{old.name} -> {new.name}"):
        worker.transition(new)


@pytest.mark.parametrize(
    ("old", "new"), [(o, n) for o in ActorState for n in ActorState], ids=lambda s: s.name
)
def test_every_actor_transition_is_allowed_or_named_when_refused(
    old: ActorState, new: ActorState
) -> None:
    actor = ActorRecord(b"a1", "Counter", make_task(), b"", {}, {}, {}, "", state=old)
    if new in ACTOR_TRANSITIONS[old]:
        actor.transition(new)
        assert actor.state is new
        return
    with pytest.raises(InvalidTransition, match=f"Counter .*{old.value} -> {new.value}"):
        actor.transition(new)


def test_the_tables_cover_every_state_and_terminal_states_lead_nowhere() -> None:
    assert set(TASK_TRANSITIONS) == set(TaskState)
    assert set(WORKER_TRANSITIONS) == set(WorkerState)
    assert set(ACTOR_TRANSITIONS) == set(ActorState)
    assert not TASK_TRANSITIONS[TaskState.FINISHED] and not TASK_TRANSITIONS[TaskState.FAILED]
    assert not WORKER_TRANSITIONS[WorkerState.DEAD] and not ACTOR_TRANSITIONS[ActorState.DEAD]


# ------------------------------------------------------------------ scenarios


def test_hot_path_submit_execute_finish_gives_the_slot_back() -> None:
    shell = node()
    task = shell.submit(make_task())
    assigned = shell.run(shell.state.assign())
    worker = assigned[0][2]
    assert ops(assigned) == ["EXECUTE"] and assigned[0][1] is task
    assert task.state is TaskState.RUNNING and worker.task is task and worker.state.name == "BUSY"
    assert shell.state.resources.available["CPU"] == 1.0
    assert ops(shell.finish(worker)) == ["FINISHED"]
    assert worker.state is WorkerState.IDLE and worker.task is None
    assert shell.state.resources.available["CPU"] == 2.0 and task.task_id not in shell.state.tasks


def test_a_task_sent_ahead_starts_when_the_current_one_ends() -> None:
    shell = node(cpus=2, workers=2)
    tasks = [shell.submit(make_task(f"t{i}")) for i in range(5)]
    shell.schedule()
    executed = [i[1] for i in shell.log if i[0] == ns.EXECUTE]
    assert [t.name for t in executed] == ["t0", "t1", "t2", "t3"]
    first = shell.state.workers[tasks[0].worker or b""]
    assert first.prefetched is tasks[2] and tasks[2].state is TaskState.RUNNING
    assert list(shell.state.ready) == [tasks[4]]
    done = shell.finish(first)
    assert ops(done) == ["STARTED", "FINISHED"] and done[0][1] is tasks[2]
    assert first.task is tasks[2] and first.prefetched is None and first.state.name == "BUSY"


def test_no_prefetch_while_a_worker_idles_or_for_a_different_demand() -> None:
    shell = node(cpus=4, workers=2)
    for i in range(4):
        shell.submit(make_task(f"t{i}"))
    shell.submit(make_task("big", {"CPU": 2.0}))
    shell.run(shell.state.assign())
    # the queue holds t2, t3, big: more than the pool; t2 and t3 go ahead, big does not
    assert ops(shell.run(shell.state.prefetch())) == ["EXECUTE", "EXECUTE"]
    assert [t.name for t in shell.state.ready] == ["big"]
    assert shell.run(shell.state.prefetch()) == []


def test_a_blocked_worker_lends_its_cpu_and_gives_back_what_was_sent_ahead() -> None:
    shell = node(cpus=1, workers=1)
    first, second, third = (shell.submit(make_task(f"t{i}")) for i in range(3))
    shell.schedule()
    worker = shell.state.workers[first.worker or b""]
    assert worker.prefetched is second
    worker.known_funcs.add(second.func_id)  # as dispatch did: the message carried it
    revoked = shell.run(shell.state.worker_blocked(worker))
    assert revoked == [(ns.REVOKE, second, worker, True)]  # (answers the block)
    assert second.func_id not in worker.known_funcs  # sent again with its next dispatch
    assert second.state is TaskState.READY and list(shell.state.ready) == [second, third]
    assert worker.state is WorkerState.BLOCKED and shell.state.resources.available["CPU"] == 1.0
    assert shell.run(shell.state.assign()) == [(ns.SPAWN, "", 1)]  # a worker for the lent CPU
    shell.connect_all()
    shell.schedule()
    assert second.state is TaskState.RUNNING and shell.state.resources.available["CPU"] == 0.0
    shell.state.worker_unblocked(worker)  # may overcommit for a moment, as in Ray
    shell.state.validate()
    assert shell.state.resources.available["CPU"] == -1.0
    assert ops(shell.finish(worker)) == ["FINISHED"]
    assert shell.state.resources.available["CPU"] == 0.0


def test_a_dead_worker_retries_its_task_then_fails_it_and_is_replaced() -> None:
    shell = node(cpus=1, workers=1)
    task = shell.submit(make_task("crashy", max_retries=1))
    shell.schedule()
    worker = shell.state.workers[task.worker or b""]
    out = shell.die(worker)
    assert ops(out) == ["UNPIN", "SPAWN"] and task.state is TaskState.READY
    assert list(shell.state.ready) == [task] and task.attempt == 1
    shell.connect_all()
    shell.schedule()
    out = shell.die(shell.state.workers[task.worker or b""])
    assert ops(out) == ["UNPIN", "FAILED", "SPAWN"]
    error = error_of(shell.ended[task.task_id][1])
    assert isinstance(error, WorkerCrashedError) and "max_retries=1" in str(error)
    assert shell.state.resources.available["CPU"] == 1.0


def test_a_dead_worker_also_settles_the_task_sent_ahead_to_it() -> None:
    shell = node(cpus=1, workers=1)
    tasks = [shell.submit(make_task(f"t{i}", max_retries=2)) for i in range(3)]
    shell.schedule()
    worker = shell.state.workers[tasks[0].worker or b""]
    assert worker.prefetched is tasks[1]
    shell.die(worker, respawn=False)
    # both go back first in the queue, each counted as an attempt
    assert list(shell.state.ready) == [tasks[0], tasks[1], tasks[2]]
    assert tasks[0].attempt == tasks[1].attempt == 1 and not shell.state.workers


def test_a_retryable_exception_queues_the_task_again_last() -> None:
    shell = node(cpus=1, workers=1)
    task = shell.submit(make_task("flaky", max_retries=1))
    other = shell.submit(make_task("other"))
    shell.run(shell.state.assign())
    worker = shell.state.workers[task.worker or b""]
    assert shell.finish(worker, error=b"boom", retryable=True) == []
    assert list(shell.state.ready) == [other, task] and task.state is TaskState.READY
    shell.run(shell.state.assign())
    shell.finish(worker)
    shell.run(shell.state.assign())
    assert ops(shell.finish(worker, error=b"boom", retryable=True)) == ["FAILED"]
    assert shell.ended[task.task_id] == (TaskState.FAILED, b"boom")


def test_cancel_a_queued_task_fails_it_at_once_and_leaves_the_queue_clean() -> None:
    shell = node(cpus=1, workers=1)
    shell.submit(make_task("runs"))
    queued = shell.submit(make_task("queued"))
    waiting = shell.submit(make_task("waiting"), missing=1)
    shell.run(shell.state.assign())
    for task in (queued, waiting):
        out = shell.run(shell.state.cancel(task, False, False, ()))
        assert ops(out) == ["FAILED"]
        assert isinstance(error_of(out[0][2]), TaskCancelledError)
        assert task.history[-1] is TaskState.CANCELLED  # why it failed stays in its history
    assert not shell.state.ready
    assert shell.run(shell.state.cancel(queued, False, False, ())) == []  # once is enough


def test_cancelling_much_of_a_long_queue_costs_no_scan_per_task() -> None:
    shell = node(cpus=1, workers=1)
    tasks = [shell.submit(make_task(f"t{i}")) for i in range(2 * ns.STALE_SCAN + 2)]
    state = shell.state
    for task in tasks[-1:0:-2]:  # from the back: removing each would scan the whole queue
        shell.run(state.cancel(task, False, False, ()))
    half = len(tasks) // 2
    assert len(state.ready) == len(tasks) and state.stale == half  # left in place, counted
    shell.run(state.cancel(tasks[0], False, False, ()))  # the head: taken off at once
    assert len(state.ready) == len(tasks) - 1
    shell.run(state.cancel(tasks[2], False, False, ()))  # now half is stale: compacted
    assert list(state.ready) == tasks[4::2] and state.stale == 0
    shell.run(state.cancel(tasks[-2], False, False, ()))
    shell.run(state.assign())
    worker = next(iter(state.workers.values()))
    started = [worker.task]
    while worker.task is not None:  # the rest run in order, the cancelled ones skipped
        shell.finish(worker)
        shell.run(state.assign())
        started.append(worker.task)
    assert started[:-1] == tasks[4:-2:2]


def test_cancel_a_running_task_interrupts_it_and_its_error_says_cancelled() -> None:
    shell = node(cpus=1, workers=1)
    task = shell.submit(make_task("long"))
    shell.run(shell.state.assign())
    worker = shell.state.workers[task.worker or b""]
    out = shell.run(shell.state.cancel(task, False, False, ()))
    assert out == [(ns.INTERRUPT, task, worker)] and task.state is TaskState.CANCELLED
    assert task.cancelled
    failed = shell.finish(worker, error=b"KeyboardInterrupt", retryable=True)
    assert ops(failed) == ["FAILED"] and isinstance(error_of(failed[0][2]), TaskCancelledError)


def test_a_cancelled_task_that_completes_first_keeps_its_result() -> None:
    shell = node(cpus=1, workers=1)
    task = shell.submit(make_task("quick"))
    shell.run(shell.state.assign())
    shell.run(shell.state.cancel(task, False, False, ()))
    assert ops(shell.finish(shell.state.workers[task.worker or b""])) == ["FINISHED"]


def test_force_cancel_kills_the_worker_and_the_task_is_not_retried() -> None:
    shell = node(cpus=1, workers=1)
    task = shell.submit(make_task("stuck", max_retries=3))
    shell.run(shell.state.assign())
    worker = shell.state.workers[task.worker or b""]
    assert shell.run(shell.state.cancel(task, True, False, ())) == [(ns.KILL, worker)]
    out = shell.die(worker)
    assert ops(out) == ["UNPIN", "FAILED", "SPAWN"] and task.attempt == 0
    assert isinstance(error_of(out[1][2]), TaskCancelledError)


def test_cancel_a_task_sent_ahead_takes_it_back_and_fails_it() -> None:
    shell = node(cpus=1, workers=1)
    tasks = [shell.submit(make_task(f"t{i}")) for i in range(3)]
    shell.schedule()
    worker = shell.state.workers[tasks[0].worker or b""]
    worker.known_funcs.add(tasks[1].func_id)
    out = shell.run(shell.state.cancel(tasks[1], True, False, ()))
    assert ops(out) == ["REVOKE", "FAILED"] and worker.prefetched is None
    assert out[0][3] is False and tasks[1].func_id not in worker.known_funcs
    assert tasks[0].state is TaskState.RUNNING  # force or not, the running one is untouched


def test_recursive_cancel_reaches_children_first_and_peers_are_told() -> None:
    shell = node(cpus=2, workers=1)
    parent = shell.submit(make_task("parent"))
    shell.run(shell.state.assign())
    child = shell.submit(make_task("child", parent=parent.task_id))
    remote = shell.submit(make_task("remote", parent=parent.task_id))
    shell.state.ready.remove(remote)  # as spill_over does before it forwards
    shell.state.forwarded(remote)
    assert parent.children == [child.task_id, remote.task_id]
    out = shell.run(shell.state.cancel(parent, False, True, {remote.task_id}))
    assert ops(out) == ["FAILED", "CANCEL_FORWARDED", "INTERRUPT"]
    assert out[0][1] is child and out[1] == (ns.CANCEL_FORWARDED, remote, False)
    # the peer's answer (its TaskCancelledError) ends the forwarded one as usual
    shell.state.fail(remote)
    assert remote.state is TaskState.FAILED


def test_a_task_placed_on_a_peer_as_its_values_arrive_runs_there() -> None:
    shell = node(cpus=1, workers=0)
    task = shell.submit(make_task("local-args"), missing=1)
    shell.state.forwarded(task)  # place_by_locality: straight from WAITING
    assert task.history == [TaskState.WAITING, TaskState.READY] and task.state.name == "RUNNING"
    out = shell.run(shell.state.retry_or_fail(task, b"lost"))  # its node died; no retries
    assert out == [(ns.FAILED, task, b"lost")]


def test_lost_attempts_of_a_cancelled_task_fail_as_cancelled() -> None:
    shell = node(cpus=1, workers=0)
    task = shell.submit(make_task("forwarded", max_retries=5))
    shell.state.ready.remove(task)
    shell.state.forwarded(task)
    shell.run(shell.state.cancel(task, False, False, {task.task_id}))
    out = shell.run(shell.state.retry_or_fail(task, b"node died"))
    assert ops(out) == ["FAILED"] and isinstance(error_of(out[0][2]), TaskCancelledError)


def _forward(owner: Shell, task: TaskRecord) -> TaskRecord:
    """The owner sends its queued task to a peer: the copy the peer admits (max_retries=0,
    its attempts counted by the owner), as NodeTasks.on_submit builds it from SubmitTask."""
    owner.state.ready.remove(task)
    owner.state.forwarded(task)
    owner.check()
    copy = make_task(task.name, dict(task.demand), max_retries=0)
    copy.task_id, copy.return_ids, copy.owner = task.task_id, task.return_ids, b"owner-node"
    copy.retried_by_owner = True
    return copy


def test_a_crash_on_a_peer_is_retried_by_the_task_s_node_within_max_retries_once() -> None:
    owner = node(cpus=0.5, workers=0)  # too small for the task: it runs on the peer
    peer = node(cpus=1, workers=1)
    task = owner.submit(make_task("remote", max_retries=2))
    for attempt in range(3):
        copy = peer.submit(_forward(owner, task))
        peer.schedule()
        worker = peer.state.workers[copy.worker or b""]
        out = peer.die(worker)
        # the peer neither retries nor fails it: it tells the owner, returns left unset
        assert ops(out) == ["UNPIN", "ATTEMPT_LOST", "SPAWN"], ops(out)
        lost = out[1]
        assert lost[1:] == (copy, b"", worker.pid, "killed by SIGKILL")
        assert not peer.state.ready and copy.attempt == 0 and not peer.state.tasks
        peer.connect_all()
        out = owner.run(owner.state.peer_attempt_lost(task, *lost[2:], "10.0.0.2:7000"))
        assert task.attempt == attempt + 1
        if attempt < 2:
            assert out == [] and list(owner.state.ready) == [task], attempt  # placed anew
    assert ops(out) == ["FAILED"] and not owner.state.ready
    error = error_of(owner.ended[task.task_id][1])
    assert isinstance(error, WorkerCrashedError)
    assert "tried 3 time(s)" in str(error) and "max_retries=2" in str(error)
    assert "on node 10.0.0.2:7000" in str(error)
    # a late report of an attempt already settled changes nothing
    assert owner.state.peer_attempt_lost(task, b"", 7, "SIGKILL", "10.0.0.2:7000") == []


def test_a_retryable_exception_on_a_peer_goes_back_and_others_fail_there() -> None:
    owner = node(cpus=0.5, workers=0)
    peer = node(cpus=1, workers=1)
    task = owner.submit(make_task("flaky", max_retries=1))
    copy = peer.submit(_forward(owner, task))
    peer.schedule()
    worker = peer.state.workers[copy.worker or b""]
    out = peer.finish(worker, error=b"boom", retryable=True)
    assert out == [(ns.ATTEMPT_LOST, copy, b"boom", 0, "")] and not peer.state.ready
    assert owner.run(owner.state.peer_attempt_lost(task, b"boom", 0, "", "peer")) == []
    copy = peer.submit(_forward(owner, task))
    peer.schedule()
    out = peer.finish(worker, error=b"boom", retryable=True)
    out = owner.run(owner.state.peer_attempt_lost(task, *out[0][2:], "peer"))
    assert out == [(ns.FAILED, task, b"boom")]  # max_retries=1: two attempts in all
    # an exception retry_exceptions does not name fails there, as the final result
    other = owner.submit(make_task("raises", max_retries=3))
    copy = peer.submit(_forward(owner, other))
    peer.schedule()
    assert peer.finish(worker, error=b"bad", retryable=False) == [(ns.FAILED, copy, b"bad")]


def test_a_peer_s_lost_attempt_of_a_cancelled_or_unretried_task_fails_it() -> None:
    owner = node(cpus=0.5, workers=0)
    none_left = owner.submit(make_task("once", max_retries=0))
    _forward(owner, none_left)
    out = owner.run(owner.state.peer_attempt_lost(none_left, b"", 9, "SIGKILL", "peer"))
    assert ops(out) == ["FAILED"] and isinstance(error_of(out[0][2]), WorkerCrashedError)
    cancelled = owner.submit(make_task("cancelled", max_retries=5))
    _forward(owner, cancelled)
    owner.run(owner.state.cancel(cancelled, False, False, {cancelled.task_id}))
    out = owner.run(owner.state.peer_attempt_lost(cancelled, b"", 9, "SIGKILL", "peer"))
    assert ops(out) == ["FAILED"] and isinstance(error_of(out[0][2]), TaskCancelledError)
    # a cancel that reached the peer's copy first fails it there, as cancelled, as before
    peer = node(cpus=1, workers=1)
    task = owner.submit(make_task("t", max_retries=5))
    copy = peer.submit(_forward(owner, task))
    peer.schedule()
    peer.run(peer.state.cancel(copy, True, False, ()))
    out = peer.die(peer.state.workers[copy.worker or b""])
    assert ops(out) == ["UNPIN", "FAILED", "SPAWN"]


def test_gpus_are_assigned_by_id_and_given_back() -> None:
    shell = node(cpus=4, gpus=2, workers=1, gpu_workers=3)
    whole = shell.submit(make_task("whole", {"CPU": 1.0, "GPU": 1.0}))
    half = shell.submit(make_task("half", {"CPU": 1.0, "GPU": 0.5}))
    half2 = shell.submit(make_task("half2", {"CPU": 1.0, "GPU": 0.5}))
    shell.run(shell.state.assign())
    assert whole.gpu_ids == (0,) and half.gpu_ids == half2.gpu_ids == (1,)
    shell.finish(shell.state.workers[whole.worker or b""])
    assert whole.gpu_ids == () and shell.state.resources.gpu_free == [1.0, 0.0]


def test_an_actor_holds_its_slot_and_gpu_from_placement_to_release_once() -> None:
    shell = node(cpus=2, gpus=1, workers=1, gpu_workers=1)
    state = shell.state
    assert state.actor_placed(b"a1", {"CPU": 1.0, "GPU": 0.5}) == (0,)
    state.validate()
    assert state.resources.available == {"CPU": 1.0, "GPU": 0.5}
    task = shell.submit(make_task("gpu-half", {"CPU": 1.0, "GPU": 0.5}))
    shell.run(state.assign())
    assert task.gpu_ids == (0,) and state.resources.gpu_free == [0.0]
    state.actor_released(b"a1")
    state.actor_released(b"a1")  # the process died after a kill that released it: no-op
    state.validate()
    assert state.resources.available == {"CPU": 1.0, "GPU": 0.5}
    state.resources.gpu_free[0] = 1.0  # a GPU id given back twice would look like this
    with pytest.raises(AssertionError, match=r"GPU ids in use 0\.0 but tasks and actors hold"):
        state.validate()


def test_missing_workers_are_started_within_the_limit_which_warns_once_per_episode() -> None:
    shell = node(cpus=8, workers=1, max_workers=4)
    tasks = [shell.submit(make_task(f"t{i}")) for i in range(8)]
    out = shell.run(shell.state.assign())
    assert ops(out) == ["EXECUTE", "SPAWN", "WARN"] and out[1] == (ns.SPAWN, "", 3)
    assert "runs 4 worker processes" in out[2][1] and "4 tasks wait" in out[2][1]
    shell.state.turn_ended()
    assert shell.run(shell.state.assign()) == []  # the 3 are starting; warned already
    shell.state.turn_ended()
    for task in tasks[4:]:  # nothing waits for a process any more: the episode ends
        shell.run(shell.state.cancel(task, False, False, ()))
    shell.connect_all()
    mark = len(shell.log)
    shell.schedule()
    assert ops(shell.log[mark:]) == ["EXECUTE"] * 3
    more = [shell.submit(make_task(f"u{i}")) for i in range(3)]
    out = shell.run(shell.state.assign())
    assert ops(out) == ["WARN"]  # a new episode: told again
    assert all(t.state is TaskState.READY for t in more)


def _nested_chain_at_the_limit() -> tuple[Shell, list[TaskRecord], WorkerRecord]:
    """A node with 1 CPU and room for 2 processes: a task runs on each, the second a child
    of the first, both blocked in get on their child; a third level waits."""
    shell = node(cpus=1, workers=1, max_workers=2)
    top = shell.submit(make_task("chain"))
    shell.schedule()
    chain = [top]
    for level in (2, 3):
        blocked = shell.state.workers[chain[-1].worker or b""]
        chain.append(shell.submit(make_task("chain", parent=chain[-1].task_id)))
        shell.run(shell.state.worker_blocked(blocked, chain[-1].return_ids))  # its get
        if level == 2:
            shell.schedule()  # a second process starts for it
            shell.connect_all()
            shell.schedule()
            assert chain[-1].state is TaskState.RUNNING
    return shell, chain, shell.state.workers[chain[1].worker or b""]


def test_at_the_limit_a_child_runs_inside_its_blocked_parent_and_it_is_told_once() -> None:
    """Issue 16, 4: nested blocking tasks deeper than the limit starved the node."""
    shell, chain, worker = _nested_chain_at_the_limit()
    out = shell.run(shell.state.assign())  # no room: lent to its parent's process
    assert ops(out) == ["EXECUTE", "WARN"] and out[0][1:] == (chain[2], worker)
    assert "3 deep" in out[1][1] and MAX_WORKERS_ENV in out[1][1] and "now 2" in out[1][1]
    assert worker.task is chain[2] and worker.suspended == [(chain[1], {"CPU": 1.0})]
    assert worker.state is WorkerState.BUSY and len(shell.state.workers) == 2
    for level in range(4, 8):  # deeper: each child inside its parent, warned no more
        chain.append(shell.submit(make_task("chain", parent=chain[-1].task_id)))
        shell.run(shell.state.worker_blocked(worker, chain[-1].return_ids))
        shell.state.turn_ended()
        out = shell.run(shell.state.assign())
        assert out == [(ns.EXECUTE, chain[-1], worker)], level
        shell.state.turn_ended()
        shell.state.turn_ended()  # a turn with no refusal between children: still told once
    assert [t for t, _ in worker.suspended] == chain[1:-1]
    for task in reversed(chain[1:]):  # each ends; its parent waits again, then goes on
        assert worker.task is task
        assert ops(shell.finish(worker)) == ["FINISHED"]
        if task is not chain[1]:
            assert worker.state is WorkerState.BLOCKED
            shell.state.worker_unblocked(worker)
            shell.check()
    assert worker.state is WorkerState.IDLE and not worker.suspended
    first = shell.state.workers[chain[0].worker or b""]
    shell.state.worker_unblocked(first)
    assert ops(shell.finish(first)) == ["FINISHED"]
    assert shell.state.resources.available == {"CPU": 1.0}


def test_only_a_child_its_parent_gets_is_lent_and_others_wait() -> None:
    shell, chain, worker = _nested_chain_at_the_limit()
    shell.state.ready.remove(chain[2])
    chain[2].state = TaskState.FAILED  # (as if it had ended)
    other = shell.submit(make_task("unrelated"))  # fits (a lent CPU) but has no process
    # a child its parent does not get (it waits on something else, or in rj.wait)
    sibling = shell.submit(make_task("not awaited", parent=chain[1].task_id))
    out = shell.run(shell.state.assign())
    assert ops(out) == ["WARN"] and "3 deep" in out[0][1] and not worker.suspended
    assert other.state is TaskState.READY and sibling.state is TaskState.READY
    shell.state.worker_unblocked(worker)  # its wait ends; a get of the sibling lends it
    shell.run(shell.state.worker_blocked(worker, sibling.return_ids))
    out = shell.run(shell.state.assign())
    assert ops(out) == ["EXECUTE"] and out[0][1] is sibling and worker.task is sibling


def test_a_lent_child_not_started_when_its_parent_s_wait_ends_is_sent_ahead() -> None:
    shell, chain, worker = _nested_chain_at_the_limit()
    shell.run(shell.state.assign())
    shell.state.worker_unblocked(worker)  # the parent's get returned before the child came
    shell.check()
    assert worker.task is chain[1] and worker.prefetched is chain[2] and not worker.suspended
    out = shell.finish(worker)
    assert ops(out) == ["STARTED", "FINISHED"] and worker.task is chain[2]
    # or the parent blocks again first: the child is taken back, as a task sent ahead is
    shell, chain, worker = _nested_chain_at_the_limit()
    shell.run(shell.state.assign())
    shell.state.worker_unblocked(worker)
    out = shell.run(shell.state.worker_blocked(worker))
    assert out == [(ns.REVOKE, chain[2], worker, True)] and chain[2].state is TaskState.READY


def test_a_worker_dying_with_lent_children_settles_every_task_on_its_stack() -> None:
    shell, chain, worker = _nested_chain_at_the_limit()
    chain[1].max_retries = 1
    shell.run(shell.state.assign())
    out = shell.die(worker, respawn=False)
    assert ops(out) == ["UNPIN", "FAILED", "UNPIN"]  # the child had no retries, its parent one
    assert list(shell.state.ready) == [chain[1]] and chain[1].attempt == 1
    assert isinstance(error_of(out[1][2]), WorkerCrashedError)


def test_env_workers_stop_at_the_limit_too() -> None:
    shell = node(cpus=4, workers=1, max_workers=2)
    for i in range(3):
        shell.submit(make_task(f"in-x{i}", env="x"))
    assert shell.run(shell.state.assign()) == []  # (counts what env workers could run)
    out = shell.run(shell.state.env_spawns(("x",), 0.0))
    assert ops(out) == ["SPAWN", "WARN"] and "2 tasks wait" in out[1][1]
    assert len(shell.state.workers) == 2


def test_a_block_is_answered_even_when_nothing_was_sent_ahead() -> None:
    shell = node(cpus=1, workers=1)
    task = shell.submit(make_task("t"))
    shell.schedule()
    worker = shell.state.workers[task.worker or b""]
    assert shell.run(shell.state.worker_blocked(worker)) == [(ns.REVOKE, None, worker, True)]
    # blocked again (a nested get) and a worker with no task: answered all the same
    assert shell.run(shell.state.worker_blocked(worker)) == [(ns.REVOKE, None, worker, True)]
    shell.state.worker_unblocked(worker)
    shell.finish(worker)
    assert shell.run(shell.state.worker_blocked(worker)) == [(ns.REVOKE, None, worker, True)]


def test_a_task_lost_with_its_pinned_node_fails_or_is_freed_by_soft_affinity() -> None:
    shell = node(cpus=1, workers=1)
    dead = b"\x01" * 4
    hard = shell.submit(make_task("hard", max_retries=1, strategy=f"node:{dead.hex()}:0"))
    soft = shell.submit(make_task("soft", max_retries=1, strategy=f"node:{dead.hex()}:1"))
    other = shell.submit(make_task("other", max_retries=1, strategy="node:0202:0"))
    for task in (hard, soft, other):
        shell.state.ready.remove(task)
        shell.state.forwarded(task)
    out = shell.run(shell.state.retry_or_fail(hard, b"lost", dead_node=dead))
    assert ops(out) == ["FAILED"] and isinstance(error_of(out[0][2]), TaskUnschedulableError)
    assert shell.run(shell.state.retry_or_fail(soft, b"lost", dead_node=dead)) == []
    assert soft.state is TaskState.READY and soft.strategy == ""
    assert shell.run(shell.state.retry_or_fail(other, b"lost", dead_node=dead)) == []
    assert other.strategy == "node:0202:0"


def test_bundles_count_in_the_resource_equation_and_removed_ones_redirect() -> None:
    """The ledger takes a bundle's CPUs from the pool; a task in it holds the bundle's
    names, lends its CPU share when blocked, and after the group is given back while it
    runs, its share returns to CPU: validate holds at every step."""
    shell = node(cpus=4, gpus=1, workers=2, gpu_workers=1)
    state = shell.state
    ledger = pgs.BundleLedger(state.resources)
    shell.checking = False  # (its checks know nothing of the ledger: check() does)
    group = b"\x07" * 4
    ledger.reconcile(((group, 0, {"CPU": 2.0, "GPU": 1.0}),))

    def check() -> None:
        ledger.validate()
        state.validate(held_elsewhere=ledger.reserved())

    check()
    with pytest.raises(AssertionError, match="CPU: available"):
        state.validate()  # without the ledger's holdings the equation is off
    demand = pgs.group_demand({"CPU": 1.0, "GPU": 1.0}, group, 0)
    task = shell.submit(make_task("in-bundle", demand))
    shell.run(state.assign())
    check()
    assert task.state is TaskState.RUNNING and task.gpu_ids == (0,)  # a bundle's GPU id
    worker = state.workers[task.worker or b""]
    shell.run(state.worker_blocked(worker))
    assert set(worker.lent) == {pgs.wildcard_name("CPU", group), pgs.indexed_name("CPU", 0, group)}
    check()
    state.worker_unblocked(worker)
    ledger.reconcile(())  # the group goes while the task runs
    check()
    assert state.resources.available["CPU"] == 3.0  # the task still has one
    shell.finish(worker)
    check()
    assert state.resources.available == {"CPU": 4.0, "GPU": 1.0}
    assert state.resources.gpu_free == [1.0]


def test_env_tasks_get_workers_of_their_env_and_idle_ones_are_reaped() -> None:
    shell = node(cpus=2, workers=1)
    task = shell.submit(make_task("in-x", env="x"))
    lost = shell.submit(make_task("in-y", env="y"))
    shell.schedule(known_envs=("x",), now=0.0)
    assert [i for i in shell.log if i[0] == ns.SPAWN] == [(ns.SPAWN, "x", 1)]
    shell.connect_all()
    shell.schedule(known_envs=("x",))
    worker = shell.state.workers[task.worker or b""]
    assert worker.env == "x" and list(shell.state.ready) == [lost]
    shell.finish(worker)
    assert worker.idle_since > 0
    assert shell.state.reap_env_workers(worker.idle_since + 1) == []
    out = shell.run(shell.state.reap_env_workers(worker.idle_since + ns.ENV_WORKER_IDLE_S + 1))
    assert out == [(ns.KILL, worker)] and not shell.state.scheduler.idle_env


def test_validate_names_a_broken_invariant() -> None:
    shell = node(cpus=2, workers=1)
    shell.submit(make_task())
    shell.run(shell.state.assign())
    shell.state.resources.available["CPU"] += 1
    with pytest.raises(AssertionError, match=r"CPU: available 2\.0 but total 2\.0 less held 1\.0"):
        shell.state.validate()
    shell.state.resources.available["CPU"] -= 1
    worker = next(iter(shell.state.workers.values()))
    shell.state.ready.append(worker.task)  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="queued task f is RUNNING"):
        shell.state.validate()


# ------------------------------------------------------------------ random sequences


def _random_demand(rng: random.Random) -> dict[str, float]:
    roll = rng.random()
    if roll < 0.6:
        return {"CPU": 1.0}
    if roll < 0.75:
        return {"CPU": 0.5}
    if roll < 0.85:
        return {"CPU": 2.0}
    if roll < 0.95:
        return {"CPU": 1.0, "GPU": rng.choice((0.5, 1.0))}
    return {"CPU": 0.0, "custom": 1.0}


def _never_runs_here(state: NodeState, task: TaskRecord) -> bool:
    """Queued for good: it needs more than the node has. (A task of an env the node
    does not know fails at admission, so it is never queued.)"""
    return task.state is TaskState.READY and not state.resources.feasible(task.demand)


ENVS = ("x", "z")


def _remove_group(shell: Shell, group: bytes) -> None:
    """What node_placement does when a group is removed: its waiting work fails, its
    running work is cancelled (force), its bundle goes back to the pool."""
    state = shell.state
    for task in list(state.tasks.values()):
        if pgs.names_group(task.demand) != group:
            continue
        if task.state in (TaskState.WAITING, TaskState.READY):
            state.fail(task)
            shell.run([(ns.FAILED, task, b"group removed")])
        elif task.state is TaskState.RUNNING:
            shell.run(state.cancel(task, True, True, ()))
    assert shell.ledger is not None
    shell.ledger.reconcile(())


def _busy(state: NodeState) -> list[WorkerRecord]:
    return [w for w in state.workers.values() if w.task is not None]


@pytest.mark.parametrize("seed", range(16))
def test_random_events_keep_the_invariants_and_everything_settles(seed: int) -> None:
    rng = random.Random(seed)
    shell = node(cpus=rng.choice((1, 2, 4)), gpus=rng.choice((0, 1, 2)), workers=2, custom=2)
    state = shell.state
    if seed % 2:  # a short function: several tasks sent ahead to a worker (prefetch.py)
        state.prefetching.ran(b"func", 0.0)
    waiting: list[TaskRecord] = []
    submitted: list[TaskRecord] = []
    running_parents: list[TaskRecord] = []
    remote: list[TaskRecord] = []  # forwarded to a peer (spill_over, locality)
    actors: list[bytes] = []  # actors whose process holds a slot here
    shell.ledger = pgs.BundleLedger(state.resources)
    group = b""  # the placement group whose bundle this node holds, if any
    clock = 0.0
    for _ in range(600):
        clock += rng.random()
        event = rng.random()
        side = rng.random()
        if side < 0.01:  # a burst: the queue grows past STALE_SCAN, cancels leave it lazily
            shell.checking = False
            for _ in range(160):
                submitted.append(shell.submit(make_task(f"t{len(submitted)}")))
            shell.checking = True
            shell.check()
            continue
        if side < 0.05:  # a queued task goes to a peer
            queued = [t for t in state.ready if t.state is TaskState.READY]
            if queued:
                task = rng.choice(queued)
                state.ready.remove(task)  # spill_over takes it off the queue first
                state.forwarded(task)
                remote.append(task)
                shell.check()
            continue
        if side < 0.11:  # an actor's process takes a slot here, or gives it back
            if actors and rng.random() < 0.5:
                state.actor_released(actors.pop(rng.randrange(len(actors))))
            else:
                demand = rng.choice(({"CPU": 1.0}, {"CPU": 0.0}, {"CPU": 1.0, "GPU": 0.5}))
                if state.resources.fits(demand):
                    actors.append(b"actor%d" % next(_ids))
                    state.actor_placed(actors[-1], demand)
            shell.check()
            continue
        if side < 0.13:  # the head gives this node a bundle, or the group is removed
            if group and rng.random() < 0.2:
                _remove_group(shell, group)
                group = b""
            elif not group and state.resources.available.get("CPU", 0.0) >= 1.0:
                group = b"g%d" % next(_ids)
                shell.ledger.reconcile(((group, 0, {"CPU": 1.0}),))
            shell.check()
            continue
        if side < 0.15 and remote:  # the peer answers for one, or dies
            task = remote.pop(rng.randrange(len(remote)))
            roll = rng.random()
            if task.state not in ns.OCCUPYING:
                pass
            elif roll < 0.5:
                task.transition(TaskState.FINISHED)  # as _on_peer_objects_ready does
                shell.run([(ns.FINISHED, task)])
            elif roll < 0.7:
                blob = ns.cancelled_error(task) if task.cancelled else b"remote error"
                state.fail(task)
                shell.run([(ns.FAILED, task, blob)])
            else:
                shell.run(state.retry_or_fail(task, b"its node died"))
            continue
        if event < 0.22:  # a submit, maybe waiting for dependencies, maybe nested
            parent = rng.choice(running_parents) if running_parents and rng.random() < 0.3 else None
            demand = _random_demand(rng)
            if group and rng.random() < 0.5:  # work in the bundle (index 0 or any)
                demand = pgs.group_demand(
                    {"CPU": rng.choice((0.5, 1.0))}, group, rng.choice((0, -1))
                )
            task = make_task(
                f"t{len(submitted)}",
                demand,
                max_retries=rng.choice((0, 1, 3)),
                env=rng.choice(("", "", "", "x", "z")),
                parent=parent.task_id if parent else None,
            )
            missing = rng.choice((0, 0, 1, 2))
            shell.submit(task, missing)
            submitted.append(task)
            if missing:
                waiting.append(task)
        elif event < 0.30 and waiting:  # a dependency became ready, or failed
            task = rng.choice(waiting)
            if task.state is not TaskState.WAITING:
                waiting.remove(task)
            elif rng.random() < 0.1:
                waiting.remove(task)
                state.fail(task)
                shell.run([(ns.FAILED, task, b"dep failed")])
            elif state.dependency_ready(task):
                waiting.remove(task)
                state.task_ready(task)
        elif event < 0.55:
            shell.schedule(known_envs=ENVS, now=clock)
        elif event < 0.62:
            shell.connect_all()
        elif event < 0.80 and _busy(state):  # a worker answers for its task
            worker = rng.choice(_busy(state))
            if worker.task is not None:
                running_parents.append(worker.task)
            roll = rng.random()
            error = None if roll < 0.7 else b"boom"
            shell.finish(worker, error, retryable=roll > 0.85)
        elif event < 0.86 and _busy(state):  # blocks in get, or returns from it
            worker = rng.choice(_busy(state))
            if worker.state is WorkerState.BUSY:
                shell.run(state.worker_blocked(worker))
            else:
                state.worker_unblocked(worker)
                shell.check()
        elif event < 0.91 and state.workers:  # a process dies (killed, or by itself)
            doomed = [w for w in state.workers.values() if w.client_id in shell.doomed]
            shell.die(rng.choice(doomed or list(state.workers.values())))
        elif event < 0.97 and submitted:  # rj.cancel
            task = rng.choice(submitted)
            forwarded = {t.task_id for t in remote}
            shell.run(state.cancel(task, rng.random() < 0.3, rng.random() < 0.5, forwarded))
        else:
            shell.run(state.reap_env_workers(clock))
        running_parents = [t for t in running_parents if t.state is TaskState.RUNNING][-8:]

    # drain: the group goes, actors end, peers answer, every dependency arrives, workers
    # finish, the doomed die
    if group:
        _remove_group(shell, group)
    for actor_id in actors:
        state.actor_released(actor_id)
    for task in remote:
        if task.state in ns.OCCUPYING:
            task.transition(TaskState.FINISHED)
            shell.run([(ns.FINISHED, task)])
    for task in waiting:
        while task.state is TaskState.WAITING:
            if state.dependency_ready(task):
                state.task_ready(task)
    shell.checking = False
    for step in range(50_000):
        if step % 64 == 0:
            shell.check()
        for worker in [w for w in state.workers.values() if w.client_id in shell.doomed]:
            shell.die(worker)
        shell.connect_all()
        shell.schedule(known_envs=ENVS, now=clock)
        busy = _busy(state)
        if busy:
            worker = busy[0]
            if worker.state is WorkerState.BLOCKED:
                state.worker_unblocked(worker)
            shell.finish(worker)
        elif all(_never_runs_here(state, t) for t in state.tasks.values()):
            break
    shell.check()
    leftover = [t for t in state.tasks.values() if not _never_runs_here(state, t)]
    assert not leftover, [(t.name, t.state.name, t.demand) for t in leftover]
    assert not [w for w in state.workers.values() if w.task is not None or w.lent]
    for key, total in state.resources.total.items():
        assert abs(state.resources.available[key] - total) < 1e-9, key
    assert state.resources.gpu_free == [1.0] * len(state.resources.gpu_free)
    for task in submitted:
        ended = shell.ended.get(task.task_id)
        cancelled = TaskState.CANCELLED in task.history
        if ended is not None and ended[0] is TaskState.FAILED and ended[1] and cancelled:
            assert isinstance(error_of(ended[1]), TaskCancelledError)


@pytest.mark.parametrize("other_runs", [False, True], ids=["alone", "with-another"])
def test_a_task_blocked_while_its_bundle_is_given_back_takes_back_only_plain_cpus(
    other_runs: bool,
) -> None:
    """The group goes while its task waits in get: on waking it does not take the gone
    bundle's CPUs again (they went back to the plain pool, or with another task still
    running, will when that ends: ``redirect``), and nothing is counted twice."""
    shell = node(cpus=4, workers=2)
    shell.checking = False
    state = shell.state
    ledger = pgs.BundleLedger(state.resources)
    group = b"\x09" * 4
    ledger.reconcile(((group, 0, {"CPU": 2.0}),))

    def check() -> None:
        ledger.validate()
        state.validate(held_elsewhere=ledger.reserved())

    demand = pgs.group_demand({"CPU": 1.0}, group, 0)
    tasks = [shell.submit(make_task(f"in-bundle{i}", demand)) for i in range(1 + other_runs)]
    shell.run(state.assign())
    workers = [state.workers[t.worker or b""] for t in tasks]
    shell.run(state.worker_blocked(workers[0]))
    ledger.reconcile(())
    check()
    state.worker_unblocked(workers[0])
    check()
    assert set(workers[0].lent) == set(pgs.cpu_share(demand))  # stays lent: it is gone
    shell.run(state.worker_blocked(workers[0]))  # blocks again: nothing more to lend
    check()
    state.worker_unblocked(workers[0])
    for worker in workers:
        shell.finish(worker)
        check()
    assert state.resources.available["CPU"] == 4.0
    assert not [w for w in state.workers.values() if w.lent]
