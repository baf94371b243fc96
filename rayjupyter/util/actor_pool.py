"""``ActorPool`` with Ray's API: spread work over a fixed set of actors.

What ``fn(actor, value)`` returns is the call's *result handle*: one ObjectRef, or a list
of them (a method with ``num_returns=2``); the actor is busy until all of them are ready.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

from rayjupyter.core import api
from rayjupyter.core.actor import ActorHandle
from rayjupyter.core.exceptions import ActorDiedError

_TIMED_OUT = "Timed out waiting for result"


def _key(result: Any) -> Hashable:
    """A hashable stand-in for a call's result handle (a list of refs becomes a tuple)."""
    return tuple(result) if isinstance(result, list) else result


def _refs(result: Any) -> list[Any]:
    return list(result) if isinstance(result, list | tuple) else [result]


class ActorPool:
    """Submit ``fn(actor, value)`` calls to idle actors; read results in order or as they end."""

    def __init__(self, actors: list[ActorHandle]) -> None:
        self._idle_actors = list(actors)
        self._busy: dict[
            Hashable, tuple[int, ActorHandle, Any]
        ] = {}  # key -> (index, actor, result)
        self._by_index: dict[int, Hashable] = {}  # index -> key, for get_next in order
        self._pending_submits: deque[tuple[Callable[[Any, Any], Any], Any]] = deque()
        self._next_submit = 0
        self._next_return = 0

    def submit(self, fn: Callable[[Any, Any], Any], value: Any) -> None:
        """Schedule ``fn(actor, value)`` on an idle actor, or queue it until one is free."""
        if not self._idle_actors:
            self._pending_submits.append((fn, value))
            return
        actor = self._idle_actors.pop()
        result = fn(actor, value)
        key = _key(result)
        self._busy[key] = (self._next_submit, actor, result)
        self._by_index[self._next_submit] = key
        self._next_submit += 1

    def has_next(self) -> bool:
        """Whether a submitted call's result is still to be returned."""
        return bool(self._busy)

    def has_free(self) -> bool:
        return bool(self._idle_actors) and not self._pending_submits

    def _ready(self, keys: list[Hashable], timeout: float | None) -> Hashable | None:
        """The first of ``keys`` whose refs are all ready, waiting up to ``timeout``."""
        if len(keys) == 1:
            refs = _refs(self._busy[keys[0]][2])
            ready, _ = api.wait(refs, num_returns=len(refs), timeout=timeout)
            return keys[0] if len(ready) == len(refs) else None
        owner: dict[Any, Hashable] = {}
        missing: dict[Hashable, int] = {}
        for key in keys:
            refs = _refs(self._busy[key][2])
            missing[key] = len(refs)
            owner.update((ref, key) for ref in refs)
        waiting = list(owner)
        while waiting:
            ready, waiting = api.wait(waiting, num_returns=1, timeout=timeout)
            if not ready:
                return None
            for ref in ready:
                missing[owner[ref]] -= 1
                if not missing[owner[ref]]:
                    return owner[ref]
        return None

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order. On timeout, TimeoutError; with
        ``ignore_if_timedout`` that call is dropped first (its actor goes back to the pool)."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return >= self._next_submit:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        key = self._by_index[self._next_return]
        ready = timeout is None or self._ready([key], timeout) is not None
        if not ready and not ignore_if_timedout:
            raise TimeoutError(_TIMED_OUT)
        del self._by_index[self._next_return]
        self._next_return += 1
        _, actor, result = self._busy.pop(key)
        if not ready:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMED_OUT}; the call {result} is dropped.")
        return self._result(result, actor)

    def get_next_unordered(
        self, timeout: float | None = None, ignore_if_timedout: bool = False
    ) -> Any:
        """Whichever result is ready first."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        key = self._ready(list(self._busy), timeout)
        if key is None and not ignore_if_timedout:
            raise TimeoutError(_TIMED_OUT)
        dropped = key is None
        if key is None:
            key = next(iter(self._busy))
        index, actor, result = self._busy.pop(key)
        del self._by_index[index]
        self._next_return = max(self._next_return, index + 1)  # as Ray: don't mix the two
        if dropped:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMED_OUT}; the call {result} is dropped.")
        return self._result(result, actor)

    def _result(self, result: Any, actor: ActorHandle) -> Any:
        """The call's value; its actor goes back to the pool unless it died."""
        alive = True
        try:
            return api.get(result)
        except ActorDiedError:
            alive = False
            raise
        finally:
            self._return_actor(actor, alive)

    def _return_actor(self, actor: ActorHandle, alive: bool = True) -> None:
        if alive:
            self._idle_actors.append(actor)
        if self._pending_submits and self._idle_actors:
            self.submit(*self._pending_submits.popleft())

    def map(self, fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """Results of ``fn(actor, v)`` for each value, in order. Every call is submitted
        now (as in Ray); results not yet read from earlier calls are dropped first."""
        self._drop_earlier(ordered=True)
        for value in values:
            self.submit(fn, value)
        return self._results(ordered=True)

    def map_unordered(self, fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """Results of ``fn(actor, v)`` for each value, as they finish (submitted now)."""
        self._drop_earlier(ordered=False)
        for value in values:
            self.submit(fn, value)
        return self._results(ordered=False)

    def _drop_earlier(self, ordered: bool) -> None:
        while self.has_next():
            try:
                if ordered:
                    self.get_next(timeout=0, ignore_if_timedout=True)
                else:
                    self.get_next_unordered(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass

    def _results(self, ordered: bool) -> Iterator[Any]:
        while self.has_next():
            yield self.get_next() if ordered else self.get_next_unordered()

    def push(self, actor: ActorHandle) -> None:
        """Add an actor to the pool; ValueError if it is in the pool already."""
        if actor in self._idle_actors or any(actor == busy for _, busy, _ in self._busy.values()):
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)

    def pop_idle(self) -> ActorHandle | None:
        """An idle actor, taken out of the pool; None if none is free."""
        return self._idle_actors.pop() if self.has_free() else None
