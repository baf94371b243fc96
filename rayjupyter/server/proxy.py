"""The dashboard proxy: ``{base_url}rayjupyter/dashboard/<session>/...`` over HTTP and
websockets, through Jupyter's own port and auth, so the dashboard works wherever Jupyter
does (JupyterHub, an SSH tunnel).

Our dashboard serves every path under that same prefix, so a request's path travels
unchanged; a Ray cluster's dashboard (``ray_clusters.py``) serves at its root, so the
prefix is cut off on the way there and put back on redirects. Jupyter's credentials (its
token, its cookies) stay here; the dashboard gets its own credentials in an Authorization
header instead (our dashboard's token, or Ray's auth token), so the browser never holds
them. On a Ray dashboard, requests that act on the cluster (any method but GET/HEAD/OPTIONS:
Ray's job API runs code; profilers and tracebacks attach to processes) need a user who may
run code (``authz.may_run_code``). Jupyter's Authorizer decides who may use a
dashboard: ``read`` on the resource ``rayjupyter`` for page views and the websocket,
``write`` for other methods (``authz.py``). A websocket upgrade is routed to its own
handler by a matcher on the Upgrade header (tornado picks handlers by path only).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import httpclient, web, websocket
from tornado.httputil import HTTPServerRequest
from tornado.routing import PathMatches

from rayjupyter.server.authz import AUTH_RESOURCE, READ_REFUSED, may_run_code, requires
from rayjupyter.server.dashboards import Upstream
from rayjupyter.server.errors import ClusterError
from rayjupyter.server.handlers import JsonErrors, error_body
from rayjupyter.server.service import ClusterService

UPSTREAM_TIMEOUT_S = 30.0
MAX_MESSAGE_BYTES = 64 * 2**20  # bokeh documents can be large
# headers that describe one hop, or carry Jupyter's credentials, never go to the dashboard
_REQUEST_DROP = {
    "authorization",
    "connection",
    "content-length",
    "cookie",
    "host",
    "keep-alive",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "accept-encoding",
}
_RESPONSE_DROP = {
    "connection",
    "content-encoding",  # the client decompressed it
    "content-length",  # tornado sets it for what we write
    "keep-alive",
    "server",
    "set-cookie",  # the dashboard is authenticated by header, never by the browser's cookies
    "trailer",
    "transfer-encoding",
    "date",
    "content-security-policy",  # Jupyter's own (frame-ancestors 'self') applies
}


class WebSocketUpgrade(PathMatches):
    """A path pattern that matches only websocket upgrade requests."""

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return None
        return super().match(request)


ACTING_REFUSED = (
    "This acts on the Ray cluster (it runs code or attaches to its processes): it needs a "
    "Jupyter user who may run code (execute on 'rayjupyter' and 'kernels')."
)


def upstream_uri(request: HTTPServerRequest, upstream: Upstream) -> str:
    """The request's upstream path and query, without Jupyter's token."""
    parts = urlsplit(request.uri or "/")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    return upstream.path(parts.path) + (f"?{urlencode(query)}" if query else "")


def upstream_headers(request: HTTPServerRequest, upstream: Upstream) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.get_all() if k.lower() not in _REQUEST_DROP}
    headers.update(upstream.headers)
    headers["X-Forwarded-Host"] = request.host
    headers["X-Forwarded-Proto"] = request.protocol
    return headers


async def refuse_acting(handler: JupyterHandler, upstream: Upstream, path: str) -> None:
    """A 403 for a request that acts on the cluster from a user who may not run code."""
    method = handler.request.method or "GET"
    if upstream.acts(method, path) and not await may_run_code(handler):
        raise ClusterError(403, ACTING_REFUSED)


class DashboardProxyHandler(JsonErrors):
    """HTTP requests to a cluster's dashboard (started on first use)."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    auth_resource = AUTH_RESOURCE

    def initialize(self, service: ClusterService) -> None:
        self.service = service

    async def _proxy(self, session: str, path: str) -> None:
        if self.current_user is None:
            raise web.HTTPError(403, "Log in to Jupyter first (its token or login cookie).")
        if not path and not self.request.path.endswith("/"):
            self.redirect(self.request.path + "/" + _query(self.request))
            return
        upstream = await self.service.upstream(session)
        uri = upstream_uri(self.request, upstream)
        await refuse_acting(self, upstream, urlsplit(uri).path)
        method = self.request.method or "GET"
        body = self.request.body if method in ("POST", "PUT", "PATCH") else None
        request = httpclient.HTTPRequest(
            upstream.origin + uri,
            method=method,
            headers=upstream_headers(self.request, upstream),
            body=body,
            follow_redirects=False,
            allow_nonstandard_methods=True,
            request_timeout=UPSTREAM_TIMEOUT_S,
            decompress_response=True,
        )
        try:
            response = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        except Exception as exc:
            raise ClusterError(
                502, f"The dashboard of cluster {session} did not answer ({exc}); reload the page."
            ) from None
        if response.code == 599:
            raise ClusterError(
                502,
                f"The dashboard of cluster {session} did not answer ({response.error}); "
                f"reload the page.",
            )
        self.set_status(response.code, response.reason)
        seen: set[str] = set()
        for name, value in response.headers.get_all():
            lowered = name.lower()
            if lowered in _RESPONSE_DROP:
                continue
            if lowered == "location":
                value = _local_location(value, upstream)
            if lowered in seen:  # a repeated header (Vary, Link): keep every value
                self.add_header(name, value)
            else:  # replaces Jupyter's default (Content-Type, Cache-Control)
                self.set_header(name, value)
                seen.add(lowered)
        if response.body and method != "HEAD" and response.code not in (204, 304):
            self.write(response.body)
        await self.finish()

    @web.authenticated  # a page view without login goes to Jupyter's login page
    @requires("read")
    async def get(self, session: str, path: str = "") -> None:
        await self._proxy(session, path)

    @requires("read")
    async def head(self, session: str, path: str = "") -> None:
        await self._proxy(session, path)

    @requires("read")
    async def options(self, session: str, path: str = "") -> None:
        await self._proxy(session, path)

    @requires("write")
    async def post(self, session: str, path: str = "") -> None:
        await self._proxy(session, path)

    @requires("write")
    async def put(self, session: str, path: str = "") -> None:
        await self._proxy(session, path)

    @requires("write")
    async def patch(self, session: str, path: str = "") -> None:
        await self._proxy(session, path)

    @requires("write")
    async def delete(self, session: str, path: str = "") -> None:
        await self._proxy(session, path)


class DashboardWebSocketProxy(WebSocketMixin, websocket.WebSocketHandler, JupyterHandler):
    """A websocket to a cluster's dashboard (bokeh's document sync), relayed both ways."""

    upstream: websocket.WebSocketClientConnection | None = None
    auth_resource = AUTH_RESOURCE

    def initialize(self, service: ClusterService) -> None:
        self.service = service
        self._relay: asyncio.Task[None] | None = None

    def set_default_headers(self) -> None:
        """No page headers (CSP and the like) on a websocket handshake."""

    def get_compression_options(self) -> dict[str, Any] | None:
        return self.settings.get("websocket_compression_options", None)

    @property
    def max_message_size(self) -> int:
        return MAX_MESSAGE_BYTES

    @ws_authenticated
    async def get(self, session: str, path: str = "") -> None:
        # bokeh's document sync shows the dashboard: read, not Jupyter's websocket default
        # (execute, meant for kernels)
        if not await ensure_async(
            self.authorizer.is_authorized(self, self.current_user, "read", AUTH_RESOURCE)
        ):
            raise web.HTTPError(403, READ_REFUSED)
        upstream = await self._upstream(session)
        uri = upstream_uri(self.request, upstream)
        try:
            await refuse_acting(self, upstream, urlsplit(uri).path)
        except ClusterError as exc:
            raise web.HTTPError(exc.status, "%s", exc.message) from None
        headers = upstream_headers(self.request, upstream)
        for name in ("Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Extensions"):
            headers.pop(name, None)
        headers.pop("Sec-Websocket-Protocol", None)
        # Jupyter has checked the browser's Origin (check_origin); the dashboard sees its own
        origin = urlsplit(upstream.origin)
        headers["Origin"] = f"{origin.scheme}://{origin.netloc}"
        protocols = [
            p.strip()
            for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        request = httpclient.HTTPRequest(
            "ws" + upstream.origin[len("http") :] + uri,  # http -> ws, https -> wss
            headers=headers,
            connect_timeout=UPSTREAM_TIMEOUT_S,
            request_timeout=UPSTREAM_TIMEOUT_S,
        )
        try:
            self.upstream = await websocket.websocket_connect(
                request, subprotocols=protocols or None, max_message_size=MAX_MESSAGE_BYTES
            )
        except Exception as exc:
            message = f"The dashboard of cluster {session} refused the websocket: {exc}"
            self.set_status(502)
            self.set_header("Content-Type", "application/json")
            self.finish(error_body(message, None))
            return
        await super().get(session, path)

    async def _upstream(self, session: str) -> Upstream:
        try:
            return await self.service.upstream(session)
        except ClusterError as exc:
            raise web.HTTPError(exc.status, "%s", exc.message) from None

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return self.upstream.selected_subprotocol if self.upstream is not None else None

    def open(self, *args: Any, **kwargs: Any) -> None:
        super().open(*args, **kwargs)
        self._relay = asyncio.ensure_future(self._relay_upstream())

    async def _relay_upstream(self) -> None:
        """Dashboard -> browser, until either side closes."""
        upstream = self.upstream
        assert upstream is not None
        while True:
            message = await upstream.read_message()
            if message is None:
                break
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                break
        self.close(upstream.close_code or 1000, upstream.close_reason)

    async def on_message(self, message: str | bytes) -> None:
        """Browser -> dashboard."""
        if self.upstream is None:
            return
        try:
            await self.upstream.write_message(message, binary=isinstance(message, bytes))
        except websocket.WebSocketClosedError:
            self.close(1011, "the dashboard closed the connection")

    def on_close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
        if self._relay is not None and not self._relay.done():
            with contextlib.suppress(Exception):
                self._relay.cancel()


def _query(request: HTTPServerRequest) -> str:
    return f"?{request.query}" if request.query else ""


def _local_location(location: str, upstream: Upstream) -> str:
    """A redirect to the dashboard's own host:port becomes a path on this server."""
    if upstream.strip:  # Ray's: its paths start at its root, ours under the proxy's prefix
        if location.startswith(upstream.origin + "/"):
            return upstream.strip + location[len(upstream.origin) + 1 :]
        if location.startswith("/") and not location.startswith("//"):
            return upstream.strip + location[1:]
        return location
    parts = urlsplit(location)
    if parts.scheme in ("http", "https") and parts.hostname in ("127.0.0.1", "localhost", "::1"):
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return location
