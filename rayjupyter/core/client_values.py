"""Values from the ObjectInfos a client holds: decoded inline, mapped zero-copy from the
node's shared memory, or copied over the connection by a driver on another machine.

A part of ``client.Client`` (``Client.values``); its own module because reading a value is
one job (with its own state: the mappings a worker keeps, the copies in progress) apart
from sending and waiting.
"""

from __future__ import annotations

import pickle
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from rayjupyter.core import protocol as P
from rayjupyter.core.exceptions import GetTimeoutError, ObjectLostError, RayTaskError
from rayjupyter.core.object_fetch import Fetch
from rayjupyter.core.object_files import map_object, shm_path
from rayjupyter.core.object_ref import reference_counter
from rayjupyter.core.serialization import deserialize

KEEP_MAPPED = 8  # mappings of task arguments a worker keeps (see materialize)

_Args = ParamSpec("_Args")
_Result = TypeVar("_Result")


def weak_method(method: Callable[_Args, _Result]) -> Callable[_Args, _Result]:
    """A client's method for its parts, without a reference back to the client: a cycle
    would leave a dropped client to the garbage collector, whose order of finalizers can
    terminate its zmq context before its sockets close (and then block)."""
    ref = weakref.WeakMethod(method)

    def call(*args: _Args.args, **kwargs: _Args.kwargs) -> _Result:
        bound = ref()
        if bound is None:
            raise ReferenceError("this client was closed and dropped")
        return bound(*args, **kwargs)

    return call


class ValueReader:
    """Turns ObjectInfos into values for one client."""

    def __init__(
        self,
        *,
        session: str,
        remote: bool,
        address: str,
        store_capacity: int,
        pins: deque[tuple[bool, bytes]],
        cond: threading.Condition,
        send: Callable[[list[Any]], None],
        wait: Callable[[Callable[[], bool], float | None], bool],
        restore: Callable[[bytes, float | None], P.ObjectInfo],
    ) -> None:
        self.session = session
        self.remote = remote  # on another machine than the node: no shared memory here
        self.address = address
        self.store_capacity = store_capacity
        self.pins = pins  # (mapped?, id): the client reports them with its ref ops
        self.cond = cond
        self.send = send
        self.wait = wait
        self.restore = restore  # a spilled value: the node brings it back (or says why not)
        # see materialize; the lock: the IO thread drops freed objects (forget_mapped)
        self.mapped: OrderedDict[bytes, memoryview] = OrderedDict()
        self.mapped_bytes: dict[bytes, int] = {}
        self.mapped_lock = threading.Lock()
        self.fetches: dict[bytes, Fetch] = {}

    def materialize(
        self, info: P.ObjectInfo, timeout: float | None = None, *, keep_mapped: bool = False
    ) -> Any:
        """The value behind an ObjectInfo: inline bytes decoded, shared memory mapped zero-copy.

        ``keep_mapped`` (workers, for task arguments) keeps the last few mappings: a large
        array passed to many tasks is then mapped and faulted into this process once, not
        per task. Each call still builds a fresh value from the mapping, so tasks never
        share objects. A kept mapping holds its pin: the node neither spills the object nor
        reuses its file meanwhile. When it frees the object, or must spill it, it tells us
        to drop it (``forget_mapped``), so a kept mapping never outlives the object's last
        ref nor holds the store over its capacity.
        """
        object_id, inline, size, is_error = info
        if keep_mapped and inline is None:
            with self.mapped_lock:
                kept = self.mapped.get(object_id)
                if kept is not None:
                    self.mapped.move_to_end(object_id)
            if kept is not None:
                return deserialize(kept)
        if is_error:
            error = pickle.loads(inline or b"")
            if isinstance(error, RayTaskError):
                raise error.as_instanceof_cause()
            raise error
        if inline is not None:
            return deserialize(inline)
        if self.remote:
            return deserialize(self.fetch(object_id, size, timeout))
        path = shm_path(self.session, object_id)
        for _ in range(3):
            try:
                view = map_object(path, on_release=lambda: self._pin(False, object_id))
            except FileNotFoundError:  # spilled to disk: ask the node to bring it back
                fresh = self.restore(object_id, timeout)
                if fresh[3] or fresh[1] is not None:  # e.g. ObjectStoreFullError: no room
                    return self.materialize(fresh, timeout, keep_mapped=keep_mapped)
                continue
            self._pin(True, object_id)
            if keep_mapped:
                self.keep_mapped(object_id, view, size)
            return deserialize(view)
        raise FileNotFoundError(f"object {object_id.hex()} vanished from shared memory at {path}")

    def fetch(self, object_id: bytes, size: int, timeout: float | None) -> memoryview:
        """Copy a value from the node's store over the connection (a driver elsewhere)."""
        fetch = Fetch.start(object_id, size)
        with self.cond:
            while object_id in self.fetches:  # another thread fetches it: wait for that one
                self.cond.wait(0.1)
            self.fetches[object_id] = fetch
        try:
            self.send(list(fetch.next_requests()))
            if not self.wait(lambda: fetch.done, timeout):
                raise GetTimeoutError(
                    f"Get timed out: object {object_id.hex()} ({size / 2**20:.1f} MiB) was "
                    f"still being copied from the node after {timeout} s."
                )
        finally:
            with self.cond:
                self.fetches.pop(object_id, None)
                self.cond.notify_all()
        if fetch.error:
            raise ObjectLostError(
                f"Object {object_id.hex()} could not be copied from the node at {self.address}: "
                f"{fetch.error}."
            )
        return fetch.view()

    def on_chunk(self, chunk: P.ObjectChunk, data: bytes | memoryview) -> None:
        fetch = self.fetches.get(chunk.object_id)
        if fetch is None:
            return
        fetch.add(chunk, data)
        if not fetch.done:
            self.send(list(fetch.next_requests()))
            return
        with self.cond:
            self.cond.notify_all()

    def _pin(self, mapped: bool, object_id: bytes) -> None:
        """Queue a pin (or, unmapped, an unpin) for the node; it rides with the ref ops."""
        self.pins.append((mapped, object_id))
        if reference_counter.on_queued is not None:  # a worker sleeps: wake it to send
            reference_counter.queued()

    def keep_mapped(self, object_id: bytes, view: memoryview, size: int) -> None:
        """Remember a mapping; the oldest go (and are unpinned) past the count or byte limit."""
        dropped = []  # unmapped (by the last value's finalizer) after the lock is let go
        with self.mapped_lock:
            mapped = self.mapped
            mapped[object_id] = view
            self.mapped_bytes[object_id] = size
            # (kept mappings do not stop the store spilling: it asks for them, UnmapKept)
            limit = max(self.store_capacity // 2, 1)
            while len(mapped) > KEEP_MAPPED or (
                len(mapped) > 1 and sum(self.mapped_bytes.values()) > limit
            ):
                oldest, old_view = mapped.popitem(last=False)
                del self.mapped_bytes[oldest]
                dropped.append(old_view)
        del dropped

    def forget_mapped(self, object_ids: tuple[bytes, ...]) -> None:
        """Drop the kept mappings of these objects (``UnmapKept``: freed, or to be spilled).

        A mapping goes (and its unpin is sent) once no value built on it lives either; a
        task still holding one keeps reading the sealed bytes it mapped.
        """
        dropped = []
        with self.mapped_lock:
            for object_id in object_ids:
                view = self.mapped.pop(object_id, None)
                if view is not None:
                    del self.mapped_bytes[object_id]
                    dropped.append(view)
        del dropped
