"""Ray-compatible error types (`rayjupyter.exceptions`, as `ray.exceptions`)."""

from rayjupyter.core.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
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
    WorkerCrashedError,
)

__all__ = [
    "ActorDiedError",
    "ActorUnavailableError",
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
    "WorkerCrashedError",
]
