"""``serve.start/run/status/delete/shutdown`` and the handle getters: the driver's side.

Everything goes through the controller actor (named, detached, in the ``serve``
namespace), so any driver or task of the cluster sees the same applications. ``serve.run``
returns once the application is RUNNING, and raises with the constructor's error if a
deployment cannot start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import rayjupyter as rj
from rayjupyter.serve import replica as replica_module
from rayjupyter.serve.config import HTTPOptions
from rayjupyter.serve.controller import ServeController
from rayjupyter.serve.deployment import Application, flatten
from rayjupyter.serve.handle import (
    CONTROLLER_NAME,
    SERVE_NAMESPACE,
    DeploymentHandle,
    forget_routers,
)

_DEPLOY_TIMEOUT_S = 300.0


class RayServeException(RuntimeError):
    """A Serve call failed: an application that does not exist, a failed deployment."""


def _get_controller() -> Any | None:
    if not rj.is_initialized():
        return None
    try:
        return rj.get_actor(CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return None


def _controller_or_raise() -> Any:
    controller = _get_controller()
    if controller is None:
        raise RayServeException("serve is not running: call serve.start() or serve.run(app)")
    return controller


def start(http_options: dict[str, Any] | HTTPOptions | None = None, **unsupported: Any) -> str:
    """Start the controller and the HTTP proxy (loopback, port 8000 unless
    ``http_options`` says otherwise; port 0 picks a free one); returns the proxy's URL.

    Starts rayjupyter (``rj.init()``) if it is not running, as Ray Serve does."""
    if unsupported:
        raise ValueError(f"serve.start does not take {sorted(unsupported)}; valid: http_options")
    options = HTTPOptions.from_user(http_options)
    if not rj.is_initialized():
        rj.init()
    controller = _get_controller()
    if controller is None:
        forget_routers()  # any left from a cluster before this one
        controller = (
            rj.remote(ServeController)
            .options(
                name=CONTROLLER_NAME,
                namespace=SERVE_NAMESPACE,
                lifetime="detached",
                num_cpus=0,
                max_concurrency=1000,
            )
            .remote()
        )
    return str(rj.get(controller.start_proxy.remote(options), timeout=60))


def run(
    target: Application,
    blocking: bool = False,
    name: str = "default",
    route_prefix: str | None = "/",
    **unsupported: Any,
) -> DeploymentHandle:
    """Deploy (or update) the application ``name``; returns a handle to its ingress."""
    if unsupported:
        raise ValueError(
            f"serve.run does not take {sorted(unsupported)}; valid: blocking, name, route_prefix"
        )
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if route_prefix is not None and (
        not isinstance(route_prefix, str) or not route_prefix.startswith("/")
    ):
        raise ValueError(f"route_prefix must start with '/', got {route_prefix!r}")
    specs = flatten(target, lambda dep: DeploymentHandle(dep, name))
    controller = _get_controller()
    if controller is None or rj.get(controller.status.remote(), timeout=30)["proxy_url"] is None:
        start()
        controller = _controller_or_raise()
    rj.get(controller.deploy_app.remote(name, route_prefix, specs), timeout=60)
    status, message = rj.get(
        controller.wait_app.remote(name, _DEPLOY_TIMEOUT_S), timeout=_DEPLOY_TIMEOUT_S + 10
    )
    if status == "DEPLOY_FAILED":
        raise RayServeException(f"application {name!r} failed to deploy: {message}")
    ingress = next(spec.name for spec in specs if spec.is_ingress)
    handle = DeploymentHandle(ingress, name)
    _show_url(name, route_prefix)
    if blocking:
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return handle


def _show_url(name: str, route_prefix: str | None) -> None:
    """In a notebook, show where the application answers (through Jupyter's proxy when
    the server extension is there)."""
    try:
        from rayjupyter.serve.display import show_application
    except ImportError:
        return
    show_application(name, route_prefix)


def delete(name: str, _blocking: bool = True) -> None:
    """Delete the application ``name`` and its replicas; no error if there is none."""
    controller = _get_controller()
    if controller is None:
        return
    ref = controller.delete_app.remote(name, 60.0)
    if _blocking:
        rj.get(ref, timeout=70)
    forget_routers(name)


def shutdown() -> None:
    """Delete every application, stop the proxy and the controller."""
    controller = _get_controller()
    forget_routers()
    if controller is None:
        return
    try:
        rj.get(controller.shutdown.remote(30.0), timeout=40)
    finally:
        rj.kill(controller)
    deadline = time.monotonic() + 10.0  # the name is free once the kill is through
    while _get_controller() is not None and time.monotonic() < deadline:
        time.sleep(0.01)


@dataclass
class DeploymentStatusOverview:
    name: str
    status: str
    replica_states: dict[str, int]
    message: str = ""
    target_replicas: int = 0
    ongoing_requests: int = 0


@dataclass
class ApplicationStatusOverview:
    status: str
    message: str
    last_deployed_time_s: float
    route_prefix: str | None
    deployments: dict[str, DeploymentStatusOverview] = field(default_factory=dict)


@dataclass
class ServeStatus:
    """``serve.status()``: every application and its deployments; a table in a notebook."""

    applications: dict[str, ApplicationStatusOverview] = field(default_factory=dict)
    proxy_url: str | None = None
    proxies: dict[str, str] = field(default_factory=dict)  # node -> status, as in Ray

    def rows(self) -> list[tuple[str, str, str, str, str, int]]:
        found = []
        for app_name, app in self.applications.items():
            for dep in app.deployments.values():
                states = ", ".join(f"{k}: {v}" for k, v in sorted(dep.replica_states.items()))
                found.append(
                    (app_name, app.status, dep.name, dep.status, states, dep.ongoing_requests)
                )
        return found

    def __str__(self) -> str:
        header = ("application", "app status", "deployment", "status", "replicas", "ongoing")
        rows = [header, *[tuple(str(c) for c in row) for row in self.rows()]]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape

        head = "".join(
            f"<th>{h}</th>"
            for h in ("application", "app status", "deployment", "status", "replicas", "ongoing")
        )
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>"
            for row in self.rows()
        )
        url = f"<p>HTTP: <code>{escape(self.proxy_url)}</code></p>" if self.proxy_url else ""
        return (
            "<div class='rj-serve-status'>"
            + url
            + "<table><thead><tr>"
            + head
            + "</tr></thead><tbody>"
            + body
            + "</tbody></table></div>"
        )


def status() -> ServeStatus:
    controller = _get_controller()
    if controller is None:
        return ServeStatus()
    raw = rj.get(controller.status.remote(), timeout=30)
    apps = {}
    for app_name, app in raw["applications"].items():
        deployments = {
            name: DeploymentStatusOverview(
                name,
                dep["status"],
                dep["replica_states"],
                dep["message"],
                dep["target_replicas"],
                dep["ongoing_requests"],
            )
            for name, dep in app["deployments"].items()
        }
        apps[app_name] = ApplicationStatusOverview(
            app["status"],
            app["message"],
            app["last_deployed_time_s"],
            app["route_prefix"],
            deployments,
        )
    proxies = {"head": "HEALTHY"} if raw["proxy_url"] else {}
    return ServeStatus(apps, raw["proxy_url"], proxies)


def _status_raw() -> dict[str, Any]:
    return dict(rj.get(_controller_or_raise().status.remote(), timeout=30))


def get_app_handle(name: str) -> DeploymentHandle:
    """A handle to application ``name``'s ingress deployment."""
    ingress = rj.get(_controller_or_raise().app_ingress.remote(name), timeout=30)
    if ingress is None:
        raise RayServeException(f"there is no application named {name!r}")
    return DeploymentHandle(ingress, name)


def get_deployment_handle(deployment_name: str, app_name: str | None = None) -> DeploymentHandle:
    """A handle to one deployment; ``app_name`` defaults to the calling replica's
    application, else ``"default"``."""
    if app_name is None:
        context = replica_module._CONTEXT
        app_name = context.app_name if context is not None else "default"
    exists = rj.get(
        _controller_or_raise().deployment_exists.remote(app_name, deployment_name), timeout=30
    )
    if not exists:
        raise RayServeException(
            f"there is no deployment {deployment_name!r} in application {app_name!r}"
        )
    return DeploymentHandle(deployment_name, app_name)
