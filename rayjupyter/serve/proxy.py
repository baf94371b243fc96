"""The HTTP proxy: an actor running uvicorn, routing each request by ``route_prefix``.

The longest matching prefix picks the application; the request (its ASGI scope and whole
body) goes to the application's ingress deployment through the same router as handle
calls, and the replica's ASGI messages come back as a stream, sent on as they arrive.
Answers of our own are JSON: 404 for a path no application serves, 503 when the
application has no running replica or its queue is full, 500 when the replica died. A
request whose replica dies before any byte of the answer is sent once more to another.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from rayjupyter.exceptions import RayActorError
from rayjupyter.serve.config import HTTPOptions
from rayjupyter.serve.handle import (
    BackPressureError,
    DeploymentUnavailableError,
    _controller,
    http_call,
    router_for,
)

_SCOPE_KEYS = (
    "type", "asgi", "http_version", "method", "scheme", "path", "raw_path",
    "query_string", "headers", "client", "server",
)  # fmt: skip


def match_route(routes: dict[str, Any], path: str) -> str | None:
    """The longest prefix that is ``path`` itself or a whole leading segment of it."""
    best = None
    for prefix in routes:
        base = prefix.rstrip("/")
        matches = base == "" or path == base or path.startswith(base + "/")
        if matches and (best is None or len(base) > len(best.rstrip("/"))):
            best = prefix
    return best


async def _send_json(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Proxy:
    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, str]] = {}
        self.version = -1
        self.server: Any = None
        self.root_path = ""
        self.request_timeout_s: float | None = None
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self, options: HTTPOptions) -> int:
        """Listen (the socket is bound here, so a port in use raises OSError to
        serve.start); returns the port."""
        import uvicorn

        self.root_path = options.root_path
        self.request_timeout_s = options.request_timeout_s
        family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
        # proto IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on sockets that say TCP,
        # and without it every response waits ~40 ms for the client's delayed ACK
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((options.host, options.port))
        sock.set_inheritable(True)
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            interface="asgi3",
            timeout_keep_alive=30,
        )
        self.server = uvicorn.Server(config)
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self.server.serve(sockets=[sock])),
            loop.create_task(self._follow_routes()),
        ]
        while not self.server.started:
            await asyncio.sleep(0.01)
        return int(sock.getsockname()[1])

    async def _follow_routes(self) -> None:
        controller = _controller()
        while True:
            try:
                self.version, self.routes = await controller.listen_routes.remote(self.version, 5.0)
            except RayActorError:
                return  # the controller is gone: serve is shutting down
            except Exception:
                await asyncio.sleep(0.5)

    async def _ensure_routes(self) -> None:
        if self.version < 0:  # the first request may come before the first poll answers
            self.version, self.routes = await _controller().listen_routes.remote(-1, 0.0)

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # websockets and lifespan are not served
        await self._ensure_routes()
        path = scope["path"]
        if self.root_path and path.startswith(self.root_path):
            path = path[len(self.root_path) :] or "/"
        prefix = match_route(self.routes, path)
        if prefix is None:
            await _send_json(send, 404, {"error": f"no application serves path {path!r}"})
            return
        app_name, ingress = self.routes[prefix]
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        forwarded = {k: scope[k] for k in _SCOPE_KEYS if k in scope}
        forwarded["path"] = path  # starlette routes on path minus root_path, the prefix
        forwarded["raw_path"] = path.encode()
        forwarded["root_path"] = prefix.rstrip("/")
        if self.request_timeout_s is None:
            await self._forward(app_name, ingress, forwarded, bytes(body), send)
            return
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await asyncio.wait_for(
                self._forward(app_name, ingress, forwarded, bytes(body), tracked),
                self.request_timeout_s,
            )
        except asyncio.TimeoutError:
            if not started:
                await _send_json(
                    send,
                    408,
                    {"error": f"no answer within request_timeout_s={self.request_timeout_s}"},
                )

    async def _forward(
        self, app_name: str, ingress: str, scope: dict[str, Any], body: bytes, send: Any
    ) -> None:
        for attempt in range(2):
            try:
                router = router_for(app_name, ingress)
                if router.running_replicas() == 0 and router.closed:  # a new one replaced it
                    router = router_for(app_name, ingress)
                if router.running_replicas() == 0:
                    await _send_json(
                        send,
                        503,
                        {"error": f"application {app_name!r} has no healthy replica now; retry"},
                    )
                    return
                stream = http_call(app_name, ingress, scope, body)
            except BackPressureError as error:
                await _send_json(send, 503, {"error": str(error)})
                return
            except DeploymentUnavailableError as error:
                await _send_json(send, 404, {"error": str(error)})
                return
            sent = False
            try:
                kind, messages, stream_id = await stream
                for message in messages:
                    await send(message)
                    sent = True
                if kind == "stream":
                    rest = stream._request.actor.stream_http.options(num_returns="streaming")
                    async for ref in rest.remote(stream_id):
                        for message in await ref:
                            await send(message)
                return
            except RayActorError as error:
                if sent:
                    return  # the answer is cut short; the client sees the connection end
                if attempt == 1:
                    await _send_json(send, 500, {"error": f"the replica died: {error}"})
                    return
            except Exception as error:
                if not sent:
                    await _send_json(send, 500, {"error": f"{type(error).__name__}: {error}"})
                return
