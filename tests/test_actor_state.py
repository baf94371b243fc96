"""Actors' state machine (``core/actor_state.py``) and the peer placement policy
(``core/peer_placement.py``) driven with no process at all.

Every transition of the actor table is tried (allowed ones work, the others raise an
InvalidTransition naming the actor, both states and its recent history); scenarios walk
creation, placement (here, on a peer, at the worker limit), calls queued per caller,
restarts, kills, exits, the last handle going and a host peer lost, with ``validate()``
after every step; seeded random sequences of hundreds of events (actors, callers, calls,
deaths, kills, cancels, peers) keep ``validate()`` true and end with every call settled
and every resource back.
"""

from __future__ import annotations

import itertools
import pickle
import random
from collections import deque
from typing import Any

import pytest

from rayjupyter.core import actor_state as A
from rayjupyter.core import node_state as ns
from rayjupyter.core import peer_placement
from rayjupyter.core.actor_state import ACTOR_TRANSITIONS, ActorRecord, ActorState
from rayjupyter.core.exceptions import ActorDiedError, TaskCancelledError
from rayjupyter.core.head import NodeInfo
from rayjupyter.core.node_state import NodeState
from rayjupyter.core.scheduler import (
    InvalidTransition,
    ResourcePool,
    TaskRecord,
    TaskState,
    WorkerRecord,
    WorkerState,
)
from rayjupyter.core.worker_limit import MAX_WORKERS_ENV, WorkerLimit

_ids = itertools.count(1)
OWN_ID = b"me"


def _id() -> bytes:
    return next(_ids).to_bytes(8, "big")


def make_call(actor_id: bytes, caller: bytes = b"driver", name: str = "m") -> TaskRecord:
    task_id = _id()
    return TaskRecord(
        task_id=task_id,
        owner=caller,
        name=name,
        func_id=b"",
        args_blob=b"",
        deps=(),
        nested=(),
        return_ids=(task_id + b"r",),
        demand={},
        max_retries=0,
        retry_exceptions=False,
        actor_id=actor_id,
        method=name,
    )


class Shell:
    """What node_actors.py (and node_tasks.py) do with the instructions, reduced to
    bookkeeping: enough to drive actors through whole lifetimes and see what was asked."""

    def __init__(self, cpus: float = 2, max_workers: int = 64, peers: int = 0) -> None:
        pool = ResourcePool({"CPU": cpus, "GPU": 0.0})
        self.state = NodeState(pool, pool_size=0, limit=WorkerLimit(max_workers))
        self.table = self.state.actor_table
        self.nodes: dict[bytes, NodeInfo] = {
            OWN_ID: NodeInfo(OWN_ID, "here:1", {"CPU": cpus}, available={"CPU": cpus})
        }
        for n in range(peers):
            peer_id = b"peer%d" % n
            self.nodes[peer_id] = NodeInfo(
                peer_id, f"peer{n}:1", {"CPU": 4.0}, available={"CPU": 4.0}
            )
        self.state.nodes, self.state.node_id = self.nodes, OWN_ID
        self.pids = itertools.count(100)
        self.log: list[tuple[Any, ...]] = []
        self.dispatched: list[TaskRecord] = []  # to a process here, in order
        self.forwarded: list[TaskRecord] = []  # to a host peer, in order
        self.doomed: set[bytes] = set()  # processes told to die
        self.stopped: list[bytes] = []  # hosted actors a peer was told to stop
        self.told_home: list[tuple[bytes, str, bool]] = []
        self.ended: dict[bytes, tuple[TaskState, bytes | None]] = {}
        self.checking = True
        self.remote: list[TaskRecord] = []  # plain tasks sent to a peer (spill-over)
        # calls waiting on a task's value (node_objects: its error fails them as it lands)
        self.waiters: dict[bytes, list[TaskRecord]] = {}
        self.now = 0.0  # the monotonic clock the shell passes in
        self.asked_exit: list[bytes] = []  # processes asked to end themselves (ExitActor)

    def check(self) -> None:
        self.state.validate()

    def run(self, instructions: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        for instruction in instructions:
            self.log.append(instruction)
            op = instruction[0]
            if op == A.SPAWN_ACTOR:
                actor = instruction[1]
                pid = next(self.pids)
                worker = WorkerRecord(b"w%d" % pid, pid, actor_id=actor.actor_id)
                self.state.worker_spawned(worker)
                self.table.spawned(actor, worker.client_id)
            elif op == A.HOST_ACTOR:
                pass
            elif op == A.DISPATCH_CALL:
                self.dispatched.append(instruction[1])
            elif op == A.FORWARD_CALL:
                self.state.forwarded(instruction[1])
                self.forwarded.append(instruction[1])
            elif op == A.KILL_PROCESS:
                self.doomed.add(instruction[1].client_id)
            elif op == A.ASK_EXIT:
                self.asked_exit.append(instruction[1].client_id)
            elif op == A.STOP_HOSTED:
                self.stopped.append(instruction[1].actor_id)
            elif op == A.TELL_HOME:
                self.told_home.append((instruction[1].actor_id, instruction[2], instruction[3]))
            elif op == A.FAIL_CALL:
                assert instruction[1].state is TaskState.FAILED, instruction  # the table's
                self.published(instruction[1], instruction[2])
            elif op == A.UNPIN_CALL:
                assert instruction[1].state is TaskState.READY
            elif op == A.ACTOR_ENDED:
                self.state.forget(instruction[1].creation)
            elif op == ns.FAILED:
                self.published(instruction[1], instruction[2])
            elif op == ns.DROP_ACTOR_CALL:
                self.table.drop_call(instruction[1])
            elif op == ns.ACTOR_PROCESS_DIED:
                self.run(self.table.process_died(instruction[1], instruction[2]))
            elif op == ns.START_ACTOR:
                worker = instruction[1]
                self.run(self.table.started(worker.actor_id, worker.client_id, None))
            elif op == ns.WARN:
                assert MAX_WORKERS_ENV in instruction[1], instruction
            elif op in (ns.CANCEL_CALL, ns.CANCEL_FORWARDED, ns.INTERRUPT):
                pass  # the process (or peer) answers later, with an error or a result
            elif op in (ns.EXECUTE, ns.STARTED, ns.REVOKE, ns.UNPIN):
                pass  # plain tasks: the state machine paired them already
            elif op == ns.SPAWN:
                for _ in range(instruction[2]):
                    pid = next(self.pids)
                    self.state.worker_spawned(WorkerRecord(b"w%d" % pid, pid, env=instruction[1]))
            elif op == ns.KILL:
                self.doomed.add(instruction[1].client_id)
            elif op == ns.FINISHED:
                task = instruction[1]
                self.ended[task.task_id] = (task.state, None)
                self.state.forget(task)
            elif op == ns.FORWARD:
                self.state.forwarded(instruction[1])
                self.remote.append(instruction[1])
            else:
                raise AssertionError(f"unexpected {instruction}")
        if self.checking:
            self.check()
        return instructions

    def fail(self, task: TaskRecord, blob: bytes) -> None:
        """What node_tasks.fail_task does: FAILED, returns become the error."""
        self.state.fail(task)
        self.published(task, blob)

    def published(self, task: TaskRecord, blob: bytes) -> None:
        """What node_tasks.task_failed does: the returns become the error, which fails
        the tasks still waiting on them (node_objects.set_ready)."""
        self.ended[task.task_id] = (task.state, blob)
        self.state.forget(task)
        for waiter in self.waiters.pop(task.task_id, []):
            if waiter.state is TaskState.WAITING:
                self.fail(waiter, blob)

    # ------------------------------------------------------------------ events

    def create(
        self, name: str = "A", cpus: float = 1.0, refs: int = 1, **options: Any
    ) -> ActorRecord:
        actor_id = _id() + b"actor"
        demand = {"CPU": cpus}
        creation = make_call(actor_id, name=f"{name}.__init__")
        creation.method, creation.demand, creation.return_ids = "__init__", demand, ()
        actor = ActorRecord(actor_id, name, creation, b"", demand, demand, dict(options), "")
        actor.refs = refs
        self.table.add(actor)
        self.state.submit(creation)
        creation.transition(TaskState.READY)  # its arguments exist (node_tasks.task_ready)
        self.run(self.table.pump(actor_id))
        return actor

    def schedule(self, connect: bool = True) -> None:
        """Place what is pending; ``connect``: new processes connect (and run __init__)."""
        self.run(self.table.place_pending(lambda actor: "default"))
        for worker in list(self.state.workers.values()):
            if not connect:
                break
            if worker.state is WorkerState.STARTING and worker.client_id not in self.doomed:
                self.run(self.state.worker_connected(worker))
        self.state.turn_ended()

    def call(
        self,
        actor: ActorRecord,
        caller: bytes = b"driver",
        ready: bool = True,
        waits_on: TaskRecord | None = None,
    ):
        """A call; ``waits_on``: its argument is that task's value (it is not ready)."""
        task = make_call(actor.actor_id, caller)
        self.state.submit(task)
        if waits_on is not None:
            ready = False
            self.waiters.setdefault(waits_on.task_id, []).append(task)
        out = self.table.admit_call(task)
        if out:
            self.run(out)
            return task
        if ready:
            self.ready(task)
        elif self.checking:
            self.check()
        return task

    def ready(self, task: TaskRecord) -> None:
        """Its arguments exist (node_tasks.task_ready)."""
        if task.state is TaskState.WAITING:
            task.transition(TaskState.READY)
            self.run(self.table.pump(task.actor_id))

    def answer(self, task: TaskRecord, error: bytes | None = None) -> None:
        """The actor's process (or the host peer) answered for a call."""
        if self.table.call_returned(task.actor_id, task.task_id) is None:
            return
        if task in self.dispatched:
            self.dispatched.remove(task)
        if task in self.forwarded:
            self.forwarded.remove(task)
        if error is not None or task.state is TaskState.CANCELLED:
            blob = ns.cancelled_error(task) if task.state is TaskState.CANCELLED else error
            self.fail(task, blob or b"")
        else:
            task.transition(TaskState.FINISHED)
            self.ended[task.task_id] = (task.state, None)
            self.state.forget(task)
        self.run(self.table.settle_idle(task.actor_id, self.now))

    def process_dies_as_told(self) -> None:
        """The processes told to die (KILL_PROCESS) end."""
        for worker in [w for w in self.state.workers.values() if w.client_id in self.doomed]:
            self.doomed.discard(worker.client_id)
            self.dispatched = [t for t in self.dispatched if t.worker != worker.client_id]
            self.run(self.state.worker_died(worker, "SIGKILL", respawn=False))

    def ends_come(self) -> None:
        """Processes killed or exiting end; peers stopping a hosted actor say it is gone."""
        self.process_dies_as_told()
        for actor in list(self.table.actors.values()):
            if actor.state is ActorState.EXITING and actor.worker:
                self.process_dies(actor)
            elif actor.state is ActorState.KILLING and actor.host:
                self.forwarded = [t for t in self.forwarded if t.task_id not in actor.in_flight]
                self.run(self.table.host_lost(actor, "killed there", False))

    def process_dies(self, actor: ActorRecord) -> None:
        worker = self.state.workers[actor.worker or b""]
        self.doomed.discard(worker.client_id)
        for task in list(self.dispatched):
            if task.worker == worker.client_id:
                self.dispatched.remove(task)
        self.run(self.state.worker_died(worker, "killed by SIGKILL", respawn=False))


def error_of(blob: bytes | None) -> BaseException:
    assert blob is not None
    value = pickle.loads(blob)
    assert isinstance(value, BaseException)
    return value


# ------------------------------------------------------------------ the table


@pytest.mark.parametrize(
    ("old", "new"), [(o, n) for o in ActorState for n in ActorState], ids=lambda s: s.name
)
def test_every_actor_transition_is_allowed_or_named_with_history(
    old: ActorState, new: ActorState
) -> None:
    actor = ActorRecord(b"a1", "Counter", make_call(b"a1"), b"", {}, {}, {}, "", state=old)
    actor.history = [ActorState.PENDING, ActorState.STARTING]
    if new in ACTOR_TRANSITIONS[old]:
        actor.transition(new)
        assert actor.state is new and actor.history[-1] is old
        return
    with pytest.raises(InvalidTransition) as info:
        actor.transition(new)
    text = str(info.value)
    assert "Counter" in text and b"a1".hex() in text
    assert f"{old.value} -> {new.value}" in text and "recent: pending -> starting" in text
    assert actor.state is old


def test_the_table_covers_every_state_and_dead_is_final() -> None:
    assert set(ACTOR_TRANSITIONS) == set(ActorState)
    assert not ACTOR_TRANSITIONS[ActorState.DEAD]
    assert ACTOR_TRANSITIONS[ActorState.EXITING] == {ActorState.DEAD}  # never restarts
    assert set(A.OPCODE_NAMES).isdisjoint(ns.OPCODE_NAMES)  # one shell runs both


# ------------------------------------------------------------------ scenarios


def test_an_actor_is_placed_started_and_runs_its_calls_in_order() -> None:
    shell = Shell()
    actor = shell.create()
    assert actor.state is ActorState.PENDING and actor.actor_id in shell.table.pending
    shell.schedule()
    assert actor.state is ActorState.ALIVE and actor.worker in shell.state.workers
    assert shell.state.resources.available["CPU"] == 1.0
    calls = [shell.call(actor) for _ in range(3)]
    assert shell.dispatched == calls
    for task in calls:
        shell.answer(task)
    assert all(shell.ended[t.task_id][0] is TaskState.FINISHED for t in calls)


def test_a_call_waiting_for_its_arguments_holds_back_only_its_own_callers_calls() -> None:
    """Ray orders calls per caller: B's call runs while A's first one waits."""
    shell = Shell()
    actor = shell.create()
    shell.schedule()
    a1 = shell.call(actor, b"A", ready=False)
    a2 = shell.call(actor, b"A")
    b1 = shell.call(actor, b"B")
    assert shell.dispatched == [b1]
    assert a2.state is TaskState.READY and set(actor.calls) == {b"A"}
    shell.ready(a1)
    assert shell.dispatched == [b1, a1, a2]
    assert not actor.calls


def test_a_cancelled_queued_call_leaves_its_callers_queue() -> None:
    shell = Shell()
    actor = shell.create()
    shell.schedule()
    first = shell.call(actor, b"A", ready=False)
    second = shell.call(actor, b"A")
    shell.run(shell.state.cancel(first, False, False, ()))
    assert isinstance(error_of(shell.ended[first.task_id][1]), TaskCancelledError)
    shell.run(shell.table.pump(actor.actor_id))
    assert shell.dispatched == [second]


def test_a_restart_runs_the_calls_in_flight_again_first_then_the_last_death_fails_all() -> None:
    shell = Shell()
    actor = shell.create(max_restarts=1, max_task_retries=1)
    shell.schedule()
    first, second = shell.call(actor), shell.call(actor)
    waiting = shell.call(actor, b"other", ready=False)
    first_process = actor.worker
    shell.process_dies(actor)
    assert actor.state is ActorState.PENDING and actor.restarts == 1
    assert list(actor.calls[b"driver"]) == [first, second]  # in flight: first again, in order
    assert shell.state.resources.available["CPU"] == 2.0  # its slot is free while it waits
    shell.schedule()
    assert actor.state is ActorState.ALIVE and actor.worker != first_process
    assert shell.dispatched == [first, second]
    shell.process_dies(actor)
    assert actor.state is ActorState.DEAD
    for task in (first, second, waiting):
        state, blob = shell.ended[task.task_id]
        assert state is TaskState.FAILED and isinstance(error_of(blob), ActorDiedError)
    assert "its process died" in str(error_of(actor.death_error))
    assert shell.state.resources.available["CPU"] == 2.0
    with pytest.raises(AssertionError):  # the creation is forgotten: nothing to check
        assert actor.creation.task_id in shell.state.tasks


def test_a_call_without_retries_fails_at_a_restart_and_a_cancelled_one_as_cancelled() -> None:
    shell = Shell()
    actor = shell.create(max_restarts=-1)
    shell.schedule()
    plain, cancelled = shell.call(actor), shell.call(actor)
    shell.run(shell.state.cancel(cancelled, False, False, ()))
    assert cancelled.state is TaskState.CANCELLED
    shell.process_dies(actor)
    assert "was not retried" in str(error_of(shell.ended[plain.task_id][1]))
    assert isinstance(error_of(shell.ended[cancelled.task_id][1]), TaskCancelledError)
    assert actor.state is ActorState.PENDING


def test_a_direct_call_to_a_process_that_died_since_counts_as_in_flight_at_its_death() -> None:
    """A caller's notice of a call it sent the actor's process itself (``sent_to``) may come
    after that process died: it may have run there, so it is retried within
    max_task_retries, else failed, and never just run again as if it were new."""
    shell = Shell()
    actor = shell.create(max_restarts=2, max_task_retries=1)
    shell.schedule()
    old = actor.worker
    shell.process_dies(actor)
    shell.schedule()
    assert actor.state is ActorState.ALIVE and actor.worker != old
    late = make_call(actor.actor_id)
    late.sent_to = old or b""
    late.max_retries = 1
    shell.state.submit(late)
    assert shell.table.admit_call(late) == []
    assert late.attempt == 1 and not late.sent_to  # a retry, sent by the node
    shell.ready(late)
    assert shell.dispatched[-1] is late
    strict = shell.create(max_restarts=2)
    shell.schedule()
    gone = strict.worker
    shell.process_dies(strict)
    shell.schedule()
    unlucky = make_call(strict.actor_id)
    unlucky.sent_to = gone or b""
    shell.state.submit(unlucky)
    shell.run(shell.table.admit_call(unlucky))
    state, blob = shell.ended[unlucky.task_id]
    assert state is TaskState.FAILED and "was not retried" in str(error_of(blob))
    current = make_call(strict.actor_id)
    current.sent_to = strict.worker or b""
    shell.state.submit(current)
    assert shell.table.admit_call(current) == [] and current.sent_to  # as sent: kept
    shell.check()


def test_kill_is_a_state_until_the_process_ends_then_it_restarts_or_dies() -> None:
    shell = Shell()
    actor = shell.create(max_restarts=2)
    shell.schedule()
    shell.run(shell.table.kill(actor.actor_id, no_restart=False))
    assert actor.state is ActorState.KILLING and actor.worker in shell.doomed
    late = shell.call(actor)  # queued: a killed actor runs nothing more
    assert late not in shell.dispatched
    shell.process_dies(actor)
    assert actor.state is ActorState.PENDING and actor.restarts == 1
    shell.schedule()
    assert shell.dispatched == [late]
    shell.run(shell.table.kill(actor.actor_id, no_restart=True))
    shell.process_dies(actor)
    assert actor.state is ActorState.DEAD
    assert "killed by rj.kill()" in str(error_of(actor.death_error))
    assert "killed by rj.kill()" in str(error_of(shell.ended[late.task_id][1]))


@pytest.mark.parametrize("calls_first", [False, True], ids=["kill_first", "calls_first"])
def test_a_dead_actors_call_waiting_on_another_of_its_calls_fails_once(
    calls_first: bool,
) -> None:
    """rj.kill() and ``a.foo.remote(a.dep.remote())`` (dep queued, or running): the death
    fails both calls, and publishing dep's error fails foo (which waits on it) before the
    shell reaches foo's FAIL_CALL. The table marks each call FAILED as it decides, so foo
    is not failed twice (it was: FAILED -> FAILED crashed the node)."""
    shell = Shell()
    actor = shell.create()
    shell.schedule()
    if not calls_first:
        shell.run(shell.table.kill(actor.actor_id, no_restart=False))
    dep = shell.call(actor)
    foo = shell.call(actor, waits_on=dep)
    assert (dep in shell.dispatched) is calls_first
    if calls_first:
        shell.run(shell.table.kill(actor.actor_id, no_restart=False))
    shell.process_dies(actor)
    assert actor.state is ActorState.DEAD
    for task in (dep, foo):
        state, blob = shell.ended[task.task_id]
        assert state is TaskState.FAILED and isinstance(error_of(blob), ActorDiedError)
        assert "killed by rj.kill()" in str(error_of(blob))


def test_a_restarted_actors_call_waits_on_its_earlier_call_and_runs_after_it() -> None:
    """The same with a restart: dep runs on the new process and foo, waiting on it,
    follows once dep's value exists; nothing fails."""
    shell = Shell()
    actor = shell.create(max_restarts=1)
    shell.schedule()
    shell.run(shell.table.kill(actor.actor_id, no_restart=False))
    dep = shell.call(actor)
    foo = shell.call(actor, waits_on=dep)
    shell.process_dies(actor)
    assert actor.state is ActorState.PENDING
    shell.schedule()
    assert shell.dispatched == [dep]
    shell.answer(dep)
    shell.ready(foo)  # dep's value exists
    assert shell.dispatched == [foo]
    shell.answer(foo)
    assert shell.ended[foo.task_id] == (TaskState.FINISHED, None)


def test_kill_before_start_ends_it_and_exit_actor_never_restarts() -> None:
    shell = Shell(cpus=0.5)
    waiting = shell.create(max_restarts=3)  # needs a CPU: stays pending
    shell.schedule()
    shell.run(shell.table.kill(waiting.actor_id, no_restart=False))
    assert waiting.state is ActorState.PENDING
    shell.run(shell.table.kill(waiting.actor_id, no_restart=True))
    assert waiting.state is ActorState.DEAD and "before it started" in str(
        error_of(waiting.death_error)
    )
    actor = shell.create(cpus=0.5, max_restarts=3)
    shell.schedule()
    shell.table.exiting(actor.actor_id, actor.worker or b"")
    assert actor.state is ActorState.EXITING
    shell.process_dies(actor)
    assert actor.state is ActorState.DEAD and "exited on purpose" in str(
        error_of(actor.death_error)
    )
    assert shell.told_home[-1] == (
        actor.actor_id,
        "it exited on purpose (exit_actor() was called)",
        False,
    )


def test_the_last_handle_ends_an_actor_once_its_calls_are_done() -> None:
    shell = Shell()
    actor = shell.create()
    shell.schedule()
    task = shell.call(actor)
    shell.run(shell.table.released(actor, shell.now))
    assert actor.state is ActorState.ALIVE and actor.release_when_idle
    shell.answer(task)
    assert actor.state is ActorState.EXITING and shell.asked_exit == [actor.worker]
    assert shell.ended[task.task_id][0] is TaskState.FINISHED
    shell.ends_come()  # it ran __ray_shutdown__ and its atexit handlers, then ended
    assert actor.state is ActorState.DEAD and actor.worker is None
    assert "all handles to it went out of scope" in str(error_of(actor.death_error))
    other = shell.create(cpus=0.5)
    shell.schedule()
    doomed = shell.call(other, ready=False)
    shell.fail(doomed, b"its argument failed")  # it stays in its queue, FAILED, until popped
    shell.run(shell.table.released(other, shell.now))
    assert other.state is ActorState.EXITING  # a failed queued call is no work to wait for
    detached = shell.create(lifetime="detached")
    shell.run(shell.table.released(detached, shell.now))
    assert detached.state is ActorState.PENDING  # detached: outlives its handles


def test_init_raising_ends_it_for_good_and_frees_its_name() -> None:
    shell = Shell()
    actor = shell.create(name="N", max_restarts=5)
    actor.options["name"] = "N"
    shell.table.named[("", "N")] = actor.actor_id
    assert shell.table.name_holder("", "N") is actor
    shell.run(shell.table.place_pending(lambda a: "default"))
    worker = shell.state.workers[actor.worker or b""]
    shell.run(shell.state.worker_connected(worker)[:0])  # connected, START_ACTOR not run
    worker.state = WorkerState.IDLE
    shell.run(shell.table.started(actor.actor_id, worker.client_id, "ValueError: bad"))
    assert actor.state is ActorState.DEAD and "__init__ raised" in str(error_of(actor.death_error))
    assert shell.table.name_holder("", "N") is None and ("", "N") not in shell.table.named
    failed = shell.call(actor)
    assert shell.ended[failed.task_id][1] == actor.death_error


def test_an_actor_that_does_not_fit_goes_to_a_peer_and_comes_back_when_lost() -> None:
    shell = Shell(cpus=1, peers=1)
    actor = shell.create(cpus=2.0, max_restarts=1, max_task_retries=1)
    first = shell.call(actor)
    shell.schedule()
    peer = shell.nodes[b"peer0"]
    assert actor.state is ActorState.ALIVE and actor.host == peer.address
    assert [op[0] for op in shell.log[-2:]] == [A.HOST_ACTOR, A.FORWARD_CALL]
    assert peer.available["CPU"] == 2.0  # counted taken until the next view
    assert shell.forwarded == [first] and first.state is TaskState.RUNNING
    shell.run(shell.table.host_lost(actor, "the node it ran on died", True))
    assert actor.state is ActorState.PENDING and not actor.host
    assert list(actor.calls[b"driver"]) == [first] and first.state is TaskState.READY
    peer.alive = False
    shell.schedule()  # no peer left, never fits here: it waits
    assert actor.state is ActorState.PENDING
    peer.alive = True
    shell.schedule()
    shell.run(shell.table.kill(actor.actor_id, no_restart=True))
    assert actor.state is ActorState.KILLING and shell.stopped == [actor.actor_id]
    shell.run(shell.table.host_lost(actor, "killed there", False))
    assert actor.state is ActorState.DEAD


def test_a_peer_that_says_its_actor_may_not_restart_is_believed() -> None:
    shell = Shell(cpus=1, peers=1)
    actor = shell.create(cpus=2.0, max_restarts=5)
    shell.schedule()
    shell.run(shell.table.host_lost(actor, "its __init__ raised", False))
    assert actor.state is ActorState.DEAD and actor.no_restart


def test_actors_wait_for_a_process_at_the_limit_and_say_why_once() -> None:
    shell = Shell(cpus=4, max_workers=1)
    first, second = shell.create(cpus=0.5), shell.create(cpus=0.5)
    shell.schedule()
    warns = [i for i in shell.log if i[0] == ns.WARN]
    assert len(warns) == 1 and "actors" in warns[0][1]
    if first.state is ActorState.PENDING:  # (the pending set has no order)
        first, second = second, first
    assert first.state is ActorState.ALIVE and second.state is ActorState.PENDING
    assert MAX_WORKERS_ENV in second.pending_reason
    shell.schedule()
    assert len([i for i in shell.log if i[0] == ns.WARN]) == 1  # once per episode
    shell.run(shell.table.released(first, shell.now))
    assert first.state is ActorState.EXITING
    shell.ends_come()
    shell.schedule()
    assert second.state is ActorState.ALIVE and not second.pending_reason


def test_validate_names_broken_actor_invariants() -> None:
    shell = Shell()
    shell.checking = False
    actor = shell.create()
    shell.schedule()
    stray = make_call(b"another", b"driver")
    stray.state = TaskState.READY
    actor.calls[b"driver"] = deque([stray])
    with pytest.raises(AssertionError, match="queues m of another"):
        shell.state.validate()
    actor.calls.clear()
    worker_id = actor.worker
    actor.worker = None
    with pytest.raises(AssertionError, match="has no worker process"):
        shell.state.validate()
    actor.worker = worker_id
    other = shell.create(name="B")
    other.worker = worker_id
    other.state = ActorState.ALIVE
    shell.state.actor_slots[other.actor_id] = ({}, ())
    with pytest.raises(AssertionError, match=r"runs another actor|shares its process"):
        shell.state.validate()


# ------------------------------------------------------------------ peer placement


def _peer(name: str, cpus: float, free: float, queued: int = 0) -> NodeInfo:
    return NodeInfo(
        name.encode(), f"{name}:1", {"CPU": cpus}, available={"CPU": free}, queued=queued
    )


def test_choose_peer_prefers_free_cpus_and_waits_here_when_it_could_run_here() -> None:
    busy, idle, big = _peer("busy", 4, 0.5), _peer("idle", 4, 3), _peer("big", 16, 0, queued=1)
    assert peer_placement.choose_peer({"CPU": 1}, [busy, idle, big], True) is idle
    assert peer_placement.choose_peer({"CPU": 8}, [busy, idle, big], True) is None
    assert peer_placement.choose_peer({"CPU": 8}, [busy, idle, big], False) is big
    assert peer_placement.choose_peer({"CPU": 32}, [busy, idle, big], False) is None


def test_locality_follows_the_largest_holder_over_a_megabyte_that_has_room() -> None:
    holder, other = _peer("holder", 4, 2), _peer("other", 4, 4)
    mb = peer_placement.LOCALITY_MIN_BYTES
    held = {"holder:1": 3 * mb, "other:1": mb}
    assert peer_placement.by_locality(held, 0, {"CPU": 1}, [holder, other]) is holder
    assert peer_placement.by_locality(held, 4 * mb, {"CPU": 1}, [holder, other]) is None
    assert peer_placement.by_locality({"holder:1": mb - 1}, 0, {}, [holder]) is None
    assert peer_placement.by_locality(held, 0, {"CPU": 3}, [holder, other]) is None


def test_spill_over_sends_what_does_not_fit_and_counts_it_taken() -> None:
    shell = Shell(cpus=1, peers=1)
    state = shell.state
    tasks = []
    for n in range(6):
        task = make_call(b"", b"driver" if n != 5 else b"from-peer", name=f"t{n}")
        task.actor_id, task.demand = b"", {"CPU": 1.0}
        state.submit(task)
        state.task_ready(task)
        tasks.append(task)
    state.resources.acquire({"CPU": 1.0})  # busy here
    out = state.spill_over(from_peers={b"from-peer"})
    sent = [i[1] for i in out]
    assert all(i[0] == ns.FORWARD for i in out) and sent == tasks[:4]  # the peer's 4 CPUs
    assert shell.nodes[b"peer0"].available["CPU"] == 0.0
    assert list(state.ready) == tasks[4:]  # the rest waits; the peer's own task stays
    state.resources.release({"CPU": 1.0})


def test_spill_over_with_every_peer_busy_leaves_the_queue_as_it_was() -> None:
    """A demand no peer has free stays, the queue keeps its order; another demand still goes."""
    shell = Shell(cpus=1, peers=1)
    state = shell.state
    peer = shell.nodes[b"peer0"]
    peer.available["CPU"] = 0.0
    peer.available["GPU"] = 1.0
    peer.resources["GPU"] = 1.0
    tasks = []
    for n in range(8):
        task = make_call(b"", b"driver", name=f"t{n}")
        task.actor_id = b""
        task.demand = {"CPU": 1.0} if n != 6 else {"GPU": 1.0}
        if n == 7:
            task.strategy = "node:" + state.node_id.hex()
            task.demand = {"GPU": 1.0}
        state.submit(task)
        state.task_ready(task)
        tasks.append(task)
    state.resources.acquire({"CPU": 1.0})  # busy here
    before = list(state.ready)
    out = state.spill_over(from_peers=())
    assert [i[1] for i in out] == [tasks[6]]  # the GPU task; the pinned one stays
    assert peer.available["GPU"] == 0.0
    assert list(state.ready) == [t for t in before if t is not tasks[6]]
    assert state.spill_over(from_peers=()) == []  # nothing free: nothing moves
    assert list(state.ready) == [t for t in before if t is not tasks[6]]
    state.resources.release({"CPU": 1.0})


# ------------------------------------------------------------------ random sequences


@pytest.mark.parametrize("seed", range(12))
def test_random_actor_events_keep_the_invariants_and_everything_settles(seed: int) -> None:
    rng = random.Random(seed)
    shell = Shell(cpus=rng.choice((1, 2, 4)), max_workers=rng.choice((2, 4, 64)), peers=1)
    state, table = shell.state, shell.table
    peer = shell.nodes[b"peer0"]
    actors: list[ActorRecord] = []
    calls: list[TaskRecord] = []
    callers = (b"A", b"B", b"C")
    for _ in range(500):
        event = rng.random()
        live = [a for a in actors if a.state is not ActorState.DEAD]
        if event < 0.08 or not live:
            actors.append(
                shell.create(
                    cpus=rng.choice((0.5, 1.0, 2.0, 8.0)),
                    refs=rng.choice((1, 2)),
                    max_restarts=rng.choice((0, 1, -1)),
                    max_task_retries=rng.choice((0, 1)),
                    lifetime=rng.choice((None, None, "detached")),
                )
            )
        elif event < 0.35:
            calls.append(shell.call(rng.choice(actors), rng.choice(callers), rng.random() < 0.7))
        elif event < 0.42:
            waiting = [t for t in calls if t.state is TaskState.WAITING]
            if waiting:
                shell.ready(rng.choice(waiting))
        elif event < 0.55:
            shell.schedule(connect=rng.random() < 0.6)
        elif event < 0.72:
            running = shell.dispatched + shell.forwarded
            if running:
                shell.answer(rng.choice(running), b"boom" if rng.random() < 0.2 else None)
        elif event < 0.78:
            local = [a for a in live if a.worker is not None]
            if local:
                shell.process_dies(rng.choice(local))
        elif event < 0.82:
            shell.run(table.kill(rng.choice(live).actor_id, rng.random() < 0.5))
        elif event < 0.84:
            alive = [a for a in live if a.worker and a.state in A.HAS_PROCESS]
            if alive:
                actor = rng.choice(alive)
                table.exiting(actor.actor_id, actor.worker or b"")
                shell.check()
        elif event < 0.88:
            held = [a for a in live if a.refs > 0]
            if held:
                shell.run(table.released(rng.choice(held), shell.now))
        elif event < 0.93 and calls:
            task = rng.choice(calls)
            forwarded = {t.task_id for t in shell.forwarded}
            shell.run(state.cancel(task, False, False, forwarded))
        elif event < 0.97:
            hosted = [a for a in live if a.host]
            if hosted:
                actor = rng.choice(hosted)
                shell.forwarded = [t for t in shell.forwarded if t.task_id not in actor.in_flight]
                shell.run(table.host_lost(actor, "peer lost it", rng.random() < 0.7))
        elif event < 0.99:
            peer.available["CPU"] = rng.choice((0.0, 2.0, 4.0))  # a new view of the peer
        elif event < 0.997:  # time passes: actors asked to end past their grace are killed
            shell.now += rng.choice((1.0, 40.0))
            shell.run(table.overdue(shell.now))
        else:  # the process that created them is gone: they share its fate
            shell.run(table.owner_gone(b"driver"))
        if rng.random() < 0.5:  # killed and exiting processes end, sooner or later
            shell.ends_come()

    # drain: every handle goes (detached ones are killed), calls answer, processes end
    shell.checking = False
    for actor in actors:
        while actor.refs > 0 and actor.state is not ActorState.DEAD:
            shell.run(table.released(actor, shell.now))
        shell.run(table.kill(actor.actor_id, no_restart=True))
    for _ in range(10_000):
        shell.ends_come()
        for task in calls:
            shell.ready(task)
        shell.schedule()
        running = shell.dispatched + shell.forwarded
        if running:
            shell.answer(running[0])
            continue
        stuck = [a for a in actors if a.state is not ActorState.DEAD]
        if not stuck and not shell.doomed:
            break
        for actor in stuck:  # released while pending or restarting: they end now
            if actor.state is ActorState.PENDING:
                shell.run(table.die(actor, "drained"))
    shell.check()
    alive = [
        (a.state, a.refs, a.host, a.in_flight, a.calls)
        for a in actors
        if a.state is not ActorState.DEAD
    ]
    assert not alive
    assert not state.actor_slots and not table.pending and not table.named
    assert state.resources.available["CPU"] == state.resources.total["CPU"]
    assert not [w for w in state.workers.values() if w.actor_id]
    for task in calls:
        assert task.state in (TaskState.FINISHED, TaskState.FAILED), (task.name, task.state)
        assert task.task_id in shell.ended


def test_the_random_sequences_take_every_declared_transition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The seeded runs above reach every edge of ACTOR_TRANSITIONS (so none is dead code)."""
    taken: set[tuple[ActorState, ActorState]] = set()
    transition = ActorRecord.transition

    def recording(actor: ActorRecord, new: ActorState) -> None:
        taken.add((actor.state, new))
        transition(actor, new)

    monkeypatch.setattr(ActorRecord, "transition", recording)
    for seed in range(12):
        test_random_actor_events_keep_the_invariants_and_everything_settles(seed)
    declared = {(old, new) for old, targets in ACTOR_TRANSITIONS.items() for new in targets}
    assert declared - taken == set()


def _plain_task(n: int, demand: dict[str, float], retries: int) -> TaskRecord:
    task = make_call(b"", b"driver", name=f"t{n}")
    task.actor_id, task.method, task.demand, task.max_retries = b"", "", demand, retries
    return task


@pytest.mark.parametrize("seed", range(8))
def test_random_tasks_actors_and_spill_over_share_one_node_state(seed: int) -> None:
    """Plain tasks (a worker pool, retries, cancels, spill-over to a peer) and actors (with
    their processes and slots) on one NodeState: the resources add up after every step."""
    rng = random.Random(seed)
    shell = Shell(cpus=rng.choice((2, 4)), max_workers=rng.choice((4, 8, 64)), peers=1)
    state, table = shell.state, shell.table
    state.pool_size = 2
    shell.run([(ns.SPAWN, "", 2)])
    peer = shell.nodes[b"peer0"]
    actors: list[ActorRecord] = []
    tasks: list[TaskRecord] = []
    calls: list[TaskRecord] = []

    def plain_busy() -> list[WorkerRecord]:
        return [w for w in state.workers.values() if w.task is not None and not w.actor_id]

    def turn() -> None:
        shell.schedule(connect=rng.random() < 0.8)
        shell.run(state.assign())
        shell.run(state.spill_over(from_peers=()))
        state.turn_ended()
        shell.run(state.prefetch())

    for _ in range(400):
        event = rng.random()
        live = [a for a in actors if a.state is not ActorState.DEAD]
        if event < 0.06:
            actors.append(shell.create(cpus=rng.choice((0.5, 1.0)), max_restarts=1))
        elif event < 0.30:
            demand = {"CPU": rng.choice((0.5, 1.0, 2.0))}
            task = _plain_task(len(tasks), demand, rng.choice((0, 1)))
            state.submit(task)
            state.task_ready(task)
            tasks.append(task)
        elif event < 0.40 and live:
            calls.append(shell.call(rng.choice(live), rng.choice((b"A", b"B"))))
        elif event < 0.60:
            turn()
        elif event < 0.75 and plain_busy():
            worker = rng.choice(plain_busy())
            task = worker.task
            assert task is not None
            error = b"boom" if rng.random() < 0.2 else None
            shell.run(state.task_finished(worker, task, error, rng.random() < 0.5))
        elif event < 0.82 and (shell.dispatched or shell.forwarded):
            shell.answer(rng.choice(shell.dispatched + shell.forwarded))
        elif event < 0.86 and shell.remote:  # the peer answers for a spilled task, or dies
            task = shell.remote.pop(rng.randrange(len(shell.remote)))
            if task.state in ns.OCCUPYING and rng.random() < 0.7:
                task.transition(TaskState.FINISHED)
                shell.run([(ns.FINISHED, task)])
            elif task.state in ns.OCCUPYING:
                shell.run(state.retry_or_fail(task, b"its node died"))
        elif event < 0.90 and state.workers:
            worker = rng.choice(list(state.workers.values()))
            shell.doomed.discard(worker.client_id)
            shell.dispatched = [t for t in shell.dispatched if t.worker != worker.client_id]
            shell.run(state.worker_died(worker, "SIGKILL", respawn=True))
        elif event < 0.94 and tasks:
            shell.run(state.cancel(rng.choice(tasks), rng.random() < 0.3, False, ()))
        elif event < 0.97 and live:
            shell.run(table.kill(rng.choice(live).actor_id, rng.random() < 0.5))
        else:
            peer.available["CPU"] = rng.choice((0.0, 2.0, 4.0))
        if rng.random() < 0.5:
            shell.ends_come()

    shell.checking = False
    for actor in actors:
        shell.run(table.kill(actor.actor_id, no_restart=True))
    peer.available["CPU"] = 0.0  # no more spill-over: what is queued runs here
    for step in range(20_000):
        if step % 50 == 0:
            shell.check()
        shell.ends_come()
        turn()
        for task in list(shell.remote):
            shell.remote.remove(task)
            if task.state in ns.OCCUPYING:
                task.transition(TaskState.FINISHED)
                shell.run([(ns.FINISHED, task)])
        if shell.dispatched or shell.forwarded:
            shell.answer((shell.dispatched + shell.forwarded)[0])
        elif plain_busy():
            worker = plain_busy()[0]
            assert worker.task is not None
            shell.run(state.task_finished(worker, worker.task, None, False))
        elif not shell.doomed and all(
            t.state in (TaskState.FINISHED, TaskState.FAILED)
            or not state.resources.feasible(t.demand)
            for t in tasks
        ):
            break
    shell.check()
    assert all(a.state is ActorState.DEAD for a in actors)
    leftover = [t for t in tasks if t.state not in (TaskState.FINISHED, TaskState.FAILED)]
    assert all(not state.resources.feasible(t.demand) for t in leftover), leftover
    assert state.resources.available["CPU"] == state.resources.total["CPU"]
    assert not state.actor_slots and not table.pending
