"""The dashboard's one connection to the cluster, and the latest answers it got.

Bokeh callbacks run on the server's event loop and must never wait on the cluster, so a
thread asks the node for what the open pages want (about once a second) and keeps the
answers here; pages read them without I/O. What no page has asked for in a while is not
fetched: a dashboard nobody looks at costs the node one status request a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from rayjupyter.core.client import Client
from rayjupyter.core.exceptions import ClusterConnectionError

log = logging.getLogger(__name__)

STREAM_FETCH = 2000  # task rows read per poll for the task stream (the most recent ones)
STREAM_KEEP = 5000  # bars the task stream keeps
WANT_TTL_S = 5.0  # a kind nobody asked for this long is no longer fetched
REQUEST_TIMEOUT_S = 10.0

#: what the feed can fetch, as the node's request and its arguments
KINDS: dict[str, tuple[Any, ...]] = {
    "summary": ("task_summary",),
    "actors": ("state", "actors", [], 10_000),
    "objects": ("state", "objects", [], 10_000),
    "jobs": ("state", "jobs", [], 10_000),
    "logs": ("logs", None, 200),
}


class ClusterFeed:
    """Polls the cluster in a thread; ``status_history``, ``latest`` and the task stream."""

    def __init__(
        self,
        client: Client,
        *,
        address: str,
        interval: float = 1.0,
        history: int = 600,
        on_gone: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.address = address
        self.session = client.session
        self.interval = interval
        self.on_gone = on_gone
        self.status_history: deque[dict[str, Any]] = deque(maxlen=history)
        self.latest: dict[str, Any] = {}
        self._wanted: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stream: deque[tuple[int, dict[str, Any]]] = deque(maxlen=STREAM_KEEP)
        self._stream_seq = 0
        self._seen: OrderedDict[str, None] = OrderedDict()  # task ids already streamed
        self._stop = False
        self._wake = threading.Event()  # set: poll now (a page wants something new, or stop)
        self.gone: str | None = None
        self._thread = threading.Thread(target=self._run, name="rayjupyter-feed", daemon=True)

    def start(self) -> ClusterFeed:
        self._poll_status()
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(REQUEST_TIMEOUT_S + 1)
        self.client.close()

    # ------------------------------------------------------------------ reading

    def request(self, what: str, *args: Any) -> Any:
        """Ask the node now (thread-safe; the API's handlers call it from a thread pool)."""
        return self.client.request(what, *args, timeout=REQUEST_TIMEOUT_S)

    def want(self, kind: str) -> Any:
        """The latest answer for ``kind`` (None before the first), and keep it fresh."""
        with self._lock:
            now = time.monotonic()
            stale = now - self._wanted.get(kind, 0.0) >= WANT_TTL_S
            self._wanted[kind] = now
        if stale:
            self._wake.set()  # a page just opened: fetch now rather than at the next tick
        return self.latest.get(kind)

    @property
    def status(self) -> dict[str, Any] | None:
        """The latest status snapshot (None before the first)."""
        history = self.status_history
        return history[-1] if history else None

    def history(self) -> list[dict[str, Any]]:
        """The status snapshots kept, oldest first (a copy: the thread appends meanwhile)."""
        with self._lock:
            return list(self.status_history)

    def bars_since(self, cursor: int) -> tuple[int, list[dict[str, Any]]]:
        """Task-stream bars newer than cursor (0: all kept), and the new cursor."""
        self.want("stream")
        with self._lock:
            bars = [bar for seq, bar in self._stream if seq > cursor]
            return self._stream_seq, bars

    # ------------------------------------------------------------------ polling

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop:
                return
            try:
                self._poll_status()
                now = time.monotonic()
                with self._lock:
                    wanted = [k for k, at in self._wanted.items() if now - at < WANT_TTL_S]
                for kind in wanted:
                    if kind == "stream":
                        self._poll_stream()
                    else:
                        self._refresh(kind)
            except ClusterConnectionError as error:
                self._lost(str(error))
                return
            except Exception:  # a bug in a page's data must not stop the dashboard
                log.exception("rayjupyter dashboard: polling the cluster failed")

    def _lost(self, reason: str) -> None:
        self.gone = reason
        if self.on_gone is not None:
            self.on_gone(reason)

    def _poll_status(self) -> None:
        status = dict(self.request("status"))
        status["session"] = self.session
        status["address"] = self.address
        with self._lock:
            self.status_history.append(status)

    def _refresh(self, kind: str) -> None:
        try:
            self.latest[kind] = self.request(*KINDS[kind])
        except ClusterConnectionError:
            raise
        except Exception:
            log.exception("rayjupyter dashboard: fetching %s failed", kind)

    def _poll_stream(self) -> None:
        rows = self.request("state", "tasks", [], STREAM_FETCH)
        seen = self._seen
        fresh = [
            row
            for row in rows
            if row["end_time"] and row["start_time"] and row["task_id"] not in seen
        ]
        if not fresh:
            return
        fresh.sort(key=lambda row: row["end_time"])
        with self._lock:
            for row in fresh:
                self._seen[row["task_id"]] = None
                self._stream_seq += 1
                self._stream.append((self._stream_seq, row))
            while len(self._seen) > 4 * STREAM_FETCH + STREAM_KEEP:
                self._seen.popitem(last=False)
