"""The cluster's web dashboard: bokeh pages and a JSON API under ``/api/v0/``, served by
one process per cluster that is a client ("observer") of the cluster, started on demand.

``start_dashboard(connect_address)`` (launch.py) starts one; ``python -m
rayjupyter.dashboard`` is the process; README.md documents the pages and the API. Nothing
here is imported by core: a cluster nobody looks at pays nothing for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rayjupyter.dashboard.launch import DashboardProcess, start_dashboard

__all__ = ["DashboardProcess", "dashboard_token", "start_dashboard"]


def __getattr__(name: str) -> Any:
    """Lazy: importing the package must not import tornado or bokeh."""
    if name in ("DashboardProcess", "start_dashboard"):
        from rayjupyter.dashboard import launch

        return getattr(launch, name)
    if name == "dashboard_token":
        from rayjupyter.dashboard.auth import dashboard_token

        return dashboard_token
    raise AttributeError(f"module 'rayjupyter.dashboard' has no attribute {name!r}")
