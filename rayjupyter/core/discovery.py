"""Where running clusters on this machine can be found by other programs of the same user.

Every node writes ``cluster.json`` (mode 0600) into its session folder when it starts, and
the folder is removed when it stops. The Jupyter server extension lists local clusters from
these files, and a dashboard records its URL in them, so nothing needs a registry process.

A node that is killed (SIGKILL, OOM) cannot remove its folder, which holds a copy of the
cluster's secret, nor its shared-memory objects. Whoever can does it instead: the driver
or CLI that started it (``remove_session``), and otherwise the next node that starts on
this machine (``remove_stale_sessions``), which removes the folders whose node is gone.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from typing import Any

from rayjupyter.core.config import session_dir

CLUSTER_FILE = "cluster.json"
SESSIONS_ROOT = "/tmp/rayjupyter"


def cluster_file(session: str) -> str:
    return os.path.join(session_dir(session), CLUSTER_FILE)


def write_cluster_file(session: str, info: dict[str, Any]) -> None:
    """Write (or replace) a session's record atomically, readable by its user only."""
    path = cluster_file(session)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)


def update_cluster_file(session: str, **fields: Any) -> None:
    """Add fields to a session's record (e.g. ``dashboard_url``); no-op if it is gone."""
    info = read_cluster_file(session)
    if info is not None:
        info.update(fields)
        write_cluster_file(session, info)


def read_cluster_file(session: str) -> dict[str, Any] | None:
    try:
        with open(cluster_file(session)) as f:
            info: dict[str, Any] = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError):
        return None
    return info


def _alive(pid: int) -> bool:
    """pid runs; a zombie does not (a killed node whose parent died before reaping it
    waits as one until its new parent, perhaps a subreaper that never reaps, collects it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no /proc to ask: it answered the signal, so it is there
    return state not in (b"Z", b"X")


def list_local_clusters() -> list[dict[str, Any]]:
    """Records of the live clusters of this user on this machine, oldest first.

    Each record has: session, address (host:port), connect_address
    (``rayjupyter://SECRET@host:port``), pid (the node), owner_pid (the driver that started
    it, 0 if none), started (unix time), num_cpus, num_gpus, and dashboard_url once a
    dashboard runs. Records of nodes that died without cleaning up, and of nodes that joined
    another head, are skipped.
    """
    found = []
    for path in glob.glob(os.path.join(SESSIONS_ROOT, "*", CLUSTER_FILE)):
        with contextlib.suppress(OSError):
            if os.stat(path).st_uid != os.getuid():
                continue
        info = read_cluster_file(os.path.basename(os.path.dirname(path)))
        if info is None or info.get("head_address"):
            continue  # a node that joined another cluster's head is part of that cluster
        if _alive(int(info.get("pid", 0))):
            found.append(info)
    return sorted(found, key=lambda info: info.get("started", 0.0))


def remove_session(session: str) -> None:
    """Remove what a stopped node leaves: its session folder and its shared-memory files."""
    shutil.rmtree(session_dir(session), ignore_errors=True)
    for path in glob.glob(f"/dev/shm/rj-{session}-*"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _is_node(pid: int) -> bool:
    """pid runs a node daemon (not a recycled pid now running something else)."""
    if not _alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return True  # cannot tell (another user's process, no /proc): leave it alone
    return b"rayjupyter.core.node" in cmdline


def remove_stale_sessions(keep: str = "") -> list[str]:
    """Remove the sessions of this user's nodes that died without cleaning up; their names.

    Only a folder with a record whose node is gone is touched: a node still starting has
    no record yet, and a live node keeps its folder whatever happened to its record.
    """
    removed = []
    for path in glob.glob(os.path.join(SESSIONS_ROOT, "*", CLUSTER_FILE)):
        session = os.path.basename(os.path.dirname(path))
        try:
            if session == keep or os.stat(path).st_uid != os.getuid():
                continue
        except OSError:
            continue
        info = read_cluster_file(session)
        if info is None:
            continue  # being written or removed right now
        try:
            pid = int(info.get("pid", 0))
        except (TypeError, ValueError):
            continue
        if pid > 0 and not _is_node(pid):
            remove_session(session)
            removed.append(session)
    return removed
