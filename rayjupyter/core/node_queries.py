"""What the node answers to the typed queries of ``protocol.py``: status and state rows.

A part of the node daemon (``Node.queries``), read-only over the tables it is given.
``ANSWERS`` routes each query message by its type to the method that answers it; every
answer is a read model of ``read_models.py``. The engine's task states are named in Ray's
words here and only here (``TASK_STATE_NAMES``).
"""

from __future__ import annotations

import operator
import pickle
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rayjupyter.core import protocol as P
from rayjupyter.core.actor_state import ActorRecord, ActorState
from rayjupyter.core.channel import Channel
from rayjupyter.core.head import HeadState
from rayjupyter.core.node_io import ClientInfo
from rayjupyter.core.node_state import NodeState
from rayjupyter.core.object_store import ObjectStore
from rayjupyter.core.scheduler import TaskState
from rayjupyter.core.state_names import (
    PENDING_ARGS_AVAIL,
    PENDING_NODE_ASSIGNMENT,
    RUNNING,
    STATE_KINDS,
    ActorStateName,
    TaskStateName,
)
from rayjupyter.core.task_events import RecentLogs, TaskEventLog

if TYPE_CHECKING:
    # imported where a query builds one: the read models' dataclasses cost a few
    # milliseconds of the node's start, and only queries need them (state_names.py)
    from rayjupyter.core.read_models import (
        ActorRow,
        JobRow,
        MachineUsage,
        NamedActor,
        NodeRow,
        NodeStatus,
        StateRow,
        StoreStats,
        WorkerLogLines,
        WorkerRow,
    )

#: the engine's task states (scheduler.TaskState) in Ray's vocabulary; a task sent ahead to
#: a busy worker (prefetched) is RUNNING to the engine but still waits for a worker: it
#: counts as PENDING_NODE_ASSIGNMENT, as the task event log has it until it starts
_STATE_OF = operator.attrgetter("state")

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
    """The engine's actor state (actor_state.ActorState) in Ray's vocabulary: an actor
    being killed or exiting is ALIVE until its process is gone, as in Ray."""
    if actor.state is ActorState.PENDING:
        return "RESTARTING" if actor.restarts else "PENDING_CREATION"
    if actor.state is ActorState.STARTING:
        return "PENDING_CREATION"
    return "DEAD" if actor.state is ActorState.DEAD else "ALIVE"


class NodeQueries:
    """Answers to the query messages, over the node's tables (shared, never copied)."""

    def __init__(
        self,
        *,
        node_id: bytes,
        object_store_memory: int,
        state: NodeState,
        actors: dict[bytes, ActorRecord],
        named_actors: dict[tuple[str, str], bytes],
        clients: dict[bytes, ClientInfo],
        channels: dict[bytes, Channel],
        objects: dict[bytes, Any],
        head: HeadState,
        store: ObjectStore,
        events: TaskEventLog,
        recent_logs: RecentLogs,
        free_resources: Callable[[], dict[str, float]],
        drivers: Callable[[], list[bytes]],
        context_of: Callable[[bytes], tuple[bytes, str, bytes | None]],
        lookup_actor: Callable[[bytes, str, str | None], Any],
        send: Callable[[bytes, Any], None],
        jobs: Any = None,  # node_jobs.NodeJobs: the head's submitted jobs
    ) -> None:
        self.node_id = node_id
        self.object_store_memory = object_store_memory
        self.tasks = state.tasks
        self.workers = state.workers
        self.actors = actors
        self.named_actors = named_actors
        self.clients = clients
        self.channels = channels
        self.objects = objects
        self.head = head
        self.store = store
        self.events = events
        self.recent_logs = recent_logs
        self.free_resources = free_resources
        self.drivers = drivers
        self.context_of = context_of
        self.lookup_actor = lookup_actor
        self.send = send
        self.jobs = jobs

    def on_query(self, client: bytes, message: Any) -> None:
        """A query of protocol.QUERIES: answered with its read model."""
        self.send(client, P.Reply(message.request_id, self.answer(client, message)))

    def answer(self, client: bytes, message: Any) -> Any:
        """The answer to a query message (an exception is answered too: the asker raises it)."""
        handler = ANSWERS.get(type(message))
        if handler is None:
            return ValueError(f"no answer for {type(message).__name__}")
        return handler(self, client, message)

    # ------------------------------------------------------------------ answers

    def status(self) -> NodeStatus:
        """A snapshot for status displays: resources, tasks and actors by state, the store."""
        from rayjupyter.core.read_models import NodeStatus, StoreStats

        # counted in C (map, attrgetter, Counter): a status must stay cheap with a million
        # tasks queued; actors' creations, which are not tasks to Ray, are taken out after
        states = Counter(map(_STATE_OF, self.tasks.values()))
        for actor in self.actors.values():
            creation = actor.creation
            if self.tasks.get(creation.task_id) is creation:
                states[creation.state] -= 1
        tasks: dict[str, int] = {}
        for state, count in states.items():
            if count > 0:
                name = TASK_STATE_NAMES[state]
                tasks[name] = tasks.get(name, 0) + count
        # a task sent ahead to a busy worker (prefetch) waits there: pending, not running
        prefetched = sum(
            1 + len(w.ahead) for w in self.workers.values() if w.prefetched is not None
        )
        if prefetched:
            tasks[RUNNING] -= prefetched
            tasks[PENDING_NODE_ASSIGNMENT] = tasks.get(PENDING_NODE_ASSIGNMENT, 0) + prefetched
            if not tasks[RUNNING]:
                del tasks[RUNNING]
        actors: dict[str, int] = {}
        for actor in self.actors.values():
            state = actor_state_name(actor)
            actors[state] = actors.get(state, 0) + 1
        return NodeStatus(
            nodes=self.head.node_table(),
            total=self.head.cluster_resources(),
            available=self._available_everywhere(),
            tasks=tasks,
            actors=actors,
            workers=sum(1 for w in self.workers.values() if not w.actor_id),
            drivers=len(self.drivers()),
            # pids of drivers on this machine: which kernel is attached (over a Unix socket,
            # which names no peer the way a TCP connection does)
            driver_pids=[self.clients[c].pid for c in self.drivers() if c in self.channels],
            store=StoreStats(
                **self.store.stats(), directory=self.store.directory, note=self.store.note
            ),
            machine=self._machine_usage(),
        )

    def available_resources(self) -> dict[str, float]:
        """Free now, fully used resources left out (as Ray), the store's free bytes added."""
        value = {k: v for k, v in self._available_everywhere().items() if v > 1e-9}
        value["object_store_memory"] = float(
            max(self.object_store_memory - self.store.used_bytes, 0)
        )
        return value

    def _available_everywhere(self) -> dict[str, float]:
        """Free resources of every live node: ours now, peers' as of their last heartbeat."""
        free = self.free_resources()
        for info in self.head.nodes.values():
            if info.alive and info.node_id != self.node_id:
                for key, value in info.available.items():
                    free[key] = free.get(key, 0.0) + max(value, 0.0)
        return free

    def _machine_usage(self) -> MachineUsage:
        """CPU and memory of this machine now (psutil), for resource charts."""
        import psutil

        from rayjupyter.core.read_models import MachineUsage

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
        from rayjupyter.core.read_models import ObjectRow, matches

        rows: list[Any]
        if kind == "tasks":
            rows = [e.row(self.node_id) for e in self.events.events.values()]
        elif kind == "actors":
            rows = [self.actor_row(a) for a in self.actors.values()]
        elif kind == "objects":
            rows = [
                ObjectRow(
                    object_id=oid.hex(),
                    object_size=e.size,
                    reference_count=e.refs,
                    ready=e.ready,
                    is_error=e.is_error,
                    where="shared memory" if e.in_store else "inline",
                    spilled=e.in_store and self.store.is_spilled(oid),
                )
                for oid, e in self.objects.items()
            ]
        elif kind == "nodes":
            rows = self.head.node_table()
        elif kind == "jobs":
            rows = self.job_rows()
        elif kind == "workers":
            rows = self.worker_rows()
        else:
            return ValueError(f"unknown state kind {kind!r}: use one of {', '.join(STATE_KINDS)}")
        matching = [row for row in rows if matches(row, filters)]
        return matching[-limit:] if kind == "tasks" else matching[:limit]

    def job_rows(self) -> list[JobRow]:
        """Submitted jobs (their drivers included), then drivers that connected by
        themselves, in Ray's ``JobDetails`` names."""
        from rayjupyter.core.read_models import JobRow

        submitted: list[JobRow] = self.jobs.rows() if self.jobs is not None else []
        theirs = {row.job_id for row in submitted if row.job_id}
        drivers = [
            JobRow(
                type="DRIVER",
                job_id=client.hex(),
                submission_id=None,
                status="RUNNING",
                entrypoint="",
                message=None,
                error_type=None,
                start_time=None,
                end_time=None,
                metadata={},
                runtime_env={},
                driver_exit_code=None,
                driver_node_id=self.node_id.hex(),
                driver_pid=info.pid,
            )
            for client, info in self.clients.items()
            if info.kind == "driver" and client.hex() not in theirs
        ]
        return [*submitted, *drivers]

    def worker_rows(self) -> list[WorkerRow]:
        """This node's worker processes and its drivers, in Ray's ``list_workers`` names."""
        from rayjupyter.core.read_models import WorkerRow

        host = self.head.nodes[self.node_id].address.rpartition(":")[0]
        rows = [
            WorkerRow(
                worker_id=worker.client_id.hex(),
                is_alive=True,
                worker_type="WORKER",
                exit_type=None,
                node_id=self.node_id.hex(),
                ip=host,
                pid=worker.pid,
                actor_id=worker.actor_id.hex() if worker.actor_id else None,
            )
            for worker in self.workers.values()
        ]
        rows += [
            WorkerRow(
                worker_id=client.hex(),
                is_alive=True,
                worker_type="DRIVER",
                exit_type=None,
                node_id=self.node_id.hex(),
                ip=host,
                pid=info.pid,
                actor_id=None,
            )
            for client, info in self.clients.items()
            if info.kind == "driver"
        ]
        return rows

    def actor_row(self, actor: ActorRecord) -> ActorRow:
        """A row shaped like Ray's ``list_actors``."""
        from rayjupyter.core.read_models import ActorRow

        worker = self.workers.get(actor.worker) if actor.worker else None
        return ActorRow(
            actor_id=actor.actor_id.hex(),
            class_name=actor.class_name,
            state=actor_state_name(actor),
            name=actor.name,
            ray_namespace=actor.namespace,
            job_id=actor.job.hex(),
            pid=worker.pid if worker else None,
            node_id=(actor.host_node or self.node_id).hex(),
            num_restarts=actor.restarts,
            is_detached=actor.detached,
            death_cause=pickle.loads(actor.death_error).args[0] if actor.death_error else None,
            pending_reason=actor.pending_reason or None,
        )

    def list_named_actors(self, client: bytes, all_namespaces: bool) -> list[NamedActor]:
        """Live named actors: in the asker's namespace, or in every namespace."""
        from rayjupyter.core.read_models import NamedActor

        namespace = self.context_of(client)[1]
        return [
            NamedActor(name, space)
            for (space, name), actor_id in self.named_actors.items()
            if (all_namespaces or space == namespace)
            and actor_id in self.actors
            and self.actors[actor_id].state is not ActorState.DEAD
        ]


# Each answer takes (the node, the asking client, the query message).


def _status(node: NodeQueries, client: bytes, message: P.GetStatus) -> NodeStatus:
    return node.status()


def _state(node: NodeQueries, client: bytes, m: P.ListState) -> list[StateRow] | Exception:
    return node.state_rows(m.kind, tuple(m.filters), m.limit)


def _cluster_resources(node: NodeQueries, client: bytes, m: P.GetClusterResources) -> Any:
    return node.head.cluster_resources()


def _available(node: NodeQueries, client: bytes, m: P.GetAvailableResources) -> Any:
    return node.available_resources()


def _nodes(node: NodeQueries, client: bytes, message: P.ListNodes) -> list[NodeRow]:
    return node.head.node_table()


def _store_stats(node: NodeQueries, client: bytes, message: P.GetStoreStats) -> StoreStats:
    from rayjupyter.core.read_models import StoreStats

    store = node.store
    return StoreStats(**store.stats(), directory=store.directory, note=store.note)


def _ping(node: NodeQueries, client: bytes, message: P.Ping) -> None:
    return None  # answered after everything the client sent before it


def _task_summary(node: NodeQueries, client: bytes, message: P.GetTaskSummary) -> Any:
    return node.events.summary()


def _logs(node: NodeQueries, client: bytes, message: P.GetWorkerLogs) -> list[WorkerLogLines]:
    return node.recent_logs.snapshot(message.pid, message.lines)


def _get_actor(node: NodeQueries, client: bytes, m: P.GetActor) -> Any:
    return node.lookup_actor(client, m.name, m.namespace)


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
