"""ObjectRef, and the per-process reference counts that let the cluster free objects.

Each process counts its live ObjectRefs per object id. Only the transitions matter to the
node: the first ref in this process (0 -> 1) and the last one gone (1 -> 0). They are
queued here, never sent from ``__del__`` (which may run inside a send, on any thread), and
the client flushes the queue ahead of its next message, so the node sees them in order.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
import types
from collections import deque
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from rayjupyter.core import ids, serialization
from rayjupyter.core.id_types import JobID, TaskID

if TYPE_CHECKING:
    import asyncio


class ReferenceCounter:
    """Live ObjectRefs per object id in this process, and the transitions to report."""

    def __init__(self) -> None:
        self._counts: dict[bytes, int] = {}
        self._lock = threading.RLock()  # re-entrant: GC may run __del__ inside a locked section
        self.pending: deque[tuple[bool, bytes]] = deque()
        #: called with an id when its last ref in this process is gone (drops cached values)
        self.on_zero: Callable[[bytes], None] | None = None
        #: set while a worker sleeps with nothing to send (``Client._idle_wait``): called
        #: once, at the next change queued for the node, so the worker wakes to send it
        self.on_queued: Callable[[], None] | None = None

    def add(self, object_id: bytes, *, report: bool = True) -> None:
        with self._lock:
            count = self._counts.get(object_id, 0)
            self._counts[object_id] = count + 1
            if count == 0 and report:
                self.pending.append((True, object_id))
                if self.on_queued is not None:
                    self.queued()

    def remove(self, object_id: bytes) -> None:
        with self._lock:
            count = self._counts.get(object_id, 0)
            if count <= 1:
                self._counts.pop(object_id, None)
                if count == 1:
                    self.pending.append((False, object_id))
                    if self.on_queued is not None:
                        self.queued()
                    if self.on_zero is not None:
                        self.on_zero(object_id)
            else:
                self._counts[object_id] = count - 1

    def queued(self) -> None:
        """A change for the node was queued (here, or a pin by ``client_values``): wake
        the worker if it sleeps with nothing to send."""
        wake, self.on_queued = self.on_queued, None
        if wake is not None:
            wake()

    def count(self, object_id: bytes) -> int:
        return self._counts.get(object_id, 0)

    def drain(self) -> tuple[tuple[bool, bytes], ...]:
        """Take the queued transitions, oldest first."""
        ops: list[tuple[bool, bytes]] = []
        pending = self.pending
        while pending:
            ops.append(pending.popleft())
        return tuple(ops)

    def reset(self) -> None:
        """Forget everything (the cluster this process talked to is gone)."""
        with self._lock:
            self._counts.clear()
            self.pending.clear()


reference_counter = ReferenceCounter()
_NIL = b"\xff" * 20  # Ray's nil object id (ours are 20 bytes)


class ObjectRef:
    """A handle to a value in the cluster: pass it to tasks, ``get`` it, ``wait`` on it."""

    __slots__ = ("__weakref__", "_id")

    def __init__(self, object_id: bytes, *, _owned: bool = False) -> None:
        if not _owned:  # from the user or from a pickle: checked (ours are made right)
            problem = ids.object_id_problem(object_id)
            if problem:
                error = TypeError if not isinstance(object_id, bytes) else ValueError
                raise error(
                    f"Not an object id: {problem}. Make an ObjectRef from the bytes of a "
                    f"live ref (ref.binary()), or use the refs that .remote() and put return."
                )
        self._id = object_id
        # a ref made by submit or put is already held at the node on our behalf
        reference_counter.add(object_id, report=not _owned)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            reference_counter.remove(self._id)

    def __reduce__(self) -> tuple[Any, ...]:
        serialization.record_contained_ref(self)
        return (ObjectRef, (self._id,))

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    @classmethod
    def nil(cls) -> ObjectRef:
        """Ray's nil ref (all 0xff): a placeholder that names no object."""
        return cls._uncounted(_NIL)

    @classmethod
    def from_random(cls) -> ObjectRef:
        """A ref to a random id that no object has (Ray's, for tests and placeholders)."""
        return cls._uncounted(os.urandom(len(_NIL)))

    @classmethod
    def _uncounted(cls, object_id: bytes) -> ObjectRef:
        ref = object.__new__(cls)
        ref._id = object_id  # not counted: the node holds nothing for it
        return ref

    def is_nil(self) -> bool:
        return self._id == _NIL

    def task_id(self) -> TaskID:
        """The task (or put) that made this object."""
        return TaskID(self._id[:16])

    def job_id(self) -> JobID:
        """The job (driver or worker client) that made this object."""
        return JobID(self._id[:8])

    def __class_getitem__(cls, item: Any) -> Any:
        """``ObjectRef[int]`` in annotations, as Ray's ``ObjectRef[T]``."""
        return types.GenericAlias(cls, item)

    def as_future(self, _internal: bool = False) -> asyncio.Future[Any]:
        """An asyncio future of this ref's value, on the running (or current) event loop."""
        import asyncio  # only where refs are awaited: asyncio costs a driver ~8 ms to import

        return asyncio.wrap_future(self.future())

    def future(self) -> concurrent.futures.Future[Any]:
        """A ``concurrent.futures.Future`` that gets this ref's value (or its error)."""
        from rayjupyter.core.api import _client

        client = _client()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        keep = self  # the ref must stay alive until its value arrives

        def settle(info: Any) -> None:
            try:
                # False once cancelled (e.g. the asyncio task awaiting it was): nobody wants
                # the value, and setting one would raise InvalidStateError in the IO thread
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    value = client.materialize(info)
                except BaseException as error:  # the task's error goes to the future
                    future.set_exception(error)
                else:
                    future.set_result(value)
            finally:
                del keep_alive[:]

        def resolve(info: Any) -> None:
            if info[1] is None:  # shared memory: mapping may need a restore, not in the IO thread
                threading.Thread(target=settle, args=(info,), daemon=True).start()
            else:
                settle(info)

        keep_alive = [keep]
        client.when_ready(self._id, resolve)
        return future

    def _on_completed(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(value)`` once the value is ready (the error, if it failed), as
        Ray's ``ObjectRef._on_completed``, which libraries use. Callbacks run one at a time
        on a thread of their own, never the IO thread: one may submit work or call ``get``.
        """

        def done(future: concurrent.futures.Future[Any]) -> None:
            error = future.exception()
            _callback_runner().submit(callback, error if error is not None else future.result())

        self.future().add_done_callback(done)

    def __await__(self) -> Generator[Any, None, Any]:
        """``await ref`` in async code: the event loop keeps running while it waits."""
        import asyncio

        return asyncio.wrap_future(self.future()).__await__()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"


_callbacks: list[concurrent.futures.ThreadPoolExecutor] = []
_callbacks_lock = threading.Lock()


def _callback_runner() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that runs ``_on_completed`` callbacks; its queue holds one entry per
    ref whose callback is due, so it is bounded by the refs the program keeps."""
    with _callbacks_lock:
        if not _callbacks:
            _callbacks.append(
                concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rj-ref-callbacks")
            )
        return _callbacks[0]
