"""Where parts outside core plug into it, so core imports none of them.

``core/`` must never import ``dashboard/``, ``notebook/``, ``server/``, ``util/`` or
``cli.py`` (a test parses every import of core to check it). Where core needs one of them
(``rj.init(include_dashboard=True)`` starts a dashboard), it calls a hook here that the
package root (``rayjupyter/__init__.py``) fills with a function importing that part only
when called.
"""

from __future__ import annotations

from typing import Protocol


class RunningDashboard(Protocol):
    """What core needs of a started dashboard process."""

    def page_url(self, page: str = "overview", *, with_token: bool = True) -> str: ...

    def running(self) -> bool: ...

    def stop(self, timeout: float = 10.0) -> None: ...


class DashboardStarter(Protocol):
    """Starts a dashboard for the cluster at ``connect_address`` and waits until it listens."""

    def __call__(self, connect_address: str, *, host: str, port: int) -> RunningDashboard: ...


_dashboard_starter: list[DashboardStarter] = []


def register_dashboard(starter: DashboardStarter) -> None:
    """Install the function that starts dashboards (the last one registered wins)."""
    _dashboard_starter[:] = [starter]


def start_dashboard(connect_address: str, *, host: str, port: int) -> RunningDashboard:
    """Start a dashboard through the registered starter."""
    if not _dashboard_starter:
        raise RuntimeError(
            "include_dashboard=True needs rayjupyter's dashboard, which is not registered: "
            "import rayjupyter (not only rayjupyter.core) before rj.init()."
        )
    return _dashboard_starter[0](connect_address, host=host, port=port)
