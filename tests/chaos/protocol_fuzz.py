"""The protocol fuzzer's parts: what it sends (hypothesis strategies) and how it reaches each
socket of a node, before authentication and after it (through the real handshake of
``auth.py``, ``local_channel.py`` and ``transport.py``, as a legitimate but buggy client).

Before authentication every stream also carries a pickle whose ``__reduce__`` makes a
marker directory: if the node ever unpickled a byte it got before the secret was checked,
the directory would appear. The same pickle sent after authentication does make it (the
control: it proves the marker would show an unpickling).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import zmq
from hypothesis import strategies as st

from rayjupyter.core import auth, local_channel, protocol
from rayjupyter.core import protocol as P
from rayjupyter.core.ids import CLIENT_ID_SIZE, new_client_id

RECV_WAIT_S = 0.02  # how long to wait for an answer (or a close) after a frame


def fuzz_seconds(default: float) -> float:
    """Seconds per socket and phase: RAYJUPYTER_FUZZ_SECONDS, else the CI budget."""
    try:
        return max(0.5, float(os.environ.get("RAYJUPYTER_FUZZ_SECONDS", default)))
    except ValueError:
        return default


class Marker:
    """Unpickling this creates a directory: the proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.mkdir, (self.path,))


def marker_pickle(path: str) -> bytes:
    """A frame that makes `path` when unpickled, shaped like a real batch (a Ping)."""
    kind = protocol.ALL_MESSAGES.index(P.Ping)
    return pickle.dumps([(kind, Marker(path))], protocol=5)


# ----------------------------------------------------------------------------- strategies

# messages a buggy driver might send in any order; not StopCluster (stopping is legitimate),
# nor RegisterNode/NodeHeartbeat (what a peer node says, not a driver), nor SubmitJob (its
# entrypoint is a shell command: fuzzed text would run as one)
DRIVER_KINDS = [
    kind
    for kind in protocol.CLIENT_TO_NODE
    if kind not in (P.StopCluster, P.RegisterNode, P.NodeHeartbeat, P.SubmitJob)
]

_atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.binary(max_size=40),
    st.sampled_from([b"\0" * CLIENT_ID_SIZE, b"\0" * 16, b"\0" * 20, os.urandom(20)]),
    st.text(max_size=20),
)
values = st.recursive(
    _atoms,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=5), inner, max_size=3),
    ),
    max_leaves=8,
)


@st.composite
def message_rows(draw: st.DrawFn) -> tuple[Any, ...]:
    """A row as dumps makes it: a kind index (sometimes out of range) and fields of any
    type and count (sometimes the right count)."""
    if draw(st.integers(0, 9)) == 0:
        kind = draw(st.integers(-3, len(protocol.ALL_MESSAGES) + 3))
        arity = draw(st.integers(0, 6))
    else:
        cls = draw(st.sampled_from(DRIVER_KINDS))
        kind = protocol.ALL_MESSAGES.index(cls)
        arity = len(cls._fields) + draw(st.sampled_from([0, 0, 0, -1, 1]))
    return (kind, *[draw(values) for _ in range(max(0, arity))])


@st.composite
def batches(draw: st.DrawFn) -> bytes:
    """A frame that unpickles to something batch-like (well-formed or not)."""
    shape = draw(st.integers(0, 3))
    if shape == 0:
        rows: Any = draw(st.lists(message_rows(), min_size=1, max_size=5))
    elif shape == 1:
        rows = draw(values)  # not a list of rows at all
    elif shape == 2:
        rows = draw(st.lists(values, min_size=1, max_size=3))  # rows that are not tuples
    else:
        rows = [(protocol.ALL_MESSAGES.index(P.Ping), draw(values))]
    return pickle.dumps(rows, protocol=draw(st.integers(2, 5)))


@dataclass(frozen=True)
class Big:
    """An oversized frame, kept as its size and seed so a failing example prints short."""

    size: int
    seed: int


big_bytes = st.builds(Big, st.integers(64 << 10, 2 << 20), st.integers(0, 2**32))


def materialize(frame: bytes | Big) -> bytes:
    if isinstance(frame, Big):
        return random.Random(frame.seed).randbytes(frame.size)
    return frame


def truncated(frames: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A prefix of a frame: cut anywhere."""
    return st.tuples(frames, st.floats(0, 1)).map(lambda p: p[0][: int(len(p[0]) * p[1])])


def _greeting(mechanism: bytes, tail: bytes, as_server: int) -> bytes:
    """A ZMTP 3 greeting (signature, version, mechanism, as-server, filler) and a tail."""
    return (
        b"\xff"
        + b"\0" * 8
        + b"\x7f"
        + b"\x03\x00"
        + mechanism.ljust(20, b"\0")
        + bytes([as_server])
        + b"\0" * 31
        + tail
    )


zmtp_noise = st.builds(
    _greeting,
    st.sampled_from([b"NULL", b"PLAIN", b"CURVE", b"GSSAPI", b"XYZ"]),
    st.binary(max_size=512),
    st.integers(0, 1),
)
# what is sent before authentication: noise, greetings, cut and oversized
raw_frames = st.one_of(
    st.binary(max_size=2048),
    truncated(zmtp_noise),
    zmtp_noise,
    big_bytes,
)
# what a buggy client sends after it: batches, cut batches, noise, oversized
authed_frames = st.one_of(
    batches(),
    batches(),
    truncated(batches()),
    st.binary(max_size=2048),
    big_bytes,
)


# ----------------------------------------------------------------------------- outcomes


@dataclass
class Outcome:
    frames: int = 0
    answered: int = 0  # bytes came back (an error, a reply)
    closed: int = 0  # the connection was closed on us


def read_back(sock: socket.socket, wait_s: float = RECV_WAIT_S) -> str:
    """'closed', 'answered' or 'silent' for a stream socket after we wrote to it."""
    sock.settimeout(wait_s)
    try:
        data = sock.recv(65536)
    except (TimeoutError, BlockingIOError):
        return "silent"
    except OSError:
        return "closed"
    return "answered" if data else "closed"


def send_stream(address: tuple[Any, ...] | str, chunks: list[bytes], out: Outcome) -> None:
    """Open a stream connection (TCP or Unix), write chunks, note how the node took them."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(address)
        except OSError:
            out.closed += 1  # a full backlog refuses: a closed connection, counted
            return
        state = "silent"
        for chunk in chunks:
            out.frames += 1
            try:
                sock.sendall(chunk)
            except OSError:
                state = "closed"
                break
            state = read_back(sock)
            if state == "closed":
                break
        if state == "closed":
            out.closed += 1
        elif state == "answered":
            out.answered += 1


def send_channel_authed(path: str, secret: str, frames: list[bytes], out: Outcome) -> None:
    """The real local-channel handshake, a Hello, then length-framed fuzz frames."""
    client_id = new_client_id()
    hello = protocol.dumps([P.Hello("driver", os.getpid(), protocol.PROTOCOL_VERSION, "fuzz")])
    chunks = [local_channel.auth_frame(secret, client_id) + struct.pack("<Q", len(hello)) + hello]
    for frame in frames:
        cut = frame[:1] == b"\0"  # sometimes a length header that claims more than follows
        header = struct.pack("<Q", len(frame) + (1 << 20 if cut else 0))
        chunks.append(header + frame)
    send_stream(path, chunks, out)


class ZmqClient:
    """A DEALER pair as ``transport.ZmqTransport`` makes them (rx named first by a Hello)."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, secret: str) -> None:
        client_id = new_client_id()
        self.sockets: list[zmq.Socket[Any]] = []
        self.tx = self._socket(ctx, endpoint, client_id + b"t", secret)
        self.rx = self._socket(ctx, endpoint, client_id + b"r", secret)

    def _socket(
        self, ctx: zmq.Context[Any], endpoint: str, routing_id: bytes, secret: str
    ) -> zmq.Socket[Any]:
        sock = ctx.socket(zmq.DEALER)
        sock.routing_id = routing_id
        sock.linger = 0
        sock.sndtimeo = 300  # the handshake is quick; a refused client never gets one
        auth.secure_client(sock, secret, endpoint)
        sock.connect(endpoint)
        self.sockets.append(sock)
        return sock

    def answered(self, wait_s: float = RECV_WAIT_S) -> bool:
        if not self.rx.poll(int(wait_s * 1000)):
            return False
        with contextlib.suppress(zmq.ZMQError):
            while self.rx.recv(zmq.NOBLOCK) is not None:
                pass
        return True

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(0)


def send_zmq(
    ctx: zmq.Context[Any],
    endpoint: str,
    secret: str,
    parts: list[list[bytes]],
    out: Outcome,
    hello: bool,
) -> None:
    """A zmq client (with the right secret or not) sends each message of `parts` (a message
    of one or more frames), after a real Hello when `hello`."""
    client = ZmqClient(ctx, endpoint, secret)
    try:
        if hello:  # (a client the node refused cannot even send: zmq.Again)
            hi = P.Hello("driver", os.getpid(), protocol.PROTOCOL_VERSION, "fuzz")
            with contextlib.suppress(zmq.ZMQError):
                client.rx.send(protocol.dumps([hi]))
        for message in parts:
            out.frames += len(message)
            try:
                client.tx.send_multipart(message)
            except zmq.ZMQError:
                out.closed += 1
                break
        if client.answered():
            out.answered += 1
    finally:
        client.close()


ATTACKER_WAIT_S = 60.0  # a send_zmq call takes well under a second; beyond this it is stuck


def _attacker_main(conn: Connection) -> None:
    """The zmq attacker's own process: send_zmq for each job until told to stop."""
    ctx: zmq.Context[Any] = zmq.Context()
    while True:
        try:
            job = conn.recv()
        except EOFError:
            break
        if job is None:
            break
        endpoint, secret, parts, hello = job
        out = Outcome()
        send_zmq(ctx, endpoint, secret, parts, out, hello)
        conn.send((out.frames, out.answered, out.closed))
    ctx.destroy(0)


class ZmqAttacker:
    """Fuzzed zmq clients, sent from a child process of their own.

    libzmq 4.3.5 can abort the *sending* process (``Resource temporarily unavailable
    (src/session_base.cpp:233)``) when the node drops a connection in the middle of a
    hostile multipart message: that is the attacker's crash, not the node's, so it must not
    take the test run with it. A child that dies is counted in ``aborts`` and replaced.
    """

    def __init__(self, on_start: Callable[[int], None] = lambda pid: None) -> None:
        self.aborts = 0
        self.on_start = on_start  # told each new child's pid (the leak check lets it be)
        self._start()

    def _start(self) -> None:
        spawn = multiprocessing.get_context("spawn")  # the test process has threads: no fork
        self.conn, child_end = spawn.Pipe()
        self.process = spawn.Process(target=_attacker_main, args=(child_end,), daemon=True)
        self.process.start()
        child_end.close()
        assert self.process.pid is not None
        self.on_start(self.process.pid)

    def send(
        self, endpoint: str, secret: str, parts: list[list[bytes]], out: Outcome, hello: bool
    ) -> None:
        """``send_zmq`` in the child; its counts go to ``out``."""
        with contextlib.suppress(OSError):
            self.conn.send((endpoint, secret, parts, hello))
            if self.conn.poll(ATTACKER_WAIT_S):
                with contextlib.suppress(EOFError):
                    frames, answered, closed = self.conn.recv()
                    out.frames += frames
                    out.answered += answered
                    out.closed += closed
                    return
        out.frames += sum(len(message) for message in parts)
        self.aborts += 1
        self._end(kill=True)
        self._start()

    def _end(self, kill: bool) -> None:
        if kill and self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self.conn.close()
        assert not self.process.is_alive(), f"the attacker process {self.process.pid} is left"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(10)
        self._end(kill=True)


def wait_quiet(seconds: float) -> None:
    time.sleep(seconds)
