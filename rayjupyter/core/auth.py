"""Who may talk to a node: only holders of the cluster's secret.

zmq's ZAP handshake (PLAIN, checked by pyzmq's authenticator thread) runs before the
connection carries a single message frame, so a peer without the secret never reaches
``pickle.loads`` or any handler. Loopback-only clusters use PLAIN; the multi-node issue
adds CurveZMQ here for traffic that leaves the machine.
"""

from __future__ import annotations

import secrets

import zmq
from zmq.auth.thread import ThreadAuthenticator

USERNAME = b"rayjupyter"


def new_secret() -> str:
    return secrets.token_hex(16)


def start_authenticator(
    context: zmq.Context[zmq.Socket[bytes]], secret: str
) -> ThreadAuthenticator:
    """Start the ZAP handler that checks every incoming connection on this context."""
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_plain(domain="*", passwords={USERNAME.decode(): secret})
    return authenticator


def secure_server(socket: zmq.Socket[bytes]) -> None:
    socket.plain_server = True


def secure_client(socket: zmq.Socket[bytes], secret: str) -> None:
    socket.plain_username = USERNAME
    socket.plain_password = secret.encode()
