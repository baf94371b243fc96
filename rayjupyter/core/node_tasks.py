"""The node's tasks from submit to end: admission, readiness, dispatch to a worker, results,
failure; and the carrying out of ``NodeState``'s instructions.

A part of the node daemon (``Node.task_part``). Every decision about a task or a worker is
``node_state.NodeState``'s (no I/O: events in, instructions out); this part feeds it the
events the node hears and carries out what it returns (``execute``): it sends the messages,
starts and signals the processes, fills the object table. The path of a task (``on_submit``
-> ``admit`` -> ``task_ready`` -> ``dispatch`` -> ``on_task_finished``) is the hot one:
what it calls per message is bound to attributes here once.
"""

from __future__ import annotations

import pickle
import signal
from collections.abc import Callable
from typing import Any

from rayjupyter.core import ids
from rayjupyter.core import protocol as P
from rayjupyter.core.config import BOUNDS, bound
from rayjupyter.core.direct_links import DirectLinks
from rayjupyter.core.exceptions import ObjectLostError, TaskUnschedulableError
from rayjupyter.core.head import HeadState
from rayjupyter.core.node_actors import EARLY_ENDS_MAX, ActorRecord, ActorState, NodeActors
from rayjupyter.core.node_forwarding import NodeForwarding
from rayjupyter.core.node_generators import NodeGenerators
from rayjupyter.core.node_instructions import (
    ACTOR_PROCESS_DIED,
    ATTEMPT_LOST,
    CANCEL_CALL,
    CANCEL_FORWARDED,
    DROP_ACTOR_CALL,
    EXECUTE,
    FAILED,
    FINISHED,
    FORWARD,
    INTERRUPT,
    KILL,
    LEASE,
    REVOKE,
    SPAWN,
    START_ACTOR,
    STARTED,
    UNPIN,
    WARN,
    Instruction,
)
from rayjupyter.core.node_io import ClientInfo
from rayjupyter.core.node_objects import NodeObjects, ObjectEntry
from rayjupyter.core.node_placement import NodePlacement
from rayjupyter.core.node_pulls import NodePulls
from rayjupyter.core.node_runtime_env import NodeRuntimeEnv
from rayjupyter.core.node_state import NodeState
from rayjupyter.core.node_workers import NodeWorkers
from rayjupyter.core.object_store import ObjectStore
from rayjupyter.core.scheduler import TaskRecord, TaskState, WorkerRecord
from rayjupyter.core.starvation import StarvationWatch
from rayjupyter.core.task_errors import dependency_failed
from rayjupyter.core.task_events import TaskEventLog

_ONE_CPU = {"CPU": 1.0}  # a task's default demand: workers assume it when not told


class NodeTasks:
    """Tasks on this node, from their submit to their end, and NodeState's instructions."""

    def __init__(
        self,
        *,
        state: NodeState,
        events: TaskEventLog,
        store: ObjectStore,
        head: HeadState,
        clients: dict[bytes, ClientInfo],
        actors: dict[bytes, ActorRecord],
        object_table: NodeObjects,
        generators: NodeGenerators,
        placement: NodePlacement,
        forwarding: NodeForwarding,
        pulling: NodePulls,
        envs: NodeRuntimeEnv,
        pool: NodeWorkers,
        actor_part: NodeActors,
        send: Callable[[bytes, Any], None],
        flush: Callable[[], None],
        drivers: Callable[[], list[bytes]],
    ) -> None:
        self.state = state
        self.tasks = state.tasks
        self.workers = state.workers
        self.resources = state.resources
        self.events = events
        self.store = store
        self.head = head
        self.clients = clients
        self.actors = actors
        self.generators = generators
        self.placement = placement
        self.forwarding = forwarding
        self.forwarded = forwarding.forwarded
        self.node_clients = forwarding.links.node_clients  # client id -> peer node id
        self.envs = envs
        self.actor_part = actor_part
        self.send = send
        self.flush = flush
        self.drivers = drivers
        # what the path of every task calls, bound once
        self.objects: dict[bytes, ObjectEntry] = object_table.objects
        self.hold = object_table.hold
        self.incref = object_table.incref
        self.decref = object_table.decref
        self.set_ready = object_table.set_ready
        self.object_info = object_table.object_info
        self.place_by_locality = forwarding.place_by_locality
        self.pull = pulling.pull
        self.pipes = pool.pipes
        self.drain_output = pool.drain_output
        self.spawn_worker = pool.spawn_worker
        self.signal_worker = pool.signal_worker
        self.unborn = pool.unborn  # workers started whose pids are still to read
        self.adopt_unborn = pool.adopt_unborn
        self.funcs: dict[bytes, bytes] = {}  # function id -> its pickled function
        # workers that answer local drivers directly (direct_links.py)
        self.direct = DirectLinks(pool.channels, clients, send, self._actor_of)
        self.owned = state.owned  # tasks per client not ended (a burst is answered by us)
        self.leases = state.leases  # workers lent to local drivers (worker_leases.py)
        self.prefetching = state.prefetching  # tasks sent ahead to busy workers
        # ends of tasks drivers sent leased workers that came before the drivers' notices
        self.early_ends: dict[bytes, P.TaskFinished] = {}
        self.max_tasks_per_client = bound("tasks_per_client")
        self.warned_infeasible: set[tuple[tuple[str, float], ...]] = set()
        self.starvation = StarvationWatch.from_env()

    def on_submit(self, client: bytes, message: P.SubmitTask) -> None:
        if message.func_blob is not None:
            self.funcs[message.func_id] = message.func_blob
        job, namespace, parent = self.context_of(client)
        task = TaskRecord(
            task_id=message.task_id,
            owner=client,
            name=message.name,
            func_id=message.func_id,
            args_blob=message.args_blob,
            deps=message.deps,
            nested=message.nested,
            return_ids=message.return_ids,
            demand=message.resources,
            max_retries=message.max_retries,
            retry_exceptions=message.retry_exceptions,
            actor_id=message.actor_id,
            method=message.method,
            job=job,
            namespace=namespace,
            parent=parent,
            env=message.runtime_env,
            max_calls=message.max_calls,
            strategy=message.strategy,
            sent_to=message.sent_to,
            # a peer node's task: that node counts its attempts and retries it (a
            # generator's stream and an actor's calls are still decided here, as before)
            retried_by_owner=(
                client in self.node_clients and not message.actor_id and not message.generator
            ),
        )
        if message.generator:
            self.generators.submitted(task.task_id, client, message)
        self.admit(client, task)

    def context_of(self, client: bytes) -> tuple[bytes, str, bytes | None]:
        """(job, namespace, parent task) of what a client submits now."""
        worker = self.workers.get(client)
        if worker is None:
            info = self.clients.get(client)
            return client, info.namespace if info else "", None
        if worker.actor_id and worker.actor_id in self.actors:
            actor = self.actors[worker.actor_id]
            return actor.job, actor.namespace, None
        if worker.task is not None:
            return worker.task.job, worker.task.namespace, worker.task.task_id
        return b"", "", None

    def admit(self, client: bytes, task: TaskRecord) -> None:
        """Take a new task (or actor call or creation): hold its values, wait for its deps."""
        self.state.submit(task)
        if task.method != "__init__":
            self.events.submitted(task.task_id, task.name, task.job, task.actor_id, bool(task.deps))
        for object_id in task.return_ids:
            self.objects[object_id] = ObjectEntry()
            self.hold(client, object_id)
        for object_id in task.nested:
            self.incref(object_id)
        failed_dep: bytes | None = None
        for object_id in task.deps:
            entry = self.objects.get(object_id)
            if entry is None:
                lost = ObjectLostError(
                    f"Task {task.name!r} depends on object {object_id.hex()}, which no "
                    f"longer exists (all its refs were dropped)."
                )
                failed_dep = dependency_failed(task, pickle.dumps(lost, protocol=5))
                continue
            entry.refs += 1
            if not entry.ready:
                entry.waiters.append(task)
                task.missing += 1
            elif entry.is_error and failed_dep is None:
                failed_dep = dependency_failed(task, entry.inline or b"")
        if failed_dep is None and (task.env or task.method == "__init__"):
            failed_dep = self.envs.env_error(task)
        if failed_dep is None and self.state.over_limit(task, self.max_tasks_per_client):
            failed_dep = self.too_many_tasks(task)
        if failed_dep is not None:
            self.fail_task(task, failed_dep)
            return
        if task.actor_id:
            if not self.actor_part.actor_call_admitted(task):
                return
        elif (
            not self.resources.feasible(task.demand)
            and not self.forwarding.feasible_on_peer(task.demand)
            and self.placement.infeasible(task.name, task.demand)  # warns, or: group gone
        ):
            self.fail_task(task, self.placement.removed_error(task.name, task.demand))
            return
        if task.missing == 0:
            self.task_ready(task)

    def too_many_tasks(self, task: TaskRecord) -> bytes:
        """The error of a task past its submitter's bound (it fails: memory stays bounded)."""
        spec = BOUNDS["tasks_per_client"]
        error = TaskUnschedulableError(
            f"Task {task.name!r} was refused: its submitter already has "
            f"{self.max_tasks_per_client:,} tasks on this node that have not ended (waiting, "
            f"queued or running). Wait for some (rj.get / rj.wait) before submitting more, "
            f"or raise {spec.env} where the cluster starts (about 1.5 KB of node memory each)."
        )
        return pickle.dumps(error, protocol=5)

    def task_ready(self, task: TaskRecord) -> None:
        self.events.ready(task.task_id)
        if task.sent_to and not task.actor_id:  # its driver sent it a leased worker itself
            early = self.early_ends.pop(task.task_id, None)
            worker_id = task.sent_to
            self.execute(self.leases.notice(task, early is not None))
            if early is not None:
                pipes = self.pipes.get(worker_id)
                if pipes is not None and not early.quiet:  # its prints go out first
                    self.drain_output(pipes)
                self.direct_task_finished(task, early)
            return
        if task.actor_id:
            if task.actor_id not in self.actors:
                self.forwarding.route_actor_call(task)  # an actor of another node (see actor_homes)
                return
            if self.pull_deps(task):
                return
            task.transition(TaskState.READY)
            self.actor_part.pump_actor(task.actor_id)
        elif task.strategy[:1] in ("S", "n") and self.placement.place(task):
            return  # SPREAD or node affinity: sent to its node (or failed)
        elif not self.place_by_locality(task) and not self.pull_deps(task):
            self.state.task_ready(task)

    def pull_deps(self, task: TaskRecord) -> bool:
        """Start copying the task's values that only peers have; True if it must wait."""
        waiting = False
        for object_id in task.deps:
            entry = self.objects.get(object_id)
            if entry is not None and entry.location:
                entry.waiters.append(task)
                task.missing += 1
                self.pull(object_id)
                waiting = True
        return waiting

    def warn_infeasible(self, name: str, demand: dict[str, float]) -> None:
        key = tuple(sorted(demand.items()))
        if key in self.warned_infeasible:
            return
        self.warned_infeasible.add(key)
        text = (
            f"Warning: {name!r} needs {demand}, more than this cluster has "
            f"({self.head.cluster_resources()}); it waits until a node that can run it joins.\n"
        )
        for driver in self.drivers():
            self.send(driver, P.LogLines(2, text))

    def warn_if_starved(self, now: float) -> None:
        """Once a second: queued work that actors starve is told to the drivers, once."""
        text = self.starvation.check(
            now,
            self.state.ready,
            self.workers.values(),
            (held for held, _gpus in self.state.actor_slots.values()),
            self.resources.total,
            (
                self.actors[actor_id].place_demand
                for actor_id in self.actor_part.pending_actors
                if actor_id in self.actors
            ),
        )
        if text is not None:
            for driver in self.drivers():
                self.send(driver, P.LogLines(2, text))

    def warn_worker_limit(self, waiting: int, what: str) -> None:
        """Work found no process (worker_limit.py): the drivers hear it once per episode."""
        self.execute(self.state.limit_reached(waiting, what))

    def on_task_finished(self, client: bytes, message: P.TaskFinished) -> None:
        worker = self.workers[client]
        if worker.actor_id:
            self.actor_part.actor_call_finished(worker, message)
            return
        task = self.tasks.get(message.task_id)
        if task is None or worker.task is not task:
            if task is not None and task.sent_to:  # a task its driver sent us itself
                if not message.quiet:
                    self.drain_output(self.pipes[client])
                self.direct_task_finished(task, message)
            elif task is None and message.by_link:  # (its driver's notice comes next)
                early = self.early_ends
                if len(early) >= EARLY_ENDS_MAX:  # (its driver died between its two sends)
                    del early[next(iter(early))]
                early[message.task_id] = message
            return
        if not message.quiet:  # the task's prints go out before its results
            self.drain_output(self.pipes[client])
        self.unpin_deps(task)
        self.task_ended(
            task,
            message,
            self.state.task_finished(
                worker, task, message.error, message.retryable, message.direct
            ),
        )

    def task_ended(
        self, task: TaskRecord, message: P.TaskFinished, instructions: list[Instruction]
    ) -> None:
        for instruction in instructions:
            if instruction[0] == FINISHED:
                ran = self.events.ended(task.task_id, failed=False)
                if ran is not None:  # (short functions get several tasks sent ahead)
                    self.prefetching.ran(task.func_id, ran)
                direct = message.direct
                for object_id, inline, size, contained in message.results:
                    self.set_ready(object_id, inline, size, False, contained, "", direct)
                self.forget_task(task)
            else:
                self.execute_one(instruction)

    def direct_task_finished(self, task: TaskRecord, message: P.TaskFinished) -> None:
        self.task_ended(task, message, self.leases.finished(task, message.error, message.retryable))
        if self.unborn:
            self.adopt_unborn()

    def on_return_lease(self, client: bytes, message: P.ReturnLease) -> None:
        self.execute(self.leases.returned(client, message.worker))

    def client_gone(self, client: bytes) -> None:
        """A client's channel closed: its links, and a driver's lease, go."""
        self.direct.client_gone(client)
        self.execute(self.leases.owner_gone(client))

    def on_worker_blocked(self, client: bytes, message: P.WorkerBlocked) -> None:
        worker = self.workers.get(client)
        if worker is None:
            return
        if message.blocked:  # answered always, with what was taken back (see P.RevokeTask)
            self.execute(self.state.worker_blocked(worker, message.waiting_for))
        else:
            self.state.worker_unblocked(worker)

    def fail_task(self, task: TaskRecord, error_blob: bytes) -> None:
        """Every return value of the task becomes the error; dependents inherit it."""
        self.state.fail(task)
        self.task_failed(task, error_blob)

    def task_failed(self, task: TaskRecord, error_blob: bytes) -> None:
        """A task is FAILED now (``NodeState`` said so): publish it, store the error."""
        self.events.ended(task.task_id, failed=True)
        if self.generators.modes:  # a stream's error goes where it stopped, as an item
            self.generators.failed(task, error_blob)
        for object_id in task.return_ids:
            self.set_ready(object_id, error_blob, len(error_blob), True, ())
        self.forget_task(task)
        if task.method == "__init__" and task.actor_id in self.actors:
            actor = self.actors[task.actor_id]
            if actor.state is not ActorState.DEAD:
                self.actor_part.actor_dies(
                    actor, f"its creation failed: {pickle.loads(error_blob)}"
                )

    def forget_task(self, task: TaskRecord) -> None:
        if not self.state.forget(task):
            return  # already forgotten (an actor's creation, when the actor died)
        if self.generators.modes:
            self.generators.forgotten(task.task_id)
        for object_id in task.deps:
            self.decref(object_id)
        for object_id in task.nested:
            self.decref(object_id)

    def unpin_deps(self, task: TaskRecord) -> None:
        for object_id in task.deps:
            if self.store.contains(object_id):
                self.store.unpin(object_id, task.task_id)

    def execute(self, instructions: list[Instruction]) -> None:
        """Carry out what ``NodeState`` decided."""
        for instruction in instructions:
            self.execute_one(instruction)
        if self.unborn:  # the pids of the workers this burst started
            self.adopt_unborn()

    def execute_one(self, instruction: Instruction) -> None:
        op = instruction[0]
        if op == EXECUTE:
            self.dispatch(instruction[1], instruction[2])
        elif op == FAILED:
            self.task_failed(instruction[1], instruction[2])
        elif op == STARTED:
            task, worker = instruction[1], instruction[2]
            self.events.started(task.task_id, worker.pid, task.attempt)
        elif op == LEASE:
            _, worker, owner, demand, func_id, granted = instruction
            self.send(owner, P.Lease(worker.client_id, tuple(demand.items()), func_id, granted))
        elif op == REVOKE:
            task, worker, answers_block = instruction[1], instruction[2], instruction[3]
            self.send(
                worker.client_id,
                P.RevokeTask(task.task_id if task is not None else b"", answers_block),
            )
            if task is not None:
                self.unpin_deps(task)
        elif op == UNPIN:
            self.unpin_deps(instruction[1])
        elif op == SPAWN:
            for _ in range(instruction[2]):
                self.spawn_worker(pool=instruction[1])
        elif op == KILL:
            self.signal_worker(instruction[1], signal.SIGKILL)
        elif op == INTERRUPT:
            task, worker = instruction[1], instruction[2]
            # names the task, so a worker still setting it up stops it too; sent ahead of
            # the signal, which makes the worker look for it
            self.send(worker.client_id, P.CancelCall(task.task_id))
            self.flush()
            self.signal_worker(worker, signal.SIGINT)
        elif op == CANCEL_CALL:
            self.send(instruction[2].client_id, P.CancelCall(instruction[1].task_id))
        elif op == CANCEL_FORWARDED:
            self.forwarding.cancel_forwarded(instruction[1], instruction[2])
        elif op == ACTOR_PROCESS_DIED:
            self.actor_part.actor_process_died(instruction[1], instruction[2])
        elif op == DROP_ACTOR_CALL:
            self.actor_part.actor_call_dropped(instruction[1])
        elif op == START_ACTOR:
            self.actor_part.start_actor_in(instruction[1])
        elif op == FORWARD:  # spill-over chose the peer (and counted it taken there)
            self.forwarding.forward(instruction[1], instruction[2], charge=False)
        elif op == ATTEMPT_LOST:  # its node retries it: our returns are never made
            task = instruction[1]
            self.events.ended(task.task_id, failed=True)
            self.send(task.owner, P.AttemptLost(task.task_id, *instruction[2:]))
            self.forget_task(task)
            for object_id in task.return_ids:  # (its node's RefOps drop the holds)
                entry = self.objects.get(object_id)
                if entry is not None and not entry.ready:
                    del self.objects[object_id]
        elif op == WARN:
            for driver in self.drivers():
                self.send(driver, P.LogLines(2, instruction[1]))
        else:
            raise ValueError(f"unknown instruction {instruction!r}")

    def _actor_of(self, worker_id: bytes) -> bytes:
        worker = self.workers.get(worker_id)
        return worker.actor_id if worker is not None else b""

    def dispatch(self, task: TaskRecord, worker: WorkerRecord) -> None:
        if task.sent_to:  # its caller sent it to this worker itself (direct_calls.py)
            task.sent_to = b""
            self.events.started(task.task_id, worker.pid, task.attempt)
            self.actor_part.direct_call_dispatched(worker, task.task_id)
            return
        deps = []
        for object_id in task.deps:
            entry = self.objects[object_id]
            if entry.in_store:
                self.store.pin(object_id, task.task_id)
            deps.append(self.object_info(object_id, entry))
        func_blob = None
        if task.func_id not in worker.known_funcs:
            func_blob = self.funcs.get(task.func_id)
            worker.known_funcs.add(task.func_id)
        if worker.prefetched is not task and task not in worker.ahead:  # one sent ahead
            # starts when the one before it ends
            self.events.started(task.task_id, worker.pid, task.attempt)
        generator, credit = "", -1
        if self.generators.modes:  # (a plain task pays one check on this hot path)
            generator, credit = self.generators.execute_fields(task.task_id)
        reply_to = b""
        if not generator:
            owner = task.owner
            reply_to = self.direct.reply_to(owner, worker.client_id, self.owned.get(owner, 0))
        self.send(
            worker.client_id,
            P.ExecuteTask(
                task.task_id,
                task.func_id,
                func_blob,
                task.name,
                task.args_blob,
                tuple(deps),
                task.return_ids,
                task.retry_exceptions,
                task.attempt,
                task.actor_id,
                task.method,
                task.job,
                task.gpu_ids,
                generator,
                credit,
                task.strategy,
                None if task.demand == _ONE_CPU else tuple(task.demand.items()),
                reply_to,
            ),
        )
        if generator:
            self.generators.dispatched(task, worker.client_id)

    def on_cancel(self, client: bytes, message: P.CancelTask) -> None:
        task = self.tasks.get(ids.task_of(message.object_id))
        if task is not None:
            self.execute(self.state.cancel(task, message.force, message.recursive, self.forwarded))
