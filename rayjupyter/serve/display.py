"""In a notebook, ``serve.run`` shows where the application answers, and a live view.

The live view is a model plus a view: ``MetricsModel`` turns the controller's snapshots
(each deployment's replicas, ongoing and completed requests, recent latencies) into rows
with requests per second and p50/p99 (pure, tested with numbers); ``LiveView`` polls the
controller every second on the notebook's ticker thread and renders the rows as an HTML
table in an ipywidget, until serve shuts down.

The proxy listens on the kernel's machine. Behind JupyterHub (or any remote Jupyter) that
address is not the browser's, so when jupyter-server-proxy is installed the link goes
through the Jupyter server (``{base_url}proxy/{port}/...``), which carries the user's
login; the direct address is shown too, for code running beside the kernel.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import urlsplit

from rayjupyter.notebook.kernel import in_kernel


def proxied_url(direct: str, route_prefix: str, base_url: str | None) -> str | None:
    """The address through Jupyter's own server, if jupyter-server-proxy can carry it."""
    if base_url is None or importlib.util.find_spec("jupyter_server_proxy") is None:
        return None
    port = urlsplit(direct).port
    return f"{base_url.rstrip('/')}/proxy/{port}{route_prefix if route_prefix != '/' else '/'}"


class ApplicationLink:
    """What ``serve.run`` displays: the application's name and its URLs."""

    def __init__(self, name: str, direct: str, proxied: str | None) -> None:
        self.name, self.direct, self.proxied = name, direct, proxied

    def __repr__(self) -> str:
        extra = f" (through Jupyter: {self.proxied})" if self.proxied else ""
        return f"Application {self.name!r} is ready at {self.direct}{extra}"

    def _repr_html_(self) -> str:
        link = self.proxied or self.direct
        rows = f"<a href='{escape(link)}' target='_blank'>{escape(link)}</a>"
        if self.proxied:
            muted = "color: var(--jp-ui-font-color2)"
            rows += f" <span style='{muted}'>(direct: {escape(self.direct)})</span>"
        return f"<div>Application <b>{escape(self.name)}</b> is ready at {rows}</div>"


def application_link(name: str, route_prefix: str | None) -> ApplicationLink | None:
    from rayjupyter.serve import api

    if route_prefix is None:
        return None
    proxy_url = api.status().proxy_url
    if proxy_url is None:
        return None
    direct = proxy_url.rstrip("/") + (route_prefix if route_prefix != "/" else "/")
    base = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    return ApplicationLink(name, direct, proxied_url(proxy_url, route_prefix, base))


@dataclass(frozen=True)
class DeploymentRow:
    app: str
    deployment: str
    status: str
    replicas: int
    target: int
    ongoing: int
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


class MetricsModel:
    """Snapshots in, rows out: requests/s from the change of the completed count between
    two snapshots (never below 0: a replica that went away takes its count with it)."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], tuple[float, int]] = {}

    def update(self, snapshot: dict[str, Any]) -> list[DeploymentRow]:
        now = float(snapshot["time"])
        rows = []
        for app, deployments in sorted(snapshot["deployments"].items()):
            for name, d in sorted(deployments.items()):
                key = (app, name)
                before = self.last.get(key)
                self.last[key] = (now, int(d["completed"]))
                rate = 0.0
                if before is not None and now > before[0]:
                    rate = max(0.0, (d["completed"] - before[1]) / (now - before[0]))
                ordered = sorted(d["latencies"])
                rows.append(
                    DeploymentRow(
                        app,
                        name,
                        d["status"],
                        d["replicas"],
                        d["target"],
                        d["ongoing"],
                        rate,
                        1000 * statistics.median(ordered) if ordered else None,
                        1000 * _percentile(ordered, 0.99) if ordered else None,
                    )
                )
        return rows


def render_rows(rows: list[DeploymentRow]) -> str:
    """The rows as an HTML table in JupyterLab's colours."""
    head = ("application", "deployment", "status", "replicas", "ongoing", "req/s", "p50 ms",
            "p99 ms")  # fmt: skip

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    cells = [
        (
            r.app,
            r.deployment,
            r.status,
            f"{r.replicas}/{r.target}",
            str(r.ongoing),
            f"{r.requests_per_s:.1f}",
            ms(r.p50_ms),
            ms(r.p99_ms),
        )
        for r in rows
    ]
    style = "padding: 2px 8px; border-bottom: 1px solid var(--jp-border-color2)"
    header = "".join(f"<th style='{style}'>{h}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td style='{style}'>{escape(c)}</td>" for c in row) + "</tr>"
        for row in cells
    )
    return (
        "<table style='color: var(--jp-ui-font-color1); border-collapse: collapse'>"
        f"<thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"
    )


LIVE_INTERVAL_S = 1.0
LATENCY_WINDOW_S = 10.0


class LiveView:
    """An HTML widget refreshed every second from the controller, until serve stops."""

    def __init__(self) -> None:
        import ipywidgets

        self.model = MetricsModel()
        self.widget = ipywidgets.HTML()
        self.job: Any = None

    def refresh(self) -> bool:
        """One poll; False (the ticker stops) once serve is gone."""
        from rayjupyter.serve import api

        controller = api._get_controller()
        if controller is None:
            self.widget.value += "<p>serve has shut down</p>"
            return False
        try:
            import rayjupyter as rj

            snapshot = rj.get(controller.metrics.remote(LATENCY_WINDOW_S), timeout=5)
        except Exception:  # the controller went away between the two calls
            return False
        self.widget.value = render_rows(self.model.update(snapshot))
        return True

    def start(self) -> None:
        from rayjupyter.notebook.ticker import TICKER

        self.refresh()
        self.job = TICKER.every(LIVE_INTERVAL_S, self.refresh)


_LIVE: LiveView | None = None


def show_application(name: str, route_prefix: str | None) -> None:
    """The link and (once per kernel: it shows every application) the live view."""
    global _LIVE
    if not in_kernel():
        return
    from IPython.display import display

    link = application_link(name, route_prefix)
    if link is not None:
        display(link)  # type: ignore[no-untyped-call]
    try:
        if _LIVE is not None and _LIVE.job is not None and not _LIVE.job.cancelled:
            _LIVE.job.cancel()  # the newest cell's view replaces the older one
        _LIVE = LiveView()
        _LIVE.start()
        display(_LIVE.widget)  # type: ignore[no-untyped-call]
    except ImportError:  # no ipywidgets: the link and serve.status() still work
        _LIVE = None


__all__ = [
    "ApplicationLink",
    "LiveView",
    "MetricsModel",
    "application_link",
    "proxied_url",
    "render_rows",
    "show_application",
]
