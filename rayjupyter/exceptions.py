"""Ray-compatible error types (`rayjupyter.exceptions`, as `ray.exceptions`)."""

from rayjupyter.core.exceptions import (
    ActorDiedError,
    ActorPlacementGroupRemoved,
    ActorUnavailableError,
    ActorUnschedulableError,
    ClusterConnectionError,
    GetTimeoutError,
    ObjectLostError,
    ObjectStoreFullError,
    OwnerDiedError,
    RayActorError,
    RayError,
    RaySystemError,
    RayTaskError,
    RuntimeEnvSetupError,
    SerializationError,
    TaskCancelledError,
    TaskPlacementGroupRemoved,
    TaskUnschedulableError,
    WorkerCrashedError,
)
from rayjupyter.core.exceptions_extra import *  # noqa: F403 (Ray's rarer errors, same tree)
from rayjupyter.core.exceptions_extra import __all__ as _extra

__all__ = [
    *_extra,
    "ActorDiedError",
    "ActorPlacementGroupRemoved",
    "ActorUnavailableError",
    "ActorUnschedulableError",
    "ClusterConnectionError",
    "GetTimeoutError",
    "ObjectLostError",
    "ObjectStoreFullError",
    "OwnerDiedError",
    "RayActorError",
    "RayError",
    "RaySystemError",
    "RayTaskError",
    "RuntimeEnvSetupError",
    "SerializationError",
    "TaskCancelledError",
    "TaskPlacementGroupRemoved",
    "TaskUnschedulableError",
    "WorkerCrashedError",
]
