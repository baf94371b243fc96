"""One dashboard process per cluster, started the first time the proxy is asked for it.

A cluster nobody looks at pays nothing for its dashboard (see DESIGN.md); one that is
looked at gets a bokeh server on loopback whose every path sits under the proxy's prefix,
so its pages and websockets work unchanged behind Jupyter's port. The dashboards stop
when their cluster leaves the list and when the Jupyter server stops.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

import psutil

from rayjupyter.server.errors import ClusterError
from rayjupyter.server.models import DashboardPage

# the pages the panel offers first; the dashboard package lists them all (see dashboard_pages)
MAIN_PAGES = (("overview", "Overview"), ("task-stream", "Task stream"), ("progress", "Progress"))


class Dashboard(Protocol):
    """What ``rayjupyter.dashboard.launch.start_dashboard`` returns."""

    port: int
    token: str

    @property
    def pid(self) -> int: ...

    @property
    def url(self) -> str: ...

    def stop(self) -> None: ...


Starter = Callable[..., Dashboard]


@dataclass(frozen=True)
class Upstream:
    """Where the proxy sends a dashboard's requests, and how it authenticates there.

    Ours serves every path under the proxy's prefix (strip is empty); Ray's serves at its
    root, so the proxy's prefix is cut off (strip) and put back on redirects.
    """

    origin: str  # http://HOST:PORT[/prefix] of the dashboard, no trailing slash
    headers: dict[str, str] = field(default_factory=dict)  # its credentials, added here
    strip: str = ""  # the request path prefix that the upstream does not see
    # paths (prefixes) that act on the cluster (profilers, tracebacks), not only show it:
    # they need a user who may run code, as any method other than GET/HEAD/OPTIONS does
    acting_paths: tuple[str, ...] = ()
    guard_writes: bool = False  # other methods need a user who may run code (Ray's job API)

    def path(self, request_path: str) -> str:
        """The upstream path of a request path."""
        if self.strip and request_path.startswith(self.strip):
            return "/" + request_path[len(self.strip) :]
        return request_path

    def acts(self, method: str, upstream_path: str) -> bool:
        """Whether the request acts on the cluster (runs code, attaches to processes).

        The path is compared as the upstream's router sees it: percent-decoded, with
        repeated slashes and dot segments folded (``/%77orker//./traceback`` is
        ``/worker/traceback``).
        """
        if method not in ("GET", "HEAD", "OPTIONS"):
            return self.guard_writes
        if not self.acting_paths:
            return False
        path = posixpath.normpath("/" + re.sub(r"/+", "/", unquote(upstream_path)).lstrip("/"))
        return any(
            (path + "/").startswith(prefix if prefix.endswith("/") else prefix + "/")
            for prefix in self.acting_paths
        )


def start_dashboard(connect_address: str, *, host: str, port: int, prefix: str) -> Dashboard:
    """The dashboard package's launcher, imported on first use (bokeh is heavy)."""
    try:
        from rayjupyter.dashboard.launch import start_dashboard as start
    except ImportError as exc:
        raise ClusterError(
            503,
            f"The dashboard cannot start here ({exc}): install bokeh in the Jupyter server's "
            f"environment (pip install 'rayjupyter[notebook]').",
        ) from None
    dashboard: Dashboard = start(connect_address, host=host, port=port, prefix=prefix)
    return dashboard


def dashboard_pages() -> list[DashboardPage]:
    """The dashboard's pages, main ones first (its page table imports without bokeh)."""
    from rayjupyter.dashboard.pages import PAGES  # a plain table: no bokeh import

    pages: list[DashboardPage] = [{"path": p, "title": t} for p, t in MAIN_PAGES if p in PAGES]
    pages += [
        {"path": path, "title": str(spec[0])}
        for path, spec in PAGES.items()
        if path not in {p for p, _ in MAIN_PAGES}
    ]
    return pages


class DashboardManager:
    """Dashboards by cluster session; thread-safe, one start at a time per cluster."""

    def __init__(self, prefix_for: Callable[[str], str], starter: Starter = start_dashboard):
        self.prefix_for = prefix_for
        self.starter = starter
        self.host = "127.0.0.1"
        self._lock = threading.Lock()
        self._session_locks: dict[str, threading.Lock] = {}
        self._running: dict[str, Dashboard] = {}

    def get(self, session: str, connect_address: str) -> Dashboard:
        """The cluster's running dashboard, started now if it has none (or it died)."""
        with self._lock:
            lock = self._session_locks.setdefault(session, threading.Lock())
        with lock:
            dashboard = self._running.get(session)
            if dashboard is not None and _alive(dashboard.pid):
                return dashboard
            try:
                dashboard = self.starter(
                    connect_address, host=self.host, port=0, prefix=self.prefix_for(session)
                )
            except ClusterError:
                raise
            except Exception as exc:
                raise ClusterError(
                    502, f"The dashboard of cluster {session} did not start: {_line(exc)}"
                ) from None
            self._running[session] = dashboard
            return dashboard

    def running(self) -> dict[str, Dashboard]:
        return dict(self._running)

    def alive(self, session: str) -> Dashboard | None:
        """The cluster's dashboard if it runs: every proxied request asks, so no lookups."""
        dashboard = self._running.get(session)
        return dashboard if dashboard is not None and _alive(dashboard.pid) else None

    def stop(self, session: str) -> None:
        dashboard = self._running.pop(session, None)
        if dashboard is not None:
            with contextlib.suppress(Exception):
                dashboard.stop()

    def stop_all_but(self, sessions: set[str]) -> None:
        """Stop the dashboards of clusters that are gone."""
        for session in list(self._running):
            if session not in sessions:
                self.stop(session)

    def close(self) -> None:
        self.stop_all_but(set())


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _line(exc: Any) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
