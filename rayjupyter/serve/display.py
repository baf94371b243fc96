"""In a notebook, ``serve.run`` shows where the application answers.

The proxy listens on the kernel's machine. Behind JupyterHub (or any remote Jupyter) that
address is not the browser's, so when jupyter-server-proxy is installed the link goes
through the Jupyter server (``{base_url}proxy/{port}/...``), which carries the user's
login; the direct address is shown too, for code running beside the kernel.
"""

from __future__ import annotations

import importlib.util
import os
from html import escape
from urllib.parse import urlsplit


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


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


def show_application(name: str, route_prefix: str | None) -> None:
    if not _in_kernel():
        return
    link = application_link(name, route_prefix)
    if link is not None:
        from IPython.display import display

        display(link)  # type: ignore[no-untyped-call]


__all__ = ["ApplicationLink", "application_link", "proxied_url", "show_application"]
