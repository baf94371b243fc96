"""``rayjupyter.serve``: Ray Serve's API on rayjupyter (``from rayjupyter import serve``).

A controller actor owns the applications; replicas are actors wrapping the user's class
or function; an HTTP proxy actor runs uvicorn; handles route calls by power of two
choices. Built only on rayjupyter's public API. See README.md ("Serving models").
"""

from rayjupyter.serve.api import (
    ApplicationStatusOverview,
    DeploymentStatusOverview,
    RayServeException,
    ServeStatus,
    delete,
    get_app_handle,
    get_deployment_handle,
    run,
    shutdown,
    start,
    status,
)
from rayjupyter.serve.batching import batch
from rayjupyter.serve.config import AutoscalingConfig, HTTPOptions
from rayjupyter.serve.deployment import Application, Deployment, deployment, ingress
from rayjupyter.serve.handle import (
    BackPressureError,
    DeploymentHandle,
    DeploymentResponse,
    DeploymentResponseGenerator,
)
from rayjupyter.serve.replica import ReplicaContext, get_replica_context

__all__ = [
    "Application",
    "ApplicationStatusOverview",
    "AutoscalingConfig",
    "BackPressureError",
    "Deployment",
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "DeploymentStatusOverview",
    "HTTPOptions",
    "RayServeException",
    "ReplicaContext",
    "ServeStatus",
    "batch",
    "delete",
    "deployment",
    "get_app_handle",
    "get_deployment_handle",
    "get_replica_context",
    "ingress",
    "run",
    "shutdown",
    "start",
    "status",
]
