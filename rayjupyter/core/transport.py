"""How a client's frames travel to its node: one interface, three ways to connect.

The client (client.py) waits, batches and files answers the same way whatever carries its
frames; only sending, polling and reading differ, and they live here:

- a socket pair its node handed it (workers, and the driver that started a local cluster):
  ``ChannelTransport.inherited``;
- the node's Unix socket on this machine (drivers that attach by address):
  ``ChannelTransport`` over ``local_channel.connect``;
- two zmq DEALER sockets, over CurveZMQ on TCP or PLAIN on the node's ipc endpoint
  (other machines, other mount namespaces): ``ZmqTransport``.

``connect`` picks one. A read returns ``Incoming`` items: a frame of pickled messages, or a
chunk of a value (its small header frame and its raw bytes, which zmq carries apart).

Towards a node, zmq carries a frame larger than ``config.BOUNDS["frame_bytes"]`` (64 KiB)
as one multipart message of parts below it (``send_frame``; the node joins them,
``node_routers.NodeRouters.drain``): the node's sockets refuse any larger zmq frame
(ZMQ_MAXMSGSIZE), which keeps a stranger from making it hold a frame of any size before
authentication.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeAlias

import zmq

from rayjupyter.core import auth, local_channel, protocol
from rayjupyter.core import protocol as P
from rayjupyter.core.channel import Channel
from rayjupyter.core.config import bound
from rayjupyter.core.direct_links import LinkEnds
from rayjupyter.core.exceptions import ClusterConnectionError

#: what CurveZMQ adds to a part on the wire (its MESSAGE command: name, nonce, MAC, flags),
#: with room to spare: a part plus this stays within the node's ZMQ_MAXMSGSIZE
PART_OVERHEAD = 256


def part_size() -> int:
    """The largest part a frame towards a node's zmq socket is cut into."""
    return max(bound("frame_bytes") - PART_OVERHEAD, 1024)


def send_frame(sock: zmq.Socket[bytes], frame: bytes, part: int, flags: int = 0) -> None:
    """Send one frame to a node: as it is if it fits in a part, else as one multipart
    message of parts (zmq delivers all of them or none)."""
    if len(frame) <= part:
        sock.send(frame, flags)
        return
    view = memoryview(frame)
    parts = [view[start : start + part] for start in range(0, len(frame), part)]
    sock.send_multipart(parts, flags, copy=False)


#: a frame of messages, or (header frame, raw bytes) of an ObjectChunk
Incoming: TypeAlias = bytes | tuple[bytes, memoryview]


class Transport(Protocol):
    """What the client needs of a link to its node."""

    #: any thread may read it (under the client's read lock); zmq sockets belong to the one
    #: thread that uses them, so the IO thread reads those for everyone
    shared_reads: bool

    @property
    def closed(self) -> bool:
        """True once the node has closed the link (known only to channel transports)."""

    def pollable(self) -> zmq.Socket[bytes] | int:
        """What the IO thread's zmq poller watches for incoming frames."""

    def hello(self, frame: bytes) -> None:
        """Send the first frame (it names the connection to the node)."""

    def send(self, frame: bytes) -> None:
        """Send one frame, whole: blocks until the link has taken it."""

    def poll_in(self, timeout_ms: int) -> bool:
        """Wait until something has arrived (True) or the timeout passes (False)."""

    def read(self) -> list[Incoming] | None:
        """What has arrived, without waiting; None once the node has closed the link."""

    def close(self) -> None:
        """Close the link; what was sent is delivered first where the transport can."""

    @property
    def links(self) -> LinkEnds | None:
        """Direct links to workers (a driver) or drivers (a worker): direct_links.py."""


class ChannelTransport:
    """A length-framed Unix stream socket (channel.py): one context switch per hop."""

    shared_reads = True

    def __init__(self, fd: int) -> None:
        self.channel = Channel(socket.socket(fileno=fd), blocking_send=True)
        self._fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        # direct links are read too (a driver's answers, a worker's calls): one epoll for
        # them and the channel, whose descriptor is what a driver's IO thread watches
        self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLIN)
        self._links = LinkEnds(self.channel, self._epoll)
        # what the last poll_in found (read takes it rather than asking epoll again); a
        # stale list costs only a read that finds nothing: epoll is level-triggered
        self._ready: list[tuple[int, int]] | None = None
        self._bell = -1  # see doorbell()

    def doorbell(self) -> Callable[[], None]:
        """What another thread calls to end a ``poll_in`` early (it returns False then,
        as on a timeout): a worker sleeping until a message comes hears its other threads
        this way (``Client._idle_wait``). An eventfd, made at the first call; it lives as
        long as the process (a ring after a close must not write into a reused number)."""
        if self._bell < 0:
            self._bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._poll.register(self._bell, select.POLLIN)
            self._epoll.register(self._bell, select.EPOLLIN)
        bell = self._bell
        return lambda: os.eventfd_write(bell, 1)

    @classmethod
    def inherited(cls, fd: int) -> ChannelTransport:
        """Our end of a socket pair our node made (it needs no credentials: nobody else has it)."""
        return cls(fd)

    @property
    def links(self) -> LinkEnds:
        return self._links

    @property
    def closed(self) -> bool:
        return self.channel.closed

    def pollable(self) -> int:
        return self._epoll.fileno()

    def hello(self, frame: bytes) -> None:
        self.channel.send(frame)

    def send(self, frame: bytes) -> None:
        self.channel.send(frame)

    def poll_in(self, timeout_ms: int) -> bool:
        if self._links.readers:
            events = self._epoll.poll(timeout_ms / 1000 if timeout_ms >= 0 else -1)
            self._ready = events
        else:
            events = self._poll.poll(timeout_ms)
        if self._bell < 0 or not events:
            return bool(events)
        readable = False
        for fd, _ in events:
            if fd == self._bell:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(fd)  # (rings since the last read count once)
            else:
                readable = True
        return readable

    def read(self) -> list[Incoming] | None:
        links = self._links
        if not links.readers:
            frames = self.channel.recv_frames()
            return None if frames is None else list(frames)
        ready, self._ready = self._ready, None
        if ready is None:
            ready = self._epoll.poll(0)
        channel_frames: list[Incoming] = []
        if any(fd == self._fd for fd, _events in ready):
            got = self.channel.recv_frames()
            if got is None:
                return None
            channel_frames.extend(got)
        # the links after the channel, their frames first: a call a driver sent its actor
        # directly is on the link before any call of its that the node relays, so whatever
        # the node sent that we hold now was preceded by what the links hold now
        items: list[Incoming] = []
        for fd, _events in self._epoll.poll(0) if channel_frames else ready:
            if fd != self._fd:
                links.read(fd, items)
        items.extend(channel_frames)
        return items

    def close(self) -> None:
        self._links.close()
        self.channel.close()
        self._epoll.close()


class ZmqTransport:
    """Two DEALER sockets: ``rx`` (named by the hello, the node answers on it) and ``tx``."""

    shared_reads = False
    closed = False  # zmq reconnects silently: a gone node shows as silence (client liveness)

    def __init__(
        self, context: zmq.Context[zmq.Socket[bytes]], address: str, client_id: bytes, secret: str
    ) -> None:
        endpoint = address if "://" in address else f"tcp://{address}"
        self.part = part_size()
        self.tx = self._socket(context, endpoint, client_id + b"t", secret)
        self.rx = self._socket(context, endpoint, client_id + b"r", secret)

    @staticmethod
    def _socket(
        context: zmq.Context[zmq.Socket[bytes]], endpoint: str, routing_id: bytes, secret: str
    ) -> zmq.Socket[bytes]:
        sock = context.socket(zmq.DEALER)
        sock.routing_id = routing_id
        sock.linger = 1000
        sock.sndhwm = 0
        sock.rcvhwm = 0
        auth.secure_client(sock, secret, endpoint)
        sock.connect(endpoint)
        return sock

    def pollable(self) -> zmq.Socket[bytes]:
        return self.rx

    def hello(self, frame: bytes) -> None:
        send_frame(self.rx, frame, self.part)

    def send(self, frame: bytes) -> None:
        send_frame(self.tx, frame, self.part)

    def poll_in(self, timeout_ms: int) -> bool:
        return bool(self.rx.poll(timeout_ms))

    def read(self) -> list[Incoming] | None:
        items: list[Incoming] = []
        rx = self.rx
        while True:
            try:
                frame = rx.recv(zmq.NOBLOCK)
            except zmq.ZMQError:  # zmq.Again: nothing more now; else the socket is closing
                return items
            if rx.rcvmore:  # a chunk of a value: a small header, then the raw bytes
                data = rx.recv(copy=False)
                items.append((frame, data.buffer))
            else:
                items.append(frame)

    def close(self) -> None:
        self.tx.close(linger=200)
        self.rx.close(linger=0)

    links = None  # (direct links need a channel: a zmq driver gets none)


def connect(
    context: zmq.Context[zmq.Socket[bytes]],
    address: str,
    secret: str,
    client_id: bytes,
    *,
    kind: str,
    channel_fd: int | None,
) -> Transport:
    """The cheapest link to the node at address that this process can have."""
    if channel_fd is not None:
        return ChannelTransport.inherited(channel_fd)
    if kind != "worker":  # a worker always has its socket pair
        fd = local_channel.connect(address, secret, client_id)
        if fd is not None:
            return ChannelTransport(fd)
    return ZmqTransport(context, address, client_id, secret)


def handshake(
    link: Transport,
    context: zmq.Context[zmq.Socket[bytes]],
    hello: P.Hello,
    address: str,
    timeout: float,
) -> tuple[P.Welcome, list[Any]]:
    """Say Hello and read the node's Welcome (and what it sent right after), or raise a
    ClusterConnectionError naming the address within ``timeout``."""
    link.hello(protocol.dumps([hello]))
    deadline = time.monotonic() + timeout
    frames: list[Incoming] | None = []
    while not frames:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not link.poll_in(int(remaining * 1000)):
            context.destroy(0)
            raise ClusterConnectionError(
                f"No answer from a rayjupyter node at {address} within {timeout:.0f} "
                f"s: check that the cluster is running and that the address and secret "
                f"are right."
            )
        frames = link.read()
        if frames is None:
            raise ClusterConnectionError(f"The node at {address} closed our channel.")
    if not all(isinstance(frame, bytes) for frame in frames):
        raise ClusterConnectionError(f"The node at {address} sent data before Welcome.")
    welcome, *rest = protocol.loads(frames[0])  # type: ignore[arg-type]
    for frame in frames[1:]:
        rest.extend(protocol.loads(frame))  # type: ignore[arg-type]
    if not isinstance(welcome, P.Welcome) or welcome.error:
        context.destroy(0)
        reason = welcome.error if isinstance(welcome, P.Welcome) else repr(welcome)
        raise ClusterConnectionError(f"The node at {address} refused us: {reason}")
    return welcome, rest
