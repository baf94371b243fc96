"""The node's two ROUTER sockets and its outbox: how messages reach clients and leave.

A part of the node daemon (``Node.routers``). Local drivers attach over a Unix socket,
faster than tcp and needing no crypto; everyone else over tcp with CurveZMQ. Clients of
each are told apart by their socket. What the node sends in a loop turn is kept per client
and sent at the turn's end (``flush``) as one frame each: to a worker over its socket pair
(``channel.py``), to anyone else over the router it came from, then the peer links'.

The loop watches the routers through libzmq's descriptors (``watch``), not as zmq sockets
in its poller: those cost two syscalls each per loop turn, and a local cluster's clients
never use the routers. A descriptor turns readable when libzmq has news for its socket;
any use of the socket may take that news without a message being read, so a router that
was sent on is asked once at the turn's end whether it holds messages (``ready``), and so
is one whose drain stopped at DRAIN_MAX.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from rayjupyter.core import auth, protocol
from rayjupyter.core import protocol as P
from rayjupyter.core.channel import FileRegion
from rayjupyter.core.config import bound
from rayjupyter.core.node_io import ClientInfo, NodePoll

#: frames drained from one router per loop turn (the rest wait for the next turn)
DRAIN_MAX = 10_000
#: a zmq handshake (ZAP included: the loop answers it) not done by then is dropped
HANDSHAKE_MS = 10_000


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
        self.frame_bytes = bound("frame_bytes")  # config.BOUNDS: read before the routers bind
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
        self.watch_output: Callable[[Any], None] = lambda link: None  # (POLLOUT if pending)
        self.flush_links: Callable[[], None] = lambda: None
        # routers to drain at the next turn without waiting (see the module's docstring)
        self.ready: list[zmq.Socket[bytes]] = []
        self._sent_on: set[zmq.Socket[bytes]] = set()  # this turn: their news may be taken

    def watch(self, poll: NodePoll) -> None:
        """Have the loop's poll watch both routers' descriptors; each is drained once first."""
        for router in (self.router, self.tcp_router):
            poll.handle(int(router.getsockopt(zmq.FD)), functools.partial(self._signalled, router))
            self._signalled(router)

    def _signalled(self, router: zmq.Socket[bytes], _fd: int = -1) -> None:
        if router not in self.ready:
            self.ready.append(router)

    def drain_ready(self) -> None:
        """Drain the routers that were signalled or are known to hold messages."""
        ready, self.ready = self.ready, []
        for router in (self.router, self.tcp_router):  # (in this order, as always)
            if router in ready:
                self.drain(router)

    def _router(self, secret: str, *, curve: bool) -> zmq.Socket[bytes]:
        router = self.context.socket(zmq.ROUTER)
        router.linger = 0
        router.sndhwm = 0
        router.rcvhwm = 0
        # no frame larger than this is read, from anyone: before authentication a stranger
        # could otherwise make libzmq hold a frame of any size it declares (our clients and
        # peers send larger batches in parts, transport.send_frame); a handshake not done
        # in time is dropped
        router.maxmsgsize = self.frame_bytes
        router.handshake_ivl = HANDSHAKE_MS  # (libzmq's default: 30 s)
        auth.secure_server(router, secret, curve=curve)
        return router

    def drain(self, router: zmq.Socket[bytes]) -> None:
        """Handle what a router has (authenticated already: ZAP), each message by type."""
        over_tcp = router is self.tcp_router
        pollin = int(zmq.POLLIN)
        for _ in range(DRAIN_MAX):
            # EVENTS instead of a failing recv: an exception per drained batch costs more
            if not int(router.getsockopt(zmq.EVENTS)) & pollin:
                return  # (its descriptor signals the next message)
            # the peer's id, then one batch (in parts if it is larger than a zmq frame may
            # be: transport.send_frame); whole, so a client that sends a message of several
            # frames cannot shift every later message by one (and wedge the loop)
            parts = router.recv_multipart()
            if len(parts) > 2:
                parts[1:] = [b"".join(parts[1:])]
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
        self._signalled(router)  # stopped at DRAIN_MAX: the rest at the next turn

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
        self._sent_on.add(router)

    def send_file_chunk(self, client: bytes, chunk: P.ObjectChunk, path: str, length: int) -> bool:
        """A piece of a value for a peer on this machine, over its channel: up to ``length``
        bytes of the file at ``path`` from ``chunk.offset`` (see peer_bulk.py); False when
        the client has no channel."""
        link = self.channels.get(client)
        if link is None:
            return False
        self.flush()  # keep the order of what was sent before
        error = chunk._replace(total=0, error=f"its file {path} could not be opened")
        header, error_frame = protocol.dumps([chunk]), protocol.dumps([error])
        link.send_file_chunk(FileRegion(header, path, chunk.offset, length, error_frame))
        self.watch_output(link)
        return True

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
            self._sent_on.add(router)
        self.flush_links()
        if self._sent_on:  # a send may have taken a router's news of a message
            for router in self._sent_on:
                if int(router.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    self._signalled(router)
            self._sent_on.clear()

    def close(self) -> None:
        self.router.close(0)
        self.tcp_router.close(0)
