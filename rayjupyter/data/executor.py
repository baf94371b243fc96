"""The streaming executor: runs physical operators together under the resource manager.

A thread of its own loops while a consumer iterates: each round moves finished blocks
downstream, starts the tasks the resource manager allows, and waits (bounded) for the next
generator item, so operators keep going while the consumer works on a batch. The consumer's
unread output counts against the store budget, so a slow consumer stops the reads instead
of filling the store. Errors from user functions are raised here, as the
user's own type, with a note naming the operator.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import rayjupyter as rj
from rayjupyter.data.block import RefBundle
from rayjupyter.data.context import DataContext
from rayjupyter.data.operators import (
    BarrierOperator,
    InputOperator,
    LimitOperator,
    MapOperator,
    OpStats,
    PhysicalOperator,
    add_note,
)
from rayjupyter.data.plan import PhysicalSpec
from rayjupyter.data.resources import Limits, choose_op, in_use

logger = logging.getLogger(__name__)

_WAIT_S = 0.2  # one bounded wait for task items per step


def _limits(ctx: DataContext, actors_cpu: float) -> Limits:
    resources = rj.cluster_resources()
    cpus = ctx.execution_options.resource_limits.cpu
    cpu = cpus if cpus is not None else resources.get("CPU", 1) - actors_cpu
    store = ctx.execution_options.resource_limits.object_store_memory
    if store is None:
        store = int(resources.get("object_store_memory", 2**30) * ctx.object_store_memory_fraction)
    return Limits(max(1, int(cpu)), int(store))


class StreamingExecutor:
    def __init__(
        self,
        specs: list[PhysicalSpec],
        ctx: DataContext | None = None,
        on_progress: Callable[[StreamingExecutor], None] | None = None,
    ) -> None:
        if not rj.is_initialized():
            rj.init()
        self.ctx = ctx or DataContext.get_current()
        self.ops: list[PhysicalOperator] = []
        streaming = True  # map tasks stream their blocks back from whichever node runs them
        self.consumers: dict[int, list[tuple[int, int]]] = {i: [] for i in range(len(specs))}
        for index, spec in enumerate(specs):
            op: PhysicalOperator
            if spec.kind == "input":
                op = InputOperator(index, spec, self.ctx)
            elif spec.kind == "map":
                op = MapOperator(index, spec, self.ctx, streaming)
            elif spec.kind == "limit":
                op = LimitOperator(index, spec, self.ctx)
            else:
                op = BarrierOperator(index, spec, self.ctx, len(spec.inputs))
            self.ops.append(op)
            for input_index, upstream in enumerate(spec.inputs):
                self.consumers[upstream].append((index, input_index))
        self.upstreams = {i: spec.inputs for i, spec in enumerate(specs)}
        actors_cpu = sum(
            float(s.remote_args.get("num_cpus", 1)) * s.compute.min_size
            for s in specs
            if s.kind == "map" and s.compute.actors
        )
        self.limits = _limits(self.ctx, actors_cpu)
        self.output: deque[RefBundle] = deque()
        self.on_progress = on_progress
        self.started = time.monotonic()
        self.finished = False
        self.peak_in_use = 0
        self._last_progress = 0.0

    # ------------------------------------------------------------------ the loop

    def _release(self, bundles: list[RefBundle]) -> None:
        for bundle in bundles:
            if 0 <= bundle.owner < len(self.ops):
                self.ops[bundle.owner].queued_bytes -= bundle.meta.size_bytes

    def _move(self) -> bool:
        moved = False
        for op in self.ops:
            while op.has_next():
                bundle = op.get_next()
                moved = True
                targets = self.consumers[op.index]
                if not targets:
                    self.output.append(bundle)
                    continue
                for target, input_index in targets:
                    self.ops[target].add_input(bundle, input_index)
                    limit = self.ops[target]
                    if isinstance(limit, LimitOperator):
                        self._release(limit.released)
                        limit.released = []
                        if limit.reached():
                            self._stop_upstream(limit.index)
        for op in self.ops:
            if not op.inputs_done and all(
                self.ops[u].completed() for u in self.upstreams[op.index]
            ):
                op.all_inputs_done()
            if isinstance(op, BarrierOperator):
                released = op.run_if_ready()
                if released:
                    self._release(released)
                    moved = True
            if op.completed() and op.stats.finished is None:
                op.stats.finished = time.monotonic()
        return moved

    def _stop_upstream(self, index: int) -> None:
        for upstream in self.upstreams[index]:
            self.ops[upstream].stop()
            self._stop_upstream(upstream)

    def _dispatch(self) -> None:
        for _ in range(1000):
            usages = [op.usage() for op in self.ops]
            self.peak_in_use = max(self.peak_in_use, in_use(usages))
            index = choose_op(usages, self.limits)
            if index is None:
                return
            before = usages[index].running
            self.ops[index].dispatch()
            if self.ops[index].usage().running == before:
                return  # it could not start (an actor pool's actors are all busy)

    def _raise_errors(self) -> None:
        allowed = self.ctx.max_errored_blocks
        for op in self.ops:
            if not isinstance(op, MapOperator) or not op.errors:
                continue
            total = sum(o.stats.errored_blocks for o in self.ops)
            if allowed < 0 or total <= allowed:
                for exc, _tb in op.errors:
                    logger.warning(
                        "rayjupyter.data: %s dropped a block: %r (max_errored_blocks=%s)",
                        op.spec.name,
                        exc,
                        allowed,
                    )
                op.errors.clear()
                continue
            exc, tb = op.errors[0]
            self.shutdown()
            add_note(
                exc,
                f"\nraised by a user function in operator {op.spec.name!r} of "
                f"rayjupyter.data; the remote traceback:\n{tb}",
            )
            raise exc

    def _prepare(self) -> tuple[list[Any], dict[int, PhysicalOperator]]:
        """Move finished blocks on, start what the budget allows; what to wait on."""
        self._move()
        self._dispatch()
        waitables: list[Any] = []
        owners: dict[int, PhysicalOperator] = {}
        for op in self.ops:
            for item in op.waitables():
                waitables.append(item)
                owners[id(item)] = op
        return waitables, owners

    def _handle(self, ready: list[Any], owners: dict[int, PhysicalOperator]) -> None:
        for item in ready:
            self._release(owners[id(item)].on_ready(item))
        self._raise_errors()
        self._move()
        self._progress()

    @staticmethod
    def _wait(waitables: list[Any], timeout: float) -> list[Any]:
        ready, _ = rj.wait(waitables, num_returns=1, timeout=timeout)
        if ready:  # take every item that is here, not only the first
            ready, _ = rj.wait(waitables, num_returns=len(waitables), timeout=0)
        return list(ready)

    def step(self, timeout: float = _WAIT_S) -> None:
        """One round in the caller's thread (tests, and the driver-less paths)."""
        waitables, owners = self._prepare()
        self._handle(self._wait(waitables, timeout) if waitables else [], owners)

    def done(self) -> bool:
        return all(op.completed() for op in self.ops) and not self.output

    def _progress(self, final: bool = False) -> None:
        now = time.monotonic()
        if self.on_progress is not None and (final or now - self._last_progress > 0.25):
            self._last_progress = now
            self.on_progress(self)

    # ------------------------------------------------------------------ consumers

    def _run_loop(
        self, cond: threading.Condition, stop: threading.Event, state: dict[str, Any]
    ) -> None:
        """The executor's own thread: it keeps the operators going while the consumer
        works on a batch; the lock is dropped only while it waits on task items."""
        try:
            while not stop.is_set():
                with cond:
                    if all(op.completed() for op in self.ops):
                        state["done"] = True
                        cond.notify_all()
                        return
                    waitables, owners = self._prepare()
                    cond.notify_all()
                    if not waitables:  # back-pressured by the consumer, or a barrier ran
                        cond.wait(_WAIT_S)
                        continue
                ready = self._wait(waitables, _WAIT_S)
                with cond:
                    self._handle(ready, owners)
                    cond.notify_all()
        except BaseException as exc:  # raised to the consumer, in its thread
            with cond:
                state["error"] = exc
                cond.notify_all()

    def iter_bundles(self) -> Iterator[RefBundle]:
        """Output blocks in order; the budget counts each until the next one is asked."""
        cond = threading.Condition()
        stop = threading.Event()
        state: dict[str, Any] = {"done": False, "error": None}
        thread = threading.Thread(
            target=self._run_loop, args=(cond, stop, state), name="rayjupyter.data", daemon=True
        )
        thread.start()
        last: RefBundle | None = None
        try:
            while True:
                with cond:
                    if last is not None:
                        self._release([last])
                        last = None
                        cond.notify_all()
                    while not self.output and not state["done"] and state["error"] is None:
                        cond.wait(1.0)
                    if state["error"] is not None:
                        raise state["error"]
                    if not self.output:
                        break
                    last = self.output.popleft()
                yield last
        finally:
            stop.set()
            with cond:
                cond.notify_all()
            thread.join(timeout=60)
            self.finished = True
            self._progress(final=True)
            self.shutdown()

    def shutdown(self) -> None:
        for op in self.ops:
            op.shutdown()

    def stats(self) -> list[OpStats]:
        return [op.stats for op in self.ops]

    def bytes_in_use(self) -> int:
        return in_use([op.usage() for op in self.ops])
