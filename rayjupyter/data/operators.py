"""Physical operators: small objects with ``add_input`` / ``has_next`` / ``get_next``.

Each operator owns its queue of inputs, the tasks it has running and the outputs it has not
handed on, and reports an ``OpUsage`` to the resource manager, which decides who launches
next. Map tasks are streaming generators that yield block, metadata, block, metadata, so a
block reaches the next operator as soon as it is made. Outputs leave in input order.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import rayjupyter as rj
from rayjupyter.data.block import BlockMetadata, RefBundle
from rayjupyter.data.context import DataContext
from rayjupyter.data.plan import PhysicalSpec
from rayjupyter.data.resources import OpUsage, actor_pool_target
from rayjupyter.data.stages import construct_udfs, run_chain


def _map_task(source: Any, stages: Any, target: int, *blocks: Any) -> Any:
    yield from run_chain(source, stages, blocks, target)


def _whole(items: list[Any]) -> tuple[Any, BlockMetadata]:
    """A task's outputs as one block and its metadata (for tasks that are not streams)."""
    from rayjupyter.data.block import concat, metadata_of

    metas = items[1::2]
    for meta in metas:
        if meta.error is not None:
            return items[-2], meta
    table = concat(items[0::2])
    wall = sum(m.wall_s for m in metas)
    return table, metadata_of(table, wall)


def _map_task_whole(source: Any, stages: Any, target: int, *blocks: Any) -> Any:
    return _whole(list(run_chain(source, stages, blocks, target)))


class _MapWorker:
    """An actor of a pool: its callable classes are made once, here, and reused."""

    def __init__(self, stages: Any) -> None:
        construct_udfs(stages)

    def run(self, source: Any, stages: Any, target: int, *blocks: Any) -> Any:
        yield from run_chain(source, stages, blocks, target)

    def run_whole(self, source: Any, stages: Any, target: int, *blocks: Any) -> Any:
        return _whole(list(run_chain(source, stages, blocks, target)))

    def pid(self) -> int:
        import os

        return os.getpid()


_REMOTES: dict[str, Any] = {}


def _remote(name: str) -> Any:
    if name not in _REMOTES:
        _REMOTES["task"] = rj.remote(_map_task)
        _REMOTES["task_whole"] = rj.remote(_map_task_whole)
        _REMOTES["actor"] = rj.remote(_MapWorker)
    return _REMOTES[name]


@dataclass
class OpStats:
    """What ``Dataset.stats()`` and the progress bars show for one operator."""

    name: str
    tasks_done: int = 0
    blocks_out: int = 0
    rows_out: int = 0
    bytes_out: int = 0
    task_wall_s: float = 0.0
    errored_blocks: int = 0
    peak_queued_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    total_rows: int | None = None  # expected, when the source knows


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note`` (Python 3.11+); on 3.10 the note is kept in ``__notes__`` alone."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        notes = list(getattr(exc, "__notes__", []))
        exc.__notes__ = [*notes, note]  # type: ignore[attr-defined]


class PhysicalOperator:
    def __init__(self, index: int, spec: PhysicalSpec, ctx: DataContext) -> None:
        self.index = index
        self.spec = spec
        self.ctx = ctx
        self.stats = OpStats(spec.name)
        self.inputs_done = False
        self.stopped = False
        self.queued_bytes = 0  # outputs made by this op and not consumed downstream

    # the streaming interface
    def add_input(self, bundle: RefBundle, input_index: int) -> None:
        raise NotImplementedError

    def has_next(self) -> bool:
        raise NotImplementedError

    def get_next(self) -> RefBundle:
        raise NotImplementedError

    def completed(self) -> bool:
        raise NotImplementedError

    def usage(self) -> OpUsage:
        return OpUsage(False, 0, 0, False, self.queued_bytes, 0)

    def dispatch(self) -> None:  # start one task; only called when usage().ready
        raise NotImplementedError

    def waitables(self) -> list[Any]:
        return []

    def on_ready(self, item: Any) -> list[RefBundle]:
        """A generator of ours has an item; returns the input bundles now released."""
        return []

    def all_inputs_done(self) -> None:
        self.inputs_done = True

    def stop(self) -> None:
        """Downstream needs no more (a limit was reached): drop queued input."""
        self.stopped = True

    def shutdown(self) -> None:
        pass

    def _emitted(self, bundle: RefBundle) -> RefBundle:
        self.stats.blocks_out += 1
        self.stats.rows_out += bundle.meta.num_rows
        self.stats.bytes_out += bundle.meta.size_bytes
        bundle.owner = self.index
        self.queued_bytes += bundle.meta.size_bytes
        self.stats.peak_queued_bytes = max(self.stats.peak_queued_bytes, self.queued_bytes)
        return bundle


class InputOperator(PhysicalOperator):
    """Blocks that already exist (from_*, a materialized dataset)."""

    def __init__(self, index: int, spec: PhysicalSpec, ctx: DataContext) -> None:
        super().__init__(index, spec, ctx)
        self.queue = deque(spec.bundles or [])
        self.inputs_done = True
        self.stats.total_rows = sum(b.meta.num_rows for b in self.queue)

    def has_next(self) -> bool:
        return bool(self.queue) and not self.stopped

    def get_next(self) -> RefBundle:
        old = self.queue.popleft()
        return self._emitted(RefBundle(old.ref, old.meta, old.seq))

    def completed(self) -> bool:
        return not self.queue or self.stopped


@dataclass
class _Running:
    gen: Any
    ordinal: int
    inputs: list[RefBundle]
    actor: Any = None
    pending_block: Any = None
    whole: Any = None  # (block ref, metadata ref) of a task that is not a stream


class MapOperator(PhysicalOperator):
    """A fused chain of stages run as tasks, or as calls on a pool of actors.

    On one node each task is a streaming generator (blocks flow out as they are made, and
    a large output is cut into several blocks). rayjupyter runs generator tasks only on
    the caller's node, so on several nodes each task returns its output as one block plus
    its metadata (``streaming=False``), which lets the scheduler spread the tasks."""

    def __init__(
        self, index: int, spec: PhysicalSpec, ctx: DataContext, streaming: bool = True
    ) -> None:
        super().__init__(index, spec, ctx)
        self.streaming = streaming
        self.work: deque[tuple[Any, list[RefBundle]]] = deque()  # (read task | None, inputs)
        if spec.read_tasks is not None:
            self.work.extend((task, []) for task in spec.read_tasks)
            self.inputs_done = True
            rows = [t.num_rows for t in spec.read_tasks]
            self.stats.total_rows = None if None in rows else sum(r or 0 for r in rows)
        self.next_ordinal = 0
        self.emit_ordinal = 0
        self.results: dict[int, tuple[deque[RefBundle], bool]] = {}
        self.running: dict[int, _Running] = {}  # by id(gen)
        self.actors: list[Any] = []
        self.actor_load: dict[int, int] = {}  # index into actors -> calls in flight
        self.outputs_est = 0
        self.errors: list[tuple[BaseException, str]] = []

    # inputs
    def add_input(self, bundle: RefBundle, input_index: int) -> None:
        self.work.append((None, [bundle]))

    # outputs, in input order
    def has_next(self) -> bool:
        while self.emit_ordinal in self.results:
            queue, done = self.results[self.emit_ordinal]
            if queue:
                return True
            if not done:
                return False
            del self.results[self.emit_ordinal]
            self.emit_ordinal += 1
        return False

    def get_next(self) -> RefBundle:
        queue, _ = self.results[self.emit_ordinal]
        return queue.popleft()

    def completed(self) -> bool:
        idle = not self.running and not any(q for q, _ in self.results.values())
        return idle and (self.stopped or (self.inputs_done and not self.work))

    def stop(self) -> None:
        """A limit downstream is reached: queued work is dropped and running tasks are
        cancelled, so ``take(5)`` of a large dataset does not wait for them."""
        super().stop()
        self.work.clear()
        for run in list(self.running.values()):
            if run.whole is None:
                rj.cancel(run.gen)
            self._finish(run)
        for ordinal, (queue, _) in list(self.results.items()):
            self.results[ordinal] = (queue, True)

    # launching
    def _cpu(self) -> float:
        return float(self.spec.remote_args.get("num_cpus", 1))

    def usage(self) -> OpUsage:
        compute = self.spec.compute
        est = self.outputs_est or (self.ctx.target_max_block_size // 16)
        if compute.actors:
            cap = compute.max_size * compute.max_tasks_in_flight_per_actor
            ready = bool(self.work) and not self.stopped and self.actor_ready()
            return OpUsage(ready, len(self.running), cap, False, self.queued_bytes, est)
        return OpUsage(
            bool(self.work) and not self.stopped,
            len(self.running),
            compute.max_size,
            True,
            self.queued_bytes,
            est,
        )

    def _pick_actor(self) -> int:
        compute = self.spec.compute
        busy = sum(1 for load in self.actor_load.values() if load > 0)
        target = actor_pool_target(
            len(self.actors), compute.min_size, compute.max_size, busy, len(self.work)
        )
        args = dict(self.spec.remote_args)
        args.setdefault("num_cpus", 1)
        while len(self.actors) < target:
            self.actor_load[len(self.actors)] = 0
            self.actors.append(_remote("actor").options(**args).remote(self.spec.stages))
        index = min(self.actor_load, key=lambda i: self.actor_load[i])
        if self.actor_load[index] >= compute.max_tasks_in_flight_per_actor:
            return -1
        return index

    def actor_ready(self) -> bool:
        if not self.spec.compute.actors:
            return True
        if len(self.actors) < self.spec.compute.max_size:
            return True
        return any(
            n < self.spec.compute.max_tasks_in_flight_per_actor for n in self.actor_load.values()
        )

    def dispatch(self) -> None:
        source, inputs = self.work.popleft()
        refs = [b.ref for b in inputs]
        target = self.ctx.target_max_block_size
        actor_index = None
        if self.spec.compute.actors:
            actor_index = self._pick_actor()
            if actor_index < 0:
                self.work.appendleft((source, inputs))
                return
            actor = self.actors[actor_index]
            if self.streaming:
                gen = actor.run.options(num_returns="streaming").remote(
                    source, self.spec.stages, target, *refs
                )
            else:
                whole = actor.run_whole.options(num_returns=2).remote(
                    source, self.spec.stages, target, *refs
                )
            self.actor_load[actor_index] += 1
        elif self.streaming:
            options: dict[str, Any] = {"num_returns": "streaming", **self.spec.remote_args}
            gen = _remote("task").options(**options).remote(source, self.spec.stages, target, *refs)
        else:
            options = {**self.spec.remote_args, "num_returns": 2}
            whole = (
                _remote("task_whole")
                .options(**options)
                .remote(source, self.spec.stages, target, *refs)
            )
        if not self.streaming:
            gen = whole[1]  # wait on the metadata; the block is ready with it
        ordinal = self.next_ordinal
        self.next_ordinal += 1
        self.results[ordinal] = (deque(), False)
        self.running[id(gen)] = _Running(
            gen, ordinal, inputs, actor_index, whole=None if self.streaming else whole
        )

    def waitables(self) -> list[Any]:
        return [r.gen for r in self.running.values()]

    def on_ready(self, item: Any) -> list[RefBundle]:
        run = self.running[id(item)]
        if run.whole is not None:
            block, meta_ref = run.whole
            self._took(run, block, rj.get(meta_ref, timeout=60))
            return self._finish(run)
        try:
            ref = next(run.gen)
        except StopIteration:
            return self._finish(run)
        if run.pending_block is None:
            run.pending_block = ref
            return []
        block, run.pending_block = run.pending_block, None
        self._took(run, block, rj.get(ref, timeout=60))
        return []

    def _took(self, run: _Running, block: Any, meta: BlockMetadata) -> None:
        self.stats.task_wall_s += meta.wall_s
        if meta.error is not None:
            self.stats.errored_blocks += 1
            self.errors.append((meta.error, meta.error_traceback))
            return
        queue, _ = self.results[run.ordinal]
        n = len(queue)
        if not self.stopped and (meta.num_rows or not self.streaming):
            queue.append(self._emitted(RefBundle(block, meta, (run.ordinal, n))))
        done = self.stats.blocks_out
        self.outputs_est = max(1, self.stats.bytes_out // max(1, done))

    def _finish(self, run: _Running) -> list[RefBundle]:
        del self.running[id(run.gen)]
        queue, _ = self.results[run.ordinal]
        self.results[run.ordinal] = (queue, True)
        self.stats.tasks_done += 1
        if run.actor is not None:
            self.actor_load[run.actor] -= 1
        return run.inputs

    def shutdown(self) -> None:
        for run in list(self.running.values()):
            if run.whole is None:
                rj.cancel(run.gen)
        self.running.clear()
        for actor in self.actors:
            rj.kill(actor)
        self.actors.clear()

    def actor_pids(self) -> list[int]:
        return [int(pid) for pid in rj.get([a.pid.remote() for a in self.actors], timeout=60)]


class LimitOperator(PhysicalOperator):
    """Passes the first ``limit`` rows; the block that crosses it is sliced here."""

    def __init__(self, index: int, spec: PhysicalSpec, ctx: DataContext) -> None:
        super().__init__(index, spec, ctx)
        self.remaining = spec.limit
        self.out: deque[RefBundle] = deque()
        self.released: list[RefBundle] = []

    def add_input(self, bundle: RefBundle, input_index: int) -> None:
        self.released.append(bundle)
        if self.remaining <= 0:
            return
        if bundle.meta.num_rows <= self.remaining:
            self.remaining -= bundle.meta.num_rows
            self.out.append(self._emitted(RefBundle(bundle.ref, bundle.meta, bundle.seq)))
            return
        table = rj.get(bundle.ref, timeout=60).slice(0, self.remaining)
        from rayjupyter.data.block import metadata_of

        self.remaining = 0
        self.out.append(self._emitted(RefBundle(rj.put(table), metadata_of(table), bundle.seq)))

    def has_next(self) -> bool:
        return bool(self.out)

    def get_next(self) -> RefBundle:
        return self.out.popleft()

    def reached(self) -> bool:
        return self.remaining <= 0

    def completed(self) -> bool:
        return not self.out and (self.inputs_done or self.reached())


class BarrierOperator(PhysicalOperator):
    """Waits for all of its inputs, then runs its all-to-all function once."""

    def __init__(self, index: int, spec: PhysicalSpec, ctx: DataContext, n_inputs: int) -> None:
        super().__init__(index, spec, ctx)
        self.collected: list[list[RefBundle]] = [[] for _ in range(n_inputs)]
        self.out: deque[RefBundle] = deque()
        self.ran = False
        self.released: list[RefBundle] = []

    def add_input(self, bundle: RefBundle, input_index: int) -> None:
        self.collected[input_index].append(bundle)

    def run_if_ready(self) -> list[RefBundle]:
        if self.ran or not self.inputs_done:
            return []
        self.ran = True
        fn: Callable[[list[list[RefBundle]]], list[RefBundle]] | None = self.spec.fn
        assert fn is not None
        start = time.perf_counter()
        try:
            result = fn(self.collected)
        except Exception as exc:  # a user function of map_groups/aggregate, or bad input
            add_note(exc, f"raised in operator {self.spec.name!r} of rayjupyter.data")
            raise
        self.stats.task_wall_s += time.perf_counter() - start
        self.stats.tasks_done += 1
        released = [b for group in self.collected for b in group]
        self.collected = []
        for i, bundle in enumerate(result):
            self.out.append(self._emitted(RefBundle(bundle.ref, bundle.meta, (i,))))
        return released

    def has_next(self) -> bool:
        return bool(self.out)

    def get_next(self) -> RefBundle:
        return self.out.popleft()

    def completed(self) -> bool:
        return self.ran and not self.out
