"""Length-framed messages over a Unix socket pair: the link between a node and a worker it forked.

Why not zmq on this link: every zmq message wakes libzmq's IO thread in the sender and in
the receiver, besides the thread that reads it, so one hop costs three context switches
where a plain socket costs one. A ping-pong on this 2-core machine took 148 us over zmq's
ipc transport and 22-34 us over a socket pair, and a task crosses this link twice.

The pair is made before the fork and inherited, so no other process can connect to it and
the worker needs no credentials. The driver that starts a local cluster gets one too: it
hands the node its end when it starts it. Each frame is an 8-byte little-endian length, then the
bytes of one ``protocol.dumps`` batch.
"""

from __future__ import annotations

import mmap
import socket
import struct

HEADER = struct.Struct("<Q")
READ_SIZE = 1 << 18  # bytes asked of the socket per read
MAX_READS = 64  # per drain on a client's end (16 MiB)
# per drain on the node's end (256 KiB, about a thousand submits): a driver that floods its
# node with submits must not keep it from answering the others (a status within 1 s)
NODE_READS = 1


class Channel:
    """One end of a worker link. The node's end never blocks (it keeps what the socket
    does not take yet); a worker's end blocks on send, since the node always reads."""

    def __init__(self, sock: socket.socket, *, blocking_send: bool) -> None:
        self.sock = sock
        self.blocking_send = blocking_send
        sock.setblocking(blocking_send)
        self._inbuf = bytearray()
        self._outbuf = bytearray()
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
        return len(self._outbuf)

    @property
    def has_pending(self) -> bool:
        """True while sent frames wait for room in the socket (the node then polls POLLOUT)."""
        return bool(self._outbuf)

    def send(self, payload: bytes) -> None:
        """Send one frame; on the non-blocking end, keep whatever the socket cannot take."""
        if self.closed:
            return
        frame = HEADER.pack(len(payload)) + payload
        if self.blocking_send:
            self._send_whole(frame)
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

    def _send_whole(self, frame: bytes) -> None:
        """Block until all of frame is sent, even through Ctrl-C (raised afterwards): half a
        frame would leave the node reading garbage lengths from then on."""
        view = memoryview(frame)
        interrupted: KeyboardInterrupt | None = None
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
        while self._outbuf and not self.closed:
            try:
                sent = self.sock.send(self._outbuf)
            except BlockingIOError:
                return
            except OSError:
                self.closed = True
                self._outbuf.clear()
                return
            del self._outbuf[:sent]

    def recv_frames(self, *, wait: bool = False, reads: int = MAX_READS) -> list[bytes] | None:
        """The complete frames that have arrived; None once the other end has closed.

        ``wait`` blocks for the first read (a worker's reading thread after a poll said
        there is data); otherwise reads stop as soon as the socket is empty, or after
        ``reads`` reads (what is left is read at the next poll).
        """
        buf = self._inbuf
        landing = self._landing
        flags = 0 if wait and self.blocking_send else socket.MSG_DONTWAIT
        for _ in range(reads):
            try:
                size = self.sock.recv_into(landing, READ_SIZE, flags)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                size = 0
            if not size:
                self.closed = True
                break
            buf += landing[:size]
            flags = socket.MSG_DONTWAIT
            if size < READ_SIZE:
                break
        frames: list[bytes] = []
        start = 0
        size = len(buf)
        while size - start >= HEADER.size:
            (length,) = HEADER.unpack_from(buf, start)
            end = start + HEADER.size + length
            if end > size:
                break
            frames.append(bytes(buf[start + HEADER.size : end]))
            start = end
        if start:
            del buf[:start]
        if not frames and self.closed:
            return None
        return frames

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def pair() -> tuple[socket.socket, socket.socket]:
    """(the end that stays, the end a child inherits, across fork and exec)."""
    ours, childs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    childs.set_inheritable(True)
    return ours, childs
