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

from rayjupyter.core import queries
from rayjupyter.core.client import Client
from rayjupyter.core.exceptions import ClusterConnectionError
from rayjupyter.core.read_models import NodeStatus, TaskRow, as_dict

log = logging.getLogger(__name__)

STREAM_FETCH = 2000  # task rows read per poll for the task stream (the most recent ones)
STREAM_KEEP = 5000  # bars the task stream keeps
WANT_TTL_S = 5.0  # a kind nobody asked for this long is no longer fetched
REQUEST_TIMEOUT_S = 10.0


def _rows(kind: str) -> Callable[[Client], Any]:
    def fetch(client: Client) -> list[dict[str, Any]]:
        rows = queries.list_state(client, kind, (), 10_000, timeout=REQUEST_TIMEOUT_S)
        return [as_dict(row) for row in rows]

    return fetch


#: what the feed can fetch, and how: pages read plain dicts of the read models' fields
KINDS: dict[str, Callable[[Client], Any]] = {
    "summary": lambda client: queries.task_summary(client, timeout=REQUEST_TIMEOUT_S),
    "actors": _rows("actors"),
    "objects": _rows("objects"),
    "jobs": _rows("jobs"),
    "logs": lambda client: [
        as_dict(entry) for entry in queries.worker_logs(client, None, 200, REQUEST_TIMEOUT_S)
    ],
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
        self.status_history: deque[NodeStatus] = deque(maxlen=history)
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
    def status(self) -> NodeStatus | None:
        """The latest status snapshot (None before the first)."""
        history = self.status_history
        return history[-1] if history else None

    def history(self) -> list[NodeStatus]:
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
        status = queries.status(self.client, timeout=REQUEST_TIMEOUT_S)
        with self._lock:
            self.status_history.append(status)

    def _refresh(self, kind: str) -> None:
        try:
            self.latest[kind] = KINDS[kind](self.client)
        except ClusterConnectionError:
            raise
        except Exception:
            log.exception("rayjupyter dashboard: fetching %s failed", kind)

    def _poll_stream(self) -> None:
        rows = queries.list_state(self.client, "tasks", (), STREAM_FETCH, REQUEST_TIMEOUT_S)
        seen = self._seen
        fresh = [
            row
            for row in rows
            if isinstance(row, TaskRow)
            and row.end_time
            and row.start_time
            and row.task_id not in seen
        ]
        if not fresh:
            return
        fresh.sort(key=lambda row: row.end_time or 0.0)
        with self._lock:
            for row in fresh:
                self._seen[row.task_id] = None
                self._stream_seq += 1
                self._stream.append((self._stream_seq, as_dict(row)))
            while len(self._seen) > 4 * STREAM_FETCH + STREAM_KEEP:
                self._seen.popitem(last=False)
