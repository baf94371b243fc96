"""The node's part for generator tasks: one ``streams.GeneratorStream`` per streaming task.

Built with the node (``Node.generators``); the node calls it from a handler and a few hooks
(submit, dispatch, failure, ref release, a client leaving). Each item becomes an object
owned by the task's submitter, held for it until its generator hands the ref out (then the
ref's count takes over) or is dropped (then the items it never took are let go).

A task forwarded to a peer (its resources, an actor hosted there) streams from there: the
peer's node pushes each item to us (its stream's owner is our link) as it would a result,
a large one staying in the peer's store until someone here pulls it (``on_peer_item``).
We relay to the peer what the peer's producer must hear of: our owner's takes (only with
backpressure: they move its credit), the owner dropping the generator (its handle's
release), and on a retry elsewhere how many items we have (``GeneratorConsumed.seen``).
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from rayjupyter.core import ids
from rayjupyter.core import protocol as P
from rayjupyter.core.object_store import shm_path
from rayjupyter.core.streams import (
    COMPLETED_INDEX,
    GeneratorStream,
    ItemVerdict,
    handle_id,
    item_id,
)

if TYPE_CHECKING:
    from rayjupyter.core.node import Node
    from rayjupyter.core.node_links import PeerLink
    from rayjupyter.core.scheduler import TaskRecord

#: at most this many streams at once on a node (each costs a few ints; the bound catches
#: a leak rather than limiting use)
MAX_STREAMS = 1_000_000


class NodeGenerators:
    """Streams of the generator tasks this node owns, and how their events play out."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.streams: dict[bytes, GeneratorStream] = {}
        self.modes: dict[bytes, tuple[str, int]] = {}  # task id -> (mode, backpressure)
        # streams whose producer runs on a peer: task id -> that peer's address (kept as
        # long as the stream: the owner's takes and drop are relayed there)
        self.remote: dict[bytes, str] = {}

    # ------------------------------------------------------------------ hooks

    def submitted(self, task_id: bytes, owner: bytes, message: P.SubmitTask) -> None:
        """A generator task arrives (before admission, which may fail it at once)."""
        if not message.generator:
            return
        self.modes[task_id] = (message.generator, message.backpressure)
        if message.generator != "streaming":
            return  # "dynamic" is all in the worker: its result holds the items' refs
        if len(self.streams) >= MAX_STREAMS:
            raise RuntimeError(
                f"{MAX_STREAMS} generator streams are open on this node (MAX_STREAMS in "
                f"node_generators.py): drop generators you no longer read."
            )
        self.streams[task_id] = GeneratorStream(task_id, owner, message.backpressure)

    def forwarding(self, task_id: bytes, address: str) -> tuple[str, int]:
        """The task goes to the peer at ``address``: (mode, backpressure) for its SubmitTask."""
        mode, backpressure = self.modes.get(task_id, ("", -1))
        if task_id in self.streams:
            self.remote[task_id] = address
        return mode, backpressure

    def forwarded(self, task_id: bytes, link: PeerLink) -> None:
        """After its SubmitTask: a retry starts where our stream is (items we have are not
        made again there, and the window counts what our owner took); a generator its
        owner dropped already has no window there either."""
        stream = self.streams.get(task_id)
        if stream is None:
            return
        if stream.produced:
            link.send(P.GeneratorConsumed(task_id, stream.consumed, stream.produced))
        if stream.abandoned:
            link.send(P.RefOps(((False, handle_id(task_id)),)))

    def detach(self, task_id: bytes) -> None:
        """We no longer listen to the peer that ran the task (it lost the actor, whose
        home retries or fails the call): what it still sends of that attempt is dropped,
        and its stream there is let go."""
        if task_id in self.remote:
            self._relay(task_id, P.RefOps(((False, handle_id(task_id)),)))
            del self.remote[task_id]

    def execute_fields(self, task_id: bytes) -> tuple[str, int]:
        """(mode, first credit) for the task's ExecuteTask."""
        mode, backpressure = self.modes.get(task_id, ("", -1))
        stream = self.streams.get(task_id)
        return mode, stream.credit() if stream is not None else backpressure

    def dispatched(self, task: TaskRecord, worker: bytes) -> None:
        """After ExecuteTask: a retry learns what the node has already."""
        self.remote.pop(task.task_id, None)  # (a retry here of a task a peer ran first)
        stream = self.streams.get(task.task_id)
        if stream is not None and stream.produced:
            self.node.send(
                worker, P.GeneratorCredit(task.task_id, stream.credit(), stream.produced)
            )

    def failed(self, task: TaskRecord, error_blob: bytes) -> None:
        """The task failed (raised, crashed out of retries, was cancelled): the error is
        the next item, so ``next(gen)`` hands it out where the stream stopped."""
        stream = self.streams.get(task.task_id)
        if stream is None:
            return
        index = stream.failed()
        if index is not None:
            self._make_item(stream, index, error_blob, len(error_blob), True, ())

    def forgotten(self, task_id: bytes) -> None:
        """The task is done: keep its stream only while its owner may still take items."""
        self.modes.pop(task_id, None)
        stream = self.streams.get(task_id)
        if stream is None:
            return
        if not stream.ended:
            stream.finished()
        if stream.abandoned or stream.owner not in self.node.clients:
            self._drop(task_id)

    def released(self, object_id: bytes) -> None:
        """A ref op released a generator's handle (its owner dropped the generator): let
        go of the items it never took; later items are freed as they come."""
        stream = self.streams.get(ids.task_of(object_id))
        if stream is None or object_id != handle_id(stream.task_id):
            return
        node = self.node
        if stream.owner not in node.node_clients:
            # (a peer node that owns a stream here lets go of the items itself: it holds
            # only the large ones it took, and frees those when its own refs go)
            for index in stream.abandon():
                node.unhold(stream.owner, item_id(stream.task_id, index))
        else:
            stream.abandon()
        self._relay(stream.task_id, P.RefOps(((False, object_id),)))
        if stream.task_id not in node.tasks:
            self._drop(stream.task_id)
        else:
            self._send_credit(stream)  # nobody reads: let the producer run to its end

    def client_gone(self, client: bytes) -> None:
        for task_id, stream in list(self.streams.items()):
            if stream.owner == client:
                stream.abandoned = True
                self._relay(task_id, P.RefOps(((False, handle_id(task_id)),)))
                if task_id not in self.node.tasks:
                    self._drop(task_id)
                else:
                    self._send_credit(stream)

    # ------------------------------------------------------------------ messages

    def on_item(self, message: P.GeneratorItem) -> None:
        object_id, inline, size, contained = message.result
        stream = self.streams.get(message.task_id)
        verdict = ItemVerdict.LATE if stream is None else stream.item(message.item_index)
        if stream is None or verdict is not ItemVerdict.ACCEPT:
            if inline is None and object_id not in self.node.objects:
                with contextlib.suppress(FileNotFoundError):  # nobody will ever read it
                    os.unlink(shm_path(self.node.session, object_id))
            return
        self._make_item(stream, message.item_index, inline, size, False, contained)

    def on_consumed(self, message: P.GeneratorConsumed) -> None:
        stream = self.streams.get(message.task_id)
        if stream is None:
            return
        if message.seen:  # a node re-forwarding a retried task: start where it is
            if stream.resume(message.seen, message.taken):
                self._send_credit(stream, always=True)
        elif stream.taken(message.taken) is not None:
            self._send_credit(stream)
            self._relay(stream.task_id, P.GeneratorConsumed(stream.task_id, stream.consumed))

    def on_peer_item(
        self, link: PeerLink, object_id: bytes, inline: bytes | None, size: int, is_error: bool
    ) -> bool:
        """An object the peer running one of our streams pushed: if it is an item (False:
        not one), make it ours, in order; a large one stays there until pulled."""
        index = int.from_bytes(object_id[ids.TASK_ID_SIZE :], "big")
        task_id = ids.task_of(object_id)
        stream = self.streams.get(task_id)
        if stream is None or index == COMPLETED_INDEX:
            return False
        node = self.node
        verdict = ItemVerdict.LATE
        if self.remote.get(task_id) == link.address:  # (not a stale producer's)
            verdict = stream.item(index - 1, is_error)
        if verdict is not ItemVerdict.ACCEPT or inline is not None:
            link.send(P.RefOps(((False, object_id),)))  # their copy is not needed
        if verdict is not ItemVerdict.ACCEPT:
            node.forwarding.contained_info.pop(object_id, None)
            return True
        inner = node.forwarding.adopt_contained(link, object_id)
        location = "" if inline is not None else link.address
        self._make_item(stream, index - 1, inline, size, is_error, (), location)
        if object_id in node.objects:
            node.objects[object_id].contained = inner  # held for it in _adopt_contained
        else:
            for inner_id in inner:  # already freed: nobody wanted it
                node.decref(inner_id)
        return True

    # ------------------------------------------------------------------ inside

    def _make_item(
        self,
        stream: GeneratorStream,
        index: int,
        inline: bytes | None,
        size: int,
        is_error: bool,
        contained: tuple[bytes, ...],
        location: str = "",
    ) -> None:
        node = self.node
        object_id = item_id(stream.task_id, index)
        entry = node.objects.get(object_id)
        if entry is None:
            entry = node.objects[object_id] = node.new_entry()
        if not stream.abandoned and stream.owner in node.clients:
            node.hold(stream.owner, object_id)  # handed to the owner's ref by next(gen)
            if stream.owner in node.node_clients:  # a peer forwarded the task: push it there
                entry.subscribe(stream.owner)
        node.set_ready(object_id, inline, size, is_error, contained, location=location)

    def _send_credit(self, stream: GeneratorStream, always: bool = False) -> None:
        task = self.node.tasks.get(stream.task_id)
        if task is None or task.worker is None or stream.ended:
            return
        if task.worker in self.node.workers and (always or stream.backpressure >= 0):
            self.node.send(
                task.worker, P.GeneratorCredit(stream.task_id, stream.credit(), stream.produced)
            )

    def _relay(self, task_id: bytes, message: P.GeneratorConsumed | P.RefOps) -> None:
        """To the peer that runs the stream's producer (if its link still stands)."""
        address = self.remote.get(task_id)
        if address is not None:
            link = self.node.links.get(address)
            if link is not None:
                link.send(message)

    def _drop(self, task_id: bytes) -> None:
        del self.streams[task_id]
        self.remote.pop(task_id, None)

    def validate(self) -> None:
        for stream in self.streams.values():
            stream.validate()
        assert self.remote.keys() <= self.streams.keys()
