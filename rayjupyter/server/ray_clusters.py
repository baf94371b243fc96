"""Ray clusters added to the panel by address, read through Ray's dashboard HTTP API.

Nothing here imports ``ray``: the Jupyter server talks to a Ray cluster the way a browser
does, over the dashboard's HTTP API (the state API under ``/api/v0/``, ``/api/version``,
``/api/cluster_status`` and the node summary), so a Jupyter server needs no Ray install to
list Ray clusters and proxy their dashboards.

Ray protects its dashboard with a token (``RAY_AUTH_MODE=token``); the server sends the
token it finds where Ray's own clients look (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
``~/.ray/auth_token``) and never hands it to the browser: the proxy adds it upstream.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from rayjupyter.server.errors import ClusterError
from rayjupyter.server.models import ClusterInfo, ClusterNode, ClusterStatus, DashboardPage

RAY_DASHBOARD_PORT = 8265  # Ray's default dashboard port
RAY_CLIENT_PORT = 10001  # Ray's default Ray Client server port
REQUEST_TIMEOUT_S = 5.0  # one dashboard request; a status reads a few in a row
MAX_RAY_CLUSTERS = 64  # clusters added by address, per Jupyter server
MAX_ROWS = 10_000  # rows asked of a state API listing (Ray caps its own at 10,000 too)

# Ray's dashboard routes its pages in the URL fragment: they open at dashboard_url + path
RAY_DASHBOARD_PAGES: tuple[DashboardPage, ...] = (
    {"path": "#/overview", "title": "Overview"},
    {"path": "#/cluster", "title": "Cluster"},
    {"path": "#/jobs", "title": "Jobs"},
    {"path": "#/actors", "title": "Actors"},
    {"path": "#/metrics", "title": "Metrics"},
    {"path": "#/logs", "title": "Logs"},
)

# dashboard GETs that act on processes (profilers attach py-spy, tracebacks dump stacks)
RAY_ACTING_PATHS = ("/worker/", "/task/", "/memory_profile")

TOKEN_HINT = (
    "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) in the Jupyter server's environment to the "
    "cluster's token (`ray get-auth-token` on the cluster prints it)"
)

_RUNNING = {"RUNNING", "RUNNING_IN_RAY_GET", "RUNNING_IN_RAY_WAIT"}
_DONE = {"FINISHED", "FAILED", "NIL"}


class RayDashboardError(Exception):
    """A Ray dashboard did not answer as expected; the message says why, in one line."""


@dataclass(frozen=True)
class RayAddress:
    """Where a Ray cluster's dashboard and its Ray Client server are."""

    dashboard: str  # http(s)://HOST:PORT[/prefix], no trailing slash
    client: str  # ray://HOST:PORT, what %ray_connect takes

    @property
    def host(self) -> str:
        return urlsplit(self.dashboard).hostname or ""

    @property
    def client_hostport(self) -> str:
        """HOST:PORT of the Ray Client server (what a Ray Client driver is connected to)."""
        return self.client.removeprefix("ray://")


def is_ray_address(address: str) -> bool:
    """Whether the panel's address names a Ray cluster (else it is one of ours)."""
    return address.strip().lower().startswith(("ray://", "http://", "https://"))


def parse_ray_address(address: str) -> RayAddress:
    """``ray://HOST[:PORT]`` (its dashboard on HOST:8265) or the dashboard's
    ``http(s)://HOST[:PORT][/prefix]`` (its Ray Client on HOST:10001)."""
    text = address.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        raise ValueError(
            f"Bad port in {text!r}: give ray://HOST:10001 or http://HOST:8265."
        ) from None
    host = parts.hostname
    if not host or scheme not in ("ray", "http", "https") or parts.query or parts.fragment:
        raise ValueError(
            f"Cannot read a Ray address from {text!r}: give ray://HOST:10001 (Ray Client) "
            f"or the dashboard's http://HOST:8265."
        )
    shown = f"[{host}]" if ":" in host else host
    if scheme == "ray":
        return RayAddress(
            f"http://{shown}:{RAY_DASHBOARD_PORT}", f"ray://{shown}:{port or RAY_CLIENT_PORT}"
        )
    default = 443 if scheme == "https" else 80
    path = parts.path.rstrip("/")
    return RayAddress(
        f"{scheme}://{shown}:{port or default}{path}", f"ray://{shown}:{RAY_CLIENT_PORT}"
    )


def ray_token() -> str | None:
    """Ray's auth token from where Ray's clients look, or None (the cluster may not need one)."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    candidates = [Path(path).expanduser()] if path else [Path.home() / ".ray" / "auth_token"]
    for candidate in candidates:
        try:
            token = candidate.read_text().strip()
        except OSError:
            continue
        if token:
            return token
    return None


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class RayDashboardClient:
    """Blocking JSON reads from one Ray dashboard, each bounded by REQUEST_TIMEOUT_S."""

    def __init__(self, address: RayAddress, token: str | None = None) -> None:
        self.address = address
        self.token = token

    def get_json(self, path: str, **query: Any) -> Any:
        url = self.address.dashboard + path + (f"?{urlencode(query)}" if query else "")
        request = urllib.request.Request(url, headers=auth_headers(self.token))
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                reason = "no token was sent" if self.token is None else "its token was refused"
                raise RayDashboardError(
                    f"The Ray dashboard at {self.address.dashboard} needs Ray's auth token "
                    f"({reason}): {TOKEN_HINT}."
                ) from None
            raise RayDashboardError(
                f"The Ray dashboard at {self.address.dashboard} answered {exc.code} to {path}."
            ) from None
        except OSError as exc:  # refused, unreachable, timed out
            why: object = getattr(exc, "reason", None) or exc
            raise RayDashboardError(
                f"No Ray dashboard answers at {self.address.dashboard} ({why}): check the "
                f"address (Ray's dashboard listens on port {RAY_DASHBOARD_PORT} unless "
                f"`ray start --dashboard-port` says otherwise)."
            ) from None
        try:
            return json.loads(body)
        except ValueError:
            raise RayDashboardError(
                f"{self.address.dashboard}{path} did not answer JSON: is it a Ray dashboard?"
            ) from None

    def _state(self, path: str, **query: Any) -> Any:
        """The ``result`` of a state API reply (``/api/v0/...``)."""
        reply = self.get_json(path, **query)
        try:
            return reply["data"]["result"]["result"]
        except (KeyError, TypeError):
            raise RayDashboardError(
                f"{self.address.dashboard}{path} answered in a shape this rayjupyter does not "
                f"know: upgrade rayjupyter, or check the Ray version."
            ) from None

    def session_name(self) -> str:
        """The cluster's session name (``/api/version``): its id in the panel."""
        version = self.get_json("/api/version")
        name = version.get("session_name") if isinstance(version, dict) else None
        if not name:
            raise RayDashboardError(
                f"{self.address.dashboard} is not a Ray dashboard (no session in /api/version)."
            )
        return str(name)

    def status(self) -> ClusterStatus:
        """A snapshot of the cluster, from the state API, the autoscaler's usage report and
        the dashboard's node summary (machine memory and CPU)."""
        nodes = self._state("/api/v0/nodes", detail="true", limit=MAX_ROWS)
        usage = self.get_json("/api/cluster_status")
        summary = self.get_json("/nodes", view="summary")
        tasks = self._state("/api/v0/tasks/summarize")
        actors = self._state("/api/v0/actors/summarize")
        workers = self._state(
            "/api/v0/workers",
            limit=MAX_ROWS,
            filter_keys="is_alive",
            filter_predicates="=",
            filter_values="True",
        )
        return summarize_ray(nodes, usage, summary, tasks, actors, workers)


def summarize_ray(
    nodes: list[dict[str, Any]],
    cluster_status: dict[str, Any],
    node_summary: dict[str, Any],
    tasks: dict[str, Any],
    actors: dict[str, Any],
    workers: list[dict[str, Any]],
) -> ClusterStatus:
    """Ray's replies as the panel's ClusterStatus (the same model as our runtime's)."""
    rows: list[ClusterNode] = [
        {
            "node_id": str(node.get("node_id", "")),
            "address": str(node.get("node_ip", "")),
            "alive": node.get("state") == "ALIVE",
            "resources": {
                str(k): float(v)
                for k, v in (node.get("resources_total") or {}).items()
                if not str(k).startswith("node:")
            },
            "started": float(node.get("start_time_ms") or 0) / 1000.0,
        }
        for node in nodes
    ]
    autoscaler = (cluster_status.get("data") or {}).get("clusterStatus") or {}
    usage = (autoscaler.get("loadMetricsReport") or {}).get("usage") or {}

    def total(name: str) -> float:
        return sum(row["resources"].get(name, 0.0) for row in rows if row["alive"])

    def used(name: str) -> float:
        """From the autoscaler's last report (every few seconds; empty right after start)."""
        pair = usage.get(name) or [0.0, 0.0]
        return float(pair[0])

    cpu_total, gpu_total = total("CPU"), total("GPU")
    cpu_used, gpu_used = used("CPU"), used("GPU")
    machines = [m for m in (node_summary.get("data") or {}).get("summary") or [] if m]
    live = [m for m in machines if (m.get("raylet") or {}).get("state", "ALIVE") == "ALIVE"]
    memory_total = sum(float((m.get("mem") or [0])[0]) for m in live)
    memory_used = sum(float((m.get("mem") or [0, 0, 0, 0])[3]) for m in live)
    cpu_percent = sum(float(m.get("cpu") or 0) for m in live) / len(live) if live else 0.0
    # the node summary comes from each node's agent every few seconds (none right after start)
    store_used = sum(int((m.get("raylet") or {}).get("objectStoreUsedMemory") or 0) for m in live)
    task_states = _state_counts(tasks)
    return {
        "nodes": rows,
        "nodes_alive": sum(1 for row in rows if row["alive"]),
        "cpu_total": cpu_total,
        "cpu_used": cpu_used,
        "gpu_total": gpu_total,
        "gpu_used": gpu_used,
        "cpu_percent": cpu_percent,
        "memory_used": memory_used,
        "memory_total": memory_total,
        "store_used": store_used,
        "store_capacity": int(total("object_store_memory")),
        "tasks": {s: n for s, n in task_states.items() if s not in _DONE},
        "tasks_running": sum(n for s, n in task_states.items() if s in _RUNNING),
        "tasks_pending": sum(
            n for s, n in task_states.items() if s not in _RUNNING and s not in _DONE
        ),
        "actors": _state_counts(actors),
        "workers": sum(1 for w in workers if w.get("worker_type") == "WORKER"),
        "drivers": sum(1 for w in workers if w.get("worker_type") == "DRIVER"),
        "time": float(autoscaler.get("time") or time.time()),
    }


def _state_counts(summary: dict[str, Any]) -> dict[str, int]:
    """Counts by state, summed over the rows of a tasks or actors summary."""
    counts: dict[str, int] = {}
    cluster = ((summary or {}).get("node_id_to_summary") or {}).get("cluster") or {}
    for row in (cluster.get("summary") or {}).values():
        for state, n in (row.get("state_counts") or {}).items():
            counts[str(state)] = counts.get(str(state), 0) + int(n)
    return counts


@dataclass
class RayCluster:
    """One Ray cluster the user added: its id is its session name."""

    session: str
    address: RayAddress
    local: bool

    def client(self) -> RayDashboardClient:
        return RayDashboardClient(self.address, ray_token())


class RayClusters:
    """The Ray clusters of one Jupyter server, added by address; thread-safe, bounded."""

    def __init__(self, dashboard_url: Any, is_this_machine: Any) -> None:
        self.dashboard_url = dashboard_url
        self.is_this_machine = is_this_machine
        self._lock = threading.Lock()
        self._clusters: dict[str, RayCluster] = {}

    def add(self, address: str, client_address: str | None = None) -> RayCluster:
        """Remember a Ray cluster once its dashboard has answered; ClusterError otherwise.
        client_address: its Ray Client's ray://HOST:PORT, where not the default."""
        try:
            parsed = parse_ray_address(address)
            if client_address is not None:
                client = parse_ray_address(client_address)
                if not client_address.strip().lower().startswith("ray://"):
                    raise ValueError(
                        f"ray_client_address must be ray://HOST:PORT, got {client_address!r}."
                    )
                parsed = RayAddress(parsed.dashboard, client.client)
        except ValueError as exc:
            raise ClusterError(400, str(exc)) from None
        try:
            session = RayDashboardClient(parsed, ray_token()).session_name()
        except RayDashboardError as exc:
            raise ClusterError(502, f"Could not add {address.strip()}: {exc}") from None
        with self._lock:
            if session not in self._clusters and len(self._clusters) >= MAX_RAY_CLUSTERS:
                raise ClusterError(
                    409,
                    f"This server already lists {MAX_RAY_CLUSTERS} Ray clusters "
                    f"(ray_clusters.MAX_RAY_CLUSTERS): remove one first.",
                )
            # added again: the latest addresses win (the user corrects a client port)
            self._clusters[session] = RayCluster(
                session, parsed, bool(self.is_this_machine(parsed.host))
            )
            return self._clusters[session]

    def find(self, session: str) -> RayCluster | None:
        with self._lock:
            return self._clusters.get(session)

    def all(self) -> list[RayCluster]:
        with self._lock:
            return list(self._clusters.values())

    def forget(self, session: str) -> RayCluster | None:
        with self._lock:
            return self._clusters.pop(session, None)

    def clear(self) -> None:
        with self._lock:
            self._clusters.clear()

    def info(self, cluster: RayCluster) -> ClusterInfo:
        """The cluster's panel model, with its status read now (or why it could not be)."""
        status: ClusterStatus | None = None
        error: str | None = None
        try:
            status = cluster.client().status()
        except RayDashboardError as exc:
            error = str(exc)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            error = f"The Ray dashboard at {cluster.address.dashboard} answered oddly: {exc!r}"
        heads = [n["started"] for n in (status or {"nodes": []})["nodes"] if n["started"]]
        return {
            "id": cluster.session,
            "engine": "ray",
            "address": cluster.address.dashboard,
            "connect_address": cluster.address.client,
            "origin": "remote",
            "local": cluster.local,
            "owner_pid": 0,
            "kernel_id": None,
            "started": min(heads) if heads else None,
            "stop_action": "forget",
            "stop_note": "Remove it from this list; the Ray cluster keeps running.",
            "dashboard_url": self.dashboard_url(cluster.session),
            "status": status,
            "error": error,
        }
