"""What the node tells status displays and the state API: snapshots and rows.

A mixin of the node daemon; read-only over the node's tables.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rayjupyter.core import task_events
from rayjupyter.core.scheduler import TaskState

if TYPE_CHECKING:
    from rayjupyter.core.node import Node


class NodeQueries:
    """Answers to ``status`` and ``state`` requests (mixed into ``Node``)."""

    def _node(self) -> Node:
        return self  # type: ignore[return-value]

    def status(self) -> dict[str, Any]:
        """A snapshot for status displays: resources, tasks and actors by state, the store."""
        node = self._node()
        tasks: dict[str, int] = {}
        for task in node.tasks.values():
            if task.method != "__init__":
                # a cancelled task still runs until its worker stops it
                name = "RUNNING" if task.state is TaskState.CANCELLED else task.state.name
                tasks[name] = tasks.get(name, 0) + 1
        # a task sent ahead to a busy worker (prefetch) waits there: it is queued, not running
        prefetched = sum(1 for w in node.workers.values() if w.prefetched is not None)
        if prefetched:
            tasks["RUNNING"] -= prefetched
            tasks["READY"] = tasks.get("READY", 0) + prefetched
        actors: dict[str, int] = {}
        for actor in node.actors.values():
            actors[actor.state.name] = actors.get(actor.state.name, 0) + 1
        return {
            "nodes": node.head.node_table(),
            "total": node.head.cluster_resources(),
            "available": self._available_everywhere(),
            "tasks": tasks,
            "actors": actors,
            "workers": sum(1 for w in node.workers.values() if not w.actor_id),
            "store": node.store.stats(),
            "drivers": len(node.drivers()),
            # pids of drivers on this machine: which kernel is attached (over a Unix socket,
            # which names no peer the way a TCP connection does)
            "driver_pids": [node.clients[c].pid for c in node.drivers() if c in node.channels],
            "machine": node._machine_usage(),
        }

    def _available_everywhere(self) -> dict[str, float]:
        """Free resources of every live node: ours now, peers' as of their last heartbeat."""
        node = self._node()
        free = node.free_resources()
        for info in node.head.nodes.values():
            if info.alive and info.node_id != node.node_id:
                for key, value in info.available.items():
                    free[key] = free.get(key, 0.0) + max(value, 0.0)
        return free

    def _machine_usage(self) -> dict[str, float]:
        """CPU and memory of this machine now (psutil), for resource charts."""
        import psutil

        memory = psutil.virtual_memory()
        return {
            "cpu_percent": psutil.cpu_percent(interval=None),
            "memory_total": float(memory.total),
            "memory_used": float(memory.total - memory.available),
            "time": time.time(),
        }

    def state_rows(self, kind: str, filters: list[tuple[str, str, Any]], limit: int) -> Any:
        """Rows for the state API (``rj.util.state.list_*``), filtered, at most ``limit``."""
        node = self._node()
        rows: list[dict[str, Any]]
        if kind == "tasks":
            rows = [e.row(node.node_id) for e in node.events.events.values()]
        elif kind == "actors":
            rows = [node.actor_row(a) for a in node.actors.values()]
        elif kind == "objects":
            rows = [
                {
                    "object_id": oid.hex(),
                    "object_size": e.size,
                    "reference_count": e.refs,
                    "ready": e.ready,
                    "is_error": e.is_error,
                    "where": "shared memory" if e.in_store else "inline",
                    "spilled": e.in_store and node.store.is_spilled(oid),
                }
                for oid, e in node.objects.items()
            ]
        elif kind == "nodes":
            rows = node.head.node_table()
        elif kind == "jobs":
            rows = [
                {"job_id": c.hex(), "driver_pid": info.pid, "status": "RUNNING"}
                for c, info in node.clients.items()
                if info.kind == "driver"
            ]
        else:
            return ValueError(f"unknown state kind {kind!r}")
        matching = [row for row in rows if task_events.matches(row, filters)]
        return matching[-limit:] if kind == "tasks" else matching[:limit]
