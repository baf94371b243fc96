"""Connect the kernel to a cluster for ``%ray_connect``: idempotent, switching cleanly, and
failing fast with one line when nothing listens at the address."""

from __future__ import annotations

import os
import socket
from typing import Any

from IPython.core.error import UsageError

from rayjupyter.core import connect as addresses
from rayjupyter.core.exceptions import ClusterConnectionError

PROBE_TIMEOUT_S = 3.0  # an address that does not answer a TCP connect in this long is wrong


class ConnectError(ClusterConnectionError):
    """%ray_connect failed; shown as its one line (which names the fix), not a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def host_port(address: str) -> str:
    """'rayjupyter://SECRET@host:port' or 'host:port' -> 'host:port'."""
    from rayjupyter.core.api import ADDRESS_SCHEME

    if address.startswith(ADDRESS_SCHEME):
        address = address[len(ADDRESS_SCHEME) :].rpartition("@")[2]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(
            f"%ray_connect: bad address {address!r}; expected HOST:PORT (its secret is found "
            f"on this machine), 'auto', or rayjupyter://SECRET@HOST:PORT"
        )
    return f"{host}:{port}"


def probe(hostport: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in seconds, with the fix, when nothing accepts connections at hostport."""
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConnectError(
            f"No rayjupyter cluster at {hostport} ({reason}): start one there with "
            f"`rayjupyter start --head`, or check the address; %ray_connect with no address "
            f"starts a local cluster."
        ) from None


def connect(
    address: str | None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    object_store_memory: int | None = None,
    namespace: str | None = None,
) -> tuple[Any, str]:
    """The connected ClusterContext and a note on what happened ('' when nothing did)."""
    from rayjupyter.core import api

    current = api._state["context"]
    local_options = {
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "object_store_memory": object_store_memory,
    }
    if address == "auto":  # as rj.init: the environment's address, or a head started here
        try:
            address = addresses.resolve("auto")
        except ConnectionError as exc:
            raise ConnectError(str(exc)) from None
    if address is None:
        if current is not None:
            _check_same_shape(local_options, namespace)
            return current, ""
        try:
            # a local cluster of this kernel's own (unlike rj.init(), even when a head runs
            # here), unless the environment names a cluster
            context = api.init(
                address=_environment_address() or "local",
                namespace=namespace,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                object_store_memory=object_store_memory,
            )
        except ValueError as exc:
            raise UsageError(f"%ray_connect: {exc}") from None
        return context, ""
    given = [f"--{k.replace('_', '-')}" for k, v in local_options.items() if v is not None]
    if given:
        raise UsageError(
            f"%ray_connect: {', '.join(given)} only apply to a local cluster (no address); "
            f"a running cluster keeps the resources it was started with"
        )
    target = host_port(address)
    if current is not None and current.address == target:
        _check_same_shape({}, namespace)
        return current, ""
    probe(target)
    try:  # its secret, found before leaving the cluster we are on
        api._parse_address(address)
    except ValueError as exc:
        raise UsageError(f"%ray_connect: {exc}") from None
    note = ""
    if current is not None:
        kind = "stopped the local cluster" if current.local else "disconnected"
        note = f"Switched from {current.address} ({kind}) to {target}."
        api.shutdown()
    try:
        context = api.init(address=address, namespace=namespace)
    except ValueError as exc:
        raise UsageError(f"%ray_connect: {exc}") from None
    except ClusterConnectionError as exc:
        raise ConnectError(str(exc)) from None
    return context, note


def _environment_address() -> str | None:
    for name in addresses.ADDRESS_ENVS:
        value = os.environ.get(name, "").strip()
        if value and value != "auto":
            return value
    return None


def _check_same_shape(options: dict[str, Any], namespace: str | None) -> None:
    """Asking again with other resources or namespace must not silently keep the old ones."""
    from rayjupyter.core import api

    client = api._state["client"]
    if namespace is not None and client is not None and client.namespace != namespace:
        raise UsageError(
            f"%ray_connect: already connected in namespace {client.namespace!r}; run "
            f"%ray_disconnect first to connect in {namespace!r}"
        )
    if not any(v is not None for v in options.values()):
        return
    total = api.cluster_resources()
    have = {
        "num_cpus": total.get("CPU", 0.0),
        "num_gpus": total.get("GPU", 0.0),
        "object_store_memory": total.get("object_store_memory", 0.0),
    }
    for key, wanted in options.items():
        if wanted is not None and float(wanted) != float(have[key]):
            flag = f"--{key.replace('_', '-')}"
            raise UsageError(
                f"%ray_connect: already connected to a cluster with {flag} {have[key]:g}; run "
                f"%ray_disconnect first to start one with {flag} {wanted:g}"
            )


def disconnect() -> str:
    """Leave the cluster (a local one stops); a line saying what happened."""
    from rayjupyter.core import api

    current = api._state["context"]
    if current is None:
        return "Not connected to a cluster."
    api.shutdown()
    if current.local:
        return f"Stopped the local cluster at {current.address}."
    return f"Disconnected from the cluster at {current.address} (it keeps running)."
