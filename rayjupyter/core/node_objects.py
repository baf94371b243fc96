"""The node's object table: an entry per object from the task that will make it until it is
freed, the holds on it, and what happens when it becomes ready.

A part of the node daemon (``Node.object_table``). Holds come from client refs (per client,
``holds``, so a client that leaves lets go of all of them), tasks using the object, and
objects containing it; an actor's handles count like refs (its record's ``refs``). At 0
holds a ready object is freed: its file in the store, the copies peers keep for us, the
lineage kept to rebuild it, and the holds on what it contains. When an object becomes ready
(``set_ready``) its owner and subscribers hear it and the tasks waiting for it move on.
"""

from __future__ import annotations

import itertools
import pickle
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from rayjupyter.core import ids
from rayjupyter.core import protocol as P
from rayjupyter.core.exceptions import ObjectLostError, ObjectStoreFullError
from rayjupyter.core.node_actors import ActorRecord
from rayjupyter.core.node_forwarding import NodeForwarding
from rayjupyter.core.node_generators import NodeGenerators
from rayjupyter.core.node_io import ClientInfo
from rayjupyter.core.node_pulls import NodePulls
from rayjupyter.core.node_state import NodeState
from rayjupyter.core.object_files import FlatBytes, pool_prefix, shm_path, write_object
from rayjupyter.core.object_store import ObjectStore
from rayjupyter.core.scheduler import TaskRecord, TaskState
from rayjupyter.core.serialization import INLINE_THRESHOLD
from rayjupyter.core.task_errors import dependency_failed

#: holds of gone clients dropped per loop turn (about 20 ms)
RELEASE_PER_TURN = 20_000
_NO_ONE: frozenset[Any] = frozenset()  # shared by every entry with no subscriber or copy


class ObjectEntry:
    """One object in the node's table, from the task that will make it until it is freed."""

    __slots__ = (
        "contained",
        "copies",
        "in_store",
        "inline",
        "is_error",
        "location",
        "ready",
        "refs",
        "size",
        "subscribers",
        "waiters",
    )

    def __init__(self) -> None:
        self.ready = False
        self.inline: bytes | None = None
        self.size = 0
        self.is_error = False
        self.in_store = False  # the value is a file in shared memory (or spilled)
        self.refs = 0  # holds: client refs, tasks using it, objects containing it
        self.contained: tuple[bytes, ...] = ()
        self.waiters: list[TaskRecord] = []
        # a set of their own only once they have a member (subscribe, add_copy): most
        # objects never do, and two empty sets were 430 of a queued task's ~1,500 bytes
        self.subscribers: frozenset[bytes] | set[bytes] = _NO_ONE
        self.location = ""  # host:port of the peer node that has the value, if not here
        self.copies: frozenset[str] | set[str] = _NO_ONE  # peers keeping a copy for us

    def subscribe(self, client: bytes) -> None:
        """``client`` hears when the value exists."""
        if isinstance(self.subscribers, frozenset):
            self.subscribers = {client}
        else:
            self.subscribers.add(client)

    def add_copy(self, address: str) -> None:
        """The peer at ``address`` keeps a copy for us until we free the object."""
        if isinstance(self.copies, frozenset):
            self.copies = {address}
        else:
            self.copies.add(address)

    def drop_copy(self, address: str) -> None:
        if not isinstance(self.copies, frozenset):
            self.copies.discard(address)


class NodeObjects:
    """The object table and its holds; objects made ready, subscribed to, freed."""

    def __init__(
        self,
        *,
        session: str,
        state: NodeState,
        store: ObjectStore,
        clients: dict[bytes, ClientInfo],
        actors: dict[bytes, ActorRecord],
        generators: NodeGenerators,
        pulling: NodePulls,
        forwarding: NodeForwarding,
        send: Callable[[bytes, Any], None],
        actor_released: Callable[[ActorRecord], None],
    ) -> None:
        self.session = session
        self.store = store
        self.clients = clients
        self.actors = actors  # actor handles are held like objects
        self.generators = generators
        self.send = send
        # the task part's, given by ``wire`` (it is built after us: it uses this table)
        self.task_ready: Callable[[TaskRecord], None] = _unwired
        self.fail_task: Callable[[TaskRecord, bytes], None] = _unwired
        self.actor_released = actor_released
        # bound once: called per object on the path of every task
        self.dependency_ready = state.dependency_ready
        self.node_clients = forwarding.links.node_clients
        self.lend_contained = forwarding.lend_contained
        self.pull = pulling.pull
        self.release_copies = pulling.release_copies
        self.lineage = pulling.lineage
        self.forget_lineage = pulling.forget_lineage
        self.promised = pulling.promises.promised  # ours that peers wait for (NodePromises)
        self.keep_promise = pulling.promises.keep
        self.objects: dict[bytes, ObjectEntry] = {}
        self.holds: dict[bytes, dict[bytes, int]] = {}  # client -> object -> count
        self.releasing: deque[Iterator[tuple[bytes, int]]] = deque()  # gone clients' holds

    def wire(
        self,
        task_ready: Callable[[TaskRecord], None],
        fail_task: Callable[[TaskRecord, bytes], None],
    ) -> None:
        """What a ready object does to the tasks waiting for it (``NodeTasks``)."""
        self.task_ready = task_ready
        self.fail_task = fail_task

    def new_entry(self) -> ObjectEntry:
        return ObjectEntry()

    def release_holds(self, client: bytes) -> None:
        """A client is gone: drop its holds; a driver that held a million refs has them
        dropped over several loop turns (``release_some``), so the node keeps answering."""
        holds = self.holds.pop(client, None)
        if holds:
            self.releasing.append(iter(holds.items()))
            self.release_some()

    def release_some(self) -> None:
        """Drop up to ``RELEASE_PER_TURN`` holds of clients that are gone (every loop turn
        while some are left)."""
        budget = RELEASE_PER_TURN
        releasing = self.releasing
        decref = self.decref
        while releasing and budget > 0:
            for object_id, count in itertools.islice(releasing[0], budget):
                budget -= 1
                for _ in range(count):
                    decref(object_id)
            if budget > 0:  # that client's holds are all dropped
                releasing.popleft()

    def on_put(self, client: bytes, message: P.PutObject) -> None:
        entry = ObjectEntry()
        self.objects[message.object_id] = entry
        self.hold(client, message.object_id)
        inline = message.inline
        if inline is not None and len(inline) > INLINE_THRESHOLD:
            # a driver on another machine sends large values whole: they go to the store here
            path = shm_path(self.session, message.object_id)
            try:
                write_object(path, FlatBytes(inline), pool_prefix(self.session))
                inline = None
            except ObjectStoreFullError:
                pass  # kept inline: the value still works, in this process's memory
        self.set_ready(message.object_id, inline, message.size, False, message.contained)

    def on_ref_ops(self, client: bytes, message: P.RefOps) -> None:
        for add, object_id in message.ops:
            if add:
                if object_id in self.objects or object_id in self.actors:
                    self.hold(client, object_id)
            else:
                self.unhold(client, object_id)
                if self.generators.streams:  # maybe a generator its owner dropped
                    self.generators.released(object_id)

    def on_pin_ops(self, client: bytes, message: P.PinOps) -> None:
        for pin, object_id in message.ops:
            if not pin:
                self.store.unpin(object_id, client)  # also for freed objects still mapped
            elif self.store.contains(object_id):
                self.store.pin(object_id, client)

    def on_subscribe(self, client: bytes, message: P.Subscribe) -> None:
        for object_id in message.object_ids:
            entry = self.objects.get(object_id)
            if entry is None:
                error = ObjectLostError(
                    f"Object {object_id.hex()} is not known to this cluster: every ref to it "
                    f"was dropped before this get, or it was made by another cluster."
                )
                blob = pickle.dumps(error, protocol=5)
                self.send(client, P.ObjectsReady(((object_id, blob, len(blob), True),)))
            elif entry.ready and not entry.location:
                self.send(client, P.ObjectsReady((self.object_info(object_id, entry),)))
            else:
                entry.subscribe(client)
                if entry.location:
                    self.pull(object_id)

    def hold(self, client: bytes, object_id: bytes) -> None:
        counts = self.holds.setdefault(client, {})
        counts[object_id] = counts.get(object_id, 0) + 1
        self.incref(object_id)

    def unhold(self, client: bytes, object_id: bytes) -> None:
        counts = self.holds.get(client)
        if counts is None or object_id not in counts:
            return
        if counts[object_id] <= 1:
            del counts[object_id]
        else:
            counts[object_id] -= 1
        self.decref(object_id)

    def incref(self, object_id: bytes) -> None:
        """One more hold on an object, or on an actor (its handles count like refs)."""
        entry = self.objects.get(object_id)
        if entry is not None:
            entry.refs += 1
        elif object_id in self.actors:
            self.actors[object_id].refs += 1

    def decref(self, object_id: bytes) -> None:
        entry = self.objects.get(object_id)
        if entry is None:
            if object_id in self.actors:
                self.actor_released(self.actors[object_id])
            return
        entry.refs -= 1
        if entry.refs <= 0 and entry.ready:
            self.free(object_id, entry)

    def free(self, object_id: bytes, entry: ObjectEntry) -> None:
        if self.objects.get(object_id) is not entry:
            return  # already freed further down a cascade of failures or releases
        del self.objects[object_id]
        if entry.in_store:
            for client in self.store.pinned_by(object_id):
                self.unmap_kept(client, object_id)
            self.store.free(object_id)
        if entry.location or entry.copies:
            self.release_copies(object_id, set(entry.copies) | ({entry.location} - {""}))
        if self.lineage:
            self.forget_lineage(object_id)
        if self.promised:
            self.promised.pop(object_id, None)
        for contained in entry.contained:
            self.decref(contained)

    def unmap_kept(self, client: bytes, object_id: bytes) -> None:
        """A worker that maps a freed object (or one the store must spill) may only keep it
        for later tasks: it drops that mapping, and its unpin lets the memory go (or lets
        the store spill it). A mapping that a live value still uses stays until it dies."""
        if self._is_worker(client):  # (pins are also held by tasks, under their ids)
            self.send(client, P.UnmapKept((object_id,)))

    def relieve_store(self) -> None:
        """The store is over its capacity because what it would spill is mapped: ask the
        workers that keep those mappings to let go (the store spills on their unpins).
        Objects that a driver or a task pins too are left alone: asking would free nothing."""
        for object_id, clients in self.store.pinned_excess(self._is_worker):
            for client in clients:
                self.unmap_kept(client, object_id)

    def _is_worker(self, client: bytes) -> bool:
        info = self.clients.get(client)
        return info is not None and info.kind == "worker"

    def object_info(self, object_id: bytes, entry: ObjectEntry) -> P.ObjectInfo:
        if entry.in_store:
            try:
                self.store.restore(object_id)
            except ObjectStoreFullError as exc:  # /dev/shm itself is full: this read fails
                blob = pickle.dumps(exc, protocol=5)
                return (object_id, blob, len(blob), True)
            self.store.touch(object_id)
            if self.store.used_bytes > self.store.capacity:
                self.relieve_store()
        return (object_id, entry.inline, entry.size, entry.is_error)

    def set_ready(
        self,
        object_id: bytes,
        inline: bytes | None,
        size: int,
        is_error: bool,
        contained: tuple[bytes, ...],
        location: str = "",
        answered: bool = False,
    ) -> None:
        """``answered``: its worker sent it to its owner directly (direct_links.py): the
        owner hears it from us only if it subscribed (after its link closed)."""
        entry = self.objects.get(object_id)
        if entry is None:  # made by a retried task whose first result was freed meanwhile
            entry = self.objects[object_id] = ObjectEntry()
        if location:
            self._set_ready_elsewhere(object_id, entry, size, location)
            return
        if inline is None:
            try:
                self.store.add(object_id, size)
            except ObjectStoreFullError as exc:
                # no room even by spilling: the value is this error, so a get raises it
                # and the tasks waiting for it fail, rather than wait for ever
                inline = pickle.dumps(exc, protocol=5)
                size, is_error, contained = len(inline), True, ()
            if self.store.used_bytes > self.store.capacity:
                self.relieve_store()
        entry.location = ""
        entry.ready = True
        entry.inline = inline
        entry.size = size
        entry.is_error = is_error
        entry.in_store = inline is None
        entry.contained = contained
        for inner in contained:
            self.incref(inner)
        if self.promised and object_id in self.promised:
            self.keep_promise(object_id, entry)
        if entry.refs > 0:
            info = (object_id, inline, size, is_error)
            owner = ids.owner_of(object_id)
            if owner in self.clients and (not answered or owner in entry.subscribers):
                self.send(owner, P.ObjectsReady((info,)))
            for subscriber in entry.subscribers:
                if subscriber != owner:
                    if contained and subscriber in self.node_clients:
                        self.lend_contained(subscriber, object_id, contained)
                    self.send(subscriber, P.ObjectsReady((info,)))
        entry.subscribers = _NO_ONE
        waiters, entry.waiters = entry.waiters, []
        dependency_ready = self.dependency_ready
        for task in waiters:
            if is_error:
                if task.state is TaskState.WAITING:
                    self.fail_task(task, dependency_failed(task, inline or b""))
            elif dependency_ready(task):
                self.task_ready(task)
        if entry.refs <= 0:
            self.free(object_id, entry)

    def _set_ready_elsewhere(
        self, object_id: bytes, entry: ObjectEntry, size: int, location: str
    ) -> None:
        """The value exists on a peer: pull it only when someone here needs it."""
        entry.ready = True
        entry.size = size
        entry.location = location
        if self.promised and object_id in self.promised:
            self.keep_promise(object_id, entry)
        if entry.refs > 0:
            owner = ids.owner_of(object_id)
            if owner in self.clients and owner not in entry.subscribers:
                # ready, not copied: when the owner reads it and finds no file here, it
                # asks again (Subscribe with restore), and that is when we pull it
                self.send(owner, P.ObjectsReady(((object_id, None, size, False),)))
        if entry.subscribers:
            self.pull(object_id)
        waiters, entry.waiters = entry.waiters, []
        for task in waiters:  # placed next: maybe where the value is, with no copy
            if self.dependency_ready(task):
                self.task_ready(task)
        if entry.refs <= 0:
            self.free(object_id, entry)


def _unwired(*args: Any) -> None:
    raise RuntimeError("NodeObjects.wire was not called: the node wires its parts at start")
