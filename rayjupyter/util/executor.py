"""``concurrent.futures`` on a cluster: an Executor whose work runs as tasks (on Ray too,
when this process is a Ray driver: see ``engine_api``)."""

from __future__ import annotations

import concurrent.futures
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rayjupyter.util import engine_api


class Executor(concurrent.futures.Executor):
    """``submit`` runs ``fn(*args)`` as a remote task and returns a standard Future."""

    def __init__(self, **remote_options: Any) -> None:
        self._options = remote_options
        self._remotes: dict[Any, Any] = {}
        self._shutdown = False

    def _remote(self, fn: Callable[..., Any]) -> Any:
        remote = self._remotes.get(fn)
        if remote is None:
            target = fn
            if not inspect.isfunction(fn):  # a class or other callable is called, not an actor

                def target(*args: Any, **kwargs: Any) -> Any:
                    return fn(*args, **kwargs)

                target.__name__ = getattr(fn, "__name__", "call")
            api = engine_api.core()
            remote = api.remote(**self._options)(target) if self._options else api.remote(target)
            self._remotes[fn] = remote
        return remote

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        ref = self._remote(fn).remote(*args, **kwargs)
        return ref.future()

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        refs = [self._remote(fn).remote(*args) for args in zip(*iterables, strict=False)]

        api = engine_api.core()

        def results() -> Iterator[Any]:
            for ref in refs:
                yield api.get(ref, timeout=timeout)

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; the cluster stays up (it belongs to ``rj.init``)."""
        self._shutdown = True
