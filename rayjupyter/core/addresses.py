"""Where a cluster is and its secret, for the programs that only look into it or ask it
things (the CLI, the state API, the Jobs client): ``connect.py``'s rules, as ``rj.init``
follows them, with errors that name the fix and without ever starting a cluster.

Accepted: ``rayjupyter://SECRET@HOST:PORT``; ``HOST:PORT`` with the secret found where this
user's programs keep it (``RAYJUPYTER_SECRET``, ``~/.rayjupyter/cluster.json``, the local
clusters' records); ``"auto"`` or nothing, for the cluster named by ``RAYJUPYTER_ADDRESS`` /
``RAY_ADDRESS`` or else the head started on this machine.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rayjupyter.core import connect
from rayjupyter.core.config import ADDRESS_ENVS as ADDRESS_ENVS  # (re-exported)
from rayjupyter.core.config import ADDRESS_SCHEME as ADDRESS_SCHEME
from rayjupyter.core.config import SECRET_ENV

if TYPE_CHECKING:
    from rayjupyter.core.client import Client


class AddressError(ValueError):
    """No usable address or secret: the message names the fix."""


state_dir = connect.state_dir
cluster_file = connect.head_file


def read_cluster_file() -> dict[str, Any] | None:
    """What `rayjupyter start --head` wrote here (address and secret), if anything."""
    try:
        data = json.loads(cluster_file().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def split(address: str) -> tuple[str, str]:
    """(host:port, secret) of an explicit address (see the module's docstring)."""
    if address.startswith(("http://", "https://")):
        raise AddressError(
            f"{address!r} is an HTTP address: rayjupyter's Jobs and state APIs go through the "
            "cluster's own authenticated port; give rayjupyter://SECRET@HOST:PORT (printed by "
            "`rayjupyter start --head`)"
        )
    secret = ""
    if address.startswith(ADDRESS_SCHEME):
        secret, _, address = address[len(ADDRESS_SCHEME) :].rpartition("@")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise AddressError(f"bad address {address!r}: expected HOST:PORT (e.g. 10.0.0.5:6380)")
    secret = secret or connect.find_secret(address)
    if not secret:
        raise AddressError(
            f"no secret for the cluster at {address}: pass rayjupyter://SECRET@{address} "
            f"(printed by `rayjupyter start --head`) or set {SECRET_ENV}"
        )
    return address, secret


def resolve(address: str | None) -> tuple[str, str]:
    """(host:port, secret) of ``address``, or of the cluster found when it is None/"auto"
    (never a new local cluster: there is nothing to look at in one)."""
    try:
        found = connect.resolve("auto" if address is None else address)
    except ConnectionError:
        found = None
    if not found:
        raise AddressError(
            "no cluster to connect to: start one with `rayjupyter start --head`, or give its "
            "address (rayjupyter://SECRET@HOST:PORT, or set RAYJUPYTER_ADDRESS)"
        )
    return split(found)


def observer(address: str | None, timeout: float = 8.0, io_thread: bool = False) -> Client:
    """A connection that reads and asks, never runs work (a dashboard's, the CLI's);
    ``io_thread`` for one kept open a while (it sends heartbeats)."""
    from rayjupyter.core.client import Client
    from rayjupyter.core.exceptions import ClusterConnectionError

    hostport, secret = resolve(address)
    try:
        return Client(hostport, secret, kind="observer", timeout=timeout, io_thread=io_thread)
    except ClusterConnectionError as exc:
        raise ConnectionError(str(exc)) from None
