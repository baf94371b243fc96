"""The node loop's poller: a turn costs what is ready, not what is watched.

zmq's poll takes the whole list of what it watches on every call: a node with 3,000
actors watches about 12,000 descriptors (each worker's channel, two output pipes and a
pidfd), and each loop turn paid for all of them (0.65 ms a turn at 12,000, in pyzmq's
list conversion and the kernel's poll), so starting N actors, a few turns each, cost time
in proportion to N squared. Here plain descriptors live in an epoll set, which the kernel
keeps between calls and whose ``poll`` returns only the ready ones; the zmq sockets the
node still polls directly (a peer link's) share one zmq poll with the epoll descriptor.

The same interface and event masks as ``zmq.Poller`` (``register``, ``modify``,
``unregister``, ``poll(timeout_ms)`` -> ``[(source, zmq flags)]``), level-triggered as
poll is, so the loop and its parts do not know which they have.
"""

from __future__ import annotations

import contextlib
import select
from typing import Any

import zmq

_ZMQ_IN = int(zmq.POLLIN)
_ZMQ_OUT = int(zmq.POLLOUT)
_ZMQ_ERR = int(zmq.POLLERR)


def _to_epoll(flags: int) -> int:
    mask = 0
    if flags & _ZMQ_IN:
        mask |= select.EPOLLIN
    if flags & _ZMQ_OUT:
        mask |= select.EPOLLOUT
    return mask  # (epoll always reports errors and hang-ups)


def _from_epoll(mask: int) -> int:
    """As zmq_poll reports a plain descriptor: anything but in and out is an error."""
    flags = 0
    if mask & select.EPOLLIN:
        flags |= _ZMQ_IN
    if mask & select.EPOLLOUT:
        flags |= _ZMQ_OUT
    if mask & ~(select.EPOLLIN | select.EPOLLOUT):
        flags |= _ZMQ_ERR
    return flags


class LoopPoller:
    """Plain descriptors in epoll, zmq sockets in a zmq poll beside it (see the module)."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._epoll_fd = self._epoll.fileno()
        self._fds: set[int] = set()
        self._sockets = zmq.Poller()  # zmq sockets, and the epoll fd while there are some
        self._socket_count = 0

    def register(self, source: Any, flags: int = _ZMQ_IN | _ZMQ_OUT) -> None:
        """Watch ``source`` (a descriptor or a zmq socket) for ``flags``; again: modify."""
        if not flags:  # as zmq.Poller: no flags is no interest
            self.unregister(source)
            return
        if isinstance(source, int):
            if source in self._fds:
                self._epoll.modify(source, _to_epoll(flags))
            else:
                self._epoll.register(source, _to_epoll(flags))
                self._fds.add(source)
            return
        if source not in self._sockets:
            if self._socket_count == 0:
                self._sockets.register(self._epoll_fd, _ZMQ_IN)
            self._socket_count += 1
        self._sockets.register(source, flags)

    modify = register

    def unregister(self, source: Any) -> None:
        """Stop watching ``source``; KeyError if it was not watched (as zmq.Poller)."""
        if isinstance(source, int):
            self._fds.remove(source)
            with contextlib.suppress(OSError):  # closed already: epoll dropped it itself
                self._epoll.unregister(source)
            return
        self._sockets.unregister(source)
        self._socket_count -= 1
        if self._socket_count == 0:
            self._sockets.unregister(self._epoll_fd)

    def poll(self, timeout: int | None = None) -> list[tuple[Any, int]]:
        """What is ready within ``timeout`` ms (None or negative: however long it takes)."""
        if self._socket_count == 0:  # only descriptors: epoll waits itself
            seconds = -1.0 if timeout is None or timeout < 0 else timeout / 1000
            return [(fd, _from_epoll(mask)) for fd, mask in self._epoll.poll(seconds)]
        ready: list[tuple[Any, int]] = []
        epoll_ready = False
        for source, flags in self._sockets.poll(timeout):
            if source == self._epoll_fd:
                epoll_ready = True
            else:
                ready.append((source, flags))
        if epoll_ready:
            ready.extend((fd, _from_epoll(mask)) for fd, mask in self._epoll.poll(0))
        return ready

    def close(self) -> None:
        self._epoll.close()
