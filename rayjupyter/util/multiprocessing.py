"""A ``multiprocessing.Pool`` drop-in whose processes are actors on the cluster (Ray's API);
on Ray itself when this process is a Ray driver (see ``engine_api``)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rayjupyter.core import api
from rayjupyter.core.actor import ActorHandle
from rayjupyter.core.object_ref import ObjectRef
from rayjupyter.util import engine_api


class _PoolProcess:
    """One pool process: runs chunks of calls, like a multiprocessing worker."""

    def __init__(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
        if initializer is not None:
            initializer(*initargs)

    def run_chunk(self, fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
        return [fn(*args) for args in chunk]

    def retire(self) -> None:
        """End this process once the chunks sent before this call are done (calls run in
        order): ``maxtasksperchild``."""
        engine_api.exit_actor()


class AsyncResult:
    """What ``apply_async`` and ``map_async`` return, as in multiprocessing."""

    def __init__(self, refs: list[ObjectRef], single: bool, flatten: bool) -> None:
        self._refs = refs
        self._single = single
        self._flatten = flatten

    def get(self, timeout: float | None = None) -> Any:
        values = engine_api.core().get(self._refs, timeout=timeout)
        if self._flatten:
            values = [value for chunk in values for value in chunk]
        return values[0] if self._single else values

    def wait(self, timeout: float | None = None) -> None:
        engine_api.core().wait(self._refs, num_returns=len(self._refs), timeout=timeout)

    def ready(self) -> bool:
        ready, _ = engine_api.core().wait(self._refs, num_returns=len(self._refs), timeout=0)
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
    """``Pool(processes=N)``: N actors; map, imap, imap_unordered, starmap, apply, ...

    As in Ray, a pool process is an actor with the actor defaults: it takes a CPU to be
    placed and holds none while it lives, so tasks and other actors still run beside a
    pool (``ray_remote_args={"num_cpus": 1}`` reserves one per process instead).
    ``context`` (a multiprocessing start method) has no meaning for actors, which start as
    the cluster starts every worker; it is taken for drop-in use, as Ray takes it.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] | None = None,
        maxtasksperchild: int | None = None,
        context: Any = None,
        ray_address: str | None = None,
        ray_remote_args: dict[str, Any] | None = None,
    ) -> None:
        if ray_address is not None and not api.is_initialized():
            api.init(address=ray_address)
        if processes is None:
            processes = int(engine_api.core().cluster_resources().get("CPU", os.cpu_count() or 1))
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild < 1
        ):
            raise ValueError(
                f"maxtasksperchild must be a positive int or None, got {maxtasksperchild!r}"
            )
        self._initializer = initializer
        self._initargs = tuple(initargs or ())
        self._maxtasks = maxtasksperchild
        self._actor_class = (
            engine_api.core().remote(**ray_remote_args)(_PoolProcess)
            if ray_remote_args
            else engine_api.core().remote(_PoolProcess)
        )
        self._actors = [self._new_process() for _ in range(processes)]
        self._counts = [0] * processes  # chunks sent to each current process
        self._retired: list[ActorHandle] = []  # told to end after their last chunk
        self._closed = False
        self._outstanding: list[ObjectRef] = []

    def _new_process(self) -> ActorHandle:
        return self._actor_class.remote(self._initializer, self._initargs)  # type: ignore[no-any-return]

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
        slots = itertools.cycle(range(len(self._actors)))
        refs = []
        for chunk in chunks:
            slot = next(slots)
            refs.append(self._actors[slot].run_chunk.remote(fn, chunk))
            self._counts[slot] += 1
            if self._maxtasks is not None and self._counts[slot] >= self._maxtasks:
                # its chunks run first (calls run in order), then it ends; a fresh one follows
                old = self._actors[slot]
                old.retire.remote()
                self._retired.append(old)
                self._actors[slot], self._counts[slot] = self._new_process(), 0
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
            yield from engine_api.core().get(ref)

    def imap_unordered(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int = 1
    ) -> Iterator[Any]:
        self._check_open()
        pending = self._submit_chunks(func, self._chunks(iterable, chunksize, star=False))
        while pending:
            ready, pending = engine_api.core().wait(pending, num_returns=1)
            yield from engine_api.core().get(ready[0])

    def close(self) -> None:
        """No more work; ``join`` then waits for what was submitted."""
        self._closed = True

    def join(self) -> None:
        if not self._closed:
            raise ValueError("Pool is still running: call close() or terminate() first")
        if self._outstanding:
            engine_api.core().wait(self._outstanding, num_returns=len(self._outstanding))
        self._outstanding = []
        self._kill_all()

    def terminate(self) -> None:
        """Stop now: the pool's actors are killed, unfinished work fails."""
        self._closed = True
        self._kill_all()
        self._outstanding = []

    def _kill_all(self) -> None:
        for actor in self._actors + self._retired:
            engine_api.kill(actor)
        self._retired = []

    def __enter__(self) -> Pool:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()  # as multiprocessing.Pool does
