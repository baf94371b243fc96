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

import hashlib
import hmac
import secrets
import sys
import time

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


class ZapHandler:
    """Answers libzmq's authentication requests for every server socket of a context."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], secret: str) -> None:
        self.socket = context.socket(zmq.REP)
        self.socket.linger = 0
        self.socket.bind(ZAP_ENDPOINT)
        self._secret = secret.encode()
        self._client_public = z85.decode(client_keys(secret)[0])
        self._last_report = 0.0

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
                self._report(address.decode(errors="replace"))

    def _report(self, address: str) -> None:
        now = time.monotonic()
        if now - self._last_report > 5:  # at most one line every 5 s, whatever a peer does
            self._last_report = now
            print(
                f"rayjupyter node: refused a connection from {address}: wrong or missing secret",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        self.socket.close(0)


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
