"""What every part of the node shares about its loop: the poller with the handler of each
plain descriptor it watches, and the record of each connected client.

Its own module so that the parts (``node_workers``, ``node_links``, ...) take it in their
constructors without importing ``node.py`` (which imports them).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from rayjupyter.core.loop_poller import LoopPoller


@dataclass
class ClientInfo:
    """A client that said Hello: a driver, a worker, a peer node, an observer."""

    kind: str
    pid: int
    namespace: str = ""
    last_seen: float = 0.0  # monotonic time of its last frame (drivers' liveness)


class NodePoll:
    """The loop's poller. Sockets and channels are dispatched by the loop itself; every
    other descriptor (pipes, pidfds, listeners) has a handler here, called with the fd."""

    def __init__(self) -> None:
        self.poller = LoopPoller()  # zmq.Poller's interface; a turn costs what is ready
        self.fd_handlers: dict[int, Callable[[int], object]] = {}
        self.exit_fds: set[int] = set()  # pidfds: readable when a worker process exits

    def register(self, source: Any, flags: int = zmq.POLLIN) -> None:
        self.poller.register(source, flags)

    def modify(self, source: Any, flags: int) -> None:
        self.poller.modify(source, flags)

    def unregister(self, source: Any) -> None:
        self.poller.unregister(source)

    def poll(self, timeout_ms: int) -> list[tuple[Any, int]]:
        """(source, zmq events) of the sources that are ready, waiting up to ``timeout_ms``."""
        return self.poller.poll(timeout_ms)

    def watch(self, fd: int, handler: Callable[[int], object]) -> None:
        """Call ``handler(fd)`` when ``fd`` is readable (it is made non-blocking)."""
        os.set_blocking(fd, False)
        self.poller.register(fd, zmq.POLLIN)
        self.fd_handlers[fd] = handler

    def handle(self, fd: int, handler: Callable[[int], object]) -> None:
        """Like ``watch``, for a descriptor already set up (a socket, a pidfd)."""
        self.poller.register(fd, zmq.POLLIN)
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
        self.poller.unregister(fd)
        del self.fd_handlers[fd]

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` and close it."""
        self.forget(fd)
        os.close(fd)
