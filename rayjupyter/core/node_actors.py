"""Actors on a node, the shell: what ``actor_state.ActorTable`` decides, done.

A part of the node daemon (``Node.actor_part``). The decisions (placement, call queues per
caller, restarts, death, names) are the table's, made without I/O; this part turns its
instructions into processes started and killed, messages sent and the detached actors'
file written, and answers the actors' messages. An actor's creation is a task record whose
dependencies are its ``__init__`` arguments; its calls are task records sent to its process
(or the peer hosting it) as soon as they are ready, so the process never waits on the node
between two calls.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

from rayjupyter.core import actor_file
from rayjupyter.core import actor_state as A
from rayjupyter.core import protocol as P
from rayjupyter.core.actor_state import ACTOR_TRANSITIONS as ACTOR_TRANSITIONS
from rayjupyter.core.actor_state import ActorRecord as ActorRecord
from rayjupyter.core.actor_state import ActorState as ActorState
from rayjupyter.core.exceptions_extra import ActorAlreadyExistsError
from rayjupyter.core.head import NodeInfo
from rayjupyter.core.node_instructions import Instruction
from rayjupyter.core.node_state import NodeState, cancelled_error
from rayjupyter.core.node_workers import NodeWorkers
from rayjupyter.core.scheduler import TaskRecord, TaskState, WorkerRecord
from rayjupyter.core.task_events import TaskEventLog

#: ends of direct calls kept until their caller's SubmitTask comes (it is sent first, so
#: only a caller that died between its two sends leaves one for good)
EARLY_ENDS_MAX = 10_000
GRACEFUL_EXIT_ENV = "RAYJUPYTER_ACTOR_GRACEFUL_SHUTDOWN_TIMEOUT_S"


def graceful_exit_s() -> float:
    """Seconds an actor whose handles all went may take to end itself (running its
    ``__ray_shutdown__`` and atexit handlers) before it is killed: Ray's
    ``actor_graceful_shutdown_timeout_ms``, read by the node when it starts."""
    raw = os.environ.get(GRACEFUL_EXIT_ENV, "")
    if not raw:
        return A.GRACEFUL_EXIT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ValueError(
            f"{GRACEFUL_EXIT_ENV}={raw!r}: expected seconds, 0 or more (default "
            f"{A.GRACEFUL_EXIT_S:g})"
        )
    return value


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
    def task_failed(self, task: TaskRecord, error_blob: bytes) -> None: ...
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
        answered: bool = False,
    ) -> None: ...
    def execute(self, instructions: list[Instruction]) -> None: ...


class ActorPeers(Protocol):
    """What the actor part asks of the peers (``node_forwarding.NodeForwarding`` is one):
    actors hosted there, actors of theirs that calls made here go to."""

    actor_homes: dict[bytes, str]  # actors of other nodes that calls here go to

    def feasible_on_peer(self, demand: dict[str, float]) -> bool: ...
    def host_actor(self, actor: ActorRecord, peer: NodeInfo) -> None: ...
    def forward(self, task: TaskRecord, peer: NodeInfo, charge: bool = True) -> None: ...
    def release_hosted(
        self, actor_id: bytes, address: str, task_ids: tuple[bytes, ...], graceful: bool
    ) -> None: ...
    def actor_gone_from_here(self, actor: ActorRecord, reason: str, restartable: bool) -> None: ...


class NodeActors:
    """The node's actors: the shell around ``ActorTable`` (names, placement, calls,
    restarts and death), and the actors' file on the head."""

    def __init__(
        self,
        *,
        host: ActorHost,
        peers: ActorPeers,
        state: NodeState,
        pool: NodeWorkers,
        objects: dict[bytes, Any],
        events: TaskEventLog,
        actors_file: str,
        place_actor: Callable[[ActorRecord], str],
        infeasible: Callable[[str, dict[str, float]], bool],
    ) -> None:
        self.node = host
        self.peers = peers
        self.state = state
        self.table = state.actor_table  # every decision about actors is made there
        self.workers = state.workers
        self.tasks = state.tasks
        self.resources = state.resources
        self.pool = pool
        self.objects = objects
        self.events = events
        self.actors_file = actors_file  # named detached actors outlive the head there
        self.place_actor = place_actor  # SPREAD and node affinity (node_placement)
        self.infeasible = infeasible  # warns, or True: its placement group is gone
        self.actors = self.table.actors  # the actor table (the node's parts read it)
        self.named_actors = self.table.named  # (namespace, name) -> actor id
        self.pending_actors = self.table.pending  # waiting for resources to be placed
        self.table.grace_s = graceful_exit_s()
        # ends of calls sent on direct links that came before the caller's SubmitTask
        self.early_ends: dict[bytes, P.TaskFinished] = {}

    # ------------------------------------------------------------------ instructions

    def execute(self, instructions: list[Instruction]) -> None:
        """Carry out the table's instructions (others go to the node's task part)."""
        for instruction in instructions:
            op = instruction[0]
            if op == A.DISPATCH_CALL:
                self.node.dispatch(instruction[1], instruction[2])
            elif op == A.FORWARD_CALL:
                self.peers.forward(instruction[1], instruction[2])
            elif op == A.FAIL_CALL:
                task = instruction[1]  # the table made it FAILED already
                self.node.unpin_deps(task)
                self.node.task_failed(task, instruction[2])
            elif op == A.UNPIN_CALL:
                self.node.unpin_deps(instruction[1])
            elif op == A.SPAWN_ACTOR:
                actor = instruction[1]
                self.table.spawned(actor, self.pool.spawn_worker(actor_id=actor.actor_id))
            elif op == A.HOST_ACTOR:
                self.peers.host_actor(instruction[1], instruction[2])
            elif op == A.KILL_PROCESS:
                self.pool.signal_worker(instruction[1], signal.SIGKILL)
            elif op == A.ASK_EXIT:
                worker = instruction[1]
                self.node.send(worker.client_id, P.ExitActor(worker.actor_id))
            elif op == A.STOP_HOSTED:
                actor_id, address, task_ids, graceful = instruction[1].actor_id, *instruction[2:]
                self.peers.release_hosted(actor_id, address, task_ids, graceful)
            elif op == A.TELL_HOME:
                self.peers.actor_gone_from_here(instruction[1], instruction[2], instruction[3])
            elif op == A.ACTOR_ENDED:
                creation = instruction[1].creation
                if creation.task_id in self.tasks:
                    self.node.forget_task(creation)
                if instruction[2]:
                    self.save_detached_actors()
            else:
                self.node.execute([instruction])
        if self.pool.unborn:  # the pids of the actors' workers this burst started
            self.pool.adopt_unborn()

    # ------------------------------------------------------------------ creation

    def on_create_actor(self, client: bytes, message: P.CreateActor) -> None:
        job, namespace, _ = self.node.context_of(client)
        self.create_actor(client, message, job, namespace)

    def create_actor(
        self, client: bytes, message: P.CreateActor, job: bytes, namespace: str
    ) -> ActorRecord | None:
        namespace = str(message.options.get("namespace") or namespace)
        name = str(message.options.get("name") or "")
        existing = self.table.name_holder(namespace, name) if name else None
        if existing is not None:
            if message.options.get("get_if_exists"):
                self.node.hold(client, existing.actor_id)
                self.node.send(client, P.Reply(message.request_id, existing.handle_info()))
            else:
                error = ActorAlreadyExistsError(
                    f"The name {name!r} (namespace={namespace!r}) is already taken by "
                    f"another actor: pick another name, kill that actor, or pass "
                    f"get_if_exists=True to get it."
                )
                self.node.send(client, P.Reply(message.request_id, error))
            return None
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
        self.table.add(actor)
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

    # ------------------------------------------------------------------ calls

    def actor_call_admitted(self, task: TaskRecord) -> bool:
        """A new call (or the creation) for an actor: queued, or failed (False)."""
        if task.method == "__init__":
            return True
        if task.sent_to:
            early = self.early_ends.get(task.task_id)
            actor = self.actors.get(task.actor_id)
            if early is not None and (actor is None or actor.worker != task.sent_to):
                del self.early_ends[task.task_id]  # it ran on a process that ended since
                self._ended_before_known(task, early)
                return False
        if task.actor_id not in self.actors and task.actor_id in self.peers.actor_homes:
            return True  # it lives on another node: the call goes there when ready
        out = self.table.admit_call(task)
        if out:
            self.execute(out)
            return False
        return True

    def pump_actor(self, actor_id: bytes) -> None:
        """Place a pending actor, or send its ready calls (each caller's in order)."""
        self.execute(self.table.pump(actor_id))

    def place_pending_actors(self) -> None:
        """Start a process (or find a peer) for each pending actor whose resources are free."""
        self.execute(self.table.place_pending(self.place_actor))

    def host_on(self, actor: ActorRecord, peer: NodeInfo) -> None:
        """Strategies chose a peer for it (node_placement)."""
        self.execute(self.table.host(actor, peer))

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
        error = None if message.error is None else str(pickle.loads(message.error))
        self.execute(self.table.started(message.actor_id, client, error, message.label))

    def direct_call_dispatched(self, worker: WorkerRecord, task_id: bytes) -> None:
        """A call its caller sent the actor's process itself is in flight now: its end may
        have come first (the worker's channel read before the caller's)."""
        early = self.early_ends.pop(task_id, None)
        if early is not None:
            self.actor_call_finished(worker, early)

    def actor_call_finished(self, worker: WorkerRecord, message: P.TaskFinished) -> None:
        task = self.table.call_returned(worker.actor_id, message.task_id)
        if task is None:
            if message.task_id not in self.tasks:  # a direct call we have not heard of yet
                early = self.early_ends
                if len(early) >= EARLY_ENDS_MAX:  # (its caller died between its two sends)
                    del early[next(iter(early))]
                early[message.task_id] = message
            return
        self.pool.drain_output(self.pool.pipes[worker.client_id])
        self.node.unpin_deps(task)
        if message.error is not None:
            cancelled = task.state is TaskState.CANCELLED
            self.node.fail_task(task, cancelled_error(task) if cancelled else message.error)
        else:
            task.transition(TaskState.FINISHED)
            self.events.ended(task.task_id, failed=False)
            direct = message.direct  # (answered to its caller on a direct link)
            for object_id, inline, size, contained in message.results:
                self.node.set_ready(object_id, inline, size, False, contained, "", direct)
            self.node.forget_task(task)
        self.execute(self.table.settle_idle(worker.actor_id, time.monotonic()))

    def _ended_before_known(self, task: TaskRecord, message: P.TaskFinished) -> None:
        """A direct call whose end we heard before its caller's SubmitTask, from a process
        of the actor that has ended since: only its books are left to keep."""
        task.sent_to = b""
        task.transition(TaskState.READY)
        task.transition(TaskState.RUNNING)
        if message.error is not None:
            self.node.fail_task(task, message.error)
            return
        task.transition(TaskState.FINISHED)
        self.events.ended(task.task_id, failed=False)
        for object_id, inline, size, contained in message.results:
            self.node.set_ready(object_id, inline, size, False, contained, "", message.direct)
        self.node.forget_task(task)

    def remote_call_ended(self, task: TaskRecord) -> None:
        """A call to an actor that a peer hosts came back (a result or an error)."""
        if self.table.call_returned(task.actor_id, task.task_id) is not None:
            self.execute(self.table.settle_idle(task.actor_id, time.monotonic()))

    def actor_call_dropped(self, task: TaskRecord) -> None:
        self.table.drop_call(task)

    # ------------------------------------------------------------------ death

    def on_kill_actor(self, client: bytes, message: P.KillActor) -> None:
        self.execute(self.table.kill(message.actor_id, message.no_restart))

    def on_exit_actor(self, client: bytes, message: P.ExitActor) -> None:
        """The home of an actor we host: its handles all went, it may end by itself."""
        actor = self.actors.get(message.actor_id)
        if actor is not None and actor.creation.owner == client:
            self.execute(self.table.asked_to_end(actor, time.monotonic()))

    def on_actor_exiting(self, client: bytes, message: P.ActorExiting) -> None:
        self.table.exiting(message.actor_id, client)

    def actor_released(self, actor: ActorRecord) -> None:
        """One handle fewer; a non-detached actor ends when none is left."""
        self.execute(self.table.released(actor, time.monotonic()))

    def owner_gone(self, client: bytes) -> None:
        """A process is gone: the actors it created end with it (Ray's fate sharing)."""
        self.execute(self.table.owner_gone(client))

    def tick(self, now: float) -> None:
        """Now and then: kill the actors asked to end that did not within the grace."""
        if self.table.exit_deadlines:
            self.execute(self.table.overdue(now))

    def actor_process_died(self, worker: WorkerRecord, cause: str) -> None:
        self.execute(self.table.process_died(worker, cause))

    def host_lost(self, actor: ActorRecord, reason: str, restartable: bool) -> None:
        self.execute(self.table.host_lost(actor, reason, restartable))

    def actor_dies(self, actor: ActorRecord, reason: str) -> None:
        """For good: every waiting call fails with ActorDiedError naming the reason."""
        if actor.state is not ActorState.DEAD:
            self.execute(self.table.die(actor, reason))

    # ------------------------------------------------------------------ lookup

    def lookup_actor(
        self, client: bytes, name: str, namespace: str | None
    ) -> tuple[bytes, str, dict[str, Any], int] | Exception:
        if namespace is None:
            namespace = self.node.context_of(client)[1]
        actor = self.table.name_holder(namespace, name)
        if actor is None:
            return ValueError(
                f"Failed to look up actor with name {name!r} in namespace {namespace!r}: no live "
                f"actor has that name there. Check the name and namespace (rj.get_actor(name, "
                f"namespace=...))."
            )
        return actor.handle_info()
