"""A ``multiprocessing.Pool`` drop-in whose processes are actors on the cluster (Ray's API)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rayjupyter.core import api
from rayjupyter.core.actor import kill
from rayjupyter.core.object_ref import ObjectRef


class _PoolProcess:
    """One pool process: runs chunks of calls, like a multiprocessing worker."""

    def __init__(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
        if initializer is not None:
            initializer(*initargs)

    def run_chunk(self, fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
        return [fn(*args) for args in chunk]


class AsyncResult:
    """What ``apply_async`` and ``map_async`` return, as in multiprocessing."""

    def __init__(self, refs: list[ObjectRef], single: bool, flatten: bool) -> None:
        self._refs = refs
        self._single = single
        self._flatten = flatten

    def get(self, timeout: float | None = None) -> Any:
        values = api.get(self._refs, timeout=timeout)
        if self._flatten:
            values = [value for chunk in values for value in chunk]
        return values[0] if self._single else values

    def wait(self, timeout: float | None = None) -> None:
        api.wait(self._refs, num_returns=len(self._refs), timeout=timeout)

    def ready(self) -> bool:
        ready, _ = api.wait(self._refs, num_returns=len(self._refs), timeout=0)
        return len(ready) == len(self._refs)

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError("the result is not ready")
        try:
            self.get(timeout=0)
        except Exception:
            return False
        return True


class Pool:
    """``Pool(processes=N)``: N actors; map, imap, imap_unordered, starmap, apply, ..."""

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        maxtasksperchild: int | None = None,
        ray_address: str | None = None,
    ) -> None:
        if ray_address is not None and not api.is_initialized():
            api.init(address=ray_address)
        if processes is None:
            processes = int(api.cluster_resources().get("CPU", os.cpu_count() or 1))
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        actor_class = api.remote(num_cpus=1)(_PoolProcess)
        self._actors = [actor_class.remote(initializer, initargs) for _ in range(processes)]
        self._closed = False
        self._outstanding: list[ObjectRef] = []

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("Pool not running")

    def _chunks(
        self, iterable: Iterable[Any], chunksize: int | None, star: bool
    ) -> list[list[tuple[Any, ...]]]:
        items = [tuple(args) if star else (args,) for args in iterable]
        if not chunksize:
            chunksize = max(1, len(items) // (len(self._actors) * 4))
        return [items[i : i + chunksize] for i in range(0, len(items), chunksize)]

    def _submit_chunks(self, fn: Callable[..., Any], chunks: list[list[Any]]) -> list[ObjectRef]:
        actors = itertools.cycle(self._actors)
        refs = [next(actors).run_chunk.remote(fn, chunk) for chunk in chunks]
        self._outstanding.extend(refs)
        return refs

    def apply(self, func: Callable[..., Any], args: tuple[Any, ...] = (), kwds: Any = None) -> Any:
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[Any], None] | None = None,
        error_callback: Callable[[BaseException], None] | None = None,
    ) -> AsyncResult:
        self._check_open()
        kwargs = dict(kwds or {})

        def call(*call_args: Any) -> Any:
            return func(*call_args, **kwargs)

        ref = self._submit_chunks(call, [[tuple(args)]])[0]
        result = AsyncResult([ref], single=True, flatten=True)
        if callback is not None or error_callback is not None:

            def settle(future: Any) -> None:
                try:
                    value = future.result()[0]
                except BaseException as error:
                    if error_callback is not None:
                        error_callback(error)
                    return
                if callback is not None:
                    callback(value)

            ref.future().add_done_callback(settle)
        return result

    def map(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = None
    ) -> list[Any]:
        return list(self.map_async(func, iterable, chunksize).get())

    def map_async(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = None
    ) -> AsyncResult:
        self._check_open()
        refs = self._submit_chunks(func, self._chunks(iterable, chunksize, star=False))
        return AsyncResult(refs, single=False, flatten=True)

    def starmap(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
    ) -> list[Any]:
        self._check_open()
        refs = self._submit_chunks(func, self._chunks(iterable, chunksize, star=True))
        return list(AsyncResult(refs, single=False, flatten=True).get())

    def imap(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int = 1
    ) -> Iterator[Any]:
        self._check_open()
        refs = self._submit_chunks(func, self._chunks(iterable, chunksize, star=False))
        for ref in refs:
            yield from api.get(ref)

    def imap_unordered(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int = 1
    ) -> Iterator[Any]:
        self._check_open()
        pending = self._submit_chunks(func, self._chunks(iterable, chunksize, star=False))
        while pending:
            ready, pending = api.wait(pending, num_returns=1)
            yield from api.get(ready[0])

    def close(self) -> None:
        """No more work; ``join`` then waits for what was submitted."""
        self._closed = True

    def join(self) -> None:
        if not self._closed:
            raise ValueError("Pool is still running: call close() or terminate() first")
        if self._outstanding:
            api.wait(self._outstanding, num_returns=len(self._outstanding))
        self._outstanding = []
        for actor in self._actors:
            kill(actor)

    def terminate(self) -> None:
        """Stop now: the pool's actors are killed, unfinished work fails."""
        self._closed = True
        for actor in self._actors:
            kill(actor)
        self._outstanding = []

    def __enter__(self) -> Pool:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()  # as multiprocessing.Pool does
