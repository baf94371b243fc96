"""Who may talk to a node: only holders of the cluster's secret.

zmq's ZAP handshake runs before a connection carries a single message frame, so a peer
without the secret never reaches ``pickle.loads`` or any handler. The node answers ZAP
requests itself, in its own poll loop (``ZapHandler``), rather than in pyzmq's
authenticator thread: the node then has no Python thread besides its loop, which keeps
forking workers from it safe. Loopback-only clusters use PLAIN; the multi-node issue adds
CurveZMQ here for traffic that leaves the machine.
"""

from __future__ import annotations

import hmac
import secrets
import sys
import time

import zmq

USERNAME = b"rayjupyter"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by the ZAP specification (RFC 27)


def new_secret() -> str:
    return secrets.token_hex(16)


class ZapHandler:
    """Answers libzmq's authentication requests for every server socket of a context."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], secret: str) -> None:
        self.socket = context.socket(zmq.REP)
        self.socket.linger = 0
        self.socket.bind(ZAP_ENDPOINT)
        self._secret = secret.encode()
        self._last_report = 0.0

    def handle(self) -> None:
        """Answer every pending request: 200 for the right secret, 400 for anything else."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            version, request_id, _domain, address, _identity, mechanism, *credentials = frames
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


def secure_server(socket: zmq.Socket[bytes]) -> None:
    socket.plain_server = True


def secure_client(socket: zmq.Socket[bytes], secret: str) -> None:
    socket.plain_username = USERNAME
    socket.plain_password = secret.encode()
