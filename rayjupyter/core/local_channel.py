"""Drivers on a node's own machine attach over a Unix socket with channel framing, not zmq.

A driver that attaches to a running cluster (``rj.init(address=...)``, ``%ray_connect``, a
dashboard, the Jupyter server's status poller) would otherwise talk to its node through zmq,
whose IO threads cost two extra context switches per message (see channel.py). When the
address names a cluster whose session folder is on this machine, the driver connects to the
node's ``channel.sock`` there instead. The folder is the user's own (mode 0700), and the
first frame must still prove the cluster secret: it is read as raw bytes and checked before
anything is unpickled, as zmq's ZAP handler checks the secret on the other sockets.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import socket

from rayjupyter.core import discovery
from rayjupyter.core.config import session_dir
from rayjupyter.core.ids import CLIENT_ID_SIZE

MAGIC = b"RJCH1"  # what starts an authentication frame (and names its version)
AUTH_SIZE = len(MAGIC) + CLIENT_ID_SIZE + hashlib.sha256().digest_size
AUTH_TIMEOUT_S = 5.0  # a connection that has not proved the secret by then is closed
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def socket_path(session: str) -> str:
    return os.path.join(session_dir(session), "channel.sock")


def auth_frame(secret: str, client_id: bytes) -> bytes:
    return MAGIC + client_id + _mac(secret, client_id)


def check_auth(secret: str, frame: bytes) -> bytes | None:
    """The client id a well-formed frame with the right secret names; None otherwise."""
    if len(frame) != AUTH_SIZE or not frame.startswith(MAGIC):
        return None
    client_id = frame[len(MAGIC) : len(MAGIC) + CLIENT_ID_SIZE]
    if not hmac.compare_digest(frame[len(MAGIC) + CLIENT_ID_SIZE :], _mac(secret, client_id)):
        return None
    return client_id


def _mac(secret: str, client_id: bytes) -> bytes:
    return hmac.new(secret.encode(), b"rayjupyter channel " + client_id, "sha256").digest()


def session_at(address: str) -> str | None:
    """The session of the cluster on this machine listening at address (host:port), if any."""
    address = address.removeprefix("tcp://")
    host, _, port = address.rpartition(":")
    for record in discovery.list_local_clusters():
        their_host, _, their_port = str(record.get("address", "")).rpartition(":")
        if their_port != port:
            continue
        # loopback stands for the node only if the node says loopback too: nodes in other
        # network namespaces on this machine may listen on the same port at their own IPs
        if host == their_host or (host in LOOPBACK_HOSTS and their_host in LOOPBACK_HOSTS):
            return str(record["session"])
    return None


def connect(address: str, secret: str, client_id: bytes) -> int | None:
    """A connected, authenticated-to-be socket to the node at address (its descriptor), or
    None when that node is not on this machine or its socket cannot be reached (use zmq)."""
    if address.startswith("ipc://") or not secret:
        return None
    session = session_at(address)
    if session is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(AUTH_TIMEOUT_S)
        sock.connect(socket_path(session))
        sock.sendall(auth_frame(secret, client_id))
    except OSError:
        with contextlib.suppress(OSError):
            sock.close()
        return None
    return sock.detach()
