"""The REST API under ``{base_url}rayjupyter/api/``: thin authenticated handlers over
ClusterService. Every error is a JSON ErrorReply with one line; tracebacks go to the log.

    GET    clusters                  ClusterList
    POST   clusters  {num_cpus?}     ClusterInfo of a new local cluster (201)
    POST   clusters  {address}       ClusterInfo of a cluster added by address (201)
    GET    clusters/<id>             ClusterInfo
    DELETE clusters/<id>             stop (started here) or forget (remote); 409 otherwise
    GET    kernels/<id>/cluster      KernelCluster, for the status bar
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.base.handlers import APIHandler, JupyterHandler
from tornado import web

from rayjupyter.server.dashboards import dashboard_pages
from rayjupyter.server.errors import ClusterError
from rayjupyter.server.models import ClusterList, ErrorReply, StopReply
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
    """Base of the API: Jupyter's auth (token, cookie, XSRF) and JSON errors."""

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

    def reply(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(value))


class ClustersHandler(RayJupyterAPIHandler):
    """The list of clusters; POST starts a local one or adds one by address."""

    @web.authenticated
    async def get(self) -> None:
        body: ClusterList = {
            "clusters": await self.service.clusters(),
            "dashboard_pages": dashboard_pages(),
        }
        self.reply(body)

    @web.authenticated
    async def post(self) -> None:
        request = self.body_object()
        unknown = set(request) - {"num_cpus", "address"}
        if unknown or ("num_cpus" in request and "address" in request):
            raise ClusterError(
                400,
                "Send {} or {'num_cpus': N} to start a local cluster, or "
                "{'address': 'rayjupyter://SECRET@HOST:PORT'} to add a running one.",
            )
        if "address" in request:
            address = request["address"]
            if not isinstance(address, str):
                raise ClusterError(400, "address must be a string: rayjupyter://SECRET@HOST:PORT")
            self.reply(await self.service.add(address), 201)
            return
        num_cpus = request.get("num_cpus")
        if num_cpus is not None and (
            isinstance(num_cpus, bool) or not isinstance(num_cpus, int | float)
        ):
            raise ClusterError(400, f"num_cpus must be a number, got {num_cpus!r}")
        self.reply(await self.service.start(num_cpus), 201)


class ClusterHandler(RayJupyterAPIHandler):
    """One cluster; DELETE stops it (started here) or forgets it (remote)."""

    @web.authenticated
    async def get(self, session: str) -> None:
        self.reply(await self.service.cluster(session))

    @web.authenticated
    async def delete(self, session: str) -> None:
        body: StopReply = {"message": await self.service.stop(session)}
        self.reply(body)


class KernelClusterHandler(RayJupyterAPIHandler):
    """The cluster of a kernel: the one it started, else the one it is connected to."""

    @web.authenticated
    async def get(self, kernel_id: str) -> None:
        self.reply(await self.service.kernel_cluster(kernel_id))
