"""Who may talk to a node: only holders of the cluster's secret.

zmq's ZAP handshake runs before a connection carries a single message frame, so a peer
without the secret never reaches ``pickle.loads`` or any handler. The node answers ZAP
requests itself, in its own poll loop (``ZapHandler``), rather than in pyzmq's
authenticator thread: the node then has no Python thread besides its loop, which keeps
forking workers from it safe.

Two mechanisms, one secret. The node's Unix socket (workers and drivers on its machine,
in a 0700 folder) uses PLAIN. Its TCP socket, which other machines reach, uses CurveZMQ:
traffic is encrypted, and both key pairs are derived from the cluster secret, so a peer
that holds the secret can connect and one that doesn't fails the handshake (its public
key is not the one the secret gives), before any frame reaches the node.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable

import zmq
from zmq.utils import z85

USERNAME = b"rayjupyter"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by the ZAP specification (RFC 27)


def new_secret() -> str:
    return secrets.token_hex(16)


def _keypair(secret: str, role: bytes) -> tuple[bytes, bytes]:
    """A CurveZMQ (public, secret) key pair, Z85-encoded, that only the secret gives."""
    seed = hashlib.sha256(b"rayjupyter-curve-" + role + b":" + secret.encode()).digest()
    secret_key = z85.encode(seed)
    return zmq.curve_public(secret_key), secret_key


def server_keys(secret: str) -> tuple[bytes, bytes]:
    return _keypair(secret, b"server")


def client_keys(secret: str) -> tuple[bytes, bytes]:
    return _keypair(secret, b"client")


REFUSALS_SHOWN = 20  # refused connections logged one line each per window...
REFUSAL_WINDOW_S = 60.0  # ...after which a window's other refusals are one summary line
REFUSAL_PEERS_NAMED = 5  # peers a summary names (the most frequent), the rest counted
MAX_TRACKED_CONNECTIONS = 65536  # open TCP connections whose peer is remembered


class RefusalLog:
    """One line per refused connection, naming who tried, and bounded whatever they do.

    Every refusal is counted; the first ``shown`` of each ``window_s`` are printed with
    their peer, and the others are summed into one line when the window ends (``tick``,
    called about once a second) or the node stops (``flush``), naming the peers that sent
    most. A flood of bad connections therefore costs a counter each, not a log line each,
    and none goes unreported. No I/O but ``write`` (a line to the node's stderr).
    """

    def __init__(
        self,
        shown: int = REFUSALS_SHOWN,
        window_s: float = REFUSAL_WINDOW_S,
        write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shown = shown
        self.window_s = window_s
        self.write = write or _stderr_line
        self.clock = clock
        self.total = 0  # every refusal since the node started
        self._window_start = clock()
        self._in_window = 0
        self._suppressed: Counter[str] = Counter()

    def refused(self, where: str, peer: str, reason: str, source: str = "") -> None:
        """One refusal: ``peer`` as shown in its line, ``source`` as the summary counts it
        (a host without its port, which changes every connection; default: the peer)."""
        self.tick()
        source = source or peer
        self.total += 1
        self._in_window += 1
        if self._in_window <= self.shown:
            self.write(f"rayjupyter node: refused a connection on {where} from {peer}: {reason}")
            if self._in_window == self.shown:
                self.write(
                    f"rayjupyter node: {self.shown} refused connections in "
                    f"{self.window_s:.0f} s; counting further ones for one summary line"
                )
        elif len(self._suppressed) < 1000 or source in self._suppressed:  # a bounded table
            self._suppressed[source] += 1
        else:
            self._suppressed["other peers"] += 1

    def tick(self) -> None:
        """End the window when its time is up: its summary, then a fresh budget."""
        now = self.clock()
        if now - self._window_start >= self.window_s:
            self.flush()
            self._window_start = now
            self._in_window = 0

    def flush(self) -> None:
        """The summary of the refusals not shown so far, if any."""
        count = sum(self._suppressed.values())
        if not count:
            return
        top = self._suppressed.most_common(REFUSAL_PEERS_NAMED)
        named = ", ".join(f"{peer} ({n})" for peer, n in top)
        rest = count - sum(n for _, n in top)
        if rest:
            named += f", others ({rest})"
        self.write(
            f"rayjupyter node: suppressed {count} more refused connection(s) "
            f"(at most {self.shown} lines per {self.window_s:.0f} s); from {named}"
        )
        self._suppressed.clear()


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ZapHandler:
    """Answers libzmq's authentication requests for every server socket of a context."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        secret: str,
        refusals: RefusalLog | None = None,
    ) -> None:
        self.socket = context.socket(zmq.REP)
        self.socket.linger = 0
        self.socket.bind(ZAP_ENDPOINT)
        self._secret = secret.encode()
        self._client_public = z85.decode(client_keys(secret)[0])
        self.refusals = refusals or RefusalLog()

    def handle(self) -> None:
        """Answer every pending request: 200 for the right secret, 400 for anything else."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            version, request_id, _domain, address, _identity, mechanism, *credentials = frames
            if mechanism == b"CURVE":
                ok = len(credentials) == 1 and hmac.compare_digest(
                    credentials[0], self._client_public
                )
            else:
                ok = (
                    mechanism == b"PLAIN"
                    and len(credentials) == 2
                    and credentials[0] == USERNAME
                    and hmac.compare_digest(credentials[1], self._secret)
                )
            status = (b"200", b"OK") if ok else (b"400", b"wrong or missing cluster secret")
            self.socket.send_multipart([version, request_id, *status, USERNAME if ok else b"", b""])
            if not ok:
                where = "tcp (CurveZMQ)" if mechanism == b"CURVE" else "the worker socket"
                peer = address.decode(errors="replace") or "a local process"
                self.refusals.refused(where, peer, "wrong or missing secret")

    def close(self) -> None:
        self.refusals.flush()
        self.socket.close(0)


# a CurveZMQ handshake that fails before ZAP is asked: the peer lacks the secret's keys
_HANDSHAKE_FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "no CurveZMQ handshake with this cluster's keys",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the CurveZMQ handshake failed",
}


class HandshakeMonitor:
    """Refusals that ZAP never sees: a TCP peer without the secret fails the CurveZMQ
    handshake itself (it cannot encrypt to our key), before libzmq asks ZAP anything.

    A socket monitor reports them, but a failure event names no peer. Accepting gives
    the connection's descriptor (its peer is read then), and libzmq's IO thread reports a
    failed handshake and that connection's disconnection one after the other, so the
    disconnection that follows a failure names who failed. Refusals ZAP makes (a wrong
    client key) are ZapHandler's to report, with the peer ZAP is given.
    """

    EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | sum(_HANDSHAKE_FAILED)

    def __init__(self, server: zmq.Socket[bytes], where: str, refusals: RefusalLog) -> None:
        self.server = server
        self.socket: zmq.Socket[bytes] = server.get_monitor_socket(self.EVENTS)
        self.where = where
        self.refusals = refusals
        self._peers: dict[int, str] = {}  # an open connection's descriptor -> its peer
        self._failed = ""  # why the last handshake failed, until its connection closes

    def handle(self) -> None:
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2 or len(frames[0]) < 6:
                continue
            event, value = struct.unpack("=hi", frames[0][:6])
            if event == zmq.EVENT_ACCEPTED:
                if len(self._peers) >= MAX_TRACKED_CONNECTIONS:  # events were dropped
                    del self._peers[next(iter(self._peers))]
                self._peers[value] = _tcp_peer(value)
            elif event in _HANDSHAKE_FAILED:
                self._failed = _HANDSHAKE_FAILED[event]
            elif event == zmq.EVENT_DISCONNECTED:
                peer = self._peers.pop(value, "an unknown peer")
                if self._failed:
                    host = peer.rpartition(":")[0] if ":" in peer else peer
                    self.refusals.refused(self.where, peer, self._failed, source=host)
                    self._failed = ""

    def close(self) -> None:
        self.handle()  # the last ones
        with contextlib.suppress(zmq.ZMQError):
            self.server.disable_monitor()
        self.socket.close(0)


def _tcp_peer(fd: int) -> str:
    """host:port at the other end of libzmq's descriptor (read through a duplicate of it)."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            peer = sock.getpeername()
    except OSError:  # closed already
        return "an unknown peer"
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "a local process"


def secure_server(socket: zmq.Socket[bytes], secret: str, *, curve: bool) -> None:
    """Make a server socket authenticate (and, with ``curve``, encrypt) every peer."""
    if curve:
        public, secret_key = server_keys(secret)
        socket.curve_server = True
        socket.curve_secretkey = secret_key
        socket.curve_publickey = public
    else:
        socket.plain_server = True


def secure_client(socket: zmq.Socket[bytes], secret: str, endpoint: str = "") -> None:
    """Credentials for a connection to a node: CurveZMQ over TCP, PLAIN over a Unix socket."""
    if endpoint.startswith("ipc://"):
        socket.plain_username = USERNAME
        socket.plain_password = secret.encode()
        return
    public, secret_key = client_keys(secret)
    socket.curve_publickey = public
    socket.curve_secretkey = secret_key
    socket.curve_serverkey = server_keys(secret)[0]
