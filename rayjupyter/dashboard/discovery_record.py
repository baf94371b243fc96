"""The dashboard's entry in a local cluster's discovery file (rayjupyter.core.discovery),
so the Jupyter server extension and the CLI find a running dashboard."""

from __future__ import annotations

import os

from rayjupyter.core import discovery


def register(session: str, hostport: str, url: str) -> bool:
    """Record ``dashboard_url`` (no token: the file's readers hold the secret) and
    ``dashboard_pid`` if the cluster is local and no other dashboard of it is recorded
    and alive (the first one stays the cluster's dashboard); True if recorded."""
    info = discovery.read_cluster_file(session)
    port = hostport.rpartition(":")[2]
    if info is None or str(info.get("address", "")).rpartition(":")[2] != port:
        return False  # not a cluster of this machine and user (or not the one we reach)
    other = info.get("dashboard_pid")
    if info.get("dashboard_url") and other and _alive(int(other)):
        return False
    discovery.update_cluster_file(session, dashboard_url=url, dashboard_pid=os.getpid())
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unregister(session: str, url: str) -> None:
    """Clear the entry, unless another dashboard has recorded itself since."""
    info = discovery.read_cluster_file(session)
    if info is not None and info.get("dashboard_url") == url:
        discovery.update_cluster_file(session, dashboard_url=None, dashboard_pid=None)
