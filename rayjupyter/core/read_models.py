"""What the node answers to queries, defined once: the status snapshot and the state rows.

The node builds these (``node_queries.py``) and sends them in ``Reply`` to the typed query
messages of ``protocol.py``; every reader (the CLI, the cluster repr, the notebook's charts,
the dashboard, the server extension, ``rj.util.state``) reads these fields instead of
guessing at dict keys, and ``python -m rayjupyter.server.typescript`` turns them into the
lab extension's TypeScript types. Rows keep Ray's field names (``list_tasks``,
``list_actors``, ``ray.nodes()``) so that ``dataclasses.asdict`` of a row is what Ray shows.

Task states use Ray's vocabulary everywhere (``TaskStateName``); the engine's own enums
are mapped onto it in one place, ``node_queries.TASK_STATE_NAMES``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

#: Ray's names for the states a task goes through (those this engine reaches): waiting for
#: its arguments, waiting for a worker (also when sent ahead to a busy one), running, done.
TaskStateName = Literal[
    "PENDING_ARGS_AVAIL",
    "PENDING_NODE_ASSIGNMENT",
    "RUNNING",
    "FINISHED",
    "FAILED",
]
PENDING_ARGS_AVAIL: TaskStateName = "PENDING_ARGS_AVAIL"
PENDING_NODE_ASSIGNMENT: TaskStateName = "PENDING_NODE_ASSIGNMENT"
RUNNING: TaskStateName = "RUNNING"
FINISHED: TaskStateName = "FINISHED"
FAILED: TaskStateName = "FAILED"
#: live states that are not running yet, in the order a task goes through them
PENDING_STATES: tuple[TaskStateName, ...] = (PENDING_ARGS_AVAIL, PENDING_NODE_ASSIGNMENT)
#: every state, in the order a task goes through them (displays sort by it)
TASK_STATES: tuple[TaskStateName, ...] = (*PENDING_STATES, RUNNING, FINISHED, FAILED)

#: Ray's names for an actor's states
ActorStateName = Literal["PENDING_CREATION", "RESTARTING", "ALIVE", "DEAD"]

#: the kinds of rows ``ListState`` answers with
StateKind = Literal["tasks", "actors", "objects", "nodes", "jobs"]
STATE_KINDS: tuple[StateKind, ...] = ("tasks", "actors", "objects", "nodes", "jobs")


@dataclass(frozen=True)
class NodeRow:
    """One node, in Ray's ``ray.nodes()`` names."""

    NodeID: str  # hex
    Alive: bool
    NodeManagerAddress: str  # host
    NodeManagerPort: int
    Resources: dict[str, float]  # CPU, GPU and custom: counts; object_store_memory: bytes
    Available: dict[str, float]  # free now (peers: as of their last heartbeat), same units
    StartTime: float  # unix seconds

    @property
    def address(self) -> str:
        """host:port of the node daemon."""
        return f"{self.NodeManagerAddress}:{self.NodeManagerPort}"


@dataclass(frozen=True)
class StoreStats:
    """The node's shared-memory object store."""

    capacity: int  # bytes
    used_bytes: int
    spilled_bytes: int
    num_objects: int
    num_in_memory: int
    num_spilled: int
    num_pinned: int
    spill_count: int  # objects spilled to disk since start
    restore_count: int  # objects read back from disk since start


@dataclass(frozen=True)
class MachineUsage:
    """The head machine's CPU and memory (psutil), sampled when the status was taken."""

    cpu_percent: float  # 0-100, all cores together
    memory_total: float  # bytes
    memory_used: float  # bytes
    time: float  # unix seconds


@dataclass(frozen=True)
class NodeStatus:
    """A snapshot of the whole cluster as the node sees it (``GetStatus``)."""

    nodes: list[NodeRow]
    total: dict[str, float]  # resources of the live nodes (object_store_memory in bytes)
    available: dict[str, float]  # what is free now
    tasks: dict[str, int]  # live tasks by state (TaskStateName), actors' __init__ left out
    actors: dict[str, int]  # actors by state (ActorStateName)
    workers: int  # pool worker processes (actors' processes not counted)
    drivers: int  # connected drivers (notebooks, scripts)
    driver_pids: list[int]  # pids of the drivers attached from the head's own machine
    store: StoreStats
    machine: MachineUsage

    @property
    def alive_nodes(self) -> list[NodeRow]:
        return [node for node in self.nodes if node.Alive]

    @property
    def tasks_running(self) -> int:
        return self.tasks.get(RUNNING, 0)

    @property
    def tasks_pending(self) -> int:
        """Live tasks not running yet: waiting for their arguments or for a worker."""
        return sum(self.tasks.get(state, 0) for state in PENDING_STATES)

    def used(self, resource: str) -> float:
        """How much of a resource is in use now (never negative)."""
        total = self.total.get(resource, 0.0)
        return max(0.0, total - self.available.get(resource, total))


@dataclass(frozen=True)
class TaskRow:
    """One task or actor call, in Ray's ``list_tasks`` names."""

    task_id: str  # hex
    name: str
    func_or_class_name: str
    state: TaskStateName
    job_id: str  # hex: the submitting driver's job
    actor_id: str | None  # hex, for actor calls
    type: Literal["NORMAL_TASK", "ACTOR_TASK"]
    node_id: str  # hex
    worker_pid: int | None  # once started
    attempt_number: int  # 0 for the first try
    submitted_at: float  # unix seconds
    start_time: float | None  # unix seconds, once started
    end_time: float | None  # unix seconds, once finished or failed


@dataclass(frozen=True)
class ActorRow:
    """One actor, in Ray's ``list_actors`` names."""

    actor_id: str  # hex
    class_name: str
    state: ActorStateName
    name: str  # "" for an unnamed actor
    ray_namespace: str
    job_id: str  # hex
    pid: int | None  # its process, while it has one
    node_id: str  # hex
    num_restarts: int
    is_detached: bool
    death_cause: str | None
    pending_reason: str | None = None  # why a placeable actor waits (no worker process free)


@dataclass(frozen=True)
class ObjectRow:
    """One object the node tracks."""

    object_id: str  # hex
    object_size: int  # bytes
    reference_count: int  # holds: refs in processes, tasks using it, objects containing it
    ready: bool
    is_error: bool
    where: Literal["shared memory", "inline"]
    spilled: bool


@dataclass(frozen=True)
class JobRow:
    """One connected driver (a job, in Ray's terms)."""

    job_id: str  # hex
    driver_pid: int
    status: Literal["RUNNING"]


#: a row of any kind ``ListState`` answers with
StateRow = TaskRow | ActorRow | ObjectRow | NodeRow | JobRow


@dataclass(frozen=True)
class WorkerLogLines:
    """A worker process's recent output (``GetWorkerLogs``)."""

    pid: int
    name: str  # what it ran last (a task's name, or an actor's class)
    lines: list[tuple[float, int, str]]  # (unix seconds, 1 stdout or 2 stderr, text), oldest first


@dataclass(frozen=True)
class NamedActor:
    """A live named actor (``ListNamedActors``)."""

    name: str
    namespace: str


def as_dict(row: Any) -> dict[str, Any]:
    """A read model as a plain dict (nested models too): Ray's state API hands out dicts."""
    return dataclasses.asdict(row)


def matches(
    row: Any, filters: list[tuple[str, str, Any]] | tuple[tuple[str, str, Any], ...]
) -> bool:
    """Ray's state-API filters: (key, "=" or "!=", value); values compare as strings."""
    for key, op, value in filters:
        have = str(getattr(row, key, None))
        if op == "=" and have != str(value):
            return False
        if op == "!=" and have == str(value):
            return False
    return True
