"""The client's outbox: a burst of submits travels as one frame; a wait ends the burst."""

from __future__ import annotations

import os
import socket
from collections import deque
from typing import Any

import pytest
import zmq

from rayjupyter.core import client_outbox, protocol
from rayjupyter.core import protocol as P
from rayjupyter.core.channel import Channel
from rayjupyter.core.client_outbox import Outbox
from rayjupyter.core.transport import ChannelTransport


@pytest.fixture
def link() -> Any:
    """An outbox on one end of a real socket pair, and the other end to read frames from."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    outbox = Outbox(ChannelTransport(ours.detach()), context, os.urandom(8).hex(), deque())
    outbox.batching = True  # as in a driver with its IO thread
    reader = Channel(theirs, blocking_send=True)
    yield outbox, reader
    outbox.transport.close()
    outbox.close_sockets()
    reader.close()
    context.term()


def _frames(reader: Channel) -> list[list[Any]]:
    """Every frame sent so far (each a batch of messages): a socket pair's send has put
    them in our end's buffer by the time it returns, so nothing is waited for."""
    frames: list[list[Any]] = []
    while True:
        found = reader.recv_frames()
        if not found:
            return frames
        frames += [protocol.loads(frame) for frame in found]


def test_a_burst_goes_as_one_frame_and_a_wait_ends_it(link: Any, monkeypatch: Any) -> None:
    outbox, reader = link
    # every submit of this test comes "closely" after the one before, however loaded
    # the machine is (the hold itself still ends at BURST_HOLD_S)
    monkeypatch.setattr(client_outbox, "BATCH_WINDOW_S", 60.0)
    outbox.send([P.Heartbeat()], batch=True)  # the first of a burst goes at once
    assert len(_frames(reader)) == 1
    for _ in range(5):  # the rest are held for the IO thread, which is woken once
        outbox.send([P.Heartbeat()], batch=True)
    assert len(outbox.messages) == 5 and outbox.wake_rx.poll(5000)
    outbox.flush()  # (the IO thread, woken)
    assert [len(frame) for frame in _frames(reader)] == [5]
    # a thread waits (a get): the next submit is not part of a burst, it goes at once
    outbox.burst_over()
    outbox.send([P.Heartbeat()], batch=True)
    assert not outbox.messages
    assert [len(frame) for frame in _frames(reader)] == [1]


def test_without_an_io_thread_every_send_goes_at_once(link: Any, monkeypatch: Any) -> None:
    outbox, reader = link
    outbox.batching = False  # a worker: nobody would send what is held
    monkeypatch.setattr(client_outbox, "BATCH_WINDOW_S", 60.0)
    for _ in range(3):
        outbox.send([P.Heartbeat()], batch=True)
    assert not outbox.messages
    assert [len(frame) for frame in _frames(reader)] == [1, 1, 1]
