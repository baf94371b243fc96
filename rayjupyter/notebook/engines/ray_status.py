"""Ray's cluster facts as our read model (``NodeStatus``): pure functions over the plain
dicts that ``ray.nodes()``, ``ray.cluster_resources()``, ``ray.available_resources()`` and
the state API's summaries return, and each node's machine (``ray_metrics``), so the status
card, the summary and the charts draw a Ray cluster with the code that draws ours. No
``ray`` import here: tested without Ray."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rayjupyter.core.read_models import (
    PENDING_ARGS_AVAIL,
    PENDING_NODE_ASSIGNMENT,
    RUNNING,
    MachineUsage,
    NodeRow,
    NodeStatus,
    StoreStats,
    TaskStateName,
)
from rayjupyter.notebook.engines import ray_metrics

#: Ray's live task states onto our vocabulary (Ray's own names, fewer of them); finished
#: and failed tasks are history, not live work, and are left out as our status does
RAY_LIVE_TASK_STATES: dict[str, TaskStateName] = {
    "PENDING_ARGS_AVAIL": PENDING_ARGS_AVAIL,
    "PENDING_ARGS_FETCH": PENDING_ARGS_AVAIL,
    "PENDING_OBJ_STORE_MEM_AVAIL": PENDING_ARGS_AVAIL,
    "NIL": PENDING_NODE_ASSIGNMENT,
    "PENDING_NODE_ASSIGNMENT": PENDING_NODE_ASSIGNMENT,
    "SUBMITTED_TO_WORKER": PENDING_NODE_ASSIGNMENT,
    "RUNNING": RUNNING,
    "RUNNING_IN_RAY_GET": RUNNING,
    "RUNNING_IN_RAY_WAIT": RUNNING,
}


def node_rows(nodes: Sequence[Mapping[str, Any]]) -> list[NodeRow]:
    """``ray.nodes()`` rows as ours. Ray gives per-node totals, not what each has free."""
    rows = []
    for node in nodes:
        rows.append(
            NodeRow(
                NodeID=str(node.get("NodeID", "")),
                Alive=bool(node.get("Alive", False)),
                NodeManagerAddress=str(node.get("NodeManagerAddress", "")),
                NodeManagerPort=int(node.get("NodeManagerPort", 0) or 0),
                Resources={
                    k: float(v)
                    for k, v in dict(node.get("Resources", {})).items()
                    if not k.startswith("node:")
                },
                Available={},
                StartTime=float(node.get("StartTime", 0.0) or 0.0),
            )
        )
    return rows


def live_task_counts(summary: Mapping[str, Any] | None) -> dict[str, int]:
    """Live tasks by state from ``ray.util.state.summarize_tasks()`` (per-function counts)."""
    counts: dict[str, int] = {}
    for row in _summary_rows(summary):
        for state, count in dict(row.get("state_counts", {})).items():
            ours = RAY_LIVE_TASK_STATES.get(str(state))
            if ours is not None:
                counts[ours] = counts.get(ours, 0) + int(count)
    return counts


def actor_counts(summary: Mapping[str, Any] | None) -> dict[str, int]:
    """Actors by state from ``ray.util.state.summarize_actors()``."""
    counts: dict[str, int] = {}
    for row in _summary_rows(summary):
        for state, count in dict(row.get("state_counts", {})).items():
            counts[str(state)] = counts.get(str(state), 0) + int(count)
    return counts


def _summary_rows(summary: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if not summary:
        return []
    per_name = dict(summary.get("cluster", {})).get("summary", {})
    return [row for row in dict(per_name).values() if isinstance(row, Mapping)]


def node_status(
    nodes: Sequence[Mapping[str, Any]],
    total: Mapping[str, float],
    available: Mapping[str, float],
    *,
    tasks: Mapping[str, int] | None = None,
    actors: Mapping[str, int] | None = None,
    machines: Mapping[str, MachineUsage] | None = None,
    now: float | None = None,
) -> NodeStatus:
    """One snapshot. machines: each node's machine from its metrics agent (``ray_metrics``);
    the machine line is their mean CPU and summed memory, or, when no agent answered, the
    CPU slots in use with no memory. The store is the logical ``object_store_memory``."""
    total_f = {k: float(v) for k, v in total.items() if not k.startswith("node:")}
    free_f = {k: float(v) for k, v in available.items() if not k.startswith("node:")}
    capacity = int(total_f.get("object_store_memory", 0.0))
    used_store = max(0, capacity - int(free_f.get("object_store_memory", capacity)))
    cpus = total_f.get("CPU", 0.0)
    cpu_used = max(0.0, cpus - free_f.get("CPU", cpus))
    at = time.time() if now is None else now
    return NodeStatus(
        nodes=node_rows(nodes),
        total=total_f,
        available=free_f,
        tasks=dict(tasks or {}),
        actors=dict(actors or {}),
        workers=0,
        drivers=0,
        driver_pids=[],
        store=StoreStats(
            capacity=capacity,
            used_bytes=used_store,
            spilled_bytes=0,
            num_objects=0,
            num_in_memory=0,
            num_spilled=0,
            num_pinned=0,
            spill_count=0,
            restore_count=0,
        ),
        machine=_machine(machines or {}, nodes, 100.0 * cpu_used / cpus if cpus else 0.0, at),
        node_machines=dict(machines or {}),
    )


def _machine(
    machines: Mapping[str, MachineUsage],
    nodes: Sequence[Mapping[str, Any]],
    slots_percent: float,
    at: float,
) -> MachineUsage:
    live = {str(node.get("NodeID", "")) for node in nodes if node.get("Alive")}
    sampled = [usage for node_id, usage in machines.items() if node_id in live]
    if not sampled:
        return MachineUsage(cpu_percent=slots_percent, memory_total=0.0, memory_used=0.0, time=at)
    return ray_metrics.combine(sampled, at)
