"""rayjupyter: Ray's core API on a light engine, with Jupyter as the front door.

A Ray user changes one import: ``import rayjupyter as rj``.
"""

from rayjupyter import actor, exceptions
from rayjupyter.core.actor import get_actor, kill, method
from rayjupyter.core.api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_runtime_context,
    init,
    is_initialized,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)
from rayjupyter.core.object_ref import ObjectRef
from rayjupyter.core.runtime_context import get_gpu_ids

__version__ = "0.1.0"

__all__ = [
    "ObjectRef",
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
    "shutdown",
    "wait",
]
