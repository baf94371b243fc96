"""The clusters one Jupyter server knows: a plain object the handlers call from a thread pool.

Three sources, merged by session name:

- local clusters found by discovery (``/tmp/rayjupyter/*/cluster.json``): started by this
  server's kernels or by any other process of the user on this machine;
- clusters this server started from the panel (it owns them and stops them when it stops);
- remote clusters added by address (kept in memory until removed);
- Ray clusters added by address (``ray_clusters.py``: read through Ray's dashboard API).

Every method blocks (process start, network round trips) and raises ``ClusterError`` with
an HTTP status and a one-line message that names the fix.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psutil

from rayjupyter.core import connect, discovery
from rayjupyter.core.api import ADDRESS_SCHEME, _parse_address
from rayjupyter.core.config import NodeConfig
from rayjupyter.core.launcher import LocalCluster
from rayjupyter.server.errors import ClusterError
from rayjupyter.server.models import (
    ClusterInfo,
    ClusterOrigin,
    ClusterStatus,
    KernelMatch,
    StopAction,
)
from rayjupyter.server.ray_clusters import RayClusters, is_ray_address
from rayjupyter.server.status import StatusError, StatusReader

STATUS_THREADS = 8  # clusters whose status is read at once
LOOPBACK = ("127.0.0.1", "::1", "localhost")
_ORIGIN_ORDER = {"panel": 0, "kernel": 1, "remote": 2, "process": 3}


@dataclass
class _Known:
    """What the registry needs to reach one cluster."""

    session: str
    hostport: str
    secret: str
    origin: ClusterOrigin
    local: bool
    owner_pid: int = 0
    started: float | None = None
    kernel_id: str | None = None  # the kernel of this server that started it

    @property
    def connect_address(self) -> str:
        return f"{ADDRESS_SCHEME}{self.secret}@{self.hostport}"


class ClusterRegistry:
    """Lists, starts, stops, adds and finds clusters for the server extension.

    ``dashboard_url(session)`` gives the proxy path of a cluster's dashboard (the server
    knows its base URL); ``root_dir`` is put first on the path of the workers of clusters
    started from the panel, so they import modules next to the notebooks.
    """

    def __init__(self, dashboard_url: Callable[[str], str], root_dir: str = "") -> None:
        self.dashboard_url = dashboard_url
        self.root_dir = root_dir
        self.status_reader = StatusReader()
        self._lock = threading.Lock()
        self._started: dict[str, LocalCluster] = {}  # session -> cluster started from the panel
        self._remotes: dict[str, _Known] = {}  # session -> cluster added by address
        self._pool = ThreadPoolExecutor(STATUS_THREADS, thread_name_prefix="rayjupyter-status")
        self.ray = RayClusters(dashboard_url, _is_this_machine)

    # ------------------------------------------------------------------ listing

    def known(self, kernel_pids: dict[int, str] | None = None) -> list[_Known]:
        """Every cluster, without status: this server's first, then remote ones, then the
        other local ones (oldest first within each). kernel_pids: pid -> id of this
        server's kernels, to tell which clusters a kernel started."""
        with self._lock:
            dead = [s for s, c in self._started.items() if c.exit_reason() is not None]
            gone = [self._started.pop(s) for s in dead]
            started = dict(self._started)
            remotes = list(self._remotes.values())
        for cluster in gone:  # its node exited on its own: remove what it left behind
            cluster.stop()
        found: dict[str, _Known] = {}
        for record in discovery.list_local_clusters():
            session = str(record["session"])
            try:
                hostport, secret = _parse_address(str(record["connect_address"]))
            except (KeyError, ValueError):
                continue  # a record from another version: nothing we can reach
            owner = int(record.get("owner_pid", 0))
            kernel = _owning_kernel(owner, kernel_pids or {})
            origin: ClusterOrigin = "process"
            if session in started:
                origin = "panel"
            elif kernel is not None:
                origin = "kernel"
            started_at = float(record.get("started", 0))
            found[session] = _Known(
                session, hostport, secret, origin, True, owner, started_at, kernel
            )
        for session, cluster in started.items():  # its record may not be written yet
            if session not in found:
                found[session] = _Known(
                    session, cluster.address, cluster.secret, "panel", True, os.getpid(), None
                )
        for remote in remotes:
            found.setdefault(remote.session, remote)
        self.status_reader.forget_all_but({k.hostport for k in found.values()})
        return sorted(found.values(), key=lambda k: _ORIGIN_ORDER[k.origin])

    def list_clusters(self, kernel_pids: dict[int, str] | None = None) -> list[ClusterInfo]:
        """Every cluster with its live status (read in parallel, each bounded in time)."""
        known = self.known(kernel_pids)
        ours = [self._pool.submit(self._info, k) for k in known]
        ray = [self._pool.submit(self.ray.info, c) for c in self.ray.all()]
        return [future.result() for future in ours + ray]

    def get(self, session: str, kernel_pids: dict[int, str] | None = None) -> ClusterInfo:
        ray = self.ray.find(session)
        if ray is not None:
            return self.ray.info(ray)
        return self._info(self._find(session, kernel_pids))

    def connect_address(self, session: str) -> str:
        return self._find(session).connect_address

    def _find(self, session: str, kernel_pids: dict[int, str] | None = None) -> _Known:
        for known in self.known(kernel_pids):
            if known.session == session:
                return known
        raise ClusterError(
            404,
            f"No cluster {session!r} is known to this server: it may have stopped; "
            f"refresh the list of clusters.",
        )

    def _info(self, known: _Known) -> ClusterInfo:
        """The cluster's model, with its status read now (or why it could not be)."""
        status: ClusterStatus | None = None
        error: str | None = None
        try:
            status = self.status_reader.status(known.hostport, known.secret)
        except StatusError as exc:
            error = str(exc)
        action, note = self._stop_policy(known)
        return {
            "id": known.session,
            "engine": "rayjupyter",
            "address": known.hostport,
            "connect_address": known.connect_address,
            "origin": known.origin,
            "local": known.local,
            "owner_pid": known.owner_pid,
            "kernel_id": known.kernel_id,
            "started": known.started,
            "stop_action": action,
            "stop_note": note,
            "dashboard_url": self.dashboard_url(known.session),
            "status": status,
            "error": error,
        }

    @staticmethod
    def _stop_policy(known: _Known) -> tuple[StopAction, str]:
        """What DELETE does to this cluster, or why it refuses; shown in the panel.

        Stopping a cluster that a kernel or script started would break that driver's refs
        and actors under it, so the server leaves it to its owner, which stops it by
        disconnecting (or by exiting).
        """
        if known.origin == "panel":
            return "stop", "Stop this cluster: its tasks and actors end."
        if known.origin == "remote":
            return "forget", "Remove it from this list; the cluster keeps running."
        if known.kernel_id is not None:
            return "none", (
                f"Started by kernel {known.kernel_id} (pid {known.owner_pid}); it stops with that "
                f"kernel: run %ray_disconnect in its notebook, or shut the kernel down."
            )
        if known.owner_pid:
            return "none", (
                f"Started by process {known.owner_pid} ({_process_name(known.owner_pid)}); "
                f"it stops when that process calls rj.shutdown() or exits."
            )
        return "none", "Started outside Jupyter (no owner process); stop it where it was started."

    # ------------------------------------------------------------------ starting and stopping

    def start_local(self, num_cpus: float | None = None) -> ClusterInfo:
        """Start a local cluster owned by this server; it stops with the server."""
        if num_cpus is not None and (num_cpus < 0 or num_cpus != num_cpus):
            raise ClusterError(400, f"num_cpus must be a number >= 0, got {num_cpus!r}")
        sys_path = [p or os.getcwd() for p in sys.path]
        if self.root_dir:
            sys_path.insert(0, self.root_dir)
        config = NodeConfig(
            num_cpus=float(num_cpus if num_cpus is not None else (os.cpu_count() or 1)),
            object_store_memory=0,  # the node sizes it to this machine (store_placement)
            sys_path=sys_path,
            owner_pid=os.getpid(),
        )
        try:
            cluster = LocalCluster(config)
        except Exception as exc:
            raise ClusterError(500, f"Could not start a local cluster: {exc}") from None
        with self._lock:
            self._started[cluster.session] = cluster
        return self.get(cluster.session)

    def stop(self, session: str, kernel_pids: dict[int, str] | None = None) -> str:
        """Stop a cluster started from the panel, or forget a remote one; a line saying which."""
        ray = self.ray.forget(session)
        if ray is not None:
            where = ray.address.dashboard
            return f"Removed the Ray cluster at {where} from the list; it keeps running."
        with self._lock:
            cluster = self._started.pop(session, None)
            remote = self._remotes.pop(session, None) if cluster is None else None
        if cluster is not None:
            self.status_reader.forget(cluster.address)
            cluster.stop()
            return f"Stopped the cluster {session} at {cluster.address}."
        if remote is not None:
            self.status_reader.forget(remote.hostport)
            connect.forget_secret(remote.hostport)
            return f"Removed {remote.hostport} from the list; it keeps running."
        _action, note = self._stop_policy(self._find(session, kernel_pids))
        raise ClusterError(409, f"This server did not start cluster {session}. {note}")

    def add_remote(self, address: str, ray_client_address: str | None = None) -> ClusterInfo:
        """Remember a running cluster by its address, once it has answered (a Ray cluster's
        Ray Client address may be given too, when it is not the default)."""
        address = address.strip()
        if not address:
            raise ClusterError(
                400,
                "Give the cluster's address: rayjupyter://SECRET@HOST:PORT, or for a Ray "
                "cluster ray://HOST:10001 or its dashboard's http://HOST:8265.",
            )
        if is_ray_address(address):
            return self.ray.info(self.ray.add(address, ray_client_address))
        if ray_client_address is not None:
            raise ClusterError(
                400, "ray_client_address goes with a Ray cluster's address (ray:// or http://)."
            )
        if "://" not in address and "@" in address:
            address = ADDRESS_SCHEME + address
        try:
            hostport, secret = _parse_address(address)
        except ValueError as exc:
            raise ClusterError(400, str(exc)) from None
        try:
            client = self.status_reader.client(hostport, secret)
        except StatusError as exc:
            raise ClusterError(502, f"Could not add {hostport}: {exc}") from None
        session = client.session
        for known in self.known():
            if known.session == session:
                return self.get(session)  # already listed (a local cluster, or added before)
        host = hostport.rpartition(":")[0].strip("[]")
        with self._lock:
            self._remotes[session] = _Known(
                session, hostport, secret, "remote", _is_this_machine(host)
            )
        # this user's kernels find the secret themselves: "Connect notebook" writes only
        # %ray_connect HOST:PORT into the notebook, which is saved and shared
        connect.remember_secret(hostport, secret)
        return self.get(session)

    # ------------------------------------------------------------------ kernels

    def cluster_of(
        self, pid: int, kernel_pids: dict[int, str] | None = None
    ) -> tuple[ClusterInfo | None, KernelMatch | None]:
        """The cluster a process (a kernel) started, else the one it is connected to."""
        known = self.known(kernel_pids)
        family = _family(pid)
        for k in known:
            if k.local and k.owner_pid and k.owner_pid in family:
                return self._info(k), "owner"
        peers = _tcp_peers(pid)
        if peers:
            for k in known:
                if _endpoints(k.hostport) & peers:
                    return self._info(k), "connected"
            for ray in self.ray.all():  # a Ray Client driver (ray://HOST:PORT)
                if _endpoints(ray.address.client_hostport) & peers:
                    return self.ray.info(ray), "connected"
        for k in known:  # attached from this machine: over the node's Unix socket
            if not k.local:
                continue
            with contextlib.suppress(StatusError):
                if self.status_reader.driver_pids(k.hostport, k.secret) & family:
                    return self._info(k), "connected"
        return None, None

    # ------------------------------------------------------------------ shutting down

    def close(self) -> None:
        """Stop every cluster started from the panel and close the status connections."""
        with self._lock:
            started = list(self._started.values())
            remotes = list(self._remotes.values())
            self._started.clear()
            self._remotes.clear()
        self.ray.clear()
        for remote in remotes:
            with contextlib.suppress(OSError):
                connect.forget_secret(remote.hostport)
        self.status_reader.close()
        for cluster in started:
            with contextlib.suppress(Exception):
                cluster.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _owning_kernel(owner_pid: int, kernel_pids: dict[int, str]) -> str | None:
    """The id of the kernel whose process (or a process under it) started the cluster."""
    if not owner_pid or not kernel_pids:
        return None
    if owner_pid in kernel_pids:
        return kernel_pids[owner_pid]
    with contextlib.suppress(psutil.Error):
        for parent in psutil.Process(owner_pid).parents():
            if parent.pid in kernel_pids:
                return kernel_pids[parent.pid]
    return None


def _family(pid: int) -> set[int]:
    """pid and its descendants: a kernel may run its code under a launcher process."""
    family = {pid}
    with contextlib.suppress(psutil.Error):
        family.update(child.pid for child in psutil.Process(pid).children(recursive=True))
    return family


def _tcp_peers(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of the established TCP connections of a process."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return set()
    # an IPv4 peer of a dual-stack socket (gRPC's, Ray Client's) reads ::ffff:a.b.c.d
    return {
        (str(c.raddr.ip).removeprefix("::ffff:"), int(c.raddr.port))
        for c in connections
        if c.raddr and c.status == psutil.CONN_ESTABLISHED
    }


def _endpoints(hostport: str) -> set[tuple[str, int]]:
    """The (ip, port) pairs a host:port resolves to."""
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)
    except (OSError, ValueError):
        return set()
    return {(str(info[4][0]), int(port)) for info in infos}


def _is_this_machine(host: str) -> bool:
    if host in LOOPBACK:
        return True
    with contextlib.suppress(OSError):
        return host in {socket.gethostname(), socket.getfqdn()} or host in _local_ips()
    return False


def _local_ips() -> set[str]:
    ips: set[str] = set()
    for addresses in psutil.net_if_addrs().values():
        ips.update(a.address for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6))
    return ips


def _process_name(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline()[:3]) or "?"
    except psutil.Error:
        return "gone"
