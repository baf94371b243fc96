"""One tornado server for the whole dashboard: bokeh's pages, their websockets and static
files, and the JSON API, all under one prefix and all behind the token gate."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from typing import Any

from tornado.web import RequestHandler

from rayjupyter.dashboard import api
from rayjupyter.dashboard.feed import ClusterFeed
from rayjupyter.dashboard.gate import GateConfig, gate_all_routes
from rayjupyter.dashboard.pages import DEFAULT_PAGE, PAGES


def normalize_prefix(prefix: str) -> str:
    """ "" or "/a/b" (leading slash, no trailing one), as bokeh and our links expect."""
    prefix = prefix.strip().strip("/")
    return f"/{prefix}" if prefix else ""


def _builder(path: str) -> Callable[..., None]:
    module = importlib.import_module(f"rayjupyter.dashboard.pages.{PAGES[path][1]}")
    name = "make" if hasattr(module, "make") else f"make_{path}"
    builder: Callable[..., None] = getattr(module, name)
    return builder


class DashboardServer:
    """The bokeh application and the API on one HTTP server; ``start`` binds and serves."""

    def __init__(
        self,
        feed: ClusterFeed,
        *,
        token: str,
        session_key: bytes,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "",
    ) -> None:
        # server mode: pages load BokehJS from this server's /static/ (no CDN, no 4 MB
        # inline copy per page); set before bokeh reads its settings
        os.environ["BOKEH_RESOURCES"] = "server"
        from bokeh.application import Application
        from bokeh.application.handlers.function import FunctionHandler
        from bokeh.server.server import BaseServer
        from bokeh.server.tornado import BokehTornado
        from bokeh.server.util import bind_sockets
        from tornado.httpserver import HTTPServer
        from tornado.ioloop import IOLoop

        from rayjupyter.dashboard.pages.common import PageContext

        self.prefix = normalize_prefix(prefix)
        context = PageContext(feed, self.prefix)
        applications = {
            f"/{path}": Application(
                FunctionHandler(functools.partial(_builder(path), context=context))
            )
            for path in PAGES
        }
        extra: list[Any] = [(r"/?", RootRedirect, {"target": f"{self.prefix}/{DEFAULT_PAGE}"})]
        extra += api.routes(feed)
        self.tornado = BokehTornado(
            applications,
            prefix=self.prefix,
            extra_patterns=extra,
            use_index=False,
            secret_key=session_key,
            sign_sessions=True,
            # the gate's credentials never go into the session token bokeh puts in the page
            exclude_headers=["Authorization", "Cookie"],
            exclude_cookies=[GateConfig(token, "/", None).cookie],
        )
        gate_all_routes(self.tornado, GateConfig(token, f"{self.prefix}/", session_key))
        self.sockets, self.port = bind_sockets(host, port)
        self.http = HTTPServer(self.tornado, xheaders=False)
        self.http.add_sockets(self.sockets)
        self.server = BaseServer(IOLoop.current(), self.tornado, self.http)
        self.host = host

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop(wait=False)


class RootRedirect(RequestHandler):
    """``{prefix}/`` opens the overview (the query, a ?token= say, goes along)."""

    def initialize(self, target: str) -> None:
        self.target = target

    def get(self) -> None:
        query = self.request.query
        self.redirect(self.target + (f"?{query}" if query else ""))
