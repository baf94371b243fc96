"""A node's actors as a state machine without I/O: lifecycle, call queues, placement,
restarts and death.

``ActorTable`` is composed by ``NodeState`` (it shares its workers, resources, worker limit
and view of the peers). Events go in as method calls (created, a call admitted or ready, a
process started or died, kill, exit, the last handle released, its owner gone, the peer
hosting it lost it, the grace of one asked to end passed) and instructions come out, plain
tuples whose first item is an opcode below; ``node_actors.NodeActors`` is the shell that
starts processes, sends the messages and signals. So every decision is tested with no
process (``tests/test_actor_state.py``, ``tests/test_actor_exit_state.py``), and
``validate`` checks the invariants after any step.

Calls are queued per caller, each caller's in the order it made them (Ray's ordering): a
call still waiting for its arguments holds back the later calls of its own caller only.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING

from rayjupyter.core import peer_placement, worker_limit
from rayjupyter.core.actor_record import ACTOR_TRANSITIONS as ACTOR_TRANSITIONS
from rayjupyter.core.actor_record import HAS_PROCESS as HAS_PROCESS
from rayjupyter.core.actor_record import ActorRecord as ActorRecord
from rayjupyter.core.actor_record import ActorState as ActorState
from rayjupyter.core.exceptions import ActorDiedError
from rayjupyter.core.head import NodeInfo
from rayjupyter.core.scheduler import TaskRecord, TaskState, WorkerRecord
from rayjupyter.core.task_errors import cancelled_error, restarting_error

if TYPE_CHECKING:
    from rayjupyter.core.node_instructions import Instruction
    from rayjupyter.core.node_state import NodeState


#: a restarted actor's states before it runs calls again: calls without retries fail fast
RESTARTING = (ActorState.PENDING, ActorState.STARTING)

# Instructions: (opcode, ...); numbered apart from node_state's, so one shell runs both.
SPAWN_ACTOR = 31  # (SPAWN_ACTOR, actor): start its process; the shell reports ``spawned``
HOST_ACTOR = 32  # (HOST_ACTOR, actor, peer): ask that peer (NodeInfo) to run it for us
DISPATCH_CALL = 33  # (DISPATCH_CALL, task, worker): send a call to the actor's process here
FORWARD_CALL = 34  # (FORWARD_CALL, task, peer): send a call to the peer hosting the actor
KILL_PROCESS = 35  # (KILL_PROCESS, worker): SIGKILL the actor's process here
# (STOP_HOSTED, actor, address, task_ids, graceful): its host stops it (graceful: asks it to
# end itself, as ASK_EXIT); those calls: stale
STOP_HOSTED = 36
TELL_HOME = 37  # (TELL_HOME, actor, reason, restartable): it ran here for a peer: tell it
FAIL_CALL = 38  # (FAIL_CALL, task, error_blob): it is FAILED now: unpin its arguments, publish
UNPIN_CALL = 39  # (UNPIN_CALL, task): it left the process (it is queued again)
ACTOR_ENDED = 40  # (ACTOR_ENDED, actor, named_detached): forget its creation (and save file)
ASK_EXIT = 41  # (ASK_EXIT, worker): ask its process here to end itself (ExitActor)

#: how long an actor asked to end may take before its process is killed (Ray's
#: actor_graceful_shutdown_timeout_ms, 30 s by default)
GRACEFUL_EXIT_S = 30.0

OPCODE_NAMES = {
    value: name
    for name, value in globals().items()
    if isinstance(value, int) and name.isupper() and not name.startswith("_")
}

_NONE: list[Instruction] = []  # returned (never mutated) when an event needs nothing done


class ActorTable:
    """The node's actors: names, placement, call queues, restarts and death."""

    def __init__(self, state: NodeState) -> None:
        self.state = state
        self.actors: dict[bytes, ActorRecord] = {}  # every actor this node is home to
        self.named: dict[tuple[str, str], bytes] = {}  # (namespace, name) -> live actor id
        self.pending: set[bytes] = set()  # ready to be placed (arguments there)
        self.grace_s = GRACEFUL_EXIT_S  # how long an actor asked to end may take
        # actors asked to end by themselves: when their process is killed if still there
        self.exit_deadlines: dict[bytes, float] = {}

    # ------------------------------------------------------------------ creation

    def name_holder(self, namespace: str, name: str) -> ActorRecord | None:
        """The live actor holding that name, if any."""
        actor_id = self.named.get((namespace, name))
        actor = self.actors.get(actor_id) if actor_id is not None else None
        return actor if actor is not None and actor.state is not ActorState.DEAD else None

    def add(self, actor: ActorRecord) -> None:
        """A new actor (its name was checked free with ``name_holder``)."""
        self.actors[actor.actor_id] = actor
        if actor.name:
            self.named[(actor.namespace, actor.name)] = actor.actor_id

    def admit_call(self, task: TaskRecord) -> list[Instruction]:
        """A new call to an actor of ours: queue it behind its caller's, or fail it."""
        actor = self.actors.get(task.actor_id)
        if actor is None or actor.state is ActorState.DEAD:
            if actor is not None:
                return [self.fail_call(task, actor.death_error)]
            error = ActorDiedError(f"No actor {task.actor_id.hex()} exists on this cluster.")
            return [self.fail_call(task, pickle.dumps(error, protocol=5))]
        task.max_retries = int(actor.options.get("max_task_retries") or 0)
        task.job, task.namespace = actor.job, actor.namespace
        if task.sent_to and task.sent_to != actor.worker:
            # its caller sent it on a direct link to a process of the actor that has ended
            # since (direct_calls.py): it may have run there, so it is a call that was in
            # flight at that death: run again within max_task_retries, else failed
            task.sent_to = b""
            if not task.retry():
                error = ActorDiedError(
                    f"The actor {actor.class_name} died while running {task.name!r}; the call "
                    f"was not retried (max_task_retries={task.max_retries})."
                )
                error.actor_id = actor.actor_id.hex()
                return [self.fail_call(task, pickle.dumps(error, protocol=5))]
        if not task.max_retries and actor.restarts and actor.state in RESTARTING:
            return [self.fail_call(task, restarting_error(task, actor.actor_id))]  # as Ray
        actor.enqueue(task)
        return _NONE

    def fail_call(self, task: TaskRecord, error_blob: bytes) -> Instruction:
        """The call is FAILED from now, decided here rather than when the shell gets to
        the instruction: publishing one call's error fails the calls waiting on its value
        (the shell's dependency propagation), and a call of the same batch that waits on it
        must then be seen as failed already, not failed a second time."""
        self.state.fail(task)
        return (FAIL_CALL, task, error_blob)

    def drop_call(self, task: TaskRecord) -> None:
        """A queued call was cancelled."""
        actor = self.actors.get(task.actor_id)
        if actor is not None:
            actor.drop(task)

    # ------------------------------------------------------------------ placement

    def pump(self, actor_id: bytes) -> list[Instruction]:
        """A pending actor with its arguments becomes placeable; a live one sends its ready
        calls, each caller's in order, to its process or to the peer hosting it."""
        actor = self.actors.get(actor_id)
        if actor is None:
            return _NONE
        if actor.state is ActorState.PENDING:
            if actor.creation.state is TaskState.READY:
                self.pending.add(actor_id)
            return _NONE
        if actor.state is not ActorState.ALIVE:
            return _NONE
        if actor.host:
            peer = self.state.nodes.get(actor.host_node)
            if peer is None or not peer.alive:
                return _NONE  # its calls wait: the peer's death restarts it elsewhere
            out: list[Instruction] = []
            for task in actor.take_ready_calls():
                actor.in_flight[task.task_id] = task
                out.append((FORWARD_CALL, task, peer))
            return out
        worker = self.state.workers.get(actor.worker or b"")
        if worker is None:
            return _NONE
        out = []
        for task in actor.take_ready_calls():
            task.transition(TaskState.RUNNING)
            task.worker = worker.client_id
            actor.in_flight[task.task_id] = task
            out.append((DISPATCH_CALL, task, worker))
        return out

    def place_pending(self, strategy: Callable[[ActorRecord], str]) -> list[Instruction]:
        """A process here for each pending actor whose resources are free, or a peer that
        has them (``peer_placement``). ``strategy(actor)`` applies SPREAD and node affinity
        first: "done" (it placed or ended the actor), "here" (it waits for this node) or
        "default"."""
        state = self.state
        resources = state.resources
        out: list[Instruction] = []
        planned = 0  # processes this call starts (not in the workers table yet)
        no_process = 0
        for actor_id in list(self.pending):
            actor = self.actors.get(actor_id)
            if actor is None or actor.state is not ActorState.PENDING:
                self.pending.discard(actor_id)
                continue
            where = strategy(actor)
            if where == "done":
                self.pending.discard(actor_id)
                continue
            demand = actor.place_demand
            if not resources.fits(demand):
                if where == "here":
                    continue
                peers = state.peers()
                feasible = resources.feasible(demand)
                peer = peer_placement.choose_peer(demand, peers, feasible) if peers else None
                if peer is not None:
                    out += self.host(actor, peer)
                continue
            if not state.limit.room(len(state.workers) + planned):
                no_process += 1
                actor.pending_reason = (
                    f"waiting for a worker process: this node runs {state.limit.limit}, "
                    f"its limit ({worker_limit.SETTING})"
                )
                continue
            actor.pending_reason = ""
            self.pending.discard(actor_id)
            actor.gpu_ids = state.actor_placed(actor_id, actor.run_demand)
            actor.creation.transition(TaskState.RUNNING)
            actor.transition(ActorState.STARTING)
            out.append((SPAWN_ACTOR, actor))
            planned += 1
        if no_process:
            out += state.limit_reached(no_process, "actors", planned)
        return out

    def spawned(self, actor: ActorRecord, worker_id: bytes) -> None:
        """The shell started the process SPAWN_ACTOR asked for."""
        actor.worker = worker_id

    def host(self, actor: ActorRecord, peer: NodeInfo) -> list[Instruction]:
        """A peer runs it for us: its record stays here (its home), which sends its calls
        in order and decides its restarts; calls queue there behind its __init__."""
        self.pending.discard(actor.actor_id)
        peer_placement.charge(peer, actor.run_demand)
        actor.host, actor.host_node = peer.address, peer.node_id
        actor.creation.transition(TaskState.RUNNING)
        actor.transition(ActorState.STARTING)
        actor.transition(ActorState.ALIVE)
        return [(HOST_ACTOR, actor, peer), *self.pump(actor.actor_id)]

    def started(
        self, actor_id: bytes, worker_id: bytes, error: str | None, label: str = ""
    ) -> list[Instruction]:
        """Its process ran __init__: it is alive (``label``: its own __repr__, if it has
        one), or (``error``) dead for good."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.worker != worker_id or actor.state is not ActorState.STARTING:
            return _NONE
        if error is not None:
            actor.no_restart = True
            return self.die(actor, f"its __init__ raised:\n{error}")
        actor.label = label
        actor.transition(ActorState.ALIVE)
        return self.pump(actor_id)

    # ------------------------------------------------------------------ calls ending

    def call_returned(self, actor_id: bytes, task_id: bytes) -> TaskRecord | None:
        """A call's answer came (from its process or its host): it is no longer in flight."""
        actor = self.actors.get(actor_id)
        return actor.in_flight.pop(task_id, None) if actor is not None else None

    def settle_idle(self, actor_id: bytes, now: float) -> list[Instruction]:
        """After a call ended: an actor whose handles are all gone ends once it is idle."""
        actor = self.actors.get(actor_id)
        if actor is None or not actor.release_when_idle or actor.state is ActorState.DEAD:
            return _NONE
        if actor.busy:
            return _NONE
        return self.end_unused(actor, now)

    def released(self, actor: ActorRecord, now: float) -> list[Instruction]:
        """One handle fewer; a non-detached actor ends when none is left (once idle)."""
        actor.refs -= 1
        if actor.refs > 0 or actor.detached or actor.state is ActorState.DEAD:
            return _NONE
        if actor.busy:
            actor.release_when_idle = True
            return _NONE
        return self.end_unused(actor, now)

    def end_unused(self, actor: ActorRecord, now: float) -> list[Instruction]:
        """Its handles are all gone and it is idle. As in Ray, its process is asked to end
        itself (its ``__ray_shutdown__`` and atexit handlers run) and killed if it has not
        within ``grace_s``; an actor without a process here ends at once."""
        reason = "all handles to it went out of scope"
        if actor.state is ActorState.EXITING:  # exit_actor() runs: it ends by itself
            self.exit_deadlines.setdefault(actor.actor_id, now + self.grace_s)
            return _NONE
        if actor.host:  # its host asks it to end itself (``asked_to_end`` there)
            return self.die(actor, reason, graceful=True)
        worker = self.state.workers.get(actor.worker or b"")
        if worker is None or actor.state not in (ActorState.STARTING, ActorState.ALIVE):
            return self.die(actor, reason)
        actor.transition(ActorState.EXITING)
        actor.exit_reason = reason
        self.exit_deadlines[actor.actor_id] = now + self.grace_s
        return [(ASK_EXIT, worker)]

    def asked_to_end(self, actor: ActorRecord, now: float) -> list[Instruction]:
        """The home of an actor we host says its handles all went: it ends by itself once
        its calls are done (as ``released`` decides for an actor of ours)."""
        if actor.state is ActorState.DEAD:
            return _NONE
        if actor.busy:
            actor.release_when_idle = True
            return _NONE
        return self.end_unused(actor, now)

    def overdue(self, now: float) -> list[Instruction]:
        """Actors asked to end that have not within the grace period: kill their process
        (it dies as it would have: no restart, the same reason)."""
        out: list[Instruction] = []
        for actor_id, deadline in list(self.exit_deadlines.items()):
            if deadline > now:
                continue
            del self.exit_deadlines[actor_id]
            actor = self.actors[actor_id]
            worker = self.state.workers.get(actor.worker or b"")
            if worker is not None:
                out.append((KILL_PROCESS, worker))
        return out

    def owners(self) -> set[bytes]:
        """The processes whose end would end live actors (``owner_gone``): an idle worker
        among them is not stopped to save room."""
        return {
            actor.creation.owner
            for actor in self.actors.values()
            if not actor.detached and actor.state is not ActorState.DEAD
        }

    def owner_gone(self, owner: bytes) -> list[Instruction]:
        """The process that created these actors is gone. As in Ray, a non-detached actor
        shares its owner's fate, whoever else holds a handle to it: one that is waiting
        (for its arguments, say) or running dies now; one already ending is left to end."""
        out: list[Instruction] = []
        for actor in list(self.actors.values()):
            if actor.creation.owner != owner or actor.detached:
                continue
            if actor.state in (ActorState.DEAD, ActorState.EXITING):
                continue
            actor.no_restart = True
            out += self.die(actor, "its owner (the process that created it) died")
        return out

    # ------------------------------------------------------------------ death

    def kill(self, actor_id: bytes, no_restart: bool) -> list[Instruction]:
        """rj.kill(): stop its process (it restarts unless ``no_restart``)."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.state is ActorState.DEAD:
            return _NONE
        actor.no_restart = actor.no_restart or no_restart
        if actor.state is ActorState.KILLING:
            return _NONE  # on its way out already
        if actor.state is ActorState.EXITING:  # ending by itself: rj.kill does not wait
            worker = self.state.workers.get(actor.worker or b"")
            return [(KILL_PROCESS, worker)] if worker is not None else _NONE
        if actor.state is ActorState.PENDING or not (actor.host or actor.worker):
            if actor.no_restart:
                return self.die(actor, "it was killed by rj.kill() before it started")
            return _NONE  # nothing runs yet: it starts as planned
        actor.transition(ActorState.KILLING)
        if actor.host:  # it ends there; the peer's ActorGone brings us to host_lost
            return [(STOP_HOSTED, actor, actor.host, tuple(actor.in_flight), False)]
        worker = self.state.workers.get(actor.worker or b"")
        return [(KILL_PROCESS, worker)] if worker is not None else _NONE

    def exiting(self, actor_id: bytes, worker_id: bytes) -> None:
        """Its process called exit_actor(): it ends (for good) when the process does."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.worker != worker_id:
            return
        if actor.state in (ActorState.STARTING, ActorState.ALIVE):
            actor.transition(ActorState.EXITING)

    def process_died(self, worker: WorkerRecord, cause: str) -> list[Instruction]:
        """An actor's process here ended: restart it within max_restarts, or it dies."""
        actor = self.actors.get(worker.actor_id)
        if actor is None or actor.worker != worker.client_id or actor.state is ActorState.DEAD:
            return _NONE
        actor.worker = None
        self.state.actor_released(actor.actor_id)
        actor.gpu_ids = ()
        return self.restart_or_die(actor, f"its process died ({cause})")

    def host_lost(self, actor: ActorRecord, reason: str, restartable: bool) -> list[Instruction]:
        """The peer hosting it lost it (``restartable``: as the peer saw it), or died."""
        if not restartable and actor.state is not ActorState.KILLING:
            actor.no_restart = True
        actor.host, actor.host_node = "", b""
        return self.restart_or_die(actor, reason)

    def restart_or_die(self, actor: ActorRecord, died: str) -> list[Instruction]:
        """Its process is gone (here or on a peer): within max_restarts it is placed again
        and its calls in flight run again within max_task_retries; else it dies."""
        if actor.state is ActorState.EXITING:
            reason = actor.exit_reason or "it exited on purpose (exit_actor() was called)"
        elif actor.state is ActorState.KILLING:
            reason = "it was killed by rj.kill()"
        else:
            reason = died
        max_restarts = int(actor.options.get("max_restarts") or 0)
        restartable = (
            actor.state is not ActorState.EXITING
            and not actor.no_restart
            and (max_restarts < 0 or actor.restarts < max_restarts)
            and (actor.refs > 0 or actor.detached)
        )
        if not restartable:
            return self.die(actor, reason)
        actor.restarts += 1
        out: list[Instruction] = []
        retried = []
        for task in actor.in_flight.values():
            if task.state is TaskState.CANCELLED:  # rj.cancel asked for it to stop
                out.append(self.fail_call(task, cancelled_error(task)))
            elif task.retry():
                task.worker = None
                task.transition(TaskState.READY)
                retried.append(task)
                out.append((UNPIN_CALL, task))
            else:
                error = ActorDiedError(
                    f"The actor {actor.class_name} died while running {task.name!r}: {reason}. "
                    f"It is being restarted ({actor.restarts}/{max_restarts}); the call was not "
                    f"retried (max_task_retries={task.max_retries})."
                )
                error.actor_id = actor.actor_id.hex()  # Ray's attribute (travels with the pickle)
                out.append(self.fail_call(task, pickle.dumps(error, protocol=5)))
        actor.in_flight.clear()
        actor.requeue(retried)
        actor.transition(ActorState.PENDING)
        actor.creation.transition(TaskState.READY)
        self.pending.add(actor.actor_id)
        return out

    def die(self, actor: ActorRecord, reason: str, graceful: bool = False) -> list[Instruction]:
        """For good: every waiting call fails with ActorDiedError naming the reason
        (``graceful``: a peer hosting it is asked to let it end itself, not to kill it)."""
        error = ActorDiedError(
            f"The actor {actor.class_name} ({actor.actor_id.hex()[:12]}) is dead: {reason}"
        )
        error.actor_id = actor.actor_id.hex()  # Ray's attribute (travels with the pickle)
        actor.death_error = pickle.dumps(error, protocol=5)
        restartable = not actor.no_restart and actor.state is not ActorState.EXITING
        out: list[Instruction] = [(TELL_HOME, actor, reason, restartable)]
        if actor.host:
            out.append((STOP_HOSTED, actor, actor.host, tuple(actor.in_flight), graceful))
            actor.host, actor.host_node = "", b""
        self.state.actor_released(actor.actor_id)  # if its process held a slot here
        actor.gpu_ids = ()
        worker = self.state.workers.get(actor.worker or b"")
        if actor.state in HAS_PROCESS and worker is not None:
            out.append((KILL_PROCESS, worker))
        actor.worker = None
        actor.transition(ActorState.DEAD)
        for task in [*actor.in_flight.values(), *actor.queued_calls()]:
            if task.state not in (TaskState.FINISHED, TaskState.FAILED):
                out.append(self.fail_call(task, actor.death_error))
        actor.in_flight.clear()
        actor.calls.clear()
        named_detached = False
        if self.named.get((actor.namespace, actor.name)) == actor.actor_id:
            del self.named[(actor.namespace, actor.name)]
            named_detached = actor.detached
        self.pending.discard(actor.actor_id)
        self.exit_deadlines.pop(actor.actor_id, None)
        out.append((ACTOR_ENDED, actor, named_detached))
        return out

    # ------------------------------------------------------------------ checks

    def validate(self) -> None:
        """Raise AssertionError naming the first broken invariant."""
        workers = self.state.workers
        slots = self.state.actor_slots
        processes: dict[bytes, bytes] = {}
        for actor_id, actor in self.actors.items():
            label = f"actor {actor.class_name} ({actor_id.hex()[:12]}, {actor.state.value})"
            local_process = actor.state in HAS_PROCESS and not actor.host
            if local_process:
                worker = workers.get(actor.worker or b"")
                assert worker is not None, f"{label} has no worker process"
                assert worker.actor_id == actor_id, f"{label}: its process runs another actor"
                assert actor.worker not in processes, (
                    f"{label} shares its process with {processes[actor.worker or b''].hex()}"
                )
                processes[actor.worker or b""] = actor_id
                assert actor_id in slots, f"{label} holds no resources here"
            else:
                assert actor.worker is None, f"{label} names a process"
                assert actor_id not in slots, f"{label} holds resources here"
            if actor.host:
                assert actor.state in (ActorState.ALIVE, ActorState.KILLING), (
                    f"{label} is hosted by {actor.host}"
                )
            if actor.state is ActorState.DEAD:
                assert not actor.calls and not actor.in_flight, f"{label} still has calls"
            assert (actor_id in self.pending) <= (actor.state is ActorState.PENDING), (
                f"{label} is waiting to be placed"
            )
            for caller, queue in actor.calls.items():
                assert queue, f"{label} keeps an empty queue for a caller"
                for task in queue:
                    assert task.actor_id == actor_id, f"{label} queues {task.name} of another"
                    assert task.owner == caller, f"{label} queues {task.name} under another caller"
                    assert task.state in (TaskState.WAITING, TaskState.READY, TaskState.FAILED), (
                        f"{label} queues {task.name}, which is {task.state.name}"
                    )
            for task_id, task in actor.in_flight.items():
                assert task.task_id == task_id and task.actor_id == actor_id, (
                    f"{label} has {task.name} of another in flight"
                )
                assert task.state in (TaskState.RUNNING, TaskState.CANCELLED), (
                    f"{label} has {task.name} in flight, which is {task.state.name}"
                )
                if not actor.host:
                    assert task.worker == actor.worker, f"{label}: {task.name} runs elsewhere"
        for worker in workers.values():
            runs = self.actors.get(worker.actor_id) if worker.actor_id else None
            if runs is not None and runs.state in HAS_PROCESS and not runs.host:
                assert runs.worker == worker.client_id, (
                    f"pid {worker.pid} runs actor {runs.class_name}, whose process is another"
                )
        for actor_id in self.exit_deadlines:
            ending = self.actors.get(actor_id)
            assert ending is not None and ending.state is ActorState.EXITING, (
                f"actor {actor_id.hex()[:12]} has an exit deadline but is not ending"
            )
        for (namespace, name), actor_id in self.named.items():
            named = self.actors.get(actor_id)
            assert named is not None and named.state is not ActorState.DEAD, (
                f"the name {name!r} ({namespace!r}) points at no live actor"
            )
