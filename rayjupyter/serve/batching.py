"""``@serve.batch``: calls that arrive close together run as one call on a list.

Each caller awaits its own item's result; a collector task on the replica's event loop
takes the first waiting item, then more until ``max_batch_size`` or until
``batch_wait_timeout_s`` has passed since the first, calls the user's function once with
the list, and hands result ``i`` to caller ``i``. The waiting items are bounded by the
replica's ``max_ongoing_requests`` (a caller waits in it while its request is ongoing).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import Any

_QUEUES_ATTR = "__serve_batch_queues__"


class _BatchQueue:
    def __init__(self, func: Callable[..., Any], max_size: int, wait_s: float) -> None:
        self.func = func
        self.max_size = max_size
        self.wait_s = wait_s
        self.items: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._collect())

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.items.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_size:
                remaining = deadline - loop.time()
                if remaining <= 0 and self.items.empty():
                    break
                try:
                    batch.append(await asyncio.wait_for(self.items.get(), max(remaining, 0)))
                except asyncio.TimeoutError:
                    break
            await self._run(batch)

    async def _run(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        futures = [future for _, future in batch]
        try:
            results = await self.func([item for item, _ in batch])
            if not isinstance(results, list | tuple) or len(results) != len(batch):
                raise TypeError(
                    f"a @serve.batch function must return a list as long as its input "
                    f"({len(batch)} items), got {type(results).__name__}"
                    + (f" of {len(results)}" if isinstance(results, list | tuple) else "")
                )
        except Exception as error:  # every caller of the batch gets the error
            for future in futures:
                if not future.done():
                    future.set_exception(error)
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)


def batch(
    _func: Callable[..., Any] | None = None,
    *,
    max_batch_size: int = 10,
    batch_wait_timeout_s: float = 0.01,
) -> Any:
    """``@serve.batch`` or ``@serve.batch(max_batch_size=, batch_wait_timeout_s=)`` on an
    ``async def`` method or function that takes a list and returns a list as long."""
    if (
        isinstance(max_batch_size, bool)
        or not isinstance(max_batch_size, int)
        or max_batch_size < 1
    ):
        raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
    if (
        isinstance(batch_wait_timeout_s, bool)
        or not isinstance(batch_wait_timeout_s, int | float)
        or batch_wait_timeout_s < 0
    ):
        raise ValueError(f"batch_wait_timeout_s must be >= 0, got {batch_wait_timeout_s!r}")

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(
                f"@serve.batch goes on an 'async def' function or method; {func.__name__} is not"
            )
        params = list(inspect.signature(func).parameters)
        is_method = bool(params) and params[0] == "self"

        def queue_for(owner: Any, call: Callable[..., Any]) -> _BatchQueue:
            queues: dict[str, _BatchQueue] = owner.__dict__.setdefault(_QUEUES_ATTR, {})
            found = queues.get(func.__qualname__)
            if found is None:
                found = _BatchQueue(call, max_batch_size, float(batch_wait_timeout_s))
                queues[func.__qualname__] = found
            return found

        if is_method:

            @functools.wraps(func)
            async def method(self: Any, item: Any) -> Any:
                queue = queue_for(self, functools.partial(func, self))
                future = asyncio.get_running_loop().create_future()
                queue.items.put_nowait((item, future))
                return await future

            method.__serve_batch__ = True  # type: ignore[attr-defined]
            return method

        holder = type("_BatchHolder", (), {})()

        @functools.wraps(func)
        async def function(item: Any) -> Any:
            queue = queue_for(holder, func)
            future = asyncio.get_running_loop().create_future()
            queue.items.put_nowait((item, future))
            return await future

        return function

    return wrap(_func) if _func is not None else wrap
