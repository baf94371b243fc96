"""The node loop's poller answers as zmq.Poller does, for descriptors and zmq sockets alike."""

from __future__ import annotations

import contextlib
import os
import socket
import time

import pytest
import zmq

from rayjupyter.core.loop_poller import LoopPoller


@pytest.fixture
def pipes():
    made: list[int] = []

    def pipe() -> tuple[int, int]:
        r, w = os.pipe()
        made.extend((r, w))
        return r, w

    yield pipe
    for fd in made:
        with contextlib.suppress(OSError):  # (a test closed it)
            os.close(fd)


def test_only_ready_descriptors_are_reported_with_zmq_masks(pipes):
    poller = LoopPoller()
    ends = [pipes() for _ in range(50)]
    for r, _ in ends:
        poller.register(r, zmq.POLLIN)
    assert poller.poll(0) == []
    os.write(ends[7][1], b"x")
    os.write(ends[31][1], b"y")
    assert sorted(poller.poll(0)) == sorted([(ends[7][0], zmq.POLLIN), (ends[31][0], zmq.POLLIN)])
    assert poller.poll(0), "level-triggered: still readable until read"
    os.read(ends[7][0], 1)
    assert poller.poll(0) == [(ends[31][0], zmq.POLLIN)]
    poller.close()


def test_out_error_modify_and_unregister_as_zmq_poller():
    a, b = socket.socketpair()
    poller = LoopPoller()
    poller.register(a.fileno(), zmq.POLLIN)
    assert poller.poll(0) == []
    poller.modify(a.fileno(), zmq.POLLIN | zmq.POLLOUT)
    assert poller.poll(0) == [(a.fileno(), zmq.POLLOUT)]
    poller.modify(a.fileno(), zmq.POLLIN)
    b.close()  # the peer went: readable (end of file), and a hang-up, which zmq calls an error
    [(fd, flags)] = poller.poll(0)
    assert fd == a.fileno() and flags & zmq.POLLIN and flags & zmq.POLLERR
    poller.unregister(a.fileno())
    assert poller.poll(0) == []
    with pytest.raises(KeyError):
        poller.unregister(a.fileno())
    a.close()
    poller.close()


def test_zmq_sockets_and_descriptors_share_one_poll_and_its_timeout(pipes):
    context = zmq.Context()
    rx = context.socket(zmq.PAIR)
    rx.bind("inproc://loop-poller-test")
    tx = context.socket(zmq.PAIR)
    tx.connect("inproc://loop-poller-test")
    r, w = pipes()
    poller = LoopPoller()
    poller.register(r, zmq.POLLIN)
    poller.register(rx, zmq.POLLIN)
    started = time.monotonic()
    assert poller.poll(50) == []
    assert time.monotonic() - started >= 0.04
    tx.send(b"hi")
    os.write(w, b"x")
    ready = dict(poller.poll(1000))
    assert ready == {rx: zmq.POLLIN, r: zmq.POLLIN}
    rx.recv()
    poller.unregister(rx)  # descriptors only again: epoll waits by itself
    assert poller.poll(0) == [(r, zmq.POLLIN)]
    for sock in (rx, tx):
        sock.close(linger=0)
    context.term()
    poller.close()


def test_a_wait_with_only_descriptors_ends_when_one_is_ready(pipes):
    r, w = pipes()
    poller = LoopPoller()
    poller.register(r, zmq.POLLIN)
    started = time.monotonic()
    assert poller.poll(30) == []
    assert time.monotonic() - started >= 0.02
    os.write(w, b"x")
    assert poller.poll(None) == [(r, zmq.POLLIN)]
    poller.close()
