"""``ActorPool`` with Ray's API: spread work over a fixed set of actors."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rayjupyter.core import api
from rayjupyter.core.actor import ActorHandle
from rayjupyter.core.object_ref import ObjectRef


class ActorPool:
    """Submit ``fn(actor, value)`` calls to idle actors; read results in order or as they end."""

    def __init__(self, actors: list[ActorHandle]) -> None:
        if not actors:
            raise ValueError("ActorPool needs at least one actor")
        self._idle = list(actors)
        self._busy: dict[ObjectRef, tuple[int, ActorHandle]] = {}  # ref -> (index, actor)
        self._results: dict[int, ObjectRef] = {}  # index -> ref, for get_next in order
        self._pending: deque[tuple[Callable[[Any, Any], ObjectRef], Any]] = deque()
        self._next_submit = 0
        self._next_return = 0

    def submit(self, fn: Callable[[Any, Any], ObjectRef], value: Any) -> None:
        """Schedule ``fn(actor, value)`` on an idle actor, or queue it until one is free."""
        if self._idle:
            actor = self._idle.pop()
            ref = fn(actor, value)
            self._busy[ref] = (self._next_submit, actor)
            self._results[self._next_submit] = ref
            self._next_submit += 1
        else:
            self._pending.append((fn, value))

    def has_next(self) -> bool:
        return bool(self._results) or bool(self._pending)

    def has_free(self) -> bool:
        return bool(self._idle) and not self._pending

    def _release(self, ref: ObjectRef) -> None:
        _, actor = self._busy.pop(ref)
        self._idle.append(actor)
        if self._pending:
            self.submit(*self._pending.popleft())

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        ref = self._results[self._next_return]
        ready, _ = api.wait([ref], timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                return None
            raise TimeoutError(f"Timed out waiting for result after {timeout} s")
        del self._results[self._next_return]
        self._next_return += 1
        self._release(ref)
        return api.get(ref)

    def get_next_unordered(
        self, timeout: float | None = None, ignore_if_timedout: bool = False
    ) -> Any:
        """Whichever result is ready first."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        ready, _ = api.wait(list(self._busy), num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                return None
            raise TimeoutError(f"Timed out waiting for result after {timeout} s")
        ref = ready[0]
        index, _ = self._busy[ref]
        del self._results[index]
        self._next_return = max(self._next_return, index + 1)  # as Ray: don't mix the two
        self._release(ref)
        return api.get(ref)

    def map(self, fn: Callable[[Any, Any], ObjectRef], values: Iterable[Any]) -> Iterator[Any]:
        """Results of ``fn(actor, v)`` for each value, in order."""
        while self.has_next():  # like Ray: finish what was submitted before
            self.get_next_unordered()
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            yield self.get_next()

    def map_unordered(
        self, fn: Callable[[Any, Any], ObjectRef], values: Iterable[Any]
    ) -> Iterator[Any]:
        """Results of ``fn(actor, v)`` for each value, as they finish."""
        while self.has_next():
            self.get_next_unordered()
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            yield self.get_next_unordered()

    def push(self, actor: ActorHandle) -> None:
        """Add an actor to the pool."""
        self._idle.append(actor)
        if self._pending:
            self.submit(*self._pending.popleft())

    def pop_idle(self) -> ActorHandle | None:
        return self._idle.pop() if self._idle and not self._pending else None
