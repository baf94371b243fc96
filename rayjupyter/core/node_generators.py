"""The node's part for generator tasks: one ``streams.GeneratorStream`` per streaming task.

Built with the node (``Node.generators``); the node calls it from a handler and a few hooks
(submit, dispatch, failure, ref release, a client leaving). Each item becomes an object
owned by the task's submitter, held for it until its generator hands the ref out (then the
ref's count takes over) or is dropped (then the items it never took are let go).
"""

from __future__ import annotations

import contextlib
import os
import pickle
from typing import TYPE_CHECKING

from rayjupyter.core import ids
from rayjupyter.core import protocol as P
from rayjupyter.core.object_store import shm_path
from rayjupyter.core.streams import GeneratorStream, ItemVerdict, handle_id, item_id

if TYPE_CHECKING:
    from rayjupyter.core.node import Node
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

    def local_only(self, task_id: bytes) -> bool:
        """Generator tasks run on the node their owner is attached to (see Known gaps)."""
        return task_id in self.modes

    def placement_error(self, task: TaskRecord) -> bytes | None:
        """A generator task this node can never run fails now, saying why (it would wait
        forever: generator tasks are not sent to peers)."""
        if task.task_id not in self.modes or task.actor_id:
            return None
        if self.node.resources.feasible(task.demand):
            return None
        error = NotImplementedError(
            f"{task.name!r} is a generator task (num_returns='streaming' or 'dynamic') that "
            f"needs {task.demand}, which the node its caller is attached to does not have; "
            f"generator tasks run only on that node. Ask for resources that node has, or "
            f"return a list instead."
        )
        return pickle.dumps(error, protocol=5)

    def refuse_forward(self, task: TaskRecord) -> bool:
        """A generator call to an actor on another node: fail it, saying why (True)."""
        if task.task_id not in self.modes:
            return False
        error = NotImplementedError(
            f"{task.name!r} is a generator call (num_returns='streaming' or 'dynamic') to an "
            f"actor or node elsewhere in the cluster; generator tasks run only on the node "
            f"their caller is attached to. Create the actor there, or return a list instead."
        )
        actor = self.node.actors.get(task.actor_id)
        if actor is not None:
            actor.in_flight.pop(task.task_id, None)
        self.node.fail_task(task, pickle.dumps(error, protocol=5))
        return True

    def execute_fields(self, task_id: bytes) -> tuple[str, int]:
        """(mode, first credit) for the task's ExecuteTask."""
        mode, backpressure = self.modes.get(task_id, ("", -1))
        stream = self.streams.get(task_id)
        return mode, stream.credit() if stream is not None else backpressure

    def dispatched(self, task: TaskRecord, worker: bytes) -> None:
        """After ExecuteTask: a retry learns what the node has already."""
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
            del self.streams[task_id]

    def released(self, object_id: bytes) -> None:
        """A ref op released a generator's handle (its owner dropped the generator): let
        go of the items it never took; later items are freed as they come."""
        stream = self.streams.get(ids.task_of(object_id))
        if stream is None or object_id != handle_id(stream.task_id):
            return
        node = self.node
        for index in stream.abandon():
            node.unhold(stream.owner, item_id(stream.task_id, index))
        if stream.task_id not in node.tasks:
            del self.streams[stream.task_id]
        else:
            self._send_credit(stream)  # nobody reads: let the producer run to its end

    def client_gone(self, client: bytes) -> None:
        for task_id, stream in list(self.streams.items()):
            if stream.owner == client:
                stream.abandoned = True
                if task_id not in self.node.tasks:
                    del self.streams[task_id]
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
        if stream is not None and stream.taken(message.taken) is not None:
            self._send_credit(stream)

    # ------------------------------------------------------------------ inside

    def _make_item(
        self,
        stream: GeneratorStream,
        index: int,
        inline: bytes | None,
        size: int,
        is_error: bool,
        contained: tuple[bytes, ...],
    ) -> None:
        node = self.node
        object_id = item_id(stream.task_id, index)
        if object_id not in node.objects:
            node.objects[object_id] = node.new_entry()
        if not stream.abandoned and stream.owner in node.clients:
            node.hold(stream.owner, object_id)  # handed to the owner's ref by next(gen)
        node.set_ready(object_id, inline, size, is_error, contained)

    def _send_credit(self, stream: GeneratorStream) -> None:
        task = self.node.tasks.get(stream.task_id)
        if task is None or task.worker is None or stream.ended:
            return
        if task.worker in self.node.workers:
            self.node.send(
                task.worker, P.GeneratorCredit(stream.task_id, stream.credit(), stream.produced)
            )

    def validate(self) -> None:
        for stream in self.streams.values():
            stream.validate()
