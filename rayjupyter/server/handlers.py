"""The REST API under ``{base_url}rayjupyter/api/``: thin authenticated and authorized
handlers over ClusterService. Every error is a JSON ErrorReply with one line; tracebacks go
to the log. Each route needs an action on the resource ``rayjupyter`` (``authz.py``), and
a connect address (it holds the cluster's secret) goes only to users who may run code.

    GET    clusters                  ClusterList
    POST   clusters  {num_cpus?}     ClusterInfo of a new local cluster (201)
    POST   clusters  {address}       ClusterInfo of a cluster added by address (201): ours,
                                     or Ray's (ray://HOST:10001, http://HOST:8265)
    GET    clusters/<id>             ClusterInfo
    DELETE clusters/<id>             stop (started here) or forget (remote); 409 otherwise
    GET    kernels/<id>/cluster      KernelCluster, for the status bar
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.base.handlers import APIHandler, JupyterHandler
from tornado import web

from rayjupyter.server.authz import (
    AUTH_RESOURCE,
    kernel_cluster_without_secret,
    may_run_code,
    requires,
    without_secret,
)
from rayjupyter.server.dashboards import dashboard_pages
from rayjupyter.server.errors import ClusterError
from rayjupyter.server.models import ClusterInfo, ClusterList, ErrorReply, StopReply
from rayjupyter.server.ray_clusters import RAY_DASHBOARD_PAGES
from rayjupyter.server.service import ClusterService

INTERNAL_ERROR = (
    "Internal error in the rayjupyter server extension; the Jupyter server log has the details."
)


def error_body(message: str, reason: str | None) -> str:
    body: ErrorReply = {"message": message, "reason": reason}
    return json.dumps(body)


def error_message(exc: BaseException | None, status: int) -> str:
    """The one line for an error: ours as written, tornado's reason, never a traceback."""
    if isinstance(exc, ClusterError):
        return exc.message
    if isinstance(exc, web.HTTPError):
        if exc.log_message:
            return str(exc.log_message % exc.args if exc.args else exc.log_message)
        return exc.reason or f"HTTP {status}"
    return INTERNAL_ERROR


class JsonErrors(JupyterHandler):
    """Errors as one-line JSON ErrorReply bodies: a ClusterError with its own status, any
    other failure as a 500 whose traceback goes to the log only."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        exc = exc_info[1] if exc_info else None
        if isinstance(exc, ClusterError):  # a refusal of ours: its own status, not 500
            self.set_status(exc.status)
            status_code = exc.status
        self.set_header("Content-Type", "application/json")
        self.finish(error_body(error_message(exc, status_code), self._reason))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ClusterError):  # expected: one line, no traceback
            self.log.warning("rayjupyter %s %s: %s", self.request.method, self.request.path, value)
            return
        super().log_exception(typ, value, tb)


class RayJupyterAPIHandler(JsonErrors, APIHandler):
    """Base of the API: Jupyter's auth (token, cookie, XSRF), its Authorizer, JSON errors."""

    auth_resource = AUTH_RESOURCE

    def initialize(self, service: ClusterService) -> None:
        self.service = service

    def body_object(self) -> dict[str, Any]:
        """The JSON object in the request body ({} when empty); 400 otherwise."""
        if not self.request.body:
            return {}
        try:
            value = json.loads(self.request.body)
        except ValueError:
            raise ClusterError(400, "The request body must be a JSON object.") from None
        if not isinstance(value, dict):
            raise ClusterError(400, "The request body must be a JSON object.")
        return value

    async def for_user(self, info: ClusterInfo) -> ClusterInfo:
        """The cluster's model as this user may see it (no secret unless they may run code)."""
        return info if await may_run_code(self) else without_secret(info)

    def reply(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(value))


class ClustersHandler(RayJupyterAPIHandler):
    """The list of clusters; POST starts a local one or adds one by address."""

    @web.authenticated
    @requires("read")
    async def get(self) -> None:
        clusters = await self.service.clusters()
        if not await may_run_code(self):
            clusters = [without_secret(info) for info in clusters]
        body: ClusterList = {
            "clusters": clusters,
            "dashboard_pages": dashboard_pages(),
            "ray_dashboard_pages": list(RAY_DASHBOARD_PAGES),
        }
        self.reply(body)

    @web.authenticated
    @requires("write")
    async def post(self) -> None:
        request = self.body_object()
        unknown = set(request) - {"num_cpus", "address", "ray_client_address"}
        if unknown or ("num_cpus" in request and "address" in request):
            raise ClusterError(
                400,
                "Send {} or {'num_cpus': N} to start a local cluster, or "
                "{'address': 'rayjupyter://SECRET@HOST:PORT'} (or a Ray cluster's "
                "'ray://HOST:10001' or 'http://HOST:8265') to add a running one.",
            )
        if "address" in request:
            address = request["address"]
            client = request.get("ray_client_address")
            if not isinstance(address, str) or not isinstance(client, str | None):
                raise ClusterError(
                    400,
                    "address must be a string: rayjupyter://SECRET@HOST:PORT, ray://HOST:10001 "
                    "or http://HOST:8265 (and ray_client_address: ray://HOST:PORT)",
                )
            self.reply(await self.for_user(await self.service.add(address, client)), 201)
            return
        num_cpus = request.get("num_cpus")
        if num_cpus is not None and (
            isinstance(num_cpus, bool) or not isinstance(num_cpus, int | float)
        ):
            raise ClusterError(400, f"num_cpus must be a number, got {num_cpus!r}")
        self.reply(await self.for_user(await self.service.start(num_cpus)), 201)


class ClusterHandler(RayJupyterAPIHandler):
    """One cluster; DELETE stops it (started here) or forgets it (remote)."""

    @web.authenticated
    @requires("read")
    async def get(self, session: str) -> None:
        self.reply(await self.for_user(await self.service.cluster(session)))

    @web.authenticated
    @requires("write")
    async def delete(self, session: str) -> None:
        body: StopReply = {"message": await self.service.stop(session)}
        self.reply(body)


class KernelClusterHandler(RayJupyterAPIHandler):
    """The cluster of a kernel: the one it started, else the one it is connected to."""

    @web.authenticated
    @requires("read")
    async def get(self, kernel_id: str) -> None:
        found = await self.service.kernel_cluster(kernel_id)
        self.reply(found if await may_run_code(self) else kernel_cluster_without_secret(found))
