"""The node's two ROUTER sockets and its outbox: how messages reach clients and leave.

A part of the node daemon (``Node.routers``). Local drivers attach over a Unix socket,
faster than tcp and needing no crypto; everyone else over tcp with CurveZMQ. Clients of
each are told apart by their socket. What the node sends in a loop turn is kept per client
and sent at the turn's end (``flush``) as one frame each: to a worker over its socket pair
(``channel.py``), to anyone else over the router it came from, then the peer links'.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from rayjupyter.core import auth, protocol
from rayjupyter.core import protocol as P
from rayjupyter.core.node_io import ClientInfo

#: frames drained from one router per loop turn (the rest wait for the next turn)
DRAIN_MAX = 10_000


class NodeRouters:
    """The routers, the clients that came over tcp, and what is queued for each client."""

    def __init__(
        self,
        *,
        context: zmq.Context[zmq.Socket[bytes]],
        secret: str,
        endpoint: str,
        host: str,
        port: int,
        handlers: dict[type, Callable[[bytes, Any], None]],
        clients: dict[bytes, ClientInfo],
        report_error: Callable[[Any], None],
    ) -> None:
        self.context = context
        self.router = self._router(secret, curve=False)
        self.router.bind(endpoint)
        self.tcp_router = self._router(secret, curve=True)
        if port:
            self.tcp_router.bind(f"tcp://{host}:{port}")
            self.port = port
        else:
            self.port = self.tcp_router.bind_to_random_port(f"tcp://{host}")
        self.tcp_clients: set[bytes] = set()
        self.outbox: dict[bytes, list[Any]] = {}
        self.handlers = handlers  # the node's one dispatch table
        self.clients = clients
        self.report_error = report_error
        # set by the node once its worker pool and peer links exist (they need ``send``)
        self.channels: dict[bytes, Any] = {}
        self.send_on_channel: Callable[[Any, bytes], None] = lambda link, frame: None
        self.flush_links: Callable[[], None] = lambda: None

    def _router(self, secret: str, *, curve: bool) -> zmq.Socket[bytes]:
        router = self.context.socket(zmq.ROUTER)
        router.linger = 0
        router.sndhwm = 0
        router.rcvhwm = 0
        auth.secure_server(router, secret, curve=curve)
        return router

    def drain(self, router: zmq.Socket[bytes]) -> None:
        """Handle what a router has (authenticated already: ZAP), each message by type."""
        over_tcp = router is self.tcp_router
        pollin = int(zmq.POLLIN)
        for _ in range(DRAIN_MAX):
            # EVENTS instead of a failing recv: an exception per drained batch costs more
            if not int(router.getsockopt(zmq.EVENTS)) & pollin:
                return
            # the peer's id, then one batch; whole, so a client that sends a message of
            # several frames cannot shift every later message by one (and wedge the loop)
            parts = router.recv_multipart()
            client = parts[0][:-1]
            if over_tcp:
                self.tcp_clients.add(client)
            info = self.clients.get(client)
            if info is not None:
                info.last_seen = time.monotonic()
            try:
                if len(parts) != 2:
                    raise ValueError(f"a message of {len(parts) - 1} frames, not one batch")
                messages = protocol.loads(parts[1])
            except Exception as exc:  # an authenticated but buggy client: drop it, say why
                self.refuse_frame(client, exc)
                continue
            for message in messages:
                try:
                    self.handlers[type(message)](client, message)
                except Exception:  # a bug here must not take the cluster down: report it
                    self.report_error(message)

    def refuse_frame(self, client: bytes, error: Exception) -> None:
        """A frame that is not a batch of messages: dropped, and its sender told why."""
        text = (
            f"rayjupyter node: dropped a malformed frame from client {client.hex()}: "
            f"{type(error).__name__}: {str(error)[:200]}"
        )
        print(text, file=sys.stderr, flush=True)
        self.send(client, P.LogLines(2, text))

    def send(self, client: bytes, message: Any) -> None:
        self.outbox.setdefault(client, []).append(message)

    def send_chunk(self, client: bytes, chunk: P.ObjectChunk) -> None:
        """A piece of a value for a peer: its bytes go as a frame of their own, not pickled."""
        self.flush()  # keep the order of what was sent before
        header = protocol.dumps([chunk._replace(data=b"")])
        router = self.tcp_router if client in self.tcp_clients else self.router
        router.send_multipart([client + b"r", header, chunk.data], copy=False)

    def flush(self) -> None:
        outbox, self.outbox = self.outbox, {}
        tcp_clients = self.tcp_clients
        channels = self.channels
        for client, messages in outbox.items():
            link = channels.get(client)
            if link is not None:  # a worker of ours
                self.send_on_channel(link, protocol.dumps(messages))
                continue
            # no high-water mark on the router: a slow reader queues, it never loses messages
            router = self.tcp_router if client in tcp_clients else self.router
            router.send(client + b"r", zmq.SNDMORE)
            router.send(protocol.dumps(messages))
        self.flush_links()

    def close(self) -> None:
        self.router.close(0)
        self.tcp_router.close(0)
