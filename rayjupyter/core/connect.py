"""Where ``init()`` connects, and with which secret, as Ray users expect.

The address, in Ray's order: a concrete ``address=`` argument; for ``None`` or ``"auto"``
the environment (``RAYJUPYTER_ADDRESS``, then ``RAY_ADDRESS`` for ported code); then a
head started on this machine with ``rayjupyter start --head`` (the cluster file in
``$RAYJUPYTER_HOME``, ``~/.rayjupyter`` by default, naming a head that is alive). With
none of these, ``None`` starts a local cluster and ``"auto"`` fails; ``"local"`` always
starts one.

The secret of a ``HOST:PORT`` given without one is looked up where this user's own
programs left it, never typed or pasted into a notebook: ``RAYJUPYTER_SECRET``, the head's
cluster file, the records of the clusters running on this machine (``discovery``), and
the clusters the Jupyter server was given by address (``known_clusters.json``, written
by the server extension). Every file read is the user's own, mode 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from rayjupyter.core import discovery
from rayjupyter.core.config import ADDRESS_ENVS as ADDRESS_ENVS  # (re-exported)
from rayjupyter.core.config import ADDRESS_SCHEME as ADDRESS_SCHEME
from rayjupyter.core.config import SECRET_ENV

HOME_ENV = "RAYJUPYTER_HOME"
KNOWN_FILE = "known_clusters.json"
MAX_KNOWN = 256  # clusters the Jupyter server remembers by address; the oldest go first


def state_dir() -> Path:
    """This user's rayjupyter folder: the head's cluster file and the known secrets."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".rayjupyter")


def head_file() -> Path:
    """What ``rayjupyter start --head`` writes: ``{"address": ..., "secret": ...}``."""
    return state_dir() / "cluster.json"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=1)
    os.replace(tmp, path)


def live_head() -> str | None:
    """``rayjupyter://SECRET@HOST:PORT`` of the head this user started here, if it runs.

    Only the head named in this user's cluster file counts: a cluster some other program
    started (a test's, another user's) is never attached to by accident.
    """
    saved = _read_json(head_file())
    if not saved or not saved.get("address") or not saved.get("secret"):
        return None
    address = f"{ADDRESS_SCHEME}{saved['secret']}@{saved['address']}"
    for record in discovery.list_local_clusters():
        if record.get("connect_address") == address:
            return address
    return None


def resolve(address: str | None) -> str | None:
    """The address to attach to, or None to start a local cluster (see the module's doc).

    Raises ConnectionError for ``"auto"`` when no cluster is found, as Ray does.
    """
    if address not in (None, "auto"):
        return None if address == "local" else address
    for name in ADDRESS_ENVS:
        value = os.environ.get(name, "").strip()
        if value and value != "auto":
            return None if value == "local" else value
    head = live_head()
    if head is None and address == "auto":
        raise ConnectionError(
            f"address='auto': no cluster found on this machine (no live head in {head_file()}, "
            f"and {' / '.join(ADDRESS_ENVS)} unset). Start one with `rayjupyter start --head`, "
            f"or call init() with no address to start a local cluster."
        )
    return head


def find_secret(hostport: str) -> str:
    """The secret of the cluster at ``HOST:PORT``, from where this user's programs keep it;
    "" when none is known."""
    secret = os.environ.get(SECRET_ENV, "")
    if secret:
        return secret
    saved = _read_json(head_file())
    if saved and saved.get("address") == hostport and saved.get("secret"):
        return str(saved["secret"])
    for record in discovery.list_local_clusters():
        if record.get("address") == hostport:
            found = str(record.get("connect_address", ""))
            if found.startswith(ADDRESS_SCHEME) and "@" in found:
                return found[len(ADDRESS_SCHEME) :].rpartition("@")[0]
    known = _read_json(state_dir() / KNOWN_FILE) or {}
    return str(known.get(hostport, ""))


def remember_secret(hostport: str, secret: str) -> None:
    """Keep a cluster's secret for this user's kernels (the Jupyter server, when a cluster
    is added by address): ``%ray_connect HOST:PORT`` then needs no secret in the notebook."""
    path = state_dir() / KNOWN_FILE
    known = _read_json(path) or {}
    known.pop(hostport, None)
    known[hostport] = secret
    while len(known) > MAX_KNOWN:
        known.pop(next(iter(known)))
    _write_private(path, known)


def forget_secret(hostport: str) -> None:
    path = state_dir() / KNOWN_FILE
    known = _read_json(path)
    if known is not None and known.pop(hostport, None) is not None:
        with contextlib.suppress(OSError):
            _write_private(path, known)
