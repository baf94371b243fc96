"""The public API is small, Ray-named and checked."""

from __future__ import annotations

import rayjupyter as rj

EXPECTED = {
    "ActorClassID",
    "ActorID",
    "ClusterID",
    "DynamicObjectRefGenerator",
    "FunctionID",
    "JobID",
    "NodeID",
    "ObjectID",
    "ObjectRef",
    "ObjectRefGenerator",
    "PlacementGroupID",
    "TaskID",
    "UniqueID",
    "WorkerID",
    "__version__",
    "actor",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "runtime_context",
    "shutdown",
    "timeline",
    "wait",
}


def test_all_is_exactly_the_public_api():
    assert set(rj.__all__) == EXPECTED
    for name in rj.__all__:
        assert hasattr(rj, name), name


def test_exceptions_have_rays_names():
    for name in (
        "RayError",
        "RayTaskError",
        "GetTimeoutError",
        "WorkerCrashedError",
        "ObjectStoreFullError",
        "ObjectLostError",
    ):
        assert issubclass(getattr(rj.exceptions, name), Exception)
    assert issubclass(rj.exceptions.GetTimeoutError, TimeoutError)


def test_protocol_messages_round_trip_and_have_handlers():
    from rayjupyter.core import protocol
    from rayjupyter.core.node import Node

    for kind in protocol.ALL_MESSAGES:
        message = kind(*[None] * len(kind._fields))
        assert protocol.loads(protocol.dumps([message])) == [message]
    assert set(Node.HANDLERS) == set(protocol.CLIENT_TO_NODE)
    for name in Node.HANDLERS.values():  # the node's own method, or "part.method"
        part, _, method = name.rpartition(".")
        assert callable(getattr(Node.PARTS[part] if part else Node, method)), name
