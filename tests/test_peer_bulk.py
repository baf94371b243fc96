"""Chunks between peers on one machine (peer_bulk.py, channel.py's chunk frames), without
node processes: a holder's channel sends a chunk's body from its file, the puller's link
splices it into the destination file at its offset; and what happens when the body is
cut short, cannot be written (the store is full), is no longer wanted, or the frame is
not ours.
"""

from __future__ import annotations

import errno
import os
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rayjupyter.core import node_pulls, protocol
from rayjupyter.core import protocol as P
from rayjupyter.core.channel import BODY, CHUNK_FLAG, HEADER, Channel, FileRegion
from rayjupyter.core.peer_bulk import READ_BUDGET, BulkLink, BulkLinks
from rayjupyter.core.pull_plan import PullPlan
from rayjupyter.exceptions import ObjectLostError

MB = 1 << 20
PEER = "127.0.0.1:1"


class Sink:
    """Records what the link tells it; bodies go to ``target`` (None: dropped)."""

    def __init__(self, target: int | None) -> None:
        self.target = target
        self.events: list[tuple[str, Any]] = []

    def chunk_target(self, address: str, chunk: P.ObjectChunk, length: int) -> int | None:
        self.events.append(("target", (chunk.offset, length)))
        return self.target

    def chunk_written(self, address: str, chunk: P.ObjectChunk, length: int) -> None:
        self.events.append(("written", (chunk.offset, length)))

    def chunk_write_failed(self, address: str, chunk: P.ObjectChunk, error: OSError) -> None:
        self.events.append(("failed", error.errno))

    def on_message(self, address: str, message: Any) -> None:
        self.events.append(("message", message))

    def bulk_lost(self, address: str) -> None:
        self.events.append(("lost", address))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


@pytest.fixture
def ends() -> Iterator[tuple[Channel, BulkLink]]:
    """(the holder's channel, the puller's link), connected."""
    holder, puller = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(holder, blocking_send=False)
    link = BulkLink(PEER, puller)
    yield channel, link
    channel.close()
    link.close()


def source(tmp_path: Path, size: int, name: str = "held") -> tuple[bytes, Path]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return data, path


def destination(tmp_path: Path, size: int, flags: int = os.O_RDWR) -> int:
    path = tmp_path / "pulled"
    path.write_bytes(b"\0" * size)
    return os.open(path, flags)


def pump(channel: Channel, link: BulkLink, sink: Sink, until: Any) -> bool:
    """Let both ends work until ``until()`` (or the link closed); the link's last answer."""
    alive = True
    for _ in range(100_000):
        channel.write_pending()
        alive = link.read(sink)
        if until() or not alive:
            break
    return alive


def chunk(offset: int) -> P.ObjectChunk:
    return P.ObjectChunk(b"o" * 20, offset, 0, b"", "")


def region(offset: int, path: Path, length: int) -> FileRegion:
    """A chunk of the file at path, as a holder sends it."""
    error = protocol.dumps([chunk(offset)._replace(error="gone")])
    return FileRegion(protocol.dumps([chunk(offset)]), str(path), offset, length, error)


def test_a_chunk_body_is_received_into_its_place_in_the_file(
    ends: tuple[Channel, BulkLink], tmp_path: Path
) -> None:
    channel, link = ends
    data, held = source(tmp_path, 20 * MB + 123)
    out = destination(tmp_path, len(data))
    sink = Sink(out)
    # two chunks, an ordinary frame between them and one after: all in order
    channel.send_file_chunk(region(12 * MB, held, 8 * MB + 123))
    error = P.ObjectChunk(b"x" * 20, 0, 0, b"", "not here")
    channel.send(protocol.dumps([error]))
    channel.send_file_chunk(region(0, held, 12 * MB))
    channel.send(protocol.dumps([error]))
    assert channel.has_pending  # (more than the socket takes at once)
    assert pump(channel, link, sink, lambda: len(sink.events) == 6)
    assert sink.kinds() == ["target", "written", "message", "target", "written", "message"]
    assert sink.events[1] == ("written", (12 * MB, 8 * MB + 123))
    assert sink.events[2] == ("message", error)
    assert os.pread(out, len(data), 0) == data
    assert not channel.has_pending and channel.pending_bytes == 0
    os.close(out)


def test_a_body_cut_short_by_a_dying_peer_is_never_reported_written(
    ends: tuple[Channel, BulkLink], tmp_path: Path
) -> None:
    channel, link = ends
    data, _ = source(tmp_path, 2 * MB)
    out = destination(tmp_path, len(data))
    sink = Sink(out)
    header = protocol.dumps([chunk(0)])
    # the frame promises 2 MB, the peer sends 1 MB and dies
    channel.send_raw(HEADER.pack(CHUNK_FLAG | len(header)) + BODY.pack(2 * MB) + header)
    channel.send_raw(data[:MB])
    assert pump(channel, link, sink, lambda: not channel.has_pending)
    channel.close()
    assert not pump(channel, link, sink, lambda: False)
    assert sink.kinds() == ["target"]  # never "written": the pull asks again elsewhere
    os.close(out)


def test_a_body_that_cannot_be_written_fails_and_the_link_goes_on(
    ends: tuple[Channel, BulkLink], tmp_path: Path
) -> None:
    channel, link = ends
    data, held = source(tmp_path, 2 * MB)
    read_only = destination(tmp_path, len(data), os.O_RDONLY)  # (writes fail: EBADF)
    sink = Sink(read_only)
    channel.send_file_chunk(region(0, held, len(data)))
    channel.send(protocol.dumps([P.LogLines(2, "after")]))
    assert pump(channel, link, sink, lambda: "message" in sink.kinds())
    assert sink.kinds() == ["target", "failed", "message"]  # the rest of the body dropped
    os.close(read_only)


def test_a_body_no_longer_wanted_is_dropped(ends: tuple[Channel, BulkLink], tmp_path: Path) -> None:
    channel, link = ends
    data, held = source(tmp_path, 2 * READ_BUDGET)  # (not all read at the first turn)
    out = destination(tmp_path, len(data))
    sink = Sink(out)
    channel.send_file_chunk(region(0, held, len(data)))
    channel.send(protocol.dumps([P.LogLines(2, "after")]))
    pump(channel, link, sink, lambda: "target" in sink.kinds())
    assert sink.kinds() == ["target"]
    link.forget_target(out)  # its pull ended meanwhile: the file is closed
    os.close(out)
    assert pump(channel, link, sink, lambda: "message" in sink.kinds())
    assert sink.kinds() == ["target", "message"]

    # a chunk nobody asked for (no target) is read past too
    sink.target = None
    _, held = source(tmp_path, MB)
    channel.send_file_chunk(region(0, held, MB))
    channel.send(protocol.dumps([P.LogLines(2, "again")]))
    assert pump(channel, link, sink, lambda: sink.kinds().count("message") == 2)
    assert sink.kinds() == ["target", "message", "target", "message"]


@pytest.mark.parametrize("length", [0, (1 << 40) | CHUNK_FLAG])
def test_a_frame_that_is_not_ours_closes_the_link(
    ends: tuple[Channel, BulkLink], length: int
) -> None:
    channel, link = ends
    sink = Sink(None)
    channel.send_raw(HEADER.pack(length) + b"\0" * 64)
    assert not pump(channel, link, sink, lambda: False)
    assert sink.events == []


def test_a_file_gone_when_its_chunk_s_turn_comes_is_answered_with_an_error(
    ends: tuple[Channel, BulkLink], tmp_path: Path
) -> None:
    channel, link = ends
    _, first = source(tmp_path, 20 * MB)
    _, second = source(tmp_path, MB, name="freed")
    channel.send_file_chunk(region(0, first, 20 * MB))
    channel.send_file_chunk(region(0, second, MB))  # (waits: the socket is full)
    second.unlink()  # freed meanwhile
    sink = Sink(None)
    assert pump(channel, link, sink, lambda: "message" in sink.kinds())
    assert sink.kinds() == ["target", "message"]
    assert sink.events[1][1].error == "gone"


def test_a_channel_that_loses_its_reader_closes_its_file(tmp_path: Path) -> None:
    holder, puller = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(holder, blocking_send=False)
    _, held = source(tmp_path, 20 * MB)
    sending = region(0, held, 20 * MB)
    channel.send_file_chunk(sending)
    channel.send_file_chunk(region(0, held, MB))
    assert channel.has_pending and sending.fd >= 0
    puller.close()
    channel.write_pending()
    assert channel.closed and not channel.has_pending
    with pytest.raises(OSError):
        os.fstat(sending.fd)  # (closed by the channel)
    channel.close()


class FakeNode:
    """What NodePulls asks of its node when a chunk cannot be written."""

    def __init__(self) -> None:
        self.session = "s"
        self.address = "127.0.0.1:2"
        self.objects: dict[bytes, Any] = {}
        self.ready: list[tuple[bytes, bytes | None, bool]] = []

    def set_ready(
        self, object_id: bytes, inline: bytes | None, size: int, is_error: bool, *_: Any
    ) -> None:
        self.ready.append((object_id, inline, is_error))


def test_a_store_that_fills_up_mid_chunk_fails_the_pull_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_pulls, "shm_path", lambda session, oid: str(tmp_path / oid.hex()))
    node = FakeNode()
    links = SimpleNamespace(bulk=BulkLinks(poll=None, secret=""))
    pulling = node_pulls.NodePulls(node, links)  # type: ignore[arg-type]
    object_id = b"o" * 20
    node.objects[object_id] = SimpleNamespace(ready=True, location=PEER)
    fd = os.open(tmp_path / object_id.hex(), os.O_RDWR | os.O_CREAT)
    plan = PullPlan(4 * MB, [PEER])
    pulling.pulls[object_id] = node_pulls.Pull(object_id, PEER, 4 * MB, fd, plan)
    plan.requests()
    assert pulling.chunk_target(PEER, chunk(0), 2 * MB) == fd
    pulling.chunk_write_failed(PEER, chunk(0), OSError(errno.ENOSPC, "full"))
    assert object_id not in pulling.pulls and not (tmp_path / object_id.hex()).exists()
    [(_, blob, is_error)] = node.ready
    assert is_error and blob is not None
    error = pickle.loads(blob)
    assert isinstance(error, ObjectLostError)
    assert "no room in this node's store for it" in str(error)
