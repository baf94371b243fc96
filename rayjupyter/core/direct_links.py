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
        actor_of: Callable[[bytes], bytes],
    ) -> None:
        self.limit = links_per_driver()
        self.actor_of = actor_of  # the actor a worker hosts (b"": a pooled worker)
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
        self.send(owner, P.DirectLink(worker, True, self.actor_of(worker)))
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
    """A client's ends of its direct links, each a socket both ends read and write: a
    driver sends actor calls on it and reads their answers; a worker reads those calls and
    answers every call of that driver's whose results are small."""

    def __init__(self, channel: Channel, poller: select.epoll) -> None:
        self.channel = channel  # to the node: the descriptors come on it
        channel.fds_in = deque()
        self.poller = poller  # the channel's and the links' descriptors
        self.readers: dict[int, tuple[bytes, Channel]] = {}  # descriptor -> (peer, link)
        self.writers: dict[bytes, Channel] = {}  # peer -> link
        self.actors: dict[bytes, bytes] = {}  # (a driver) actor id -> the worker hosting it
        self.lost = 0  # links that closed under a driver (it subscribes again then)
        self.sent = 0  # results answered directly (a worker), or read from links (a driver)
        # a worker's answers go out whole and one at a time (a threaded actor's calls end
        # in several threads). Nothing else takes a lock: a Ctrl-C in a driver's main thread
        # between a lock's acquire and its release would hold it for good (and the next
        # call, or rj.kill, would hang); the dicts are changed one operation at a time
        self._answer_lock = threading.Lock()

    def on_message(self, message: P.DirectLink) -> None:
        if not message.opened:
            link = self.writers.get(message.peer)
            if link is not None:
                self._drop(link.fileno())
            return
        fds = self.channel.fds_in
        if not fds:  # cannot happen: the descriptor comes with or before its message
            return
        link = Channel(socket.socket(fileno=fds.popleft()), blocking_send=True)
        old = self.writers.get(message.peer)
        if old is not None:
            self._drop(old.fileno())
        self.readers[link.fileno()] = (message.peer, link)
        self.writers[message.peer] = link
        if message.actor_id:
            self.actors[message.actor_id] = message.peer
        self.poller.register(link.fileno(), select.EPOLLIN)

    def _drop(self, fd: int) -> None:
        """Forget and close a link (once, whichever thread comes first)."""
        entry = self.readers.pop(fd, None)
        if entry is None:
            return
        peer, link = entry
        if self.writers.get(peer) is link:
            self.writers.pop(peer, None)
            for actor_id, worker in list(self.actors.items()):
                if worker == peer:
                    self.actors.pop(actor_id, None)
        with contextlib.suppress(OSError, ValueError):
            self.poller.unregister(fd)
        link.close()
        self.lost += 1

    def read(self, fd: int, frames: list[Any]) -> None:
        """Add what arrived on the link with descriptor fd to frames."""
        entry = self.readers.get(fd)
        if entry is None:
            return
        link = entry[1]
        got = link.recv_frames()
        if got:
            frames.extend(got)
            self.sent += len(got)
        if got is None or link.closed:
            self._drop(fd)

    def answer(self, driver: bytes, results: tuple[P.ObjectInfo, ...]) -> bool:
        """Send results to driver on our link (a worker): False if there is none. A send the
        link does not take whole closes it: the driver then asks the node again."""
        return self._send(driver, P.dumps([P.ObjectsReady(results)]), answer=True)

    def call(self, worker: bytes, task: P.ExecuteTask) -> bool:
        """Send an actor call to the worker hosting the actor (a driver): False if the link
        is gone (the call then goes by the node)."""
        return self._send(worker, P.dumps([task]), answer=False)

    def _send(self, peer: bytes, payload: bytes, answer: bool) -> bool:
        link = self.writers.get(peer)
        if link is None:
            return False
        if not answer:  # a driver's call: whole, even through Ctrl-C (raised after it)
            link.send(payload)  # (small: one send, so calls of two threads do not mix)
            if link.closed:
                self._drop(link.fileno())
                return False
            return True
        frame = HEADER.pack(len(payload)) + payload
        with self._answer_lock:
            try:  # a worker never blocks on a slow driver (the node answers then)
                sent = link.sock.send(frame, socket.MSG_DONTWAIT)
            except OSError:
                sent = 0
        if sent != len(frame):  # (half a frame would be garbage to the other end)
            self._drop(link.fileno())
            return False
        self.sent += 1
        return True

    def forget_actor(self, actor_id: bytes) -> None:
        self.actors.pop(actor_id, None)

    def has(self, peer: bytes) -> bool:
        return peer in self.writers

    def close(self) -> None:
        for fd in list(self.readers):
            self._drop(fd)
