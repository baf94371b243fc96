"""A channel whose other end is gone, or that we closed, takes no more bytes."""

from __future__ import annotations

import socket

import pytest

from rayjupyter.core.channel import HEADER, Channel


@pytest.mark.parametrize("how", ["closed here", "peer gone"])
def test_sends_on_a_closed_channel_are_dropped_not_kept_pending(how: str) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(ours, blocking_send=False)
    theirs.close()
    if how == "closed here":
        channel.close()
    else:
        channel.send(b"x" * 64)  # the first send finds the peer gone
    assert channel.closed
    channel.send(b"after")
    channel.send_raw(HEADER.pack(5) + b"after")  # (it kept these, and polled for room)
    assert not channel.has_pending and channel.pending_bytes == 0
    ours.close()
