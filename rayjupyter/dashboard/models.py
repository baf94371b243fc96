"""The JSON API's payloads, one TypedDict each (documented in README.md).

Everything is a raw number in a plain unit: bytes, seconds since the epoch (floats),
counts; never a formatted string. The JupyterLab extension's TypeScript types are checked
against these by a test, so a change here is a change of the API: keep both in step.
"""

from __future__ import annotations

from typing import Literal, TypedDict

# The rows, the store's and the machine's figures are the node's read models, defined once
# in core (dataclasses, sent as objects of their fields).
from rayjupyter.core.read_models import (
    ActorRow,
    JobRow,
    MachineUsage,
    NodeRow,
    ObjectRow,
    StoreStats,
    TaskRow,
    TaskStateName,
)


class ErrorResponse(TypedDict):
    """Any non-200 answer: one line saying what is wrong and what to do."""

    error: str


class StatusResponse(TypedDict):
    """``GET /api/v0/status``: a snapshot of the whole cluster."""

    session: str
    address: str  # host:port of the head node
    nodes: list[NodeRow]
    total: dict[str, float]  # resources of the live nodes (object_store_memory in bytes)
    available: dict[str, float]  # what is free now
    tasks: dict[str, int]  # live tasks by state (TaskStateName): PENDING_ARGS_AVAIL, ...
    actors: dict[str, int]  # actors by state (ActorStateName): PENDING_CREATION, ALIVE, ...
    workers: int  # pool worker processes (actors' processes not counted)
    drivers: int  # connected drivers (notebooks, scripts)
    driver_pids: list[int]  # pids of the drivers attached from the head's own machine
    store: StoreStats
    machine: MachineUsage


class NodesResponse(TypedDict):
    """``GET /api/v0/nodes``."""

    nodes: list[NodeRow]


class TasksResponse(TypedDict):
    """``GET /api/v0/tasks``: the most recently submitted tasks, oldest first."""

    tasks: list[TaskRow]


class TaskSummaryResponse(TypedDict):
    """``GET /api/v0/tasks/summary``: task counts per function name, then per state."""

    summary: dict[str, dict[str, int]]  # name -> TaskStateName -> count


class ActorsResponse(TypedDict):
    """``GET /api/v0/actors``."""

    actors: list[ActorRow]


class ObjectsResponse(TypedDict):
    """``GET /api/v0/objects``."""

    objects: list[ObjectRow]


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
