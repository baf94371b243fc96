"""The JSON API's payloads, one TypedDict each (documented in README.md).

Everything is a raw number in a plain unit: bytes, seconds since the epoch (floats),
counts; never a formatted string. The JupyterLab extension's TypeScript types are checked
against these by a test, so a change here is a change of the API: keep both in step.
"""

from __future__ import annotations

from typing import Literal, TypedDict

# Ray's names for the states a task goes through (rayjupyter.core.task_events)
TaskStateName = Literal[
    "PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "RUNNING", "FINISHED", "FAILED"
]
ActorStateName = Literal["PENDING_CREATION", "RESTARTING", "ALIVE", "DEAD"]


class ErrorResponse(TypedDict):
    """Any non-200 answer: one line saying what is wrong and what to do."""

    error: str


class NodeRow(TypedDict):
    """One node, in Ray's ``ray.nodes()`` names."""

    NodeID: str  # hex
    Alive: bool
    NodeManagerAddress: str  # host
    NodeManagerPort: int
    Resources: dict[str, float]  # CPU, GPU and custom: counts; object_store_memory: bytes
    Available: dict[str, float]  # free now (peers: as of their last heartbeat), same units
    StartTime: float  # unix seconds


class StoreStats(TypedDict):
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


class MachineUsage(TypedDict):
    """The head machine's CPU and memory (psutil), sampled when the status was taken."""

    cpu_percent: float  # 0-100, all cores together
    memory_total: float  # bytes
    memory_used: float  # bytes
    time: float  # unix seconds


class StatusResponse(TypedDict):
    """``GET /api/v0/status``: a snapshot of the whole cluster."""

    session: str
    address: str  # host:port of the head node
    nodes: list[NodeRow]
    total: dict[str, float]  # resources of the live nodes (object_store_memory in bytes)
    available: dict[str, float]  # what is free now
    tasks: dict[str, int]  # live tasks by engine state: WAITING, READY, RUNNING
    actors: dict[str, int]  # actors by engine state: PENDING, STARTING, ALIVE, DEAD
    workers: int  # pool worker processes (actors' processes not counted)
    drivers: int  # connected drivers (notebooks, scripts)
    driver_pids: list[int]  # pids of the drivers attached from the head's own machine
    store: StoreStats
    machine: MachineUsage


class NodesResponse(TypedDict):
    """``GET /api/v0/nodes``."""

    nodes: list[NodeRow]


class TaskRow(TypedDict):
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


class TasksResponse(TypedDict):
    """``GET /api/v0/tasks``: the most recently submitted tasks, oldest first."""

    tasks: list[TaskRow]


class TaskSummaryResponse(TypedDict):
    """``GET /api/v0/tasks/summary``: task counts per function name, then per state."""

    summary: dict[str, dict[str, int]]  # name -> TaskStateName -> count


class ActorRow(TypedDict):
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
    pending_reason: str | None  # why a placeable actor waits (e.g. no worker process free)


class ActorsResponse(TypedDict):
    """``GET /api/v0/actors``."""

    actors: list[ActorRow]


class ObjectRow(TypedDict):
    """One object the node tracks."""

    object_id: str  # hex
    object_size: int  # bytes
    reference_count: int  # holds: refs in processes, tasks using it, objects containing it
    ready: bool
    is_error: bool
    where: Literal["shared memory", "inline"]
    spilled: bool


class ObjectsResponse(TypedDict):
    """``GET /api/v0/objects``."""

    objects: list[ObjectRow]


class JobRow(TypedDict):
    """One connected driver (a job, in Ray's terms)."""

    job_id: str  # hex
    driver_pid: int
    status: Literal["RUNNING"]


class JobsResponse(TypedDict):
    """``GET /api/v0/jobs``."""

    jobs: list[JobRow]


class LogLine(TypedDict):
    time: float  # unix seconds
    stream: Literal["stdout", "stderr"]
    text: str  # one line, without its newline


class WorkerLog(TypedDict):
    """A worker process's recent output."""

    pid: int
    name: str  # what it ran last (a task's name, or an actor's class)
    lines: list[LogLine]  # oldest first


class LogsResponse(TypedDict):
    """``GET /api/v0/logs``: the most recently heard worker last."""

    workers: list[WorkerLog]


class TraceEventArgs(TypedDict):
    task_id: str  # hex
    state: TaskStateName


class TraceEvent(TypedDict):
    """A Chrome trace "complete" event: one task's run on one worker."""

    name: str
    cat: Literal["normal_task", "actor_task"]
    ph: Literal["X"]
    ts: float  # start, microseconds since the epoch (Chrome trace's unit)
    dur: float  # microseconds
    pid: str  # "node <id>": one process lane per node
    tid: str  # "worker <pid>": one thread lane per worker
    args: TraceEventArgs


class TimelineResponse(TypedDict):
    """``GET /api/v0/timeline``: a Chrome trace (chrome://tracing, Perfetto) as a JSON object."""

    traceEvents: list[TraceEvent]
    displayTimeUnit: Literal["ms"]


#: every endpoint under /api/v0/ and the model of its answer
ENDPOINTS: dict[str, type] = {
    "status": StatusResponse,
    "nodes": NodesResponse,
    "tasks": TasksResponse,
    "tasks/summary": TaskSummaryResponse,
    "actors": ActorsResponse,
    "objects": ObjectsResponse,
    "jobs": JobsResponse,
    "logs": LogsResponse,
    "timeline": TimelineResponse,
}
