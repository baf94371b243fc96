"""Several nodes, work: tasks and actors sent to peers, and what comes back from them.

A part of the node daemon (``Node.forwarding``), a shell: which peer gets what is decided
without I/O (``peer_placement``: spill-over in ``NodeState.spill_over``, locality here,
actors' hosts in ``actor_state.ActorTable``), and this part sends it. To the peer, a
forwarded task looks like one a driver submitted: we first provide the values the task
uses (``ProvideObjects``), then submit it and subscribe to its results. Small results
come back inline; a large one stays in the peer's store (its location is recorded) until
someone here needs it (``NodePulls``). An
actor that does not fit here is hosted by a peer; its record stays here, its home, which
forwards its calls in order and decides its restarts.
"""

from __future__ import annotations

import contextlib
import pickle
import time

from rayjupyter.core import ids, peer_placement
from rayjupyter.core import protocol as P
from rayjupyter.core.actor_state import ActorRecord, ActorState
from rayjupyter.core.exceptions import ActorDiedError
from rayjupyter.core.head import NodeInfo
from rayjupyter.core.node_links import NodeLinks, PeerHost, PeerLink
from rayjupyter.core.node_pulls import NodePulls
from rayjupyter.core.scheduler import OCCUPYING, TaskRecord, TaskState

LOCALITY_MIN_BYTES = peer_placement.LOCALITY_MIN_BYTES

#: after a spill-over that moved nothing, how long the next waits: the node turns once per
#: message, and each look goes over the first SPILL_SCAN queued tasks (a 4-node fan-out
#: spent most of the head's CPU looking, with every peer busy)
SPILL_PAUSE_S = 0.002

#: what only an actor's home node acts on: names are looked up there, lifetime is kept there
_HOME_ONLY_OPTIONS = ("name", "get_if_exists", "lifetime", "namespace")


class Forwarded:
    """A task of ours running on a peer."""

    __slots__ = ("address", "pending", "task")

    def __init__(self, task: TaskRecord, address: str, pending: set[bytes]) -> None:
        self.task = task
        self.address = address
        self.pending = pending  # return ids not yet reported


class NodeForwarding:
    """Our tasks and actors on peers: placing them there, their results, their loss."""

    def __init__(self, node: PeerHost, links: NodeLinks, pulling: NodePulls) -> None:
        self.node = node
        self.links = links
        self.pulling = pulling
        self.forwarded: dict[bytes, Forwarded] = {}
        self.actor_homes: dict[bytes, str] = {}  # other nodes' actors we were handed
        self.contained_info: dict[bytes, tuple[tuple[bytes, bytes | None, int, bool, str], ...]]
        self.contained_info = {}  # refs inside a peer's value, until that value arrives
        self.spill_after = 0.0  # no spill-over before (monotonic): the last moved nothing
        self.spill_skipped = False  # one was skipped for that: the loop wakes to do it

    def peer_nodes(self) -> list[NodeInfo]:
        return self.node.state.peers()

    def feasible_on_peer(self, demand: dict[str, float]) -> bool:
        return peer_placement.feasible_on_peer(self.peer_nodes(), demand)

    def place_by_locality(self, task: TaskRecord) -> bool:
        """Send a ready task to the peer that holds most of its large arguments, if one fits."""
        if task.actor_id or task.owner in self.links.node_clients or len(self.node.head.nodes) < 2:
            return False
        weight: dict[str, int] = {}
        local = 0
        for object_id in task.deps:
            entry = self.node.objects.get(object_id)
            if entry is None:
                continue
            if entry.location:
                weight[entry.location] = weight.get(entry.location, 0) + entry.size
            elif entry.in_store:
                local += entry.size
        peer = peer_placement.by_locality(weight, local, task.demand, self.peer_nodes())
        if peer is None:
            return False
        self.forward(task, peer)
        return True

    def spill_over(self) -> None:
        """Queued tasks that this node cannot run now go to peers that can (its decision:
        ``NodeState.spill_over``), looked for at most every SPILL_PAUSE_S while none can."""
        now = time.monotonic()
        if now < self.spill_after:
            self.spill_skipped = True
            return
        self.spill_skipped = False
        out = self.node.state.spill_over(self.links.node_clients)
        if out:
            self.node.execute(out)
        else:
            self.spill_after = now + SPILL_PAUSE_S

    def poll_timeout_ms(self, idle_ms: int) -> int:
        """How long the loop may sleep: a skipped spill-over is done once its pause ends."""
        if not self.spill_skipped:
            return idle_ms
        left = self.spill_after - time.monotonic()
        if left <= 0:
            self.spill_skipped = False  # (the turn now does it, if spill-over still applies)
            return 0
        return min(idle_ms, int(left * 1000) + 1)

    def provide(self, link: PeerLink, object_ids: tuple[bytes, ...]) -> None:
        """Tell a peer the values (or where they are) of the objects a call uses; those not
        made yet (refs nested in its arguments) it hears of now and gets when they are."""
        provided = []
        more_holders: list[tuple[bytes, tuple[str, ...]]] = []
        pending = []
        for object_id in object_ids:
            entry = self.node.objects.get(object_id)
            if entry is None:
                continue
            if not entry.ready:
                pending.append(object_id)
                continue
            if entry.location:
                holder = entry.location
            elif entry.in_store:
                holder = self.node.address
            else:
                holder = ""
            provided.append((object_id, entry.inline, entry.size, entry.is_error, holder))
            others = tuple(a for a in entry.copies if a not in (holder, link.address))
            if holder and others:  # peers that keep a copy for us: pulled from at once
                more_holders.append((object_id, others))
        if provided:
            link.send(P.ProvideObjects(tuple(provided), tuple(more_holders)))
        if pending:
            self.pulling.promises.promise(link, pending)
        homes = []
        for object_id in object_ids:
            if object_id in self.node.actors:
                homes.append((object_id, self.node.address))
            elif object_id in self.actor_homes:
                homes.append((object_id, self.actor_homes[object_id]))
        if homes:
            link.send(P.ActorHomes(tuple(homes)))

    def on_actor_homes(self, client: bytes, message: P.ActorHomes) -> None:
        for actor_id, address in message.homes:
            if actor_id not in self.node.actors and address != self.node.address:
                self.actor_homes[actor_id] = address

    def route_actor_call(self, task: TaskRecord) -> None:
        """A call made here to an actor of another node: send it to the actor's home self.node."""
        address = self.actor_homes[task.actor_id]
        home = next((peer for peer in self.peer_nodes() if peer.address == address), None)
        if home is None:
            error = ActorDiedError(
                f"Task {task.name!r} calls an actor whose node ({address}) is no longer in "
                f"the cluster."
            )
            self.node.fail_task(task, pickle.dumps(error, protocol=5))
            return
        self.forward(task, home)

    def forward(self, task: TaskRecord, peer: NodeInfo, charge: bool = True) -> None:
        """Run a ready task on a peer: provide its values, submit it, subscribe to results.
        ``charge``: count its resources taken there (False: the decision did already)."""
        link = self.links.link(peer.address)
        self.provide(link, (*task.deps, *task.nested))
        self.node.envs.send_runtime_env(link, task.env)  # its packages and env, once per link
        func_blob = None
        if task.func_id not in link.known_funcs:
            func_blob = self.node.funcs.get(task.func_id)
            link.known_funcs.add(task.func_id)
        generator, backpressure = "", -1
        if self.node.generators.modes:  # its items stream back to us (NodeGenerators.on_peer_item)
            generator, backpressure = self.node.generators.forwarding(task.task_id, peer.address)
        link.send(
            P.SubmitTask(
                task.task_id,
                task.func_id,
                func_blob,
                task.name,
                task.args_blob,
                task.deps,
                task.nested,
                task.return_ids,
                task.demand,
                0,  # retries after a crash there are ours: the node itself may die
                task.retry_exceptions,
                task.actor_id,
                task.method,
                task.env,
                generator,
                backpressure,
                strategy=task.strategy,
                max_calls=task.max_calls,
            )
        )
        if generator:
            self.node.generators.forwarded(task.task_id, link)
        link.send(P.Subscribe(task.return_ids, False))
        if charge:  # until the next view says otherwise
            peer_placement.charge(peer, task.demand)
        self.node.state.forwarded(task)
        self.node.events.started(task.task_id, 0, task.attempt)
        self.forwarded[task.task_id] = Forwarded(task, peer.address, set(task.return_ids))

    def host_actor(self, actor: ActorRecord, peer: NodeInfo) -> None:
        """Start one of our actors on a peer (``ActorTable.host`` chose it). Its record
        stays here (its home): calls are forwarded to it in order, and if it dies there we
        decide whether it restarts."""
        link = self.links.link(peer.address)
        creation = actor.creation
        self.provide(link, (*creation.deps, *creation.nested))
        self.node.envs.send_runtime_env(link, str(actor.options.get("runtime_env") or ""))
        options = {k: v for k, v in actor.options.items() if k not in _HOME_ONLY_OPTIONS}
        options.update(max_restarts=0, max_task_retries=0)  # retries are the home's call
        link.send(
            P.CreateActor(
                actor.actor_id,
                actor.class_blob,
                actor.class_name,
                creation.args_blob,
                creation.deps,
                creation.nested,
                actor.place_demand,
                actor.run_demand,
                options,
                0,
            )
        )

    def host_lost(self, actor: ActorRecord, reason: str, restartable: bool = True) -> None:
        """The peer hosting one of our actors lost it (or died): what it still says about
        the calls in flight is stale; the actor restarts (maybe elsewhere) or not."""
        for task_id in actor.in_flight:
            self.forwarded.pop(task_id, None)
            if self.node.generators.remote:
                self.node.generators.detach(task_id)
        self.node.actor_part.host_lost(actor, reason, restartable)

    def on_actor_gone(self, link: PeerLink, message: P.ActorGone) -> None:
        actor = self.node.actors.get(message.actor_id)
        if actor is None or actor.host != link.address or actor.state is ActorState.DEAD:
            return
        self.host_lost(actor, message.reason, message.restartable)

    def actor_gone_from_here(self, actor: ActorRecord, reason: str, restartable: bool) -> None:
        """An actor we host for another node died here: tell its home first."""
        owner = actor.creation.owner
        if owner in self.links.node_clients:
            self.node.send(owner, P.ActorGone(actor.actor_id, reason, restartable))

    def release_hosted(
        self, actor_id: bytes, address: str, task_ids: tuple[bytes, ...], graceful: bool = False
    ) -> None:
        """Our actor that a peer hosts is killed or dead here: stop its process there
        (``graceful``: its handles all went, so it is asked to end itself)."""
        for task_id in task_ids:
            self.forwarded.pop(task_id, None)
        link = self.links.links.get(address)
        if link is not None:
            link.send(P.ExitActor(actor_id) if graceful else P.KillActor(actor_id, True))

    def on_peer_objects_ready(self, link: PeerLink, message: P.ObjectsReady) -> None:
        for object_id, inline, size, is_error in message.objects:
            if self.node.generators.remote and self.node.generators.on_peer_item(
                link, object_id, inline, size, is_error
            ):
                continue
            forwarded = self.forwarded.get(ids.task_of(object_id))
            if forwarded is None or object_id not in forwarded.pending:
                link.send(P.RefOps(((False, object_id),)))  # nobody here needs it any more
                continue
            task = forwarded.task
            forwarded.pending.discard(object_id)
            if not forwarded.pending:
                del self.forwarded[task.task_id]
                self._slot_freed(link.address, task.demand)
            if is_error:
                with contextlib.suppress(KeyError):
                    del self.forwarded[task.task_id]
                for other in forwarded.pending:
                    link.send(P.RefOps(((False, other),)))
                link.send(P.RefOps(((False, object_id),)))
                if task.state in OCCUPYING:
                    self.node.fail_task(task, inline or b"")
                if task.actor_id:
                    self.node.actor_part.remote_call_ended(task)
                continue
            inner = self.adopt_contained(link, object_id)
            if inline is not None:
                link.send(P.RefOps(((False, object_id),)))
            self.node.set_ready(
                object_id,
                inline,
                size,
                False,
                (),
                location="" if inline is not None else link.address,
            )
            if object_id in self.node.objects:
                self.node.objects[object_id].contained = inner  # held for it in adopt_contained
            else:
                for inner_id in inner:  # already freed: nobody wanted it
                    self.node.decref(inner_id)
            if not forwarded.pending and task.state in OCCUPYING:
                task.transition(TaskState.FINISHED)
                self.node.events.ended(task.task_id, failed=False)
                remote = any(
                    self.node.objects[r].location for r in task.return_ids if r in self.node.objects
                )
                if remote and not task.actor_id:
                    self.node.tasks.pop(task.task_id, None)
                    self.pulling.lineage[task.task_id] = task  # its arguments stay held
                else:
                    self.node.forget_task(task)
                if task.actor_id:
                    self.node.actor_part.remote_call_ended(task)

    def on_attempt_lost(self, link: PeerLink, message: P.AttemptLost) -> None:
        """A task of ours lost its attempt on that peer (its worker died, or a retryable
        exception): let go of its returns there; ``NodeState`` retries or fails it."""
        forwarded = self.forwarded.get(message.task_id)
        if forwarded is None or forwarded.address != link.address:
            return  # retried already (the peer was declared dead) or cancelled
        del self.forwarded[message.task_id]
        for object_id in forwarded.pending:
            link.send(P.RefOps(((False, object_id),)))
        task = forwarded.task
        self._slot_freed(link.address, task.demand)
        self.node.execute(
            self.node.state.peer_attempt_lost(
                task, message.error, message.pid, message.cause, link.address
            )
        )

    def _slot_freed(self, address: str, demand: dict[str, float]) -> None:
        """A task of ours ended there: count its resources free until the next view."""
        for peer in self.peer_nodes():
            if peer.address == address:
                peer_placement.refund(peer, demand)

    def lend_contained(self, client: bytes, object_id: bytes, contained: tuple[bytes, ...]) -> None:
        """A peer gets a value of ours with refs inside: hold those for it, and say what
        they are, so that they outlive the value here and the peer can reach them."""
        infos = []
        for inner in contained:
            entry = self.node.objects.get(inner)
            if entry is None or not entry.ready or entry.location:
                continue  # not ready or not here: the peer cannot use it (not supported yet)
            self.node.hold(client, inner)
            holder = self.node.address if entry.in_store else ""
            inline = None if entry.in_store else entry.inline
            infos.append((inner, inline, entry.size, entry.is_error, holder))
        self.node.send(client, P.ContainedObjects(object_id, tuple(infos)))

    def on_contained_objects(self, link: PeerLink, message: P.ContainedObjects) -> None:
        self.contained_info[message.object_id] = message.objects

    def adopt_contained(self, link: PeerLink, object_id: bytes) -> tuple[bytes, ...]:
        """Entries for the refs inside a value a peer sent us, each held once for it."""
        inner_ids = []
        for inner, inline, size, is_error, holder in self.contained_info.pop(object_id, ()):
            inner_ids.append(inner)
            if inner in self.node.objects:
                self.node.incref(inner)
                link.send(P.RefOps(((False, inner),)))  # we have our own: theirs can go
                continue
            entry = self.node.objects[inner] = self.node.new_entry()
            entry.refs = 1
            if inline is not None or not holder:
                link.send(P.RefOps(((False, inner),)))
                self.node.set_ready(inner, inline, size, is_error, ())
            else:
                self.node.set_ready(inner, None, size, False, (), location=holder)
        return tuple(inner_ids)

    def on_peer_log_lines(self, link: PeerLink, message: P.LogLines) -> None:
        for driver in self.node.drivers():
            self.node.send(driver, message)

    def cancel_forwarded(self, task: TaskRecord, force: bool) -> bool:
        forwarded = self.forwarded.get(task.task_id)
        if forwarded is None:
            return False
        self.links.link(forwarded.address).send(P.CancelTask(task.return_ids[0], force, True))
        return True
