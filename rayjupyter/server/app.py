"""The server extension: routes, and the shutdown hook that stops what it started.

An ExtensionApp (rather than a bare load function) because only those get a stop hook:
the clusters started from the panel and the dashboards must stop with the Jupyter server.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from tornado.routing import Rule

from rayjupyter.server import handlers, proxy
from rayjupyter.server.service import ClusterService


class RayJupyterExtension(ExtensionApp):
    """Clusters panel API and dashboard proxy under ``{base_url}rayjupyter/``."""

    name = "rayjupyter"
    load_other_extensions = True
    service: ClusterService | None = None

    def initialize_handlers(self) -> None:
        """Add the routes (directly: the websocket route needs a matcher of its own)."""
        serverapp: Any = self.serverapp
        base_url = serverapp.base_url
        self.service = ClusterService(
            base_url, getattr(serverapp, "kernel_manager", None), str(serverapp.root_dir)
        )
        kwargs = {"service": self.service}

        def api(path: str) -> str:
            return url_path_join(base_url, "rayjupyter", "api", path)

        dashboard = url_path_join(base_url, "rayjupyter", "dashboard", r"([^/]+)")
        upgrade = proxy.WebSocketUpgrade(dashboard + r"/(.*)")
        routes: list[Any] = [
            (api("clusters"), handlers.ClustersHandler, kwargs),
            (api(r"clusters/([^/]+)"), handlers.ClusterHandler, kwargs),
            (api(r"kernels/([^/]+)/cluster"), handlers.KernelClusterHandler, kwargs),
            Rule(upgrade, proxy.DashboardWebSocketProxy, kwargs),
            (dashboard + r"/(.*)", proxy.DashboardProxyHandler, kwargs),
            (dashboard, proxy.DashboardProxyHandler, kwargs),
        ]
        serverapp.web_app.add_handlers(".*$", routes)
        self.log.info("rayjupyter: clusters API at %s", api(""))

    async def stop_extension(self) -> None:
        """Stop the clusters started from the panel and the dashboards."""
        if self.service is not None:
            self.service.close()
            self.service = None
