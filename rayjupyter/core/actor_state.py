"""A node's actors as a state machine without I/O: lifecycle, call queues, placement,
restarts and death.

``ActorTable`` is composed by ``NodeState`` (it shares its workers, resources, worker limit
and view of the peers). Events go in as method calls (created, a call admitted or ready, a
process started or died, kill, exit, the last handle released, the peer hosting it lost it)
and instructions come out, plain tuples whose first item is an opcode below;
``node_actors.NodeActors`` is the shell that starts processes, sends the messages and
signals. So every decision is tested with no process (``tests/test_actor_state.py``), and
``validate`` checks the invariants after any step.

Calls are queued per caller, each caller's in the order it made them (Ray's ordering): a
call still waiting for its arguments holds back the later calls of its own caller only.
"""

from __future__ import annotations

import enum
import pickle
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rayjupyter.core import peer_placement, worker_limit
from rayjupyter.core.exceptions import ActorDiedError
from rayjupyter.core.head import NodeInfo
from rayjupyter.core.scheduler import InvalidTransition, TaskRecord, TaskState, WorkerRecord
from rayjupyter.core.task_errors import cancelled_error, restarting_error

if TYPE_CHECKING:
    from rayjupyter.core.node_state import Instruction, NodeState


class ActorState(enum.Enum):
    PENDING = "pending"  # waiting for its arguments, for resources or for a process
    STARTING = "starting"  # its process runs __init__
    ALIVE = "alive"  # runs calls (here, or on the peer that hosts it)
    KILLING = "killing"  # rj.kill(): its process is being stopped; it restarts or dies next
    EXITING = "exiting"  # exit_actor(): its process ends by itself; it dies next
    DEAD = "dead"


#: a restarted actor's states before it runs calls again: calls without retries fail fast
RESTARTING = (ActorState.PENDING, ActorState.STARTING)


#: what leads out of each state (PENDING again: a restart, its process having died)
ACTOR_TRANSITIONS: dict[ActorState, frozenset[ActorState]] = {
    # placed (a process here, or a peer asked to host it); or it fails before it starts
    ActorState.PENDING: frozenset({ActorState.STARTING, ActorState.DEAD}),
    ActorState.STARTING: frozenset(
        {
            ActorState.ALIVE,  # __init__ returned
            ActorState.PENDING,  # its process died
            ActorState.KILLING,
            ActorState.EXITING,  # exit_actor() in __init__
            ActorState.DEAD,  # __init__ raised, or it is ended for good
        }
    ),
    ActorState.ALIVE: frozenset(
        {ActorState.PENDING, ActorState.KILLING, ActorState.EXITING, ActorState.DEAD}
    ),
    ActorState.KILLING: frozenset({ActorState.PENDING, ActorState.DEAD}),
    ActorState.EXITING: frozenset({ActorState.DEAD}),
    ActorState.DEAD: frozenset(),
}

#: states in which the actor has a process (here, or on the peer hosting it)
HAS_PROCESS = frozenset(
    {ActorState.STARTING, ActorState.ALIVE, ActorState.KILLING, ActorState.EXITING}
)

# Instructions: (opcode, ...); numbered apart from node_state's, so one shell runs both.
SPAWN_ACTOR = 31  # (SPAWN_ACTOR, actor): start its process; the shell reports ``spawned``
HOST_ACTOR = 32  # (HOST_ACTOR, actor, peer): ask that peer (NodeInfo) to run it for us
DISPATCH_CALL = 33  # (DISPATCH_CALL, task, worker): send a call to the actor's process here
FORWARD_CALL = 34  # (FORWARD_CALL, task, peer): send a call to the peer hosting the actor
KILL_PROCESS = 35  # (KILL_PROCESS, worker): SIGKILL the actor's process here
STOP_HOSTED = 36  # (STOP_HOSTED, actor, address, task_ids): its host stops it; those calls: stale
TELL_HOME = 37  # (TELL_HOME, actor, reason, restartable): it ran here for a peer: tell it
FAIL_CALL = 38  # (FAIL_CALL, task, error_blob): it is FAILED now: unpin its arguments, publish
UNPIN_CALL = 39  # (UNPIN_CALL, task): it left the process (it is queued again)
ACTOR_ENDED = 40  # (ACTOR_ENDED, actor, named_detached): forget its creation (and save file)

OPCODE_NAMES = {
    value: name
    for name, value in globals().items()
    if isinstance(value, int) and name.isupper() and not name.startswith("_")
}

HISTORY_KEPT = 8  # states an actor remembers for the error of an undeclared transition
_NONE: list[Instruction] = []  # returned (never mutated) when an event needs nothing done


@dataclass(eq=False)
class ActorRecord:
    """Everything the node knows about one actor."""

    actor_id: bytes
    class_name: str
    creation: TaskRecord  # its __init__ call; deps are held for the actor's whole life
    class_blob: bytes
    place_demand: dict[str, float]
    run_demand: dict[str, float]
    options: dict[str, Any]
    namespace: str
    state: ActorState = ActorState.PENDING
    refs: int = 0  # handles (and the creator's hold), like an object's refs
    restarts: int = 0
    worker: bytes | None = None  # its process here, while it has one
    calls: dict[bytes, deque[TaskRecord]] = field(default_factory=dict)  # per caller, in order
    in_flight: dict[bytes, TaskRecord] = field(default_factory=dict)
    gpu_ids: tuple[int, ...] = ()
    death_error: bytes = b""
    no_restart: bool = False  # rj.kill(no_restart=True), __init__ raised, group removed
    release_when_idle: bool = False  # its last handle went: it ends when its calls are done
    host: str = ""  # the peer node that runs its process ("": this node)
    placed_by_strategy: bool = False  # SPREAD/node affinity chose this node: it waits here
    host_node: bytes = b""
    pending_reason: str = ""  # why a placeable actor still waits (no worker process free)
    label: str = ""  # its instance's own __repr__ (its output's prefix, as in Ray), if any
    history: list[ActorState] = field(default_factory=list)

    @property
    def job(self) -> bytes:
        return self.creation.job

    @property
    def name(self) -> str:
        return str(self.options.get("name") or "")

    @property
    def detached(self) -> bool:
        return self.options.get("lifetime") == "detached"

    def transition(self, new: ActorState) -> None:
        if new not in ACTOR_TRANSITIONS[self.state]:
            recent = " -> ".join(s.value for s in self.history[-5:])
            raise InvalidTransition(
                f"actor {self.class_name} ({self.actor_id.hex()}): "
                f"{self.state.value} -> {new.value} is not allowed (recent: {recent or 'none'})"
            )
        self.history.append(self.state)
        del self.history[:-HISTORY_KEPT]
        self.state = new

    def handle_info(self) -> tuple[bytes, str, dict[str, Any], int]:
        """What a process needs to build a handle: id, class name, method table, and the
        limit of pending calls per caller (``max_pending_calls``, -1: none)."""
        limit = int(self.options.get("max_pending_calls", -1))
        return self.actor_id, self.class_name, dict(self.options.get("methods") or {}), limit

    # ------------------------------------------------------------------ call queues

    def enqueue(self, task: TaskRecord) -> None:
        queue = self.calls.get(task.owner)
        if queue is None:
            queue = self.calls[task.owner] = deque()
        queue.append(task)

    def queued(self) -> int:
        return sum(len(queue) for queue in self.calls.values())

    @property
    def busy(self) -> bool:
        """A call runs or waits (calls that failed while queued do not count)."""
        if self.in_flight:
            return True
        return any(task.state is not TaskState.FAILED for task in self.queued_calls())

    def queued_calls(self) -> Iterator[TaskRecord]:
        for queue in self.calls.values():
            yield from queue

    def take_ready_calls(self) -> list[TaskRecord]:
        """The calls that may go now, each caller's in its order: a call still waiting for
        its arguments holds back the ones behind it from the same caller; calls cancelled
        while queued are dropped."""
        taken: list[TaskRecord] = []
        for caller in list(self.calls):
            queue = self.calls[caller]
            while queue:
                state = queue[0].state
                if state is TaskState.FAILED:
                    queue.popleft()
                elif state is TaskState.READY:
                    taken.append(queue.popleft())
                else:
                    break
            if not queue:
                del self.calls[caller]
        return taken

    def requeue(self, tasks: list[TaskRecord]) -> None:
        """Calls to run again (after a restart) go first, each caller's in its order."""
        for task in reversed(tasks):
            queue = self.calls.get(task.owner)
            if queue is None:
                queue = self.calls[task.owner] = deque()
            queue.appendleft(task)

    def drop(self, task: TaskRecord) -> None:
        queue = self.calls.get(task.owner)
        if queue is not None and task in queue:
            queue.remove(task)
            if not queue:
                del self.calls[task.owner]


class ActorTable:
    """The node's actors: names, placement, call queues, restarts and death."""

    def __init__(self, state: NodeState) -> None:
        self.state = state
        self.actors: dict[bytes, ActorRecord] = {}  # every actor this node is home to
        self.named: dict[tuple[str, str], bytes] = {}  # (namespace, name) -> live actor id
        self.pending: set[bytes] = set()  # ready to be placed (arguments there)

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
        if not task.max_retries and actor.restarts and actor.state in RESTARTING:
            return [self.fail_call(task, restarting_error(task, actor.actor_id))]  # as Ray
        task.job, task.namespace = actor.job, actor.namespace
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

    def settle_idle(self, actor_id: bytes) -> list[Instruction]:
        """After a call ended: an actor whose handles are all gone ends once it is idle."""
        actor = self.actors.get(actor_id)
        if actor is None or not actor.release_when_idle or actor.state is ActorState.DEAD:
            return _NONE
        if actor.busy:
            return _NONE
        return self.die(actor, "all handles to it went out of scope")

    def released(self, actor: ActorRecord) -> list[Instruction]:
        """One handle fewer; a non-detached actor ends when none is left (once idle)."""
        actor.refs -= 1
        if actor.refs > 0 or actor.detached or actor.state is ActorState.DEAD:
            return _NONE
        if actor.busy:
            actor.release_when_idle = True
            return _NONE
        return self.die(actor, "all handles to it went out of scope")

    # ------------------------------------------------------------------ death

    def kill(self, actor_id: bytes, no_restart: bool) -> list[Instruction]:
        """rj.kill(): stop its process (it restarts unless ``no_restart``)."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.state is ActorState.DEAD:
            return _NONE
        actor.no_restart = actor.no_restart or no_restart
        if actor.state in (ActorState.KILLING, ActorState.EXITING):
            return _NONE  # on its way out already
        if actor.state is ActorState.PENDING or not (actor.host or actor.worker):
            if actor.no_restart:
                return self.die(actor, "it was killed by rj.kill() before it started")
            return _NONE  # nothing runs yet: it starts as planned
        actor.transition(ActorState.KILLING)
        if actor.host:  # it ends there; the peer's ActorGone brings us to host_lost
            return [(STOP_HOSTED, actor, actor.host, tuple(actor.in_flight))]
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
            reason = "it exited on purpose (exit_actor() was called)"
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

    def die(self, actor: ActorRecord, reason: str) -> list[Instruction]:
        """For good: every waiting call fails with ActorDiedError naming the reason."""
        error = ActorDiedError(
            f"The actor {actor.class_name} ({actor.actor_id.hex()[:12]}) is dead: {reason}"
        )
        error.actor_id = actor.actor_id.hex()  # Ray's attribute (travels with the pickle)
        actor.death_error = pickle.dumps(error, protocol=5)
        restartable = not actor.no_restart and actor.state is not ActorState.EXITING
        out: list[Instruction] = [(TELL_HOME, actor, reason, restartable)]
        if actor.host:
            out.append((STOP_HOSTED, actor, actor.host, tuple(actor.in_flight)))
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
        for (namespace, name), actor_id in self.named.items():
            named = self.actors.get(actor_id)
            assert named is not None and named.state is not ActorState.DEAD, (
                f"the name {name!r} ({namespace!r}) points at no live actor"
            )
