"""Where a cluster is and its secret, from what a user gives: one place for the CLI, the
state API and the Jobs client.

Accepted, as Ray accepts its addresses: ``rayjupyter://SECRET@HOST:PORT``; ``HOST:PORT``
with the secret in ``RAYJUPYTER_SECRET`` or in ``~/.rayjupyter/cluster.json`` (written by
``rayjupyter start --head`` on this machine, 0600); ``"auto"`` or nothing, for the cluster
named by ``RAYJUPYTER_ADDRESS`` / ``RAY_ADDRESS`` or else the head started on this machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayjupyter.core.config import SECRET_ENV

if TYPE_CHECKING:
    from rayjupyter.core.client import Client

ADDRESS_SCHEME = "rayjupyter://"
ADDRESS_ENVS = ("RAYJUPYTER_ADDRESS", "RAY_ADDRESS")


class AddressError(ValueError):
    """No usable address or secret: the message names the fix."""


def state_dir() -> Path:
    """Where this user's cluster file and the records of started nodes live."""
    return Path(os.environ.get("RAYJUPYTER_HOME", Path.home() / ".rayjupyter"))


def cluster_file() -> Path:
    return state_dir() / "cluster.json"


def read_cluster_file() -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(cluster_file().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data


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
    secret = secret or os.environ.get(SECRET_ENV, "")
    if not secret:
        saved = read_cluster_file()
        if saved and saved.get("address") == address:
            secret = str(saved["secret"])
    if not secret:
        raise AddressError(
            f"no secret for the cluster at {address}: pass rayjupyter://SECRET@{address} "
            f"(printed by `rayjupyter start --head`) or set {SECRET_ENV}"
        )
    return address, secret


def resolve(address: str | None) -> tuple[str, str]:
    """(host:port, secret) of ``address``, or of the cluster found when it is None/"auto"."""
    if address and address != "auto":
        return split(address)
    for name in ADDRESS_ENVS:
        if os.environ.get(name) and os.environ[name] != "auto":
            return split(os.environ[name])
    saved = read_cluster_file()
    if saved is None:
        raise AddressError(
            "no cluster to connect to: start one with `rayjupyter start --head`, or give its "
            "address (rayjupyter://SECRET@HOST:PORT, or set RAYJUPYTER_ADDRESS)"
        )
    return str(saved["address"]), str(saved["secret"])


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
