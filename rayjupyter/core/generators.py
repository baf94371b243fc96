"""Generator tasks from the caller's side: ``ObjectRefGenerator`` and ``DynamicObjectRefGenerator``.

``num_returns="streaming"`` (the default for a generator function, as in Ray): ``.remote()``
returns an ``ObjectRefGenerator`` at once, and each ``next(gen)`` hands out the ref of the
next value the task yields, waiting for it if the task has not yielded it yet. The node
pushes each item to this process as it comes (``streams.item_id`` names it); the task's
own return id (``gen.completed()``) becomes ready when the task ends, after its items, so
an item that is not here when the completed ref is has never been made: the stream is over.

``num_returns="dynamic"``: the task runs to its end and its one ref holds a
``DynamicObjectRefGenerator``, the list of the refs of its values.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rayjupyter.core import protocol as P
from rayjupyter.core.exceptions import GetTimeoutError
from rayjupyter.core.object_ref import ObjectRef, reference_counter
from rayjupyter.core.streams import completed_id, handle_id, item_id

if TYPE_CHECKING:
    from rayjupyter.core.client import Client

STREAMING = "streaming"
DYNAMIC = "dynamic"


class ObjectRefGenerator:
    """The refs a streaming generator task yields, in order, as they are made.

    ``next(gen)`` / ``for ref in gen`` / ``async for ref in gen`` / ``await gen.__anext__()``;
    ``rj.wait([gen])`` is ready when ``next`` would not block; ``rj.cancel(gen)`` stops the
    task. An error in the task is the ref at the index where it happened (``get`` raises
    it); the stream ends after it. Not thread-safe, and not passable to other tasks (as in Ray).
    """

    def __init__(self, task_id: bytes, client: Client) -> None:
        self._task_id = task_id
        self._client = client
        self._index = 0  # the next item to hand out
        self._done = False
        client.streams.add(task_id)
        self._completed = ObjectRef(completed_id(task_id), _owned=True)

    def __del__(self) -> None:
        try:
            # the node hears of it in order with our ref ops (after the items we took)
            reference_counter.pending.append((False, handle_id(self._task_id)))
            client = self._client
            client.streams.discard(self._task_id)
            # items that came but were never taken: their values go (the node lets go of
            # them when the handle's release reaches it)
            index = self._index
            while item_id(self._task_id, index) in client.objects:
                client.objects.pop(item_id(self._task_id, index), None)
                index += 1
        except Exception:  # at interpreter shutdown
            pass

    def __reduce__(self) -> Any:
        raise TypeError(
            "An ObjectRefGenerator cannot be passed to another task or actor (as in Ray): "
            "iterate it here and pass the refs it yields instead."
        )

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[ObjectRef]:
        return self

    def __next__(self) -> ObjectRef:
        ref = self._next_sync()
        if ref is None:
            raise StopIteration
        return ref

    def _next_sync(self, timeout_s: float | None = None) -> ObjectRef | None:
        """The next ref, waiting up to timeout_s (GetTimeoutError past it); None at the end."""
        state = self._state()
        if state is None:
            client = self._client
            if not client.wait_objects(self._watch_ids(), 1, timeout_s):
                raise GetTimeoutError(
                    f"The generator's next item was not ready after {timeout_s} s."
                )
            state = self._state()
        return self._take(state)

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        state = self._state()
        while state is None:
            future: concurrent.futures.Future[None] = concurrent.futures.Future()
            for object_id in self._watch_ids():
                self._client.when_ready(object_id, functools.partial(_settle, future))
            import asyncio  # only for async iteration: a driver need not import it

            await asyncio.wrap_future(future)
            state = self._state()
        ref = self._take(state)
        if ref is None:
            raise StopAsyncIteration
        return ref

    # ------------------------------------------------------------------ state

    def _state(self) -> bytes | None:
        """The next item's id if it is here, b"" if the stream is over, None to wait."""
        if self._done:
            return b""
        objects = self._client.objects
        next_id = item_id(self._task_id, self._index)
        if next_id in objects:
            return next_id
        if completed_id(self._task_id) in objects:
            return b""  # pushed after every item: this one will never come
        return None

    def _take(self, state: bytes | None) -> ObjectRef | None:
        if not state:
            self._done = True
            return None
        ref = ObjectRef(state, _owned=True)  # the node held it for us since it came
        self._index += 1
        self._client.send([P.GeneratorConsumed(self._task_id, self._index)], batch=True)
        return ref

    def _watch_ids(self) -> list[bytes]:
        """What the next step waits on; the node pushes both to us without asking."""
        next_id = item_id(self._task_id, self._index)
        self._client.expect_push(next_id)
        return [next_id, completed_id(self._task_id)]

    def _ready(self) -> bool:
        """``next`` would not block (``rj.wait``)."""
        return self._state() is not None

    # ------------------------------------------------------------------ Ray's API

    def completed(self) -> ObjectRef:
        """A ref that is ready when the task has ended (its get raises the task's error)."""
        return ObjectRef(self._completed.binary())

    def is_finished(self) -> bool:
        """True once every item has been handed out and the task has ended."""
        return self._state() == b""

    def task_id(self) -> bytes:
        return self._task_id

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()})"


def _settle(future: concurrent.futures.Future[None], info: Any) -> None:
    """One of the ids a waiting ``__anext__`` watches has come (the other may come later)."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        future.set_result(None)


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task: the refs of what it yielded."""

    def __init__(self, refs: list[ObjectRef]) -> None:
        self._refs = list(refs)

    def __iter__(self) -> Iterator[ObjectRef]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __reduce__(self) -> Any:
        return (DynamicObjectRefGenerator, (self._refs,))

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"
