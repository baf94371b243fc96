"""One actor as the node knows it: its states, their transitions, and its call queues.

Kept apart from ``actor_state`` (the ``ActorTable`` that decides) so each stays small; the
table's module re-exports these names.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rayjupyter.core.scheduler import InvalidTransition, TaskRecord, TaskState


class ActorState(enum.Enum):
    PENDING = "pending"  # waiting for its arguments, for resources or for a process
    STARTING = "starting"  # its process runs __init__
    ALIVE = "alive"  # runs calls (here, or on the peer that hosts it)
    KILLING = "killing"  # rj.kill(): its process is being stopped; it restarts or dies next
    # exit_actor(), or asked to end (its handles all went): its process ends by itself,
    # running __ray_shutdown__ and atexit handlers; it dies next
    EXITING = "exiting"
    DEAD = "dead"


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

HISTORY_KEPT = 8  # states an actor remembers for the error of an undeclared transition


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
    exit_reason: str = ""  # why it was asked to end (EXITING without exit_actor())
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
