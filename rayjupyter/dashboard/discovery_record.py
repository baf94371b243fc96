"""The dashboard's entry in a local cluster's discovery file (rayjupyter.core.discovery),
so the Jupyter server extension and the CLI find a running dashboard."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from rayjupyter.core import discovery


def register(session: str, hostport: str, url: str) -> bool:
    """Record ``dashboard_url`` (no token: the file's readers hold the secret) and
    ``dashboard_pid`` if the cluster is local and no other dashboard of it is recorded
    and alive (the first one stays the cluster's dashboard); True if recorded."""
    info = _local_record(session, hostport)
    if info is None:
        return False
    other = info.get("dashboard_pid")
    if info.get("dashboard_url") and other and _alive(int(other)):
        return False
    discovery.update_cluster_file(session, dashboard_url=url, dashboard_pid=os.getpid())
    return True


def _local_record(session: str, hostport: str) -> dict[str, Any] | None:
    """The discovery record of the cluster we reach, if it is one of this machine and user."""
    info = discovery.read_cluster_file(session)
    port = hostport.rpartition(":")[2]
    if info is None or str(info.get("address", "")).rpartition(":")[2] != port:
        return None
    return info


def node_liveness(session: str, hostport: str) -> Callable[[], str | None] | None:
    """For a local cluster, a check that its node process still runs (the client's
    ``liveness``): the dashboard then stops within a second of the cluster, rather than
    after the client's silence limit."""
    info = _local_record(session, hostport)
    pid = int(info.get("pid") or 0) if info else 0
    if not pid:
        return None

    def check() -> str | None:
        return None if _alive(pid) else f"the cluster's node (pid {pid}) has exited"

    return check


def _alive(pid: int) -> bool:
    """True while pid runs; an exited process that nobody has reaped yet counts as gone."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def unregister(session: str, url: str) -> None:
    """Clear the entry, unless another dashboard has recorded itself since."""
    info = discovery.read_cluster_file(session)
    if info is not None and info.get("dashboard_url") == url:
        discovery.update_cluster_file(session, dashboard_url=None, dashboard_pid=None)
