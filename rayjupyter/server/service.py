"""What the handlers call: the registry and the dashboards, run off the tornado loop.

Every call into the registry blocks (process starts, network round trips), so it runs in
a small thread pool and is bounded in time; a ClusterError from it reaches the handler,
which turns it into a JSON error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from jupyter_server.utils import url_path_join

from rayjupyter.server.dashboards import Dashboard, DashboardManager, Upstream
from rayjupyter.server.errors import ClusterError
from rayjupyter.server.models import ClusterInfo, KernelCluster
from rayjupyter.server.ray_clusters import RAY_ACTING_PATHS, auth_headers, ray_token
from rayjupyter.server.registry import ClusterRegistry

T = TypeVar("T")

LIST_TIMEOUT_S = 20.0  # statuses are read in parallel, each within a few seconds
START_TIMEOUT_S = 90.0  # a local cluster starts within launcher.START_TIMEOUT_S
DASHBOARD_TIMEOUT_S = 60.0


class ClusterService:
    """One per Jupyter server: the registry, the dashboards, and the pool they run in."""

    def __init__(self, base_url: str, kernel_manager: Any, root_dir: str = "") -> None:
        self.base_url = base_url
        self.kernel_manager = kernel_manager
        self.registry = ClusterRegistry(self.dashboard_url, root_dir=root_dir)
        self.dashboards = DashboardManager(self.dashboard_url)
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="rayjupyter-server")

    def dashboard_url(self, session: str) -> str:
        """The proxy path of a cluster's dashboard; also the dashboard's own path prefix."""
        return url_path_join(self.base_url, "rayjupyter", "dashboard", session) + "/"

    async def call(self, fn: Callable[..., T], *args: Any, timeout: float = LIST_TIMEOUT_S) -> T:
        """Run a blocking call in the pool; ClusterError(504) if it takes too long."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, fn, *args)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            name = getattr(fn, "__name__", "request")
            raise ClusterError(
                504, f"{name} took more than {timeout:.0f} s; check the cluster and try again."
            ) from None

    def kernel_pids(self) -> dict[int, str]:
        """pid -> kernel id for this server's local kernels."""
        found: dict[int, str] = {}
        if self.kernel_manager is None:
            return found
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            pid = self._kernel_pid(kernel_id)
            if pid:
                found[pid] = kernel_id
        return found

    def _kernel_pid(self, kernel_id: str) -> int | None:
        with contextlib.suppress(KeyError):
            kernel = self.kernel_manager.get_kernel(kernel_id)
            pid = getattr(getattr(kernel, "provisioner", None), "pid", None)
            return int(pid) if pid else None
        return None

    async def clusters(self) -> list[ClusterInfo]:
        infos = await self.call(self.registry.list_clusters, self.kernel_pids())
        running = set(self.dashboards.running())
        if running - {info["id"] for info in infos}:  # their clusters are gone
            await self.call(self.dashboards.stop_all_but, {info["id"] for info in infos})
        return infos

    async def cluster(self, session: str) -> ClusterInfo:
        return await self.call(self.registry.get, session, self.kernel_pids())

    async def start(self, num_cpus: float | None) -> ClusterInfo:
        return await self.call(self.registry.start_local, num_cpus, timeout=START_TIMEOUT_S)

    async def add(self, address: str, ray_client_address: str | None = None) -> ClusterInfo:
        return await self.call(self.registry.add_remote, address, ray_client_address)

    async def stop(self, session: str) -> str:
        message = await self.call(self.registry.stop, session, self.kernel_pids())
        await self.call(self.dashboards.stop, session)
        return message

    async def kernel_cluster(self, kernel_id: str) -> KernelCluster:
        if kernel_id not in set(self.kernel_manager.list_kernel_ids()):
            raise ClusterError(404, f"No kernel {kernel_id!r} runs on this server.")
        pid = self._kernel_pid(kernel_id)
        if pid is None:
            return {"kernel_id": kernel_id, "pid": None, "cluster": None, "match": None}
        info, match = await self.call(self.registry.cluster_of, pid, self.kernel_pids())
        return {"kernel_id": kernel_id, "pid": pid, "cluster": info, "match": match}

    async def dashboard(self, session: str) -> Dashboard:
        """The cluster's dashboard, started on first use."""
        running = self.dashboards.alive(session)
        if running is not None:
            return running
        address = await self.call(self.registry.connect_address, session)
        return await self.call(self.dashboards.get, session, address, timeout=DASHBOARD_TIMEOUT_S)

    async def upstream(self, session: str) -> Upstream:
        """Where the proxy sends a cluster's dashboard requests: a Ray cluster's own
        dashboard, or ours (started on first use)."""
        ray = self.registry.ray.find(session)
        if ray is not None:
            return Upstream(
                ray.address.dashboard,
                auth_headers(ray_token()),
                strip=self.dashboard_url(session),
                acting_paths=RAY_ACTING_PATHS,
                guard_writes=True,
            )
        dashboard = await self.dashboard(session)
        return Upstream(
            f"http://{self.dashboards.host}:{dashboard.port}",
            {"Authorization": f"token {dashboard.token}"},
        )

    def close(self) -> None:
        """Stop the dashboards and the clusters started from the panel (server shutdown)."""
        self.dashboards.close()
        self.registry.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
