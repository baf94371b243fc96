"""Reading a cluster's live status for the panel: one observer connection per cluster, kept.

Connecting costs a handshake and an IO thread, so a connection is made once and reused by
every poll; one that fails is closed and the cluster is not tried again for a few seconds
(doubling, up to BACKOFF_MAX_S), so a dead remote address does not slow every listing.
Every call here blocks: the handlers run them in a thread pool.
"""

from __future__ import annotations

import contextlib
import threading
import time

from rayjupyter.core import queries
from rayjupyter.core.client import Client
from rayjupyter.core.read_models import NodeStatus
from rayjupyter.server.models import ClusterNode, ClusterStatus

CONNECT_TIMEOUT_S = 3.0  # a handshake that takes longer means a wrong or dead address
REQUEST_TIMEOUT_S = 5.0
BACKOFF_MIN_S = 2.0
BACKOFF_MAX_S = 10.0


class StatusError(Exception):
    """A cluster's status could not be read; the message says why, in one line."""


class _Connection:
    """One cluster's observer client, or the error and back-off from the last failure."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.client: Client | None = None
        self.error = ""
        self.retry_at = 0.0
        self.backoff = BACKOFF_MIN_S


class StatusReader:
    """Observer connections to clusters, keyed by host:port; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[str, _Connection] = {}

    def _connection(self, hostport: str) -> _Connection:
        with self._lock:
            return self._connections.setdefault(hostport, _Connection())

    def client(self, hostport: str, secret: str) -> Client:
        """A connected observer client for the cluster, made once; StatusError if it fails."""
        conn = self._connection(hostport)
        with conn.lock:
            if conn.client is not None:
                return conn.client
            if time.monotonic() < conn.retry_at:
                raise StatusError(conn.error)
            try:
                conn.client = Client(hostport, secret, kind="observer", timeout=CONNECT_TIMEOUT_S)
            except Exception as exc:
                self._failed(conn, exc)
                raise StatusError(conn.error) from None
            conn.backoff = BACKOFF_MIN_S
            return conn.client

    def read_status(self, hostport: str, secret: str) -> NodeStatus:
        """The cluster's node's status snapshot; StatusError (one line) on any failure."""
        client = self.client(hostport, secret)
        try:
            return queries.status(client, timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:
            conn = self._connection(hostport)
            with conn.lock:
                if conn.client is client:
                    conn.client = None
                    self._failed(conn, exc)
            _close(client)
            raise StatusError(_one_line(exc)) from None

    def status(self, hostport: str, secret: str) -> ClusterStatus:
        """The cluster's status snapshot, shaped for the panel."""
        return summarize(self.read_status(hostport, secret))

    def driver_pids(self, hostport: str, secret: str) -> set[int]:
        """Pids of the drivers attached to the cluster from this machine."""
        return set(self.read_status(hostport, secret).driver_pids)

    def forget(self, hostport: str) -> None:
        """Close the connection to a cluster that is gone or no longer listed."""
        with self._lock:
            conn = self._connections.pop(hostport, None)
        if conn is not None and conn.client is not None:
            _close(conn.client)

    def forget_all_but(self, hostports: set[str]) -> None:
        with self._lock:
            stale = [hp for hp in self._connections if hp not in hostports]
        for hostport in stale:
            self.forget(hostport)

    def close(self) -> None:
        self.forget_all_but(set())

    @staticmethod
    def _failed(conn: _Connection, exc: BaseException) -> None:
        conn.error = _one_line(exc)
        conn.retry_at = time.monotonic() + conn.backoff
        conn.backoff = min(conn.backoff * 2, BACKOFF_MAX_S)


def _close(client: Client) -> None:
    with contextlib.suppress(Exception):
        client.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def summarize(status: NodeStatus) -> ClusterStatus:
    """The node's status snapshot (``read_models.NodeStatus``) as the panel's model."""
    nodes: list[ClusterNode] = [
        {
            "node_id": row.NodeID,
            "address": row.address,
            "alive": row.Alive,
            "resources": {str(k): float(v) for k, v in row.Resources.items()},
            "started": float(row.StartTime),
        }
        for row in status.nodes
    ]
    machine = status.machine
    return {
        "nodes": nodes,
        "nodes_alive": len(status.alive_nodes),
        "cpu_total": float(status.total.get("CPU", 0.0)),
        "cpu_used": status.used("CPU"),
        "gpu_total": float(status.total.get("GPU", 0.0)),
        "gpu_used": status.used("GPU"),
        "cpu_percent": machine.cpu_percent,
        "memory_used": machine.memory_used,
        "memory_total": machine.memory_total,
        "store_used": status.store.used_bytes,
        "store_capacity": status.store.capacity,
        "tasks": dict(status.tasks),
        "tasks_running": status.tasks_running,
        "tasks_pending": status.tasks_pending,
        "actors": dict(status.actors),
        "workers": status.workers,
        "drivers": status.drivers,
        "time": machine.time or time.time(),
    }
