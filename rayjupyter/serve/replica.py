"""The replica: an async actor wrapping one instance of the user's class (or function).

It runs the user's methods for handles (``handle_request``, ``handle_stream``) and HTTP
requests for the proxy (``handle_http``), at most ``max_ongoing_requests`` at a time (more
wait in it, counted as ongoing, which is what autoscaling reads). Sync user methods run in
a thread so the event loop stays free for health checks, batching and other requests.

HTTP arrives as the ASGI scope and the whole body; the answer goes back as a stream of
lists of ASGI messages (one list for a plain response: start and body together), so a
``StreamingResponse`` streams through the proxy chunk by chunk.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from rayjupyter.serve.deployment import ASGI_APP_ATTR


@dataclass(frozen=True)
class ReplicaContext:
    """What ``serve.get_replica_context()`` returns inside a replica."""

    app_name: str
    deployment: str
    replica_id: str
    servable_object: Any

    @property
    def replica_tag(self) -> str:
        return self.replica_id


_CONTEXT: ReplicaContext | None = None
_UNCLAIMED_STREAM_S = 60.0
_LATENCY_SAMPLES = 2000  # per replica: the bound of the live view's latency window


def get_replica_context() -> ReplicaContext:
    """The running replica's context; raises outside a replica, as Ray does."""
    if _CONTEXT is None:
        raise RuntimeError(
            "serve.get_replica_context() may only be called from within a replica "
            "(a deployment's method or constructor)"
        )
    return _CONTEXT


class Replica:
    """One replica; the controller creates it, calls ``initialize``, then routes to it."""

    def __init__(
        self,
        app_name: str,
        deployment: str,
        replica_id: str,
        target: Callable[..., Any],
        init_args: tuple[Any, ...],
        init_kwargs: dict[str, Any],
        max_ongoing_requests: int,
    ) -> None:
        self.app_name = app_name
        self.deployment = deployment
        self.replica_id = replica_id
        self.target = target
        self.init_args = init_args
        self.init_kwargs = init_kwargs
        self.max_ongoing = max_ongoing_requests
        self.instance: Any = None
        self.asgi_app: Any = None
        self.ongoing = 0
        self.slots: asyncio.Semaphore | None = None
        self.streams: dict[int, asyncio.Queue[Any]] = {}  # streamed HTTP answers being read
        self.completed = 0
        # (end time, seconds) of the latest requests, for the live view's percentiles
        self.latencies: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=_LATENCY_SAMPLES
        )
        self.stream_ids = 0

    async def initialize(self, user_config: Any) -> int:
        """Build the user's object (the constructor may call other deployments' handles)
        and apply ``user_config``; returns this process's pid."""
        global _CONTEXT
        self.slots = asyncio.Semaphore(self.max_ongoing)
        _CONTEXT = ReplicaContext(self.app_name, self.deployment, self.replica_id, None)
        if inspect.isclass(self.target):
            instance = await asyncio.to_thread(self.target, *self.init_args, **self.init_kwargs)
            self.instance = instance
            app = getattr(self.target, ASGI_APP_ATTR, None)
            if app is not None:
                self.asgi_app = _bind_class_routes(app, self.target, instance)
        else:
            self.instance = self.target
        _CONTEXT = ReplicaContext(self.app_name, self.deployment, self.replica_id, self.instance)
        if user_config is not None:
            await self.reconfigure(user_config)
        return os.getpid()

    async def reconfigure(self, user_config: Any) -> None:
        method = getattr(self.instance, "reconfigure", None)
        if method is None:
            raise TypeError(
                f"deployment {self.deployment!r} has a user_config but no "
                "reconfigure(config) method"
            )
        await _call(method, (user_config,), {})

    async def check_health(self) -> int:
        """Runs the user's ``check_health`` if there is one; returns the ongoing requests
        (running plus waiting for a slot here), the autoscaling metric."""
        method = getattr(self.instance, "check_health", None)
        if method is not None:
            await _call(method, (), {})
        return self.ongoing

    def ongoing_requests(self) -> int:
        """The autoscaling metric alone (no user health check)."""
        return self.ongoing

    def _method(self, name: str) -> Callable[..., Any]:
        if not inspect.isclass(self.target):
            return self.instance  # type: ignore[no-any-return]
        method = getattr(self.instance, name, None)
        if method is None or not callable(method):
            raise AttributeError(f"deployment {self.deployment!r} has no method {name!r}")
        return method  # type: ignore[no-any-return]

    async def handle_request(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """A handle call; its arguments arrive at top level so ObjectRefs among them (a
        DeploymentResponse passed on) are resolved to values by the runtime."""
        assert self.slots is not None
        self.ongoing += 1
        began = time.monotonic()
        try:
            async with self.slots:
                return await _call(self._method(method), args, kwargs)
        finally:
            self._finished(began)

    def _finished(self, began: float) -> None:
        self.ongoing -= 1
        self.completed += 1
        now = time.monotonic()
        self.latencies.append((now, now - began))

    def stats(self, window_s: float) -> tuple[int, int, list[float]]:
        """(ongoing, completed so far, latencies of the last ``window_s`` seconds)."""
        since = time.monotonic() - window_s
        return self.ongoing, self.completed, [s for t, s in self.latencies if t >= since]

    async def handle_stream(self, method: str, /, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        assert self.slots is not None
        self.ongoing += 1
        began = time.monotonic()
        try:
            async with self.slots:
                result = self._method(method)(*args, **kwargs)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                elif inspect.isgenerator(result):
                    for item in result:
                        yield item
                else:
                    raise TypeError(
                        f"handle.options(stream=True) needs a generator method; "
                        f"{self.deployment}.{method} returned {type(result).__name__}"
                    )
        finally:
            self._finished(began)

    async def handle_http(self, scope: dict[str, Any], body: bytes) -> tuple[str, list[Any], int]:
        """Run one HTTP request. A whole answer comes back in this one call:
        ``("done", messages, 0)``. A streamed one (a body chunk with ``more_body``) comes back
        as ``("stream", messages so far, id)``; the proxy reads the rest through
        ``stream_http(id)``, so only streams pay for a second call."""
        out: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.get_running_loop().create_task(self._serve_http_in_slot(scope, body, out))
        task.add_done_callback(lambda _: out.put_nowait(None))
        messages: list[Any] = []
        while True:
            message = await out.get()
            if message is None:
                return "done", messages, 0
            messages.append(message)
            if message["type"] == "http.response.body" and message.get("more_body"):
                self.stream_ids += 1
                self.streams[self.stream_ids] = out
                # a stream nobody reads (its proxy died) is dropped after a minute
                asyncio.get_running_loop().call_later(
                    _UNCLAIMED_STREAM_S, self.streams.pop, self.stream_ids, None
                )
                return "stream", messages, self.stream_ids

    async def stream_http(self, stream_id: int) -> AsyncIterator[list[Any]]:
        """The rest of a streamed HTTP answer: lists of ASGI messages as the app sends them."""
        out = self.streams.pop(stream_id, None)
        if out is None:
            raise RuntimeError(f"HTTP stream {stream_id} is unknown here (unread for too long?)")
        while True:
            batch = [await out.get()]
            while not out.empty():
                batch.append(out.get_nowait())
            done = batch[-1] is None
            if done:
                batch.pop()
            if batch:
                yield batch
            if done:
                return

    async def _serve_http_in_slot(
        self, scope: dict[str, Any], body: bytes, out: asyncio.Queue[Any]
    ) -> None:
        assert self.slots is not None
        self.ongoing += 1
        began = time.monotonic()
        try:
            async with self.slots:
                await self._serve_http(scope, body, out)
        finally:
            self._finished(began)

    async def _serve_http(
        self, scope: dict[str, Any], body: bytes, out: asyncio.Queue[Any]
    ) -> None:
        started = False
        sent_body = False
        delivered = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if not delivered.is_set():
                delivered.set()
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client never disconnects from our side
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            nonlocal started, sent_body
            started = True
            if message["type"] == "http.response.body" and not message.get("more_body"):
                sent_body = True
            out.put_nowait(message)

        try:
            if self.asgi_app is not None:
                await self.asgi_app(scope, receive, send)
            else:
                from starlette.requests import Request

                method = self._method("__call__")
                result = await _call(method, (Request(scope, receive),), {})
                response = _to_response(result)
                await response(scope, receive, send)
        except Exception as error:
            if not started:
                status = 400 if isinstance(error, json.JSONDecodeError) else 500
                what = "Bad JSON in the request body" if status == 400 else "Internal Server Error"
                payload = json.dumps(
                    {"error": what, "type": type(error).__name__, "detail": str(error)}
                ).encode()
                out.put_nowait(_start(status, b"application/json", len(payload)))
                out.put_nowait({"type": "http.response.body", "body": payload})
            elif not sent_body:
                out.put_nowait({"type": "http.response.body", "body": b"", "more_body": False})

    async def prepare_for_shutdown(self, timeout_s: float, wait_loop_s: float) -> None:
        """Wait (up to ``timeout_s``) for the requests in flight, then run ``__del__``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.ongoing and loop.time() < deadline:
            await asyncio.sleep(min(wait_loop_s, 0.05))
        finalizer = (
            getattr(self.instance, "__del__", None) if inspect.isclass(self.target) else None
        )
        if finalizer is not None:
            await _call(finalizer, (), {})


def _start(status: int, content_type: bytes, length: int) -> dict[str, Any]:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", content_type), (b"content-length", str(length).encode())],
    }


async def _call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Await a coroutine function; run a sync one in a thread; await what it returns if
    that is awaitable (a DeploymentResponse returned unresolved included)."""
    if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 (a callable instance's async __call__)
    ):
        result = await func(*args, **kwargs)
    else:
        result = await asyncio.to_thread(func, *args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def _to_response(result: Any) -> Any:
    """A starlette Response for what ``__call__`` returned: itself, text, bytes or JSON."""
    from starlette.responses import JSONResponse, PlainTextResponse, Response

    if isinstance(result, Response):
        return result
    if isinstance(result, bytes):
        return Response(result)
    if isinstance(result, str):
        return PlainTextResponse(result)
    return JSONResponse(result)


def _bind_class_routes(app: Any, cls: type, instance: Any) -> Any:
    """FastAPI routes whose endpoints are the class's methods get the replica's instance as
    ``self``: each such route is rebuilt on the bound method (FastAPI reads the endpoint's
    signature when a route is made, so replacing the function alone is not enough)."""
    try:
        from fastapi.routing import APIRoute
    except ImportError:  # a plain ASGI app (starlette or other): nothing to bind
        return app
    routes = getattr(getattr(app, "router", None), "routes", None)
    if routes is None:
        return app
    prefix = cls.__qualname__ + "."
    for index, route in enumerate(list(routes)):
        if not isinstance(route, APIRoute):
            continue
        endpoint = route.endpoint
        if not getattr(endpoint, "__qualname__", "").startswith(prefix):
            continue
        bound = getattr(instance, endpoint.__name__)
        routes[index] = APIRoute(
            route.path,
            bound,
            methods=list(route.methods or ()),
            name=route.name,
            response_model=route.response_model,
            status_code=route.status_code,
            tags=route.tags,
            dependencies=route.dependencies,
            summary=route.summary,
            description=route.description,
            response_class=route.response_class,
            include_in_schema=route.include_in_schema,
        )
    return app
