"""``Queue`` with Ray's API: a first-in, first-out queue that tasks and actors share.

The items live in one async actor, so any process holding the ``Queue`` (it pickles as
its actor handle) puts and gets through the same order. A blocking call waits in the
actor, on its event loop, never in a retry loop of the caller: a ``get`` with a timeout
costs one round trip however long it waits, and raises ``Empty`` (``put``: ``Full``) when
the timeout passes. The actor answers with a status rather than raising, so the caller
raises a plain ``Empty``/``Full`` (also ``queue.Empty``/``queue.Full``, as in Ray)
instead of a remote traceback.

The actor is a process like any other: it needs 1 CPU to be placed and holds none while
it runs (``actor_options`` are passed to ``.options()``, e.g. ``{"num_cpus": 1}``). It ends
when the last handle to it (the ``Queue`` and its copies in tasks) is gone, or at
``shutdown()``; items still in it are lost then, as in Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue as std_queue
from collections import deque
from collections.abc import Iterable
from typing import Any

from rayjupyter.core import api
from rayjupyter.core.actor import ActorHandle, exit_actor, kill
from rayjupyter.core.exceptions import ActorDiedError, GetTimeoutError

__all__ = ["Empty", "Full", "Queue"]


class Empty(std_queue.Empty):
    """A get found no item: at once (``block=False``) or within its timeout."""


class Full(std_queue.Full):
    """A put found no room: at once (``block=False``) or within its timeout."""


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"'timeout' must be a non-negative number or None, got {timeout!r}")


class Queue:
    """A FIFO queue held by an actor; ``maxsize`` 0 (or less) means unbounded, as in Ray.

    Several producers or consumers waiting on the same full or empty queue are served in
    no promised order.
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool):
            raise TypeError(f"maxsize must be an int, got {type(maxsize).__name__}")
        if actor_options is not None and not isinstance(actor_options, dict):
            raise TypeError("actor_options must be a dict of actor options, e.g. {'num_cpus': 1}")
        self.maxsize = maxsize
        actor_class = api.remote(_QueueActor)
        self.actor: ActorHandle | None = actor_class.options(**(actor_options or {})).remote(
            maxsize
        )

    def _handle(self) -> ActorHandle:
        if self.actor is None:
            raise RuntimeError("this Queue was shut down; create a new one")
        return self.actor

    # ------------------------------------------------------------------ sizes

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """How many items it holds now."""
        return int(api.get(self._handle().qsize.remote()))

    def qsize(self) -> int:
        """How many items it holds now (the same as ``size``)."""
        return self.size()

    def empty(self) -> bool:
        return bool(api.get(self._handle().empty.remote()))

    def full(self) -> bool:
        return bool(api.get(self._handle().full.remote()))

    # ------------------------------------------------------------------ put and get

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; if full, wait for room (forever, or up to ``timeout`` seconds).

        Raises ``Full`` if there is no room at once (``block=False``) or within the timeout,
        ``ValueError`` for a negative timeout.
        """
        if not api.get(self._put_ref(item, block, timeout)):
            raise Full

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """``put`` for a coroutine: waits without blocking the event loop."""
        if not await self._put_ref(item, block, timeout):
            raise Full

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item; if empty, wait for one (forever, or up to
        ``timeout`` seconds).

        Raises ``Empty`` if there is none at once (``block=False``) or within the timeout,
        ``ValueError`` for a negative timeout.
        """
        found, item = api.get(self._get_ref(block, timeout))
        if not found:
            raise Empty
        return item

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` for a coroutine: waits without blocking the event loop."""
        found, item = await self._get_ref(block, timeout)
        if not found:
            raise Empty
        return item

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``."""
        self.put(item, block=False)

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add all ``items`` in order, in one round trip, or none of them.

        Raises ``Full`` (naming the sizes) if they do not all fit now.
        """
        if not isinstance(items, Iterable):
            raise TypeError(f"items must be an iterable, got {type(items).__name__}")
        batch = list(items)
        room = api.get(self._handle().put_batch.remote(batch))
        if room is not None:
            raise Full(
                f"Cannot put {len(batch)} items into a queue with room for {room} "
                f"(maxsize {self.maxsize})."
            )

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Remove and return the ``num_items`` oldest items, in one round trip, or none.

        Raises ``Empty`` (naming the size) if the queue holds fewer now.
        """
        if not isinstance(num_items, int) or isinstance(num_items, bool):
            raise TypeError(f"num_items must be an int, got {type(num_items).__name__}")
        if num_items < 0:
            raise ValueError(f"num_items must be non-negative, got {num_items}")
        found, result = api.get(self._handle().get_batch.remote(num_items))
        if not found:
            raise Empty(f"Cannot get {num_items} items from a queue holding {result}.")
        return list(result)

    def _put_ref(self, item: Any, block: bool, timeout: float | None) -> Any:
        if block:
            _check_timeout(timeout)
        return self._handle().put.remote(item, timeout if block else 0.0)

    def _get_ref(self, block: bool, timeout: float | None) -> Any:
        if block:
            _check_timeout(timeout)
        return self._handle().get.remote(timeout if block else 0.0)

    # ------------------------------------------------------------------ the end

    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """End the queue's actor; its items are lost and its resources freed.

        ``force`` kills it at once; otherwise it is asked to exit and killed if it has not
        within ``grace_period_s`` seconds. Calls waiting in it fail with ``ActorDiedError``.
        """
        actor, self.actor = self.actor, None
        if actor is None:
            return
        if force:
            kill(actor, no_restart=True)
            return
        try:
            api.get(actor.close.remote(), timeout=grace_period_s)
        except GetTimeoutError:
            kill(actor, no_restart=True)
        except ActorDiedError:  # it was dead already
            pass


class _QueueActor:
    """The items and the callers waiting on them, on one event loop (no locks needed:
    nothing awaits between checking the deque and changing it)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: deque[Any] = deque()
        self.changed = asyncio.Condition()  # notified on every put and get

    def _room(self) -> int | None:
        return None if self.maxsize <= 0 else self.maxsize - len(self.items)

    def qsize(self) -> int:
        return len(self.items)

    def empty(self) -> bool:
        return not self.items

    def full(self) -> bool:
        return self._room() == 0

    async def _wait(self, ready: Any, timeout: float | None) -> bool:
        """Wait until ``ready()`` or the timeout; True if ready. A timed-out wait takes
        nothing, so no item is ever lost to a timeout."""
        if ready():
            return True
        if timeout is not None and timeout <= 0:
            return False
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        async with self.changed:
            while not ready():
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return False
                with contextlib.suppress(asyncio.TimeoutError):  # then look once more
                    await asyncio.wait_for(self.changed.wait(), remaining)
        return True

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()  # all: getters and putters recheck their own condition

    async def put(self, item: Any, timeout: float | None) -> bool:
        if not await self._wait(lambda: self._room() != 0, timeout):
            return False
        self.items.append(item)
        await self._notify()
        return True

    async def get(self, timeout: float | None) -> tuple[bool, Any]:
        if not await self._wait(lambda: bool(self.items), timeout):
            return False, None
        item = self.items.popleft()
        await self._notify()
        return True, item

    async def put_batch(self, items: list[Any]) -> int | None:
        """None when all went in; else the room there was (nothing went in)."""
        room = self._room()
        if room is not None and len(items) > room:
            return room
        self.items.extend(items)
        await self._notify()
        return None

    async def get_batch(self, count: int) -> tuple[bool, Any]:
        if count > len(self.items):
            return False, len(self.items)
        taken = [self.items.popleft() for _ in range(count)]
        await self._notify()
        return True, taken

    def close(self) -> None:
        exit_actor()
