"""Live progress of tasks: ``rj.progress(refs)`` and the bar shown on slow ``get``/``wait``.

A Tracker feeds the model from this driver's object table (which results have arrived, and
whether as errors) and the node's status (how many tasks run); the Ticker thread redraws
the view about five times a second, so the bar moves while the kernel is blocked in get.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from rayjupyter.core import queries
from rayjupyter.core.client import Client
from rayjupyter.core.object_ref import ObjectRef
from rayjupyter.notebook.kernel import cell_context, in_kernel
from rayjupyter.notebook.progress_model import ProgressModel
from rayjupyter.notebook.progress_views import TextProgressView, WidgetProgressView
from rayjupyter.notebook.task_tap import TAP
from rayjupyter.notebook.ticker import TICKER

REFRESH_S = 0.2  # redraws per second: about five
STATUS_S = 0.5  # how often the node is asked how many tasks run


class Tracker:
    """Feeds a ProgressModel from the driver's object table and the node's task counts."""

    def __init__(
        self,
        client: Client,
        object_ids: Sequence[bytes],
        *,
        refs: Sequence[ObjectRef] = (),
        started: float | None = None,
        growing: bool = False,
    ) -> None:
        self.client = client
        initial = list(object_ids)  # a growing list may gain ids while we read it
        self.model = ProgressModel(
            initial, {oid: TAP.name(oid) for oid in initial}, started=started
        )
        #: a list the caller appends to while it blocks (a joblib call): re-read on each poll
        self._source = object_ids if growing else None
        self._seen = len(initial)
        self._refs = list(refs)  # hold the objects while they are watched
        self._running = 0
        self._asked = 0.0

    def poll(self) -> bool:
        """Take a snapshot into the model; True if a count changed."""
        if self._source is not None and len(self._source) > self._seen:
            fresh = list(self._source[self._seen :])
            self._seen += len(fresh)
            self.model.add(fresh, {oid: TAP.name(oid) for oid in fresh})
        objects = self.client.objects
        finished: dict[bytes, bool] = {}
        for oid in self.model.object_ids:
            info = objects.get(oid)
            if info is not None:
                finished[oid] = bool(info[3])
        now = time.monotonic()
        if len(finished) < self.model.total and now - self._asked >= STATUS_S:
            self._asked = now
            self._running = self._cluster_running()
        changed = self.model.update(finished, self._running)
        if self.model.complete:
            self._refs = []
        return changed

    def _cluster_running(self) -> int:
        try:
            status = queries.status(self.client, timeout=2.0)
        except Exception:  # closed or busy: keep the last figure, the bar still moves
            return self._running
        return status.tasks_running


def _as_refs(refs: Any) -> list[ObjectRef]:
    items = [refs] if isinstance(refs, ObjectRef) else list(refs)
    bad = [type(item).__name__ for item in items if not isinstance(item, ObjectRef)]
    if bad:
        raise TypeError(
            f"progress() expects an ObjectRef or a list of them, got {bad[0]}: pass the refs "
            f"that .remote() returned."
        )
    return items


def progress(refs: Any, *, wait: bool | None = None) -> None:
    """Show live progress of refs: a widget in a notebook, a text bar elsewhere.

    wait: block until every task has finished. Default: not in a notebook (the widget
    keeps updating on its own), yes elsewhere (a script sees the bar, then carries on).
    """
    from rayjupyter.core import api

    items = _as_refs(refs)
    client = api._client()
    tracker = Tracker(client, [ref.binary() for ref in items], refs=items)
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
        if tracker.model.complete:
            done.set()
            return False
        return not client._closed

    if not wait:
        tick()
        if not done.is_set():
            TICKER.every(REFRESH_S, tick)
        return
    object_ids = list(tracker.model.object_ids)
    while tick():
        client.wait_objects(object_ids, len(object_ids), REFRESH_S)  # wakes as results land
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
        return _Watch(client, object_ids, self.delay, growing)


_NULL: AbstractContextManager[Any] = nullcontext()


class _Watch:
    """One blocking call being watched; shows its widget only if it is still blocked later."""

    def __init__(
        self, client: Client, object_ids: list[bytes], delay: float, growing: bool = False
    ) -> None:
        self.client = client
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
                return False
            if self.view is None:
                from rayjupyter.notebook.ipython_typed import display

                self.tracker = Tracker(
                    self.client, self.object_ids, started=self.started, growing=self.growing
                )
                self.view = WidgetProgressView(self.tracker.model)
                self.context.run(display, self.view.widget)
            assert self.tracker is not None
            self.tracker.poll()
            self.view.render()
            return True

    def __exit__(self, *exc: object) -> None:
        self.job.cancel()
        with self.lock:
            self.exited = True
            if self.view is not None and self.tracker is not None:
                self.tracker.poll()
                self.view.close()


AUTO = AutoProgress()
