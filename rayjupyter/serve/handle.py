"""Handles: ``DeploymentHandle``, ``DeploymentResponse`` and the router behind them.

One router per deployment per process holds that deployment's running replicas (from the
controller, refreshed by a long poll) and how many requests this process has ongoing on
each. A call goes to the less loaded of two random replicas with room
(``decisions.choose_replica``); when every replica is at ``max_ongoing_requests`` it waits
in the router's queue (bounded by ``max_queued_requests``; ``BackPressureError`` past it)
and a dispatcher thread sends it when a slot frees. A call whose replica dies before
answering is sent once more to another replica (a replica dying means the call did not
finish, and handle calls are retried once as in Ray); a streamed call is not, as part of
it may have been consumed.

Completion is learned from ``ObjectRef.future()`` callbacks, which run on the client's IO
thread: they only count and notify, never submit (that happens on the caller's thread or
the dispatcher's).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import rayjupyter as rj
from rayjupyter.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    RayActorError,
)
from rayjupyter.serve.decisions import choose_replica

CONTROLLER_NAME = "SERVE_CONTROLLER_ACTOR"
SERVE_NAMESPACE = "serve"
_LONG_POLL_S = 5.0
_REPORT_S = 0.1  # at most this often a router reports its queue length


class BackPressureError(RuntimeError):
    """A request was refused: every replica was busy and the handle's queue was full."""


class DeploymentUnavailableError(RuntimeError):
    """The deployment is gone (deleted, or serve shut down)."""


@dataclass
class _Request:
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    actor_method: str  # handle_request, handle_stream or handle_http
    result: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    assigned: threading.Event = field(default_factory=threading.Event)
    ref: Any = None
    actor: Any = None  # the replica's actor, once sent
    replica: str | None = None
    retried: bool = False
    cancelled: bool = False


def _controller() -> Any:
    return rj.get_actor(CONTROLLER_NAME, namespace=SERVE_NAMESPACE)


class Router:
    """Routes one deployment's calls from this process."""

    def __init__(self, app_name: str, deployment: str) -> None:
        self.app_name = app_name
        self.deployment = deployment
        self.lock = threading.Condition()
        self.replicas: dict[str, Any] = {}
        self.ongoing: dict[str, int] = {}
        self.max_ongoing = 1
        self.queue_cap = 1
        self.version = -1
        self.pending: collections.deque[_Request] = collections.deque()
        # the long poll's latest answer, (answer,) or None, applied on a caller thread
        self.update: tuple[Any] | None = None
        self.polling = False
        self.dispatcher: threading.Thread | None = None
        self.closed = False
        self.router_id = uuid.uuid4().hex
        self.reported = 0  # the queue length last told to the controller, and when
        self.reported_at = 0.0
        # looked up once, here: a lookup is a blocking query answered through the client's
        # IO thread, and the IO thread's callbacks take self.lock, so none may run under it
        self.controller = _controller()
        self._apply(
            rj.get(self.controller.listen.remote(app_name, deployment, -1, 0.0), timeout=30)
        )

    # ------------------------------------------------------------------ replica set

    def _apply(self, answer: Any) -> None:
        if answer is None:
            self.closed = True
            self.replicas = {}
            failure = DeploymentUnavailableError(
                f"deployment {self.deployment!r} of application {self.app_name!r} is gone"
            )
            while self.pending:
                request = self.pending.popleft()
                if not request.result.done():
                    request.result.set_exception(failure)
            return
        version, replicas, max_ongoing, queue_cap = answer
        if version <= self.version:
            return
        self.version = version
        self.replicas = dict(replicas)
        self.ongoing = {r: self.ongoing.get(r, 0) for r in self.replicas}
        self.max_ongoing = max_ongoing
        self.queue_cap = queue_cap

    def _poll(self) -> None:
        """Keep one long poll in flight (called under the lock, from a caller thread; so it
        only sends, never waits for an answer)."""
        if self.update is not None:
            (answer,), self.update = self.update, None
            self._apply(answer)
        self._report_queue()
        if self.polling or self.closed:
            return
        self.polling = True
        future = self.controller.listen.remote(
            self.app_name, self.deployment, self.version, _LONG_POLL_S
        ).future()
        future.add_done_callback(self._polled)

    def _report_queue(self) -> None:
        """Tell the controller how many calls wait here (autoscaling counts them with the
        replicas' ongoing ones): on a change, and again every _REPORT_S while any wait,
        as the controller forgets a report older than its time to live."""
        queued = len(self.pending)
        now = time.monotonic()
        if self.closed or (queued == self.reported == 0) or now - self.reported_at < _REPORT_S:
            return
        self.reported, self.reported_at = queued, now
        self.controller.report_queued.remote(self.app_name, self.deployment, self.router_id, queued)

    def _polled(self, future: concurrent.futures.Future[Any]) -> None:
        with self.lock:
            self.polling = False
            error = future.exception()
            if error is None:
                self.update = (future.result(),)
            elif isinstance(error, ActorDiedError | ActorUnavailableError):
                self.update = None
                self.closed = True  # the controller is gone: serve was shut down
            self.lock.notify_all()

    def running_replicas(self) -> int:
        """How many replicas take requests now; asks the controller when it knows none
        (the long poll answers one change late, and the proxy answers 503 on a zero)."""
        with self.lock:
            self._poll()
            if self.replicas or self.closed:
                return len(self.replicas)
        # outside the lock: the answer arrives through the IO thread, which takes it
        answer = rj.get(self.controller.listen.remote(self.app_name, self.deployment, -1, 0.0))
        with self.lock:
            self._apply(answer)
            return len(self.replicas)

    # ------------------------------------------------------------------ sending

    def submit(self, request: _Request) -> None:
        with self.lock:
            self._poll()
            if self.closed:
                raise DeploymentUnavailableError(
                    f"deployment {self.deployment!r} of application {self.app_name!r} is gone"
                )
            chosen = None if self.pending else self._take_slot()
            if chosen is None:
                if len(self.pending) >= self.queue_cap:
                    raise BackPressureError(
                        f"deployment {self.deployment!r}: {len(self.pending)} requests are "
                        f"queued, the limit (max_queued_requests={self.queue_cap}); raise "
                        "max_queued_requests or num_replicas"
                    )
                self.pending.append(request)
                self._ensure_dispatcher()
                return
        self._send(request, *chosen)

    def _take_slot(self) -> tuple[str, Any] | None:
        replica = choose_replica(self.ongoing, self.max_ongoing)
        if replica is None:
            return None
        self.ongoing[replica] += 1
        return replica, self.replicas[replica]

    def _ensure_dispatcher(self) -> None:
        if self.dispatcher is None or not self.dispatcher.is_alive():
            self.dispatcher = threading.Thread(
                target=self._dispatch_loop, name=f"serve-router-{self.deployment}", daemon=True
            )
            self.dispatcher.start()

    def _dispatch_loop(self) -> None:
        while True:
            with self.lock:
                while True:
                    self._poll()
                    if not self.pending:
                        self.dispatcher = None
                        return
                    chosen = self._take_slot()
                    if chosen is not None:
                        request = self.pending.popleft()
                        break
                    self.lock.wait(0.1)
            self._send(request, *chosen)

    def _send(self, request: _Request, replica: str, actor: Any) -> None:
        args = tuple(_unwrap(a) for a in request.args)
        kwargs = {k: _unwrap(v) for k, v in request.kwargs.items()}
        request.replica = replica
        try:
            if request.actor_method == "handle_request":
                ref = actor.handle_request.remote(request.method, *args, **kwargs)
            elif request.actor_method == "handle_http":
                ref = actor.handle_http.remote(*args)
            else:
                method = actor.handle_stream.options(num_returns="streaming")
                ref = method.remote(request.method, *args, **kwargs)
        except Exception as error:
            self.release(replica)
            request.result.set_exception(error)
            request.assigned.set()
            return
        request.ref = ref
        request.actor = actor
        request.assigned.set()
        if request.actor_method != "handle_stream":
            ref.future().add_done_callback(lambda f: self._finished(request, replica, f))
        else:  # streams: the consumer releases the slot when it is done
            request.result.set_result(ref)

    def _finished(
        self, request: _Request, replica: str, future: concurrent.futures.Future[Any]
    ) -> None:
        error = future.exception() if not future.cancelled() else None
        with self.lock:
            self._release_locked(replica)
            if isinstance(error, ActorDiedError) and not request.retried and not request.cancelled:
                request.retried = True
                self.replicas.pop(replica, None)  # until the controller says otherwise
                self.ongoing.pop(replica, None)
                request.assigned.clear()
                self.pending.appendleft(request)
                self._ensure_dispatcher()
                return
        if future.cancelled():
            request.result.cancel()
        elif error is not None:
            request.result.set_exception(error)
        else:
            request.result.set_result(future.result())

    def forget(self, replica: str | None) -> None:
        """A replica seen dead: no more calls to it until the controller lists it again."""
        with self.lock:
            self.replicas.pop(replica or "", None)
            self.ongoing.pop(replica or "", None)

    def release(self, replica: str) -> None:
        with self.lock:
            self._release_locked(replica)

    def _release_locked(self, replica: str) -> None:
        if replica in self.ongoing and self.ongoing[replica] > 0:
            self.ongoing[replica] -= 1
        self.lock.notify_all()


_ROUTERS: dict[tuple[str, str], Router] = {}
_ROUTERS_LOCK = threading.Lock()


def router_for(app_name: str, deployment: str) -> Router:
    key = (app_name, deployment)
    with _ROUTERS_LOCK:
        router = _ROUTERS.get(key)
        if router is not None:
            with router.lock:
                router._poll()  # learn first if the deployment went away meanwhile
        if router is None or router.closed:
            router = _ROUTERS[key] = Router(app_name, deployment)
        return router


def forget_routers(app_name: str | None = None) -> None:
    """Drop this process's routers (of one application, or all): after delete/shutdown."""
    with _ROUTERS_LOCK:
        for key in [k for k in _ROUTERS if app_name is None or k[0] == app_name]:
            del _ROUTERS[key]


def _unwrap(value: Any) -> Any:
    """A DeploymentResponse argument travels as its ObjectRef: the replica gets the value
    without it passing through this process."""
    if isinstance(value, DeploymentResponse):
        return value._to_object_ref()
    return value


class DeploymentResponse:
    """The future result of ``handle.remote()``: ``await`` it, ``.result(timeout_s=)``, or
    pass it to another handle call unresolved."""

    def __init__(self, request: _Request) -> None:
        self._request = request

    def result(self, *, timeout_s: float | None = None) -> Any:
        try:
            return self._request.result.result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"no result within timeout_s={timeout_s}") from None

    def __await__(self) -> Any:
        return asyncio.wrap_future(self._request.result).__await__()

    def _to_object_ref(self, timeout_s: float | None = 60.0) -> Any:
        if not self._request.assigned.wait(timeout_s):
            raise TimeoutError("the request was not sent to a replica in time")
        if self._request.ref is None:
            return self.result()  # it failed to send: raise its error
        return self._request.ref

    def cancel(self) -> None:
        self._request.cancelled = True
        if self._request.ref is not None:
            rj.cancel(self._request.ref)
        self._request.result.cancel()

    def __reduce__(self) -> Any:
        raise TypeError("pass a DeploymentResponse to a handle call, not inside a task's args")


class DeploymentResponseGenerator:
    """``handle.options(stream=True)``: iterate (or ``async for``) the method's items."""

    def __init__(self, request: _Request, router: Router) -> None:
        self._request = request
        self._router = router
        self._iterator: Iterator[Any] | None = None

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(self)
        return next(self._iterator)

    def _generator(self, timeout_s: float | None = 60.0) -> Any:
        return self._request.result.result(timeout_s)

    def __iter__(self) -> Iterator[Any]:
        gen = self._generator()
        try:
            for ref in gen:
                yield rj.get(ref)
        except RayActorError:
            self._router.forget(self._request.replica)
            raise
        finally:
            self._done()

    async def _aiter(self) -> AsyncIterator[Any]:
        gen = await asyncio.wrap_future(self._request.result)
        try:
            async for ref in gen:
                yield await ref
        except RayActorError:
            self._router.forget(self._request.replica)
            raise
        finally:
            self._done()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._aiter()

    def _done(self) -> None:
        if self._request.replica is not None:
            self._router.release(self._request.replica)
            self._request.replica = None

    def cancel(self) -> None:
        if self._request.ref is not None:
            rj.cancel(self._request.ref)


class DeploymentHandle:
    """Calls one deployment: ``handle.remote(...)``, ``handle.method.remote(...)``."""

    def __init__(
        self,
        deployment_name: str,
        app_name: str,
        *,
        method_name: str = "__call__",
        stream: bool = False,
    ) -> None:
        self.deployment_name = deployment_name
        self.app_name = app_name
        self._method = method_name
        self._stream = stream

    def options(
        self, *, method_name: str | None = None, stream: bool | None = None, **unsupported: Any
    ) -> DeploymentHandle:
        if unsupported:
            raise ValueError(
                f"handle.options does not take {sorted(unsupported)}; valid: method_name, stream"
            )
        if stream is not None and not isinstance(stream, bool):
            raise TypeError(f"stream must be True or False, got {stream!r}")
        return DeploymentHandle(
            self.deployment_name,
            self.app_name,
            method_name=self._method if method_name is None else method_name,
            stream=self._stream if stream is None else stream,
        )

    def __getattr__(self, name: str) -> DeploymentHandle:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.options(method_name=name)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        router = router_for(self.app_name, self.deployment_name)
        actor_method = "handle_stream" if self._stream else "handle_request"
        request = _Request(self._method, args, kwargs, actor_method)
        router.submit(request)
        if self._stream:
            return DeploymentResponseGenerator(request, router)
        return DeploymentResponse(request)

    def __reduce__(self) -> Any:
        return (_rebuild_handle, (self.deployment_name, self.app_name, self._method, self._stream))

    def __repr__(self) -> str:
        return f"DeploymentHandle(deployment={self.deployment_name!r}, app={self.app_name!r})"


def _rebuild_handle(deployment: str, app: str, method: str, stream: bool) -> DeploymentHandle:
    return DeploymentHandle(deployment, app, method_name=method, stream=stream)


def http_call(app_name: str, deployment: str, scope: dict[str, Any], body: bytes) -> Any:
    """The proxy's call: ``handle_http`` on a replica chosen as for any call (retried on
    another if the replica dies, as nothing was sent yet); the DeploymentResponse's
    ``_request.actor`` is the replica, for ``stream_http`` when the answer streams."""
    router = router_for(app_name, deployment)
    request = _Request("__http__", (scope, body), {}, "handle_http")
    router.submit(request)
    return DeploymentResponse(request)


__all__ = [
    "BackPressureError",
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
]
