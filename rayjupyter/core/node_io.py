"""What every part of the node shares about its loop: the poller with the handler of each
plain descriptor it watches, and the record of each connected client.

Its own module so that the parts (``node_workers``, ``node_links``, ...) take it in their
constructors without importing ``node.py`` (which imports them).
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq


@dataclass
class ClientInfo:
    """A client that said Hello: a driver, a worker, a peer node, an observer."""

    kind: str
    pid: int
    namespace: str = ""
    last_seen: float = 0.0  # monotonic time of its last frame (drivers' liveness)


def _zmq_events(mask: int) -> int:
    """poll(2)'s flags as zmq_poll reports them: POLLHUP, POLLNVAL and the like as POLLERR
    (which the loop reads as readable), the rest by name (their values differ)."""
    events = 0
    if mask & select.POLLIN:
        events |= int(zmq.POLLIN)
    if mask & select.POLLOUT:
        events |= int(zmq.POLLOUT)
    if mask & select.POLLPRI:
        events |= int(zmq.POLLPRI)
    if mask & ~(select.POLLIN | select.POLLOUT | select.POLLPRI):
        events |= int(zmq.POLLERR)
    return events


def _poll_flags(flags: int) -> int:
    """zmq's POLLIN/POLLOUT as poll(2)'s."""
    return (select.POLLIN if flags & zmq.POLLIN else 0) | (
        select.POLLOUT if flags & zmq.POLLOUT else 0
    )


class NodePoll:
    """The loop's poller. Sockets and channels are dispatched by the loop itself; every
    other descriptor (pipes, pidfds, listeners) has a handler here, called with the fd.

    Every source is in a zmq poller; the plain descriptors are in a ``select.poll`` too,
    which the loop polls alone while no zmq socket is watched (a node without peers: its
    routers are watched through their descriptors). zmq_poll costs a second poll(2) each
    time the loop goes to sleep (it looks once without waiting, then waits), and the
    Python work of its list of sources; a sync task puts the loop to sleep twice.
    """

    def __init__(self) -> None:
        self.poller = zmq.Poller()  # every source: plain descriptors and zmq sockets
        self._fds = select.poll()  # the plain descriptors only
        self._sockets = 0  # zmq sockets among the sources (peer links): poller needed
        self.fd_handlers: dict[int, Callable[[int], object]] = {}
        self.exit_fds: set[int] = set()  # pidfds: readable when a worker process exits

    def register(self, source: Any, flags: int = zmq.POLLIN) -> None:
        """Watch a descriptor (an int) or a zmq socket for ``flags`` (zmq.POLLIN, ...)."""
        known = source in self.poller  # (registering again changes the flags)
        self.poller.register(source, flags)
        if isinstance(source, int):
            self._fds.register(source, _poll_flags(flags))
        elif not known:
            self._sockets += 1

    def modify(self, source: Any, flags: int) -> None:
        self.register(source, flags)  # (as zmq's Poller.modify)

    def unregister(self, source: Any) -> None:
        self.poller.unregister(source)
        if isinstance(source, int):
            self._fds.unregister(source)
        else:
            self._sockets -= 1

    def poll(self, timeout_ms: int) -> list[tuple[Any, int]]:
        """(source, events) of the sources that are ready, waiting up to ``timeout_ms``."""
        if self._sockets:
            return self.poller.poll(timeout_ms)
        events = self._fds.poll(timeout_ms)
        for index, (fd, mask) in enumerate(events):
            if mask != select.POLLIN:  # (POLLIN has the same value in both)
                events[index] = (fd, _zmq_events(mask))
        return events

    def watch(self, fd: int, handler: Callable[[int], object]) -> None:
        """Call ``handler(fd)`` when ``fd`` is readable (it is made non-blocking)."""
        os.set_blocking(fd, False)
        self.register(fd, zmq.POLLIN)
        self.fd_handlers[fd] = handler

    def handle(self, fd: int, handler: Callable[[int], object]) -> None:
        """Like ``watch``, for a descriptor already set up (a socket, a pidfd)."""
        self.register(fd, zmq.POLLIN)
        self.fd_handlers[fd] = handler

    def watch_quiet_socket(self, sock: zmq.Socket[bytes], drain: Callable[[], object]) -> None:
        """Call ``drain()`` when a rarely busy zmq socket may have messages; ``drain`` must
        read until nothing is left, and nothing else may use the socket.

        Watched through libzmq's descriptor, which the loop's poll checks for free, where a
        zmq socket in the poller costs a poll and a getpid syscall each turn. The descriptor
        turns readable whenever libzmq has news for the socket, and after a drain that found
        it empty the next message makes it readable again.
        """
        self.handle(int(sock.getsockopt(zmq.FD)), lambda _fd: drain())
        drain()  # what came before it was watched

    def forget(self, fd: int) -> None:
        """Stop watching ``fd`` (left open)."""
        self.unregister(fd)
        del self.fd_handlers[fd]

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` and close it."""
        self.forget(fd)
        os.close(fd)
