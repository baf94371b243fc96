"""What the node answers to the typed queries of ``protocol.py``: status and state rows.

A mixin of the node daemon; read-only over the node's tables. ``ANSWERS`` routes each query
message by its type to the method that answers it; every answer is a read model of
``read_models.py``. The engine's task states are named in Ray's words here and only here
(``TASK_STATE_NAMES``).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rayjupyter.core import protocol as P
from rayjupyter.core.node_actors import ActorRecord, ActorState
from rayjupyter.core.read_models import (
    PENDING_ARGS_AVAIL,
    PENDING_NODE_ASSIGNMENT,
    RUNNING,
    STATE_KINDS,
    ActorRow,
    ActorStateName,
    JobRow,
    MachineUsage,
    NamedActor,
    NodeRow,
    NodeStatus,
    ObjectRow,
    StateRow,
    StoreStats,
    TaskStateName,
    WorkerLogLines,
    matches,
)
from rayjupyter.core.scheduler import TaskState

if TYPE_CHECKING:
    from rayjupyter.core.node import Node

#: the engine's task states (scheduler.TaskState) in Ray's vocabulary; a task sent ahead to
#: a busy worker (prefetched) is RUNNING to the engine but still waits for a worker: it
#: counts as PENDING_NODE_ASSIGNMENT, as the task event log has it until it starts
TASK_STATE_NAMES: dict[TaskState, TaskStateName] = {
    TaskState.WAITING: PENDING_ARGS_AVAIL,
    TaskState.READY: PENDING_NODE_ASSIGNMENT,
    TaskState.RUNNING: RUNNING,
    # rj.cancel reached it while it ran: it still holds its worker until that stops it
    TaskState.CANCELLED: RUNNING,
    TaskState.FINISHED: "FINISHED",
    TaskState.FAILED: "FAILED",
}


def actor_state_name(actor: ActorRecord) -> ActorStateName:
    """The engine's actor state (node_actors.ActorState) in Ray's vocabulary."""
    if actor.state is ActorState.PENDING:
        return "RESTARTING" if actor.restarts else "PENDING_CREATION"
    if actor.state is ActorState.STARTING:
        return "PENDING_CREATION"
    return "ALIVE" if actor.state is ActorState.ALIVE else "DEAD"


class NodeQueries:
    """Answers to the query messages (mixed into ``Node``)."""

    def _node(self) -> Node:
        return self  # type: ignore[return-value]

    def answer(self, client: bytes, message: Any) -> Any:
        """The answer to a query message (an exception is answered too: the asker raises it)."""
        handler = ANSWERS.get(type(message))
        if handler is None:
            return ValueError(f"no answer for {type(message).__name__}")
        return handler(self, client, message)

    # ------------------------------------------------------------------ answers

    def status(self) -> NodeStatus:
        """A snapshot for status displays: resources, tasks and actors by state, the store."""
        node = self._node()
        tasks: dict[str, int] = {}
        for task in node.tasks.values():
            if task.method != "__init__":
                name = TASK_STATE_NAMES[task.state]
                tasks[name] = tasks.get(name, 0) + 1
        # a task sent ahead to a busy worker (prefetch) waits there: pending, not running
        prefetched = sum(1 for w in node.workers.values() if w.prefetched is not None)
        if prefetched:
            tasks[RUNNING] -= prefetched
            tasks[PENDING_NODE_ASSIGNMENT] = tasks.get(PENDING_NODE_ASSIGNMENT, 0) + prefetched
            if not tasks[RUNNING]:
                del tasks[RUNNING]
        actors: dict[str, int] = {}
        for actor in node.actors.values():
            state = actor_state_name(actor)
            actors[state] = actors.get(state, 0) + 1
        return NodeStatus(
            nodes=node.head.node_table(),
            total=node.head.cluster_resources(),
            available=self._available_everywhere(),
            tasks=tasks,
            actors=actors,
            workers=sum(1 for w in node.workers.values() if not w.actor_id),
            drivers=len(node.drivers()),
            # pids of drivers on this machine: which kernel is attached (over a Unix socket,
            # which names no peer the way a TCP connection does)
            driver_pids=[node.clients[c].pid for c in node.drivers() if c in node.channels],
            store=StoreStats(**node.store.stats()),
            machine=node._machine_usage(),
        )

    def available_resources(self) -> dict[str, float]:
        """Free now, fully used resources left out (as Ray), the store's free bytes added."""
        node = self._node()
        value = {k: v for k, v in self._available_everywhere().items() if v > 1e-9}
        value["object_store_memory"] = float(
            max(node.config.object_store_memory - node.store.used_bytes, 0)
        )
        return value

    def _available_everywhere(self) -> dict[str, float]:
        """Free resources of every live node: ours now, peers' as of their last heartbeat."""
        node = self._node()
        free = node.free_resources()
        for info in node.head.nodes.values():
            if info.alive and info.node_id != node.node_id:
                for key, value in info.available.items():
                    free[key] = free.get(key, 0.0) + max(value, 0.0)
        return free

    def _machine_usage(self) -> MachineUsage:
        """CPU and memory of this machine now (psutil), for resource charts."""
        import psutil

        memory = psutil.virtual_memory()
        return MachineUsage(
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_total=float(memory.total),
            memory_used=float(memory.total - memory.available),
            time=time.time(),
        )

    def state_rows(
        self, kind: str, filters: tuple[tuple[str, str, Any], ...], limit: int
    ) -> list[StateRow] | Exception:
        """Rows for the state API (``rj.util.state.list_*``), filtered, at most ``limit``."""
        node = self._node()
        rows: list[Any]
        if kind == "tasks":
            rows = [e.row(node.node_id) for e in node.events.events.values()]
        elif kind == "actors":
            rows = [node.actor_row(a) for a in node.actors.values()]
        elif kind == "objects":
            rows = [
                ObjectRow(
                    object_id=oid.hex(),
                    object_size=e.size,
                    reference_count=e.refs,
                    ready=e.ready,
                    is_error=e.is_error,
                    where="shared memory" if e.in_store else "inline",
                    spilled=e.in_store and node.store.is_spilled(oid),
                )
                for oid, e in node.objects.items()
            ]
        elif kind == "nodes":
            rows = node.head.node_table()
        elif kind == "jobs":
            rows = [
                JobRow(job_id=c.hex(), driver_pid=info.pid, status="RUNNING")
                for c, info in node.clients.items()
                if info.kind == "driver"
            ]
        else:
            return ValueError(f"unknown state kind {kind!r}: use one of {', '.join(STATE_KINDS)}")
        matching = [row for row in rows if matches(row, filters)]
        return matching[-limit:] if kind == "tasks" else matching[:limit]

    def actor_row(self, actor: ActorRecord) -> ActorRow:
        """A row shaped like Ray's ``list_actors``."""
        node = self._node()
        worker = node.workers.get(actor.worker) if actor.worker else None
        return ActorRow(
            actor_id=actor.actor_id.hex(),
            class_name=actor.class_name,
            state=actor_state_name(actor),
            name=actor.name,
            ray_namespace=actor.namespace,
            job_id=actor.job.hex(),
            pid=worker.pid if worker else None,
            node_id=(actor.host_node or node.node_id).hex(),
            num_restarts=actor.restarts,
            is_detached=actor.detached,
            death_cause=pickle.loads(actor.death_error).args[0] if actor.death_error else None,
            pending_reason=actor.pending_reason or None,
        )

    def list_named_actors(self, client: bytes, all_namespaces: bool) -> list[NamedActor]:
        """Live named actors: in the asker's namespace, or in every namespace."""
        node = self._node()
        namespace = node.context_of(client)[1]
        return [
            NamedActor(name, space)
            for (space, name), actor_id in node.named_actors.items()
            if (all_namespaces or space == namespace)
            and actor_id in node.actors
            and node.actors[actor_id].state is not ActorState.DEAD
        ]


# Each answer takes (the node, the asking client, the query message).


def _status(node: NodeQueries, client: bytes, message: P.GetStatus) -> NodeStatus:
    return node.status()


def _state(node: NodeQueries, client: bytes, m: P.ListState) -> list[StateRow] | Exception:
    return node.state_rows(m.kind, tuple(m.filters), m.limit)


def _cluster_resources(node: NodeQueries, client: bytes, m: P.GetClusterResources) -> Any:
    return node._node().head.cluster_resources()


def _available(node: NodeQueries, client: bytes, m: P.GetAvailableResources) -> Any:
    return node.available_resources()


def _nodes(node: NodeQueries, client: bytes, message: P.ListNodes) -> list[NodeRow]:
    return node._node().head.node_table()


def _store_stats(node: NodeQueries, client: bytes, message: P.GetStoreStats) -> StoreStats:
    return StoreStats(**node._node().store.stats())


def _ping(node: NodeQueries, client: bytes, message: P.Ping) -> None:
    return None  # answered after everything the client sent before it


def _task_summary(node: NodeQueries, client: bytes, message: P.GetTaskSummary) -> Any:
    return node._node().events.summary()


def _logs(node: NodeQueries, client: bytes, message: P.GetWorkerLogs) -> list[WorkerLogLines]:
    return node._node().recent_logs.snapshot(message.pid, message.lines)


def _get_actor(node: NodeQueries, client: bytes, m: P.GetActor) -> Any:
    return node._node().lookup_actor(client, m.name, m.namespace)


def _named_actors(node: NodeQueries, client: bytes, m: P.ListNamedActors) -> list[NamedActor]:
    return node.list_named_actors(client, m.all_namespaces)


#: which function answers each query message (protocol.QUERIES)
ANSWERS: dict[type, Callable[[NodeQueries, bytes, Any], Any]] = {
    P.GetStatus: _status,
    P.ListState: _state,
    P.GetClusterResources: _cluster_resources,
    P.GetAvailableResources: _available,
    P.ListNodes: _nodes,
    P.GetStoreStats: _store_stats,
    P.Ping: _ping,
    P.GetTaskSummary: _task_summary,
    P.GetWorkerLogs: _logs,
    P.GetActor: _get_actor,
    P.ListNamedActors: _named_actors,
}
assert set(ANSWERS) == set(P.QUERIES), "every query has an answer"
