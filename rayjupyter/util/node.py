"""Where this code runs: the node's IP address and instance id (Ray's ``ray.util``)."""

from __future__ import annotations

import contextlib
import socket


def _routes_to(host: str) -> str:
    """The local IP address that traffic to ``host`` leaves from (no packet is sent)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as sock:
        try:
            sock.connect((host, 1))
            return str(sock.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def get_node_ip_address(address: str | None = None) -> str:
    """The IP address of the node this process runs on.

    With ``address`` (host or host:port), the local address that reaches it. Connected to a
    cluster: the host its node daemon serves on (127.0.0.1 for a local cluster, which
    listens on loopback only). Otherwise the address of this machine's default route.
    """
    if address:
        return _routes_to(address.rsplit("@", 1)[-1].rsplit(":", 1)[0])
    from rayjupyter.core import api

    client = api._state.get("client")
    if client is not None:
        host = str(client.address).rsplit("@", 1)[-1].split("://")[-1].rsplit(":", 1)[0]
        with contextlib.suppress(OSError):
            return socket.gethostbyname(host) if host and "/" not in host else "127.0.0.1"
        return "127.0.0.1"
    return _routes_to("8.8.8.8")


def get_node_instance_id() -> str:
    """The cloud instance id of this node: empty, as Ray's is off a cloud provider."""
    return ""
