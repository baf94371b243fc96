"""Direct links: a worker answers a driver on its machine without the node's hop.

A sync task's result used to go worker -> node -> driver; the node's turn for it was about
half its work per task, plus a hop. For a driver attached to its node over a Unix socket
(the socket pair of a local cluster, or ``channel.sock``), the node makes one socket pair
per (driver, worker) the first time it dispatches that driver's work to that worker, and
hands the ends over with SCM_RIGHTS (``DirectLink`` on each one's channel, before the first
``ExecuteTask`` that names ``reply_to``). The worker then sends ``TaskFinished`` to the node
first, as ever (with ``direct`` set), and the results to the driver on the link, but only
when every one is a small inline value holding no refs. The node keeps all the books (ref
counts, pins, events, retries); it only skips the push of those results to their owner.

When a link closes (its worker exited, perhaps between its ``TaskFinished`` and its direct
send), the driver subscribes again to everything it waits for, so nothing is lost.

Bounded: at most ``RAYJUPYTER_DIRECT_LINKS`` links per driver (32; 0 turns them off);
beyond it the node's path is used.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from rayjupyter.core import protocol as P
from rayjupyter.core.channel import HEADER, Channel

LINKS_ENV = "RAYJUPYTER_DIRECT_LINKS"
DEFAULT_LINKS = 32
#: a driver with more tasks than this on the node is answered by the node: its results come
#: batched, many to a frame and a wake-up, where each direct answer costs the driver a
#: wake-up and a read (10,000 tasks at once went from about 9,000 to 7,000 a second)
BURST = 8


def links_per_driver() -> int:
    raw = os.environ.get(LINKS_ENV, "")
    if not raw:
        return DEFAULT_LINKS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{LINKS_ENV} must be an integer >= 0, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"{LINKS_ENV} must be an integer >= 0, not {raw!r}")
    return value


class DirectLinks:
    """The node's book of links: which workers answer which drivers directly."""

    def __init__(
        self,
        channels: dict[bytes, Channel],
        clients: dict[bytes, Any],
        send: Callable[[bytes, Any], None],
    ) -> None:
        self.limit = links_per_driver()
        self.channels = channels
        self.clients = clients
        self.send = send
        self.by_driver: dict[bytes, set[bytes]] = {}  # driver -> workers linked to it
        self.by_worker: dict[bytes, set[bytes]] = {}  # worker -> drivers linked to it
        self.refused: set[bytes] = set()  # owners that get no links (zmq drivers, workers)

    def reply_to(self, owner: bytes, worker: bytes, in_flight: int) -> bytes:
        """Whom the worker answers directly for work of ``owner``, which has ``in_flight``
        tasks on the node: owner, or b"" (the node's path). Makes the link the first time
        (and sends both ends)."""
        if in_flight > BURST:
            return b""
        workers = self.by_driver.get(owner)
        if workers is not None and worker in workers:
            return owner
        if not self.limit or owner in self.refused:
            return b""
        if workers is None:
            info = self.clients.get(owner)
            if info is None or owner not in self.channels:  # (a zmq driver, a peer node)
                return b""
            if info.kind != "driver":  # a worker (forgotten when its channel closes)
                self.refused.add(owner)
                return b""
            workers = self.by_driver[owner] = set()
        if len(workers) >= self.limit:
            return b""
        driver_link, worker_link = self.channels.get(owner), self.channels.get(worker)
        if driver_link is None or worker_link is None:
            return b""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        driver_link.attach_fd(ours.detach())  # (closed here once sent)
        worker_link.attach_fd(theirs.detach())
        self.send(owner, P.DirectLink(worker, True))
        self.send(worker, P.DirectLink(owner, True))
        workers.add(worker)
        self.by_worker.setdefault(worker, set()).add(owner)
        return owner

    def client_gone(self, client: bytes) -> None:
        """A driver or a worker left: its links are forgotten; a driver's workers are told to
        close their ends (a worker's end closes with its process, and its drivers see that)."""
        self.refused.discard(client)
        for worker in self.by_driver.pop(client, ()):
            drivers = self.by_worker.get(worker)
            if drivers is not None:
                drivers.discard(client)
            if worker in self.channels:
                self.send(worker, P.DirectLink(client, False))
        for driver in self.by_worker.pop(client, ()):
            workers = self.by_driver.get(driver)
            if workers is not None:
                workers.discard(client)


class LinkEnds:
    """A client's ends of its direct links: a driver reads them, a worker writes them."""

    def __init__(self, channel: Channel, poller: select.epoll | None) -> None:
        self.channel = channel  # to the node: the descriptors come on it
        channel.fds_in = deque()
        self.poller = poller  # (a driver's: the channel's and the links' descriptors)
        self.readers: dict[int, tuple[bytes, Channel]] = {}  # descriptor -> (worker, link)
        self.writers: dict[bytes, socket.socket] = {}  # driver -> link
        self.lost = 0  # links that closed under a driver (it subscribes again then)
        self.sent = 0  # results answered directly (a worker), or read from links (a driver)
        self._lock = threading.Lock()  # (a threaded actor's calls end in several threads)

    def on_message(self, message: P.DirectLink) -> None:
        if not message.opened:
            with self._lock:
                sock = self.writers.pop(message.peer, None)
                if sock is not None:
                    sock.close()
            return
        fds = self.channel.fds_in
        if not fds:  # cannot happen: the descriptor comes with or before its message
            return
        sock = socket.socket(fileno=fds.popleft())
        if self.poller is None:  # a worker
            with self._lock:
                old = self.writers.pop(message.peer, None)
                if old is not None:
                    old.close()
                self.writers[message.peer] = sock
            return
        link = Channel(sock, blocking_send=True)
        self.readers[sock.fileno()] = (message.peer, link)
        self.poller.register(sock.fileno(), select.EPOLLIN)

    def read(self, fd: int, frames: list[Any]) -> None:
        """Add what arrived on the link with descriptor fd to frames (a driver)."""
        _peer, link = self.readers[fd]
        got = link.recv_frames()
        if got:
            frames.extend(got)
            self.sent += len(got)
        if got is None or link.closed:
            assert self.poller is not None
            del self.readers[fd]
            self.poller.unregister(fd)
            link.close()
            self.lost += 1

    def answer(self, driver: bytes, results: tuple[P.ObjectInfo, ...]) -> bool:
        """Send results to driver on our link (a worker): False if there is none. A send the
        link does not take whole closes it: the driver then asks the node again."""
        payload = P.dumps([P.ObjectsReady(results)])
        frame = HEADER.pack(len(payload)) + payload
        with self._lock:
            sock = self.writers.get(driver)
            if sock is None:
                return False
            try:
                sent = sock.send(frame, socket.MSG_DONTWAIT)
            except OSError:
                sent = 0
            if sent != len(frame):
                del self.writers[driver]
                sock.close()
                return False
            self.sent += 1
            return True

    def has(self, driver: bytes) -> bool:
        return driver in self.writers

    def close(self) -> None:
        for _peer, link in self.readers.values():
            with contextlib.suppress(OSError, ValueError):
                link.close()
        self.readers.clear()
        for sock in self.writers.values():
            sock.close()
        self.writers.clear()
