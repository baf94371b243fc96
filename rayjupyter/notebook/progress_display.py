"""Live progress of tasks: ``rj.progress(refs)`` and the bar shown on slow ``get``/``wait``.

A Tracker feeds the model from the engine's ProgressSource (on our runtime: this driver's
object table and the node's status; on Ray: ``ray.wait``, Ray's state API for task names
and failures, and the cluster's resources); the Ticker thread redraws the view about five
times a second, so the bar moves while the kernel is blocked in get. Refs of either engine
are taken.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from rayjupyter.core.client import Client
from rayjupyter.core.object_ref import ObjectRef
from rayjupyter.notebook.engines.base import ProgressSource
from rayjupyter.notebook.engines.rayjupyter_engine import ClientProgress
from rayjupyter.notebook.kernel import cell_context, in_kernel
from rayjupyter.notebook.progress_model import ProgressModel
from rayjupyter.notebook.progress_views import TextProgressView, WidgetProgressView
from rayjupyter.notebook.ticker import TICKER

REFRESH_S = 0.2  # redraws per second: about five
STATUS_S = 0.5  # how often the node is asked how many tasks run (and late names asked for)
SETTLE_LIMIT_S = 300.0  # a bar left updating after its call ended stops after this


class Tracker:
    """Feeds a ProgressModel from a ProgressSource: results arrived, tasks running."""

    def __init__(
        self,
        source: ProgressSource,
        object_ids: Sequence[bytes],
        *,
        refs: Sequence[Any] = (),
        started: float | None = None,
        growing: bool = False,
    ) -> None:
        self.source = source
        initial = list(object_ids)  # a growing list may gain ids while we read it
        self.model = ProgressModel(
            initial, {oid: source.name(oid) for oid in initial}, started=started
        )
        #: a list the caller appends to while it blocks (a joblib call): re-read on each poll
        self._source_ids = object_ids if growing else None
        self._seen = len(initial)
        self._refs = list(refs)  # hold the objects while they are watched
        self._running = 0
        self._asked = 0.0
        self._named = time.monotonic()
        self._finished: dict[bytes, bool] = {}
        self._done_at: dict[bytes, float] = {}  # counted done when; a source may learn later
        self._last_done = 0.0  # when the latest object was counted done

    def _waiting(self, now: float) -> list[bytes]:
        """Objects to ask about: unfinished ones, and done ones still inside the source's
        settle time (it may yet learn that they failed)."""
        settle = self.source.settle_s
        finished, done_at = self._finished, self._done_at
        return [
            oid
            for oid in self.model.object_ids
            if oid not in finished or (settle and not finished[oid] and now - done_at[oid] < settle)
        ]

    def poll(self) -> bool:
        """Take a snapshot into the model; True if a count changed."""
        source = self.source
        if self._source_ids is not None and len(self._source_ids) > self._seen:
            fresh = list(self._source_ids[self._seen :])
            self._seen += len(fresh)
            self.model.add(fresh, {oid: source.name(oid) for oid in fresh})
        now = time.monotonic()
        waiting = self._waiting(now)
        errors: dict[bytes, str] = {}
        if waiting:
            for oid, failed in source.finished(waiting).items():
                if oid not in self._finished:
                    self._done_at[oid] = self._last_done = now
                if failed:
                    errors[oid] = source.error(oid)
                if failed or oid not in self._finished:
                    self._finished[oid] = failed
        if len(self._finished) < self.model.total and now - self._asked >= STATUS_S:
            self._asked = now
            self._running = source.running()
        if now - self._named >= STATUS_S:  # names an engine learns late (Ray's state API)
            self._named = now
            unnamed = self.model.unnamed()
            if unnamed:
                self.model.rename({oid: source.name(oid) for oid in unnamed})
        changed = self.model.update(self._finished, self._running, errors)
        if self.settled:
            self._refs = []
        return changed

    @property
    def settled(self) -> bool:
        """Every object finished, and none can still turn out to have failed."""
        return self.model.complete and (time.monotonic() - self._last_done >= self.source.settle_s)


def _as_refs(refs: Any) -> list[Any]:
    items = [refs] if _is_ref(refs) else list(refs)
    bad = [type(item).__name__ for item in items if not _is_ref(item)]
    if bad:
        raise TypeError(
            f"progress() expects an ObjectRef or a list of them, got {bad[0]}: pass the refs "
            f"that .remote() returned."
        )
    return items


def _is_ref(value: Any) -> bool:
    """Our ObjectRef, or Ray's when Ray is loaded (ray is never imported to find out)."""
    if isinstance(value, ObjectRef):
        return True
    ray = sys.modules.get("ray")
    return ray is not None and isinstance(value, ray.ObjectRef)


def _source_for(items: list[Any]) -> ProgressSource:
    from rayjupyter.notebook import engines

    for name in ("rayjupyter", "ray"):
        if name == "ray" and "ray" not in sys.modules:
            continue
        source = engines.engine(name).progress_source(items)
        if source is not None:
            return source
    raise TypeError(
        "progress() takes the refs of one engine at a time: rayjupyter's or Ray's, not both"
    )


def progress(refs: Any, *, wait: bool | None = None) -> None:
    """Show live progress of refs: a widget in a notebook, a text bar elsewhere.

    wait: block until every task has finished. Default: not in a notebook (the widget
    keeps updating on its own), yes elsewhere (a script sees the bar, then carries on).
    """
    items = _as_refs(refs)
    source = _source_for(items)
    tracker = Tracker(source, [ref.binary() for ref in items], refs=items)
    kernel = in_kernel()
    if wait is None:
        wait = not kernel
    view: WidgetProgressView | TextProgressView
    if kernel:
        from rayjupyter.notebook.ipython_typed import display

        view = WidgetProgressView(tracker.model)
        display(view.widget)
    else:
        view = TextProgressView(tracker.model)
    done = threading.Event()

    def tick() -> bool:
        tracker.poll()
        view.render()
        if tracker.settled:
            done.set()
            return False
        return not source.closed

    if not wait:
        tick()
        if not done.is_set():
            TICKER.every(REFRESH_S, tick)
        return
    object_ids = list(tracker.model.object_ids)
    while tick():
        if tracker.model.complete:  # settling: the source may yet report a failure
            time.sleep(REFRESH_S)
        else:
            source.wait(object_ids, REFRESH_S)  # wakes as results land
    view.close()


class AutoProgress:
    """The ``wait_observer``: a bar for a get/wait still blocked after ``delay`` seconds on
    ``min_refs`` or more refs. Entering it costs a length check on small calls.

    ``needed == 0`` marks a caller that keeps adding to ``object_ids`` while it blocks (a
    joblib call on the cluster): it gets a bar after ``delay`` however few refs it has yet.
    """

    def __init__(self) -> None:
        self.enabled = True
        self.delay = 1.0
        self.min_refs = 10

    def configure(
        self,
        *,
        enabled: bool | None = None,
        delay: float | None = None,
        min_refs: int | None = None,
    ) -> dict[str, Any]:
        if delay is not None and delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        if min_refs is not None and min_refs < 1:
            raise ValueError(f"min_refs must be >= 1, got {min_refs!r}")
        if enabled is not None:
            self.enabled = bool(enabled)
        if delay is not None:
            self.delay = float(delay)
        if min_refs is not None:
            self.min_refs = int(min_refs)
        return {"enabled": self.enabled, "delay": self.delay, "min_refs": self.min_refs}

    def __call__(
        self, client: Client, object_ids: list[bytes], needed: int
    ) -> AbstractContextManager[Any]:
        growing = needed == 0
        if not self.enabled or (len(object_ids) < self.min_refs and not growing):
            return _NULL
        return _Watch(ClientProgress(client), object_ids, self.delay, growing)

    def watch(
        self, source: ProgressSource, object_ids: list[bytes], *, growing: bool = False
    ) -> AbstractContextManager[Any]:
        """A bar for another engine's blocking call (Ray's ``get``, a joblib call on Ray:
        ``growing``, whose ids keep coming while it blocks), on the same settings."""
        if not self.enabled or (len(object_ids) < self.min_refs and not growing):
            return _NULL
        return _Watch(source, object_ids, self.delay, growing)


_NULL: AbstractContextManager[Any] = nullcontext()


class _Watch:
    """One blocking call being watched; shows its widget only if it is still blocked later."""

    def __init__(
        self, source: ProgressSource, object_ids: list[bytes], delay: float, growing: bool = False
    ) -> None:
        self.source = source
        self.object_ids = object_ids
        self.delay = delay
        self.growing = growing
        self.lock = threading.Lock()
        self.view: WidgetProgressView | None = None
        self.tracker: Tracker | None = None
        self.exited = False

    def __enter__(self) -> _Watch:
        self.started = time.monotonic()
        self.context = cell_context()
        self.job = TICKER.every(REFRESH_S, self._tick, delay=self.delay)
        return self

    def _tick(self) -> bool:
        with self.lock:
            if self.exited:
                return self._settle()
            if self.view is None:
                from rayjupyter.notebook.ipython_typed import display

                self.tracker = Tracker(
                    self.source, self.object_ids, started=self.started, growing=self.growing
                )
                self.view = WidgetProgressView(self.tracker.model)
                self.context.run(display, self.view.widget)
            assert self.tracker is not None
            self.tracker.poll()
            self.view.render()
            return True

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.exited = True
            self.exited_at = time.monotonic()
            if self.view is not None and self.tracker is not None:
                self.tracker.poll()
                self.view.render()
                if self.tracker.settled or self.source.closed or not self.source.settle_s:
                    self.view.close()
                    self.job.cancel()
                    return
            else:
                self.job.cancel()
                return
        # an engine that learns failures late (Ray): the bar keeps updating after the call
        # returned or raised (it raises at the first failure), until every task is counted

    def _settle(self) -> bool:
        """After the call: one more poll; False (stop) once settled or given up."""
        if self.view is None or self.tracker is None:
            return False
        self.tracker.poll()
        self.view.render()
        if (
            self.tracker.settled
            or self.source.closed
            or time.monotonic() - self.exited_at > SETTLE_LIMIT_S
        ):
            self.view.close()
            return False
        return True


AUTO = AutoProgress()
