"""Chunks of values from a peer on this machine: read from a Unix socket straight into the
store's file, one copy per byte.

Over zmq a chunk is copied three times: into the socket, out of it into libzmq's buffer,
and from there into the file (``os.pwrite``). Here the puller connects to the holder's
``channel.sock`` (proving the cluster secret in its first frame, as a local driver does:
the holder unpickles nothing before that), asks for chunks with ``PullObject`` in channel
frames, and the holder answers each with a chunk frame (``channel.CHUNK_FLAG``) whose body
it sends with ``os.sendfile`` from its store file: the socket then carries references to
the file's pages. The body is moved from the socket into a pipe (``os.splice``, pages
again, not bytes) and from the pipe into the destination file at its offset: the one copy.
No buffer of the body's size exists in user space, and the pipe holds at most PIPE_BYTES.

The link knows framing only; what a chunk is for (which file, whether it is still wanted)
is the ``ChunkSink``'s (``node_pulls.NodePulls``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import traceback
from typing import Any, Protocol

from rayjupyter.core import local_channel, protocol
from rayjupyter.core import protocol as P
from rayjupyter.core.channel import BODY, CHUNK_FLAG, HEADER
from rayjupyter.core.ids import new_client_id

#: the pipe between the socket and the file (F_SETPIPE_SZ; the kernel's default is 64 KiB)
PIPE_BYTES = 1 << 20
#: a frame header (pickled messages) longer than this is not ours: the link is dropped
MAX_HEADER = 1 << 20
#: bytes moved per readable event before the loop gets its turn back
READ_BUDGET = 16 << 20
#: set to 0, peers on this machine pull over zmq as before (to measure the difference)
PEER_BULK_ENV = "RAYJUPYTER_PEER_BULK"
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class ChunkSink(Protocol):
    """Where a link's chunks go."""

    def chunk_target(self, address: str, chunk: P.ObjectChunk, length: int) -> int | None:
        """The file descriptor to write the body into at ``chunk.offset``; None: drop it."""

    def chunk_written(self, address: str, chunk: P.ObjectChunk, length: int) -> None:
        """The whole body is in the file (its header named ``length`` bytes)."""

    def chunk_write_failed(self, address: str, chunk: P.ObjectChunk, error: OSError) -> None:
        """Writing the body failed (the store is full); the rest of it is dropped."""

    def on_message(self, address: str, message: Any) -> None:
        """A message that came in an ordinary frame (an error answer)."""

    def bulk_lost(self, address: str) -> None:
        """The link to ``address`` closed: what was asked on it will not come on it."""


class BulkLink:
    """Our connection to one peer's channel socket, for chunks only."""

    def __init__(self, address: str, sock: socket.socket) -> None:
        self.address = address
        self.sock = sock
        sock.setblocking(False)
        self.outbox: list[Any] = []
        self._out = bytearray()
        self.closed = False
        self._pipe_r, self._pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # (a lower limit for pipes keeps the default)
            fcntl.fcntl(self._pipe_w, _F_SETPIPE_SZ, PIPE_BYTES)
        self._piped = 0  # bytes in the pipe, not in the file yet
        # the frame being read: what is read of its current part, and which part it is
        self._head = bytearray()
        self._part = "length"  # then "body length" (a chunk), then "header"
        self._need = HEADER.size
        self._is_chunk = False
        self._header_size = 0
        self._body = 0  # a chunk's body length (from its frame)
        self._chunk: P.ObjectChunk | None = None  # the chunk whose body is being read
        self._length = 0  # its body's length
        self._left = 0  # of the body, bytes not read from the socket yet
        self._target: int | None = None  # where the body goes (None: dropped)
        self._failed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Any) -> None:
        self.outbox.append(message)

    def flush(self) -> bool:
        """Send what is queued (requests are small: what the socket does not take waits for
        the next flush); False once the peer is gone."""
        if self.outbox:
            payload = protocol.dumps(self.outbox)
            self.outbox = []
            self._out += HEADER.pack(len(payload)) + payload
        while self._out and not self.closed:
            try:
                sent = self.sock.send(self._out)
            except BlockingIOError:
                break
            except OSError:
                self.closed = True
                break
            del self._out[:sent]
        return not self.closed

    def read(self, sink: ChunkSink) -> bool:
        """Take what the socket has (up to READ_BUDGET bytes); False once it closed (the
        chunk being read, if any, never arrived: its sink was not told it was written)."""
        budget = READ_BUDGET
        while budget > 0 and not self.closed:
            if self._chunk is not None:
                moved = self._read_body(sink)
                if moved <= 0:
                    break
                budget -= moved
                continue
            try:
                data = self.sock.recv(self._need - len(self._head))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self.closed = True
                break
            self._head += data
            budget -= len(data)
            if len(self._head) == self._need:
                self._parsed(sink)
        return not self.closed

    def _parsed(self, sink: ChunkSink) -> None:
        """A part of the frame is in: its length, a chunk's body length, or its header."""
        part, data = self._part, bytes(self._head)
        self._head.clear()
        if part == "length":
            (length,) = HEADER.unpack(data)
            self._is_chunk = bool(length & CHUNK_FLAG)
            self._need = length & ~CHUNK_FLAG
            if not 0 < self._need <= MAX_HEADER:  # not a frame of ours: drop the link
                self.closed = True
                return
            self._part = "header"
            if self._is_chunk:
                self._part, self._header_size, self._need = "body length", self._need, BODY.size
            return
        if part == "body length":
            (self._body,) = BODY.unpack(data)
            self._part, self._need = "header", self._header_size
            return
        self._part, self._need = "length", HEADER.size
        try:
            messages = protocol.loads(data)
        except Exception:  # not a batch of ours: drop the link (its pulls go on over zmq)
            self.closed = True
            return
        if not self._is_chunk:
            for message in messages:
                sink.on_message(self.address, message)
            return
        chunk = messages[0] if len(messages) == 1 else None
        if not isinstance(chunk, P.ObjectChunk):
            self.closed = True
            return
        self._chunk, self._length, self._left, self._failed = chunk, self._body, self._body, False
        self._target = sink.chunk_target(self.address, chunk, self._body)
        if self._body == 0:
            self._finish(sink)

    def _read_body(self, sink: ChunkSink) -> int:
        """Move body bytes socket -> pipe -> file; how many left the socket (0: none now)."""
        chunk = self._chunk
        assert chunk is not None
        moved = 0
        if self._left:
            try:
                moved = os.splice(self.sock.fileno(), self._pipe_w, min(self._left, PIPE_BYTES))
            except (BlockingIOError, InterruptedError):
                return 0
            except OSError:
                moved = 0
            if moved == 0:
                self.closed = True
                return 0
            self._left -= moved
            self._piped += moved
        self._drain_pipe(sink, chunk)
        if not self._left and not self._piped:
            self._finish(sink)
        return moved

    def _drain_pipe(self, sink: ChunkSink, chunk: P.ObjectChunk) -> None:
        """Move what the pipe holds into the file (or drop it)."""
        while self._piped:
            target = self._target
            if target is None or self._failed:
                self._piped -= len(os.read(self._pipe_r, self._piped))
                continue
            written = self._body_written()
            try:
                self._piped -= os.splice(
                    self._pipe_r, target, self._piped, offset_dst=chunk.offset + written
                )
            except OSError as exc:
                self._failed = True
                sink.chunk_write_failed(self.address, chunk, exc)

    def _body_written(self) -> int:
        """Bytes of the current body already in the file."""
        return self._length - self._left - self._piped

    def _finish(self, sink: ChunkSink) -> None:
        chunk, self._chunk = self._chunk, None
        assert chunk is not None
        if self._target is not None and not self._failed:
            sink.chunk_written(self.address, chunk, self._length)
        self._target = None

    def forget_target(self, fd: int) -> None:
        """The file ``fd`` is closed (its pull ended): the rest of a body for it is dropped."""
        if self._target == fd:
            self._target = None

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.closed = True
            self.sock.close()
            os.close(self._pipe_r)
            os.close(self._pipe_w)


class BulkLinks:
    """Our bulk links, one per peer on this machine, read in the node's loop."""

    def __init__(self, poll: Any, secret: str) -> None:
        self.poll = poll  # the node's (node_io.NodePoll)
        self.secret = secret
        self.links: dict[str, BulkLink] = {}
        self.refused: set[str] = set()  # peers we could not link to, or lost: over zmq
        self.sink: ChunkSink | None = None  # set by the part that pulls

    def get(self, address: str, session: str | None) -> BulkLink | None:
        """The link to the peer at ``address`` (made on first use); None: use zmq."""
        link = self.links.get(address)
        if link is not None or address in self.refused:
            return link
        link = connect(address, session, self.secret) if session else None
        if link is None:
            self.refused.add(address)
            return None
        self.links[address] = link
        self.poll.handle(link.fileno(), lambda _fd: self._readable(link))
        return link

    def _readable(self, link: BulkLink) -> None:
        assert self.sink is not None
        try:
            alive = link.read(self.sink)
        except Exception:  # a bug here must not take the node down: over zmq from now on
            traceback.print_exc()
            alive = False
        if not alive:
            self.drop(link.address)
            self.refused.add(link.address)
            self.sink.bulk_lost(link.address)

    def flush(self) -> None:
        for link in list(self.links.values()):
            if not link.flush():
                self._readable(link)  # (reads what came before it closed, then drops it)

    def forget_target(self, fd: int) -> None:
        for link in self.links.values():
            link.forget_target(fd)

    def forget(self, address: str) -> None:
        """The peer left or died: a node that comes back at its address is linked anew."""
        self.drop(address)
        self.refused.discard(address)

    def drop(self, address: str) -> None:
        link = self.links.pop(address, None)
        if link is not None:
            self.poll.forget(link.fileno())
            link.close()

    def close(self) -> None:
        for address in list(self.links):
            self.drop(address)


def connect(address: str, session: str, secret: str) -> BulkLink | None:
    """A link to the peer at ``address`` whose session folder on this machine is
    ``session``; None when its socket cannot be reached (the pull goes over zmq)."""
    if os.environ.get(PEER_BULK_ENV, "1") in ("", "0"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(local_channel.AUTH_TIMEOUT_S)
        sock.connect(local_channel.socket_path(session))
        sock.sendall(local_channel.auth_frame(secret, new_client_id()))
    except OSError:
        sock.close()
        return None
    return BulkLink(address, sock)
