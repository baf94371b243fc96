"""Actors on a node: placement, a process each, ordered calls, restarts, names and death.

A part of the node daemon (``Node.actor_part``) that owns the actor table. An actor's
creation is a task record whose dependencies are its ``__init__`` arguments; its calls are
task records queued per actor in submission order and sent to its process as soon as they
are ready, so a caller's calls run in the order it made them and the process never waits on
the node between two calls.
"""

from __future__ import annotations

import contextlib
import enum
import os
import pickle
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rayjupyter.core import actor_file, worker_limit
from rayjupyter.core import protocol as P
from rayjupyter.core.exceptions import ActorDiedError
from rayjupyter.core.exceptions_extra import ActorAlreadyExistsError
from rayjupyter.core.head import NodeInfo
from rayjupyter.core.node_state import NodeState, cancelled_error
from rayjupyter.core.node_workers import NodeWorkers
from rayjupyter.core.scheduler import InvalidTransition, TaskRecord, TaskState, WorkerRecord
from rayjupyter.core.task_events import TaskEventLog


class ActorState(enum.Enum):
    PENDING = "pending"  # waiting for its arguments or for resources to be placed
    STARTING = "starting"  # its process runs __init__
    ALIVE = "alive"
    DEAD = "dead"


ACTOR_TRANSITIONS: dict[ActorState, frozenset[ActorState]] = {
    ActorState.PENDING: frozenset({ActorState.STARTING, ActorState.DEAD}),
    # STARTING -> PENDING and ALIVE -> PENDING are restarts after the process died
    ActorState.STARTING: frozenset({ActorState.ALIVE, ActorState.PENDING, ActorState.DEAD}),
    ActorState.ALIVE: frozenset({ActorState.PENDING, ActorState.DEAD}),
    ActorState.DEAD: frozenset(),
}


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
    worker: bytes | None = None
    queue: deque[TaskRecord] = field(default_factory=deque)
    in_flight: dict[bytes, TaskRecord] = field(default_factory=dict)
    gpu_ids: tuple[int, ...] = ()
    death_error: bytes = b""
    killed: bool = False
    no_restart: bool = False
    exiting: bool = False
    release_when_idle: bool = False
    host: str = ""  # the peer node that runs its process ("": this node)
    placed_by_strategy: bool = False  # SPREAD/node affinity chose this node: it waits here
    host_node: bytes = b""
    pending_reason: str = ""  # why a placeable actor still waits (no worker process free)

    def next_ready_call(self) -> TaskRecord | None:
        """Take the next call that may go now: calls run in order, so one still waiting for
        its arguments holds back the ones behind it; calls cancelled while queued are dropped."""
        queue = self.queue
        while queue:
            task = queue[0]
            if task.state is TaskState.FAILED:
                queue.popleft()
                continue
            if task.state is not TaskState.READY:
                return None
            return queue.popleft()
        return None

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
            raise InvalidTransition(
                f"actor {self.class_name} ({self.actor_id.hex()}): "
                f"{self.state.value} -> {new.value} is not allowed"
            )
        self.state = new

    def handle_info(self) -> tuple[bytes, str, dict[str, Any]]:
        """What a process needs to build a handle: id, class name, method table."""
        return self.actor_id, self.class_name, dict(self.options.get("methods") or {})


class ActorHost(Protocol):
    """What the actor part asks of the node (``Node`` is one): the object table and the
    task lifecycle."""

    @property
    def is_head(self) -> bool: ...
    def context_of(self, client: bytes) -> tuple[bytes, str, bytes | None]: ...
    def hold(self, client: bytes, object_id: bytes) -> None: ...
    def send(self, client: bytes, message: Any) -> None: ...
    def admit(self, client: bytes, task: TaskRecord) -> None: ...
    def fail_task(self, task: TaskRecord, error_blob: bytes) -> None: ...
    def forget_task(self, task: TaskRecord) -> None: ...
    def unpin_deps(self, task: TaskRecord) -> None: ...
    def object_info(self, object_id: bytes, entry: Any) -> P.ObjectInfo: ...
    def dispatch(self, task: TaskRecord, worker: WorkerRecord) -> None: ...
    def set_ready(
        self,
        object_id: bytes,
        inline: bytes | None,
        size: int,
        is_error: bool,
        contained: tuple[bytes, ...],
        location: str = "",
    ) -> None: ...
    def warn_worker_limit(self, waiting: int, what: str) -> None: ...


class ActorPeers(Protocol):
    """What the actor part asks of the peers (``node_forwarding.NodeForwarding`` is one):
    actors hosted there, actors of theirs that calls made here go to."""

    actor_homes: dict[bytes, str]  # actors of other nodes that calls here go to

    def feasible_on_peer(self, demand: dict[str, float]) -> bool: ...
    def peer_nodes(self) -> list[NodeInfo]: ...
    def choose_peer(self, demand: dict[str, float], peers: list[NodeInfo]) -> NodeInfo | None: ...
    def host_actor(self, actor: ActorRecord, peer: NodeInfo) -> None: ...
    def forward_actor_calls(self, actor: ActorRecord) -> None: ...
    def release_hosted(self, actor: ActorRecord) -> None: ...
    def actor_gone_from_here(self, actor: ActorRecord, reason: str, restartable: bool) -> None: ...


class NodeActors:
    """The node's actors: their table, names, placement, calls, restarts and death."""

    def __init__(
        self,
        *,
        host: ActorHost,
        peers: ActorPeers,
        state: NodeState,
        pool: NodeWorkers,
        actors: dict[bytes, ActorRecord],
        objects: dict[bytes, Any],
        events: TaskEventLog,
        actors_file: str,
        place_actor: Callable[[ActorRecord], str],
        infeasible: Callable[[str, dict[str, float]], bool],
    ) -> None:
        self.node = host
        self.peers = peers
        self.state = state
        self.workers = state.workers
        self.tasks = state.tasks
        self.resources = state.resources
        self.worker_limit = state.limit
        self.pool = pool
        self.objects = objects
        self.events = events
        self.actors_file = actors_file  # named detached actors outlive the head there
        self.place_actor = place_actor  # SPREAD and node affinity (node_placement)
        self.infeasible = infeasible  # warns, or True: its placement group is gone
        self.actors = actors  # the actor table (the node's parts read it)
        self.named_actors: dict[tuple[str, str], bytes] = {}  # (namespace, name) -> actor id
        self.pending_actors: set[bytes] = set()  # waiting for resources to be placed

    # ------------------------------------------------------------------ creation

    def on_create_actor(self, client: bytes, message: P.CreateActor) -> None:
        job, namespace, _ = self.node.context_of(client)
        self.create_actor(client, message, job, namespace)

    def create_actor(
        self, client: bytes, message: P.CreateActor, job: bytes, namespace: str
    ) -> ActorRecord | None:
        namespace = str(message.options.get("namespace") or namespace)
        name = str(message.options.get("name") or "")
        if name:
            existing = self.named_actors.get((namespace, name))
            if existing is not None and self.actors[existing].state is not ActorState.DEAD:
                if message.options.get("get_if_exists"):
                    self.node.hold(client, existing)
                    self.node.send(
                        client, P.Reply(message.request_id, self.actors[existing].handle_info())
                    )
                else:
                    error = ActorAlreadyExistsError(
                        f"The name {name!r} (namespace={namespace!r}) is already taken by "
                        f"another actor: pick another name, kill that actor, or pass "
                        f"get_if_exists=True to get it."
                    )
                    self.node.send(client, P.Reply(message.request_id, error))
                return None
            self.named_actors[(namespace, name)] = message.actor_id
        creation = TaskRecord(
            task_id=message.actor_id[:16],
            owner=client,
            name=f"{message.class_name}.__init__",
            func_id=b"",
            args_blob=message.args_blob,
            deps=message.deps,
            nested=message.nested,
            return_ids=(),
            demand=message.place_demand,
            max_retries=0,
            retry_exceptions=False,
            actor_id=message.actor_id,
            method="__init__",
            job=job,
            namespace=namespace,
        )
        actor = ActorRecord(
            actor_id=message.actor_id,
            class_name=message.class_name,
            creation=creation,
            class_blob=message.class_blob,
            place_demand=message.place_demand,
            run_demand=message.run_demand,
            options=message.options,
            namespace=namespace,
        )
        self.actors[actor.actor_id] = actor
        self.node.hold(client, actor.actor_id)  # the creator's handle
        demand = actor.place_demand
        gone = False  # its placement group was removed
        if not self.resources.feasible(demand) and not self.peers.feasible_on_peer(demand):
            gone = self.infeasible(f"actor {actor.class_name}", demand)
        self.node.admit(client, creation)
        if gone and actor.state is not ActorState.DEAD:
            actor.no_restart = True
            self.actor_dies(actor, "its placement group was removed")
        if message.request_id:
            self.node.send(client, P.Reply(message.request_id, actor.handle_info()))
        if actor.detached and actor.name:
            self.save_detached_actors()
        return actor

    # ------------------------------------------------------------------ head restarts

    def save_detached_actors(self) -> None:
        """Named detached actors outlive the head: keep how to create them in its file."""
        path = self.actors_file
        if not path or not self.node.is_head:
            return
        kept = []
        for actor in self.actors.values():
            if not (actor.detached and actor.name) or actor.state is ActorState.DEAD:
                continue
            creation = actor.creation
            if creation.deps or creation.nested:
                continue  # its ObjectRef arguments would not survive the head (see actor_file)
            message = P.CreateActor(
                actor.actor_id,
                actor.class_blob,
                actor.class_name,
                creation.args_blob,
                (),
                (),
                actor.place_demand,
                actor.run_demand,
                actor.options,
                0,
            )
            kept.append((message, actor.job, actor.namespace, actor.restarts))
        actor_file.save(path, kept)

    def restore_detached_actors(self) -> None:
        """A head started again with its file: create its named detached actors anew."""
        path = self.actors_file
        if not path or not self.node.is_head:
            return
        for message, job, namespace, restarts in actor_file.load(path):
            actor = self.create_actor(b"", message, job, namespace)
            if actor is not None:
                actor.restarts = restarts + 1

    def actor_call_admitted(self, task: TaskRecord) -> bool:
        """A new call (or the creation) for an actor: queue it, or fail it if the actor is dead."""
        actor = self.actors.get(task.actor_id)
        if task.method == "__init__":
            return True
        if actor is None and task.actor_id in self.peers.actor_homes:
            return True  # it lives on another node: the call goes there when ready
        if actor is None or actor.state is ActorState.DEAD:
            self.node.fail_task(task, actor.death_error if actor else self._unknown_actor(task))
            return False
        task.max_retries = int(actor.options.get("max_task_retries") or 0)
        task.job, task.namespace = actor.job, actor.namespace
        actor.queue.append(task)
        return True

    def _unknown_actor(self, task: TaskRecord) -> bytes:
        error = ActorDiedError(f"No actor {task.actor_id.hex()} exists on this cluster.")
        return pickle.dumps(error, protocol=5)

    def pump_actor(self, actor_id: bytes) -> None:
        """Place a pending actor, or send its ready calls in order."""
        actor = self.actors.get(actor_id)
        if actor is None:
            return
        if actor.state is ActorState.PENDING:
            if actor.creation.state is TaskState.READY:
                self.pending_actors.add(actor_id)
            return
        if actor.host:
            if actor.state is ActorState.ALIVE:
                self.peers.forward_actor_calls(actor)
            return
        if actor.state is not ActorState.ALIVE or actor.worker not in self.workers:
            return
        worker = self.workers[actor.worker]
        while (task := actor.next_ready_call()) is not None:
            task.transition(TaskState.RUNNING)
            task.worker = worker.client_id
            actor.in_flight[task.task_id] = task
            self.node.dispatch(task, worker)

    def place_pending_actors(self) -> None:
        """Start a process for each pending actor whose placement resources are free."""
        no_process = 0
        for actor_id in list(self.pending_actors):
            actor = self.actors.get(actor_id)
            if actor is None or actor.state is not ActorState.PENDING:
                self.pending_actors.discard(actor_id)
                continue
            where = self.place_actor(actor)  # SPREAD, node affinity
            if where == "done":
                self.pending_actors.discard(actor_id)
                continue
            if where == "here" and not self.resources.fits(actor.place_demand):
                continue
            if not self.resources.fits(actor.place_demand):
                peers = self.peers.peer_nodes()
                peer = self.peers.choose_peer(actor.place_demand, peers) if peers else None
                if peer is not None:
                    self.pending_actors.discard(actor_id)
                    self.peers.host_actor(actor, peer)
                continue
            if not self.worker_limit.room(len(self.workers)):
                no_process += 1
                actor.pending_reason = (
                    f"waiting for a worker process: this node runs {self.worker_limit.limit}, "
                    f"its limit ({worker_limit.SETTING})"
                )
                continue
            actor.pending_reason = ""
            self.pending_actors.discard(actor_id)
            actor.gpu_ids = self.state.actor_placed(actor.actor_id, actor.run_demand)
            actor.creation.transition(TaskState.RUNNING)
            actor.transition(ActorState.STARTING)
            actor.worker = self.pool.spawn_worker(actor_id=actor_id)
        if no_process:
            self.node.warn_worker_limit(no_process, "actors")

    def start_actor_in(self, worker: WorkerRecord) -> None:
        """The actor's process connected: send it the class and the arguments."""
        actor = self.actors.get(worker.actor_id)
        if actor is None or actor.worker != worker.client_id:
            return
        creation = actor.creation
        deps = []
        for object_id in creation.deps:
            entry = self.objects[object_id]
            deps.append(self.node.object_info(object_id, entry))
        max_concurrency = int(actor.options.get("max_concurrency") or 1)
        self.node.send(
            worker.client_id,
            P.StartActor(
                actor.actor_id,
                actor.class_blob,
                actor.class_name,
                creation.args_blob,
                tuple(deps),
                max_concurrency,
                actor.job,
                actor.gpu_ids,
                str(actor.options.get("strategy") or ""),
                tuple(actor.run_demand.items()),
                str(actor.options.get("name") or ""),
                actor.namespace,
                actor.restarts,
                tuple((actor.options.get("concurrency_groups") or {}).items()),
            ),
        )

    def on_actor_started(self, client: bytes, message: P.ActorStarted) -> None:
        actor = self.actors.get(message.actor_id)
        if actor is None or actor.worker != client or actor.state is not ActorState.STARTING:
            return
        if message.error is not None:
            cause = pickle.loads(message.error)
            actor.no_restart = True
            self.actor_dies(actor, f"its __init__ raised:\n{cause}")
            return
        actor.transition(ActorState.ALIVE)
        self.pump_actor(actor.actor_id)

    # ------------------------------------------------------------------ calls

    def actor_call_finished(self, worker: WorkerRecord, message: P.TaskFinished) -> None:
        actor = self.actors.get(worker.actor_id)
        if actor is None:
            return
        task = actor.in_flight.pop(message.task_id, None)
        if task is None:
            return
        self.pool.drain_output(self.pool.pipes[worker.client_id])
        self.node.unpin_deps(task)
        if message.error is not None:
            cancelled = task.state is TaskState.CANCELLED
            self.node.fail_task(task, cancelled_error(task) if cancelled else message.error)
        else:
            task.transition(TaskState.FINISHED)
            self.events.ended(task.task_id, failed=False)
            for object_id, inline, size, contained in message.results:
                self.node.set_ready(object_id, inline, size, False, contained)
            self.node.forget_task(task)
        if actor.release_when_idle and not actor.in_flight and not actor.queue:
            self.actor_dies(actor, "all handles to it went out of scope")

    def remote_call_ended(self, task: TaskRecord) -> None:
        """A call to an actor that a peer hosts came back (a result or an error)."""
        actor = self.actors.get(task.actor_id)
        if actor is None or actor.in_flight.pop(task.task_id, None) is None:
            return
        idle = not actor.in_flight and not actor.queue
        if actor.release_when_idle and idle and actor.state is not ActorState.DEAD:
            self.actor_dies(actor, "all handles to it went out of scope")

    def actor_call_dropped(self, task: TaskRecord) -> None:
        actor = self.actors.get(task.actor_id)
        if actor is not None and task in actor.queue:
            actor.queue.remove(task)

    # ------------------------------------------------------------------ death

    def on_kill_actor(self, client: bytes, message: P.KillActor) -> None:
        actor = self.actors.get(message.actor_id)
        if actor is None or actor.state is ActorState.DEAD:
            return
        actor.killed = True
        actor.no_restart = actor.no_restart or message.no_restart
        if actor.host:
            self.peers.release_hosted(actor)  # it ends there; ActorGone brings us back here
        elif actor.worker is not None and actor.worker in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.workers[actor.worker].pid, signal.SIGKILL)
        elif actor.no_restart:
            self.actor_dies(actor, "it was killed by rj.kill() before it started")

    def on_actor_exiting(self, client: bytes, message: P.ActorExiting) -> None:
        actor = self.actors.get(message.actor_id)
        if actor is not None and actor.worker == client:
            actor.exiting = True

    def actor_released(self, actor: ActorRecord) -> None:
        """One handle fewer; a non-detached actor ends when none is left."""
        actor.refs -= 1
        if actor.refs > 0 or actor.detached or actor.state is ActorState.DEAD:
            return
        if actor.in_flight or actor.queue:
            actor.release_when_idle = True
        else:
            self.actor_dies(actor, "all handles to it went out of scope")

    def actor_process_died(self, worker: WorkerRecord, cause: str) -> None:
        """An actor's process ended: restart it within max_restarts, or let it die."""
        actor = self.actors.get(worker.actor_id)
        if actor is None or actor.worker != worker.client_id or actor.state is ActorState.DEAD:
            return
        actor.worker = None
        self.state.actor_released(actor.actor_id)
        actor.gpu_ids = ()
        self.restart_or_die(actor, f"its process died ({cause})")

    def restart_or_die(self, actor: ActorRecord, died: str) -> None:
        """Its process is gone (here or on a peer): restart it within max_restarts, or not."""
        if actor.exiting:
            reason = "it exited on purpose (exit_actor() was called)"
        elif actor.killed:
            reason = "it was killed by rj.kill()"
        else:
            reason = died
        max_restarts = int(actor.options.get("max_restarts") or 0)
        restartable = (
            not actor.exiting
            and not actor.no_restart
            and (max_restarts < 0 or actor.restarts < max_restarts)
            and (actor.refs > 0 or actor.detached)
        )
        if not restartable:
            self.actor_dies(actor, reason)
            return
        actor.restarts += 1
        actor.killed = False
        retried = []
        for task in actor.in_flight.values():
            self.node.unpin_deps(task)
            if task.state is TaskState.CANCELLED:  # rj.cancel asked for it to stop
                self.node.fail_task(task, cancelled_error(task))
            elif task.retry():
                task.transition(TaskState.READY)
                retried.append(task)
            else:
                error = ActorDiedError(
                    f"The actor {actor.class_name} died while running {task.name!r}: {reason}. "
                    f"It is being restarted ({actor.restarts}/{max_restarts}); the call was not "
                    f"retried (max_task_retries={task.max_retries})."
                )
                error.actor_id = actor.actor_id.hex()
                self.node.fail_task(task, pickle.dumps(error, protocol=5))
        actor.in_flight.clear()
        actor.queue.extendleft(reversed(retried))
        actor.transition(ActorState.PENDING)
        actor.creation.transition(TaskState.READY)
        self.pending_actors.add(actor.actor_id)

    def actor_dies(self, actor: ActorRecord, reason: str) -> None:
        """For good: every waiting call fails with ActorDiedError naming the reason."""
        error = ActorDiedError(
            f"The actor {actor.class_name} ({actor.actor_id.hex()[:12]}) is dead: {reason}"
        )
        error.actor_id = actor.actor_id.hex()  # Ray's attribute (travels with the pickle)
        actor.death_error = pickle.dumps(error, protocol=5)
        self.peers.actor_gone_from_here(actor, reason, not (actor.no_restart or actor.exiting))
        if actor.host:
            self.peers.release_hosted(actor)
        self.state.actor_released(actor.actor_id)  # if its process held a slot here
        actor.gpu_ids = ()
        if actor.state in (ActorState.ALIVE, ActorState.STARTING) and (
            actor.worker is not None and actor.worker in self.workers
        ):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.workers[actor.worker].pid, signal.SIGKILL)
        actor.transition(ActorState.DEAD)
        for task in [*actor.in_flight.values(), *actor.queue]:
            if task.state not in (TaskState.FINISHED, TaskState.FAILED):
                self.node.unpin_deps(task)
                self.node.fail_task(task, actor.death_error)
        actor.in_flight.clear()
        actor.queue.clear()
        if self.named_actors.get((actor.namespace, actor.name)) == actor.actor_id:
            del self.named_actors[(actor.namespace, actor.name)]
            if actor.detached:
                self.save_detached_actors()
        creation = actor.creation
        if creation.task_id in self.tasks:
            self.node.forget_task(creation)
        self.pending_actors.discard(actor.actor_id)

    # ------------------------------------------------------------------ lookup

    def lookup_actor(
        self, client: bytes, name: str, namespace: str | None
    ) -> tuple[bytes, str, dict[str, Any]] | Exception:
        if namespace is None:
            namespace = self.node.context_of(client)[1]
        actor_id = self.named_actors.get((namespace, name))
        if actor_id is None or self.actors[actor_id].state is ActorState.DEAD:
            return ValueError(
                f"Failed to look up actor with name {name!r} in namespace {namespace!r}: no live "
                f"actor has that name there. Check the name and namespace (rj.get_actor(name, "
                f"namespace=...))."
            )
        return self.actors[actor_id].handle_info()
