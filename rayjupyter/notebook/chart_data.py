"""The numbers behind the resource charts, as rows to stream: no bokeh, no I/O.

``sample`` turns one node status snapshot into one row per time chart. ``TaskStream``
turns this driver's tasks into bars: the node does not report per-task start times or
workers yet, so a task's bar is estimated, placed on the CPU slot that freed up first
after it was submitted and ending when its result was seen.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping
from typing import Any

from rayjupyter.core.read_models import NodeStatus

# Category10: functions get colours in the order they first show up
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
MIB = 2**20


def colour(name: str, taken: dict[str, str]) -> str:
    """The colour of a function: the next unused one when it first shows up."""
    if name not in taken:
        taken[name] = PALETTE[len(taken) % len(PALETTE)]
    return taken[name]


def sample(status: NodeStatus, now: float | None = None) -> dict[str, dict[str, list[Any]]]:
    """One new row per time chart from a status snapshot; times in ms (bokeh's datetime)."""
    machine = status.machine
    at = float(machine.time or now or time.time()) * 1000.0
    total_memory = machine.memory_total
    memory = 100.0 * machine.memory_used / total_memory if total_memory else 0.0
    store = status.store
    cpus = float(status.total.get("CPU", 0.0))
    return {
        "usage": {
            "time": [at],
            "cpu": [machine.cpu_percent],
            "memory": [memory],
            "cpu_slots": [100.0 * status.used("CPU") / cpus if cpus else 0.0],
        },
        "store": {
            "time": [at],
            "used": [store.used_bytes / MIB],
            "capacity": [store.capacity / MIB],
            "spilled": [store.spilled_bytes / MIB],
        },
        "tasks": {
            "time": [at],
            "running": [status.tasks_running],
            "pending": [status.tasks_pending],
        },
    }


class TaskStream:
    """Bars for this driver's finished tasks: one row per CPU slot, coloured by function."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self._free = [(0.0, slot) for slot in range(self.slots)]  # heap of (free at, slot)
        self._pending: dict[bytes, tuple[str, float]] = {}
        self.colours: dict[str, str] = {}

    def submitted(self, tasks: list[tuple[bytes, str, float]]) -> None:
        for object_id, name, at in tasks:
            self._pending[object_id] = (name, at)

    def finished(self, done: Mapping[bytes, bool], now: float) -> dict[str, list[Any]]:
        """Rows for tasks whose results arrived: done maps object id -> failed?

        Tasks seen finishing in one poll are dealt to the slots that freed first, and each
        slot's share of the time since it freed is split between its tasks, in order.
        """
        rows: dict[str, list[Any]] = {
            "start": [],
            "end": [],
            "row": [],
            "name": [],
            "colour": [],
            "state": [],
        }
        ended = sorted((at, oid, name) for oid, (name, at) in self._pending.items() if oid in done)
        if not ended:
            return rows
        order = [heapq.heappop(self._free) for _ in range(self.slots)]
        shares: list[list[tuple[float, bytes, str]]] = [[] for _ in order]
        for index, task in enumerate(ended):
            shares[index % len(order)].append(task)
        for (free_at, slot), tasks in zip(order, shares, strict=True):
            heapq.heappush(self._free, (now if tasks else free_at, slot))
            if not tasks:
                continue
            begin = min(max(free_at, tasks[0][0]), now)
            step = (now - begin) / len(tasks)
            for position, (submitted, object_id, name) in enumerate(tasks):
                del self._pending[object_id]
                start = min(max(begin + position * step, submitted), now)
                rows["start"].append(start * 1000.0)
                rows["end"].append(min(begin + (position + 1) * step, now) * 1000.0)
                rows["row"].append(slot + 1)
                rows["name"].append(name)
                rows["colour"].append(colour(name, self.colours))
                rows["state"].append("failed" if done[object_id] else "finished")
        return rows

    @property
    def waiting(self) -> list[bytes]:
        return list(self._pending)
