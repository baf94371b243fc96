"""rayjupyter: Ray's core API on a light engine, with Jupyter as the front door.

A Ray user changes one import: ``import rayjupyter as rj``.
"""

from rayjupyter import exceptions
from rayjupyter.core.api import (
    available_resources,
    cluster_resources,
    get,
    init,
    is_initialized,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)
from rayjupyter.core.object_ref import ObjectRef

__version__ = "0.1.0"

__all__ = [
    "ObjectRef",
    "__version__",
    "available_resources",
    "cluster_resources",
    "exceptions",
    "get",
    "init",
    "is_initialized",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "wait",
]
