"""Length-framed messages over a Unix socket pair: the link between a node and a worker it forked.

Why not zmq on this link: every zmq message wakes libzmq's IO thread in the sender and in
the receiver, besides the thread that reads it, so one hop costs three context switches
where a plain socket costs one. A ping-pong on this 2-core machine took 148 us over zmq's
ipc transport and 22-34 us over a socket pair, and a task crosses this link twice.

The pair is made before the fork and inherited, so no other process can connect to it and
the worker needs no credentials. The driver that starts a local cluster gets one too: it
hands the node its end when it starts it. Each frame is an 8-byte little-endian length, then the
bytes of one ``protocol.dumps`` batch.

A chunk of a value (peers on one machine, ``peer_bulk.py``) is a frame of its own whose
length has ``CHUNK_FLAG`` set: then the body's length (8 bytes), the pickled header
(``ObjectChunk`` without its data), and the body, sent with ``os.sendfile`` from the store's
file (the kernel hands the file's pages to the socket: no copy on the sending side).
"""

from __future__ import annotations

import array
import contextlib
import mmap
import os
import socket
import struct
from collections import deque
from dataclasses import dataclass

HEADER = struct.Struct("<Q")
BODY = struct.Struct("<Q")  # a chunk's body length, after its flagged header length
CHUNK_FLAG = 1 << 63  # set in a frame's length: a chunk (header, then raw body)
#: the send buffer of a channel that carries chunks: the kernel's default (208 KiB) took
#: about ten sendfile calls and loop turns per 2 MB chunk (capped by net.core.wmem_max)
CHUNK_SNDBUF = 4 << 20
READ_SIZE = 1 << 18  # bytes asked of the socket per read
MAX_READS = 64  # per drain on a client's end (16 MiB)
# per drain on the node's end (256 KiB, about a thousand submits): a driver that floods its
# node with submits must not keep it from answering the others (a status within 1 s)
NODE_READS = 1


@dataclass
class FileRegion:
    """A chunk frame still to send: its header, then bytes of a file. The file is opened
    only when the chunk's turn comes (one descriptor per channel, however many chunks
    wait), and closed once its bytes are sent."""

    header: bytes  # pickled
    path: str
    offset: int
    length: int  # at most this many (fewer if the file is shorter)
    error: bytes  # the frame's payload sent instead when the file cannot be opened
    fd: int = -1

    def open(self) -> bytes:
        """Open the file; the frame's bytes up to the body (or the error frame)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return HEADER.pack(len(self.error)) + self.error
        try:
            self.length = max(0, min(self.length, os.fstat(fd).st_size - self.offset))
        except OSError:
            os.close(fd)
            return HEADER.pack(len(self.error)) + self.error
        self.fd = fd
        return HEADER.pack(CHUNK_FLAG | len(self.header)) + BODY.pack(self.length) + self.header


@dataclass
class FdFrame:
    """A frame that carries descriptors (SCM_RIGHTS, ``direct_links.py``): they go with its
    first byte, so they arrive no later than the frame; ours are closed once sent."""

    data: bytes
    fds: list[int]

    @property
    def length(self) -> int:
        return len(self.data)

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


#: room for the descriptors one read may bring (a frame carries at most a few)
ANCILLARY_SIZE = socket.CMSG_SPACE(64 * array.array("i").itemsize)


class Channel:
    """One end of a worker link. The node's end never blocks (it keeps what the socket
    does not take yet); a worker's end blocks on send, since the node always reads."""

    def __init__(self, sock: socket.socket, *, blocking_send: bool) -> None:
        self.sock = sock
        self.blocking_send = blocking_send
        sock.setblocking(blocking_send)
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        # what waits behind a file region being sent (bytes or more regions), in order
        self._queue: deque[bytearray | FileRegion | FdFrame] = deque()
        self._sends_chunks = False
        self._fds_out: list[int] = []  # descriptors the next frame sent carries (attach_fd)
        #: descriptors received (a client's end reads with recvmsg): taken in order by the
        #: messages they came for, which arrive with them or after them
        self.fds_in: deque[int] | None = None
        # reads land here: ``recv(READ_SIZE)`` would allocate 256 KiB per read, above malloc's
        # mmap threshold (an mmap, an mremap and an munmap per read, and a page fault).
        # Anonymous memory: only the pages reads touch are resident (a page or two).
        # Private, not mmap's default shared mapping: private anonymous mappings side by
        # side are one mapping to the kernel, shared ones one each, and fork copies every
        # mapping: a node with 1,000 workers' channels made each new worker's fork copy
        # 1,000 mappings (and every worker carried them all).
        landing = mmap.mmap(-1, READ_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._landing = memoryview(landing)
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def pending_bytes(self) -> int:
        """What was sent and still waits for room in the socket (a slow reader's backlog)."""
        return len(self._outbuf) + sum(
            len(item) if isinstance(item, bytearray) else item.length for item in self._queue
        )

    @property
    def has_pending(self) -> bool:
        """True while sent frames wait for room in the socket (the node then polls POLLOUT)."""
        return bool(self._outbuf) or bool(self._queue)

    def send(self, payload: bytes) -> None:
        """Send one frame; on the non-blocking end, keep whatever the socket cannot take."""
        if self.closed:
            return
        frame = HEADER.pack(len(payload)) + payload
        if self.blocking_send:
            self._send_whole(frame)
            return
        if self._fds_out:
            fds, self._fds_out = self._fds_out, []
            self._queue.append(FdFrame(frame, fds))
            if len(self._queue) == 1 and not self._outbuf:
                self.write_pending()
            return
        if self._queue:
            last = self._queue[-1]
            if isinstance(last, bytearray):
                last += frame
            else:
                self._queue.append(bytearray(frame))
            return
        if self._outbuf:
            self._outbuf += frame
            return
        try:
            sent = self.sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:  # the worker is gone; its exit is handled through its pidfd
            self.closed = True
            return
        if sent < len(frame):
            self._outbuf += memoryview(frame)[sent:]

    def attach_fd(self, fd: int) -> None:
        """Send a descriptor (ours, closed once sent) with the next frame: only on the node's
        (non-blocking) end, towards a client that reads with ``fds_in``."""
        self._fds_out.append(fd)

    def send_file_chunk(self, region: FileRegion) -> None:
        """Send a chunk frame (see FileRegion), after everything sent before. Only on the
        non-blocking end: what the socket does not take waits for write_pending."""
        assert not self.blocking_send
        if self.closed:
            return
        if not self._sends_chunks:
            self._sends_chunks = True
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK_SNDBUF)
        self._queue.append(region)
        if len(self._queue) == 1 and not self._outbuf:
            self.write_pending()

    def send_raw(self, data: bytes) -> None:
        """Queue bytes as they are (already framed), after everything queued before."""
        if self.closed:  # (as send: kept, they would be pending, and polled for, forever)
            return
        if self._queue:
            self._queue.append(bytearray(data))
        else:
            self._outbuf += data
            self.write_pending()

    def _send_whole(self, frame: bytes) -> None:
        """Block until all of frame is sent, even through Ctrl-C (raised afterwards): half a
        frame would leave the node reading garbage lengths from then on."""
        interrupted: KeyboardInterrupt | None = None
        try:
            sent = self.sock.send(frame)  # nearly always all of it (the node keeps reading)
        except KeyboardInterrupt as exc:
            interrupted, sent = exc, 0
        except OSError:  # the node is gone: the waiting side notices (liveness checks)
            self.closed = True
            return
        if sent == len(frame) and interrupted is None:
            return
        view = memoryview(frame)[sent:]
        while view:
            try:
                view = view[self.sock.send(view) :]
            except KeyboardInterrupt as exc:
                interrupted = exc
            except OSError:  # the node is gone: the waiting side notices (liveness checks)
                self.closed = True
                break
        if interrupted is not None:
            raise interrupted

    def write_pending(self) -> None:
        """Write what earlier sends left behind, as far as the socket takes it."""
        while not self.closed:
            if not self._outbuf:
                if not self._queue or not self._send_region():
                    return
                continue
            try:
                sent = self.sock.send(self._outbuf)
            except BlockingIOError:
                return
            except OSError:
                self._lost()
                return
            del self._outbuf[:sent]

    def _send_region(self) -> bool:
        """Send the next queued item: its bytes move to ``_outbuf``; a file region's frame
        up to its body too (when its file opens), then its body goes out by sendfile.
        False when the socket is full."""
        item = self._queue[0]
        if isinstance(item, bytearray):
            self._queue.popleft()
            self._outbuf = item
            return True
        if isinstance(item, FdFrame):
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", item.fds))]
            try:
                sent = self.sock.sendmsg([item.data], rights)
            except BlockingIOError:
                return False
            except OSError:
                self._lost()
                return False
            self._queue.popleft()
            item.close()  # the receiver has its own copies now
            self._outbuf = bytearray(memoryview(item.data)[sent:])
            return True
        if item.fd < 0:
            self._outbuf = bytearray(item.open())
            if item.fd < 0 or item.length == 0:
                self._queue.popleft()
                if item.fd >= 0:
                    os.close(item.fd)
            return True
        try:
            sent = os.sendfile(self.sock.fileno(), item.fd, item.offset, item.length)
        except BlockingIOError:
            return False
        except OSError:
            self._lost()
            return False
        if sent == 0:  # the file shrank under us: the frame cannot be finished
            self._lost()
            return False
        item.offset += sent
        item.length -= sent
        if item.length == 0:
            self._queue.popleft()
            os.close(item.fd)
        return True

    def _lost(self) -> None:
        """The other end is gone: drop what waits for it."""
        self.closed = True
        self._outbuf.clear()
        for item in self._queue:
            if isinstance(item, FileRegion) and item.fd >= 0:
                os.close(item.fd)
            elif isinstance(item, FdFrame):
                item.close()
        self._queue.clear()
        for fd in self._fds_out:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds_out = []

    def recv_frames(self, *, wait: bool = False, reads: int = MAX_READS) -> list[bytes] | None:
        """The complete frames that have arrived; None once the other end has closed.

        ``wait`` blocks for the first read (a worker's reading thread after a poll said
        there is data); otherwise reads stop as soon as the socket is empty, or after
        ``reads`` reads (what is left is read at the next poll).
        """
        buf = self._inbuf
        landing = self._landing
        flags = 0 if wait and self.blocking_send else socket.MSG_DONTWAIT
        fds_in = self.fds_in
        for _ in range(reads):
            try:
                if fds_in is None:
                    size = self.sock.recv_into(landing, READ_SIZE, flags)
                else:
                    size = self._recv_with_fds(landing, flags | socket.MSG_CMSG_CLOEXEC, fds_in)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                size = 0
            if not size:
                self.closed = True
                break
            if size < READ_SIZE and not buf:  # all that came, and nothing kept from before:
                return self._split(landing, size)  # the frames are cut where they landed
            buf += landing[:size]
            flags = socket.MSG_DONTWAIT
            if size < READ_SIZE:
                break
        frames = self._split(buf, len(buf))
        if not frames and self.closed:
            return None
        return frames

    def _recv_with_fds(self, landing: memoryview, flags: int, fds_in: deque[int]) -> int:
        """recv_into that keeps the descriptors that came with the bytes (``fds_in``)."""
        size, ancillary, _flags, _address = self.sock.recvmsg_into([landing], ANCILLARY_SIZE, flags)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                fds_in.extend(fds)
        return size

    def _split(self, data: bytearray | memoryview, size: int) -> list[bytes]:
        """The complete frames in ``data[:size]``; the rest waits in ``_inbuf`` for more."""
        frames: list[bytes] = []
        start = 0
        while size - start >= HEADER.size:
            (length,) = HEADER.unpack_from(data, start)
            end = start + HEADER.size + length
            if end > size:
                break
            frames.append(bytes(data[start + HEADER.size : end]))
            start = end
        if data is self._inbuf:
            if start:
                del self._inbuf[:start]
        elif start < size:
            self._inbuf += data[start:size]
        return frames

    def close(self) -> None:
        self._lost()
        self.sock.close()


def pair() -> tuple[socket.socket, socket.socket]:
    """(the end that stays, the end a child inherits, across fork and exec)."""
    ours, childs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    childs.set_inheritable(True)
    return ours, childs
