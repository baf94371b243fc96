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

from rayjupyter.core import state_names as _names

# the states' and kinds' names (defined in state_names.py), here too: every reader finds
# them here (the aliases' comments are the TypeScript models' doc comments)

#: Ray's names for the states a task goes through (those this engine reaches): waiting for
#: its arguments, waiting for a worker (also when sent ahead to a busy one), running, done.
TaskStateName = _names.TaskStateName
PENDING_ARGS_AVAIL = _names.PENDING_ARGS_AVAIL
PENDING_NODE_ASSIGNMENT = _names.PENDING_NODE_ASSIGNMENT
RUNNING = _names.RUNNING
FINISHED = _names.FINISHED
FAILED = _names.FAILED
PENDING_STATES = _names.PENDING_STATES
TASK_STATES = _names.TASK_STATES
#: Ray's names for an actor's states
ActorStateName = _names.ActorStateName
#: the kinds of rows ``ListState`` answers with
StateKind = _names.StateKind
STATE_KINDS = _names.STATE_KINDS
#: Ray's job states (``JobStatus``): a submitted job waits for its process, runs, then ends
#: stopped (``stop_job``), succeeded (exit code 0) or failed
JobStatusName = _names.JobStatusName
#: a job submitted through the Jobs API, or a driver that connected by itself
JobTypeName = _names.JobTypeName


class Row:
    """What every state row offers beside its fields, as Ray's state rows do: ``row["name"]``
    and ``row.get("name")`` read a field, ``row.asdict()`` gives them all."""

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def asdict(self) -> dict[str, Any]:
        """The fields, then the properties that give Ray's other names for them."""
        fields: dict[str, Any] = dataclasses.asdict(self)  # type: ignore[call-overload]
        for klass in type(self).__mro__:
            for name, value in vars(klass).items():
                if isinstance(value, property) and name not in fields:
                    fields[name] = getattr(self, name)
        return fields

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]


@dataclass(frozen=True)
class NodeRow(Row):
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

    # Ray's state API (``list_nodes``) names the same facts differently: both work here

    @property
    def node_id(self) -> str:
        return self.NodeID

    @property
    def node_ip(self) -> str:
        return self.NodeManagerAddress

    @property
    def state(self) -> str:
        return "ALIVE" if self.Alive else "DEAD"

    @property
    def resources_total(self) -> dict[str, float]:
        return self.Resources

    @property
    def start_time_ms(self) -> int:
        return int(self.StartTime * 1000)


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
    directory: str = "/dev/shm"  # the object files' folder: on disk if /dev/shm was too small
    note: str = ""  # why that directory and size; "" when the store simply fits /dev/shm


@dataclass(frozen=True)
class MachineUsage:
    """A machine's CPU and memory, sampled when the status was taken: the head's (psutil) on
    our runtime; on Ray, each node's metrics agent, and the cluster's mean CPU and summed memory."""

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
    # our runtime samples only the head's machine (``machine``); Ray's metrics agents give each
    node_machines: dict[str, MachineUsage] = dataclasses.field(  # node id (hex) -> its machine
        default_factory=dict
    )

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
class TaskRow(Row):
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
    error_type: str | None = None  # Ray's name of why it failed, once failed
    creation_time_ms: int | None = None  # Ray's names of the three times above, unix ms
    start_time_ms: int | None = None
    end_time_ms: int | None = None


@dataclass(frozen=True)
class ActorRow(Row):
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
class ObjectRow(Row):
    """One object the node tracks."""

    object_id: str  # hex
    object_size: int  # bytes
    reference_count: int  # holds: refs in processes, tasks using it, objects containing it
    ready: bool
    is_error: bool
    where: Literal["shared memory", "inline"]
    spilled: bool

    @property
    def task_status(self) -> str:
        """Ray's name for where the task making it is: done, or not yet."""
        return "FINISHED" if self.ready else "PENDING_NODE_ASSIGNMENT"

    @property
    def call_site(self) -> str:
        return "disabled"  # as Ray without RAY_record_ref_creation_sites

    @property
    def reference_type(self) -> str:
        return "LOCAL_REFERENCE" if self.reference_count else "UNKNOWN_STATUS"


@dataclass(frozen=True)
class JobRow(Row):
    """One job in Ray's ``JobDetails`` names: submitted through the Jobs API (its entrypoint
    runs on the head) or a driver that connected by itself."""

    type: JobTypeName
    job_id: str | None  # hex of the driver's job; a submission's, once its driver connected
    submission_id: str | None  # the Jobs API's id ("raysubmit_..."); None for a plain driver
    status: JobStatusName
    entrypoint: str  # the shell command of a submission ("" for a plain driver)
    message: str | None  # what happened, in words
    error_type: str | None  # why it failed, once failed
    start_time: int | None  # unix ms
    end_time: int | None  # unix ms, once ended
    metadata: dict[str, str]
    runtime_env: dict[str, Any]  # as submitted
    driver_exit_code: int | None  # the entrypoint's exit code, once ended
    driver_node_id: str | None  # hex of the node it runs on
    driver_pid: int | None  # the driver's (or the entrypoint's) process id


@dataclass(frozen=True)
class WorkerRow(Row):
    """One process of a node: a pool or actor worker, or a driver, in Ray's ``list_workers``
    names."""

    worker_id: str  # hex
    is_alive: bool
    worker_type: Literal["WORKER", "DRIVER"]
    exit_type: str | None
    node_id: str  # hex
    ip: str
    pid: int
    actor_id: str | None  # hex, for an actor's process


@dataclass(frozen=True)
class PlacementGroupRow(Row):
    """One placement group, in Ray's ``list_placement_groups`` names."""

    placement_group_id: str  # hex
    name: str
    creator_job_id: str  # hex ("" when the head does not know it)
    state: Literal["PENDING", "CREATED", "REMOVED", "RESCHEDULING"]
    strategy: str
    is_detached: bool
    bundles: list[dict[str, Any]]  # bundle_index, node_id, unit_resources


#: a row of any kind ``ListState`` answers with
StateRow = TaskRow | ActorRow | ObjectRow | NodeRow | JobRow | WorkerRow


@dataclass(frozen=True)
class WorkerLogLines(Row):
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
