"""rayjupyter: Ray's core API on a light engine, with Jupyter as the front door.

A Ray user changes one import: ``import rayjupyter as rj``.
"""

from typing import Any

from rayjupyter import actor, exceptions, runtime_context
from rayjupyter.core import hooks
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
    timeline,
    wait,
)
from rayjupyter.core.generators import DynamicObjectRefGenerator, ObjectRefGenerator
from rayjupyter.core.id_types import (
    ActorClassID,
    ActorID,
    ClusterID,
    FunctionID,
    JobID,
    NodeID,
    PlacementGroupID,
    TaskID,
    UniqueID,
    WorkerID,
)
from rayjupyter.core.object_ref import ObjectRef
from rayjupyter.core.runtime_context import get_gpu_ids

#: Ray's old name for ObjectRef (Ray keeps it as an alias too)
ObjectID = ObjectRef

__version__ = "0.1.0"


def _start_dashboard(connect_address: str, *, host: str, port: int) -> hooks.RunningDashboard:
    """``rj.init(include_dashboard=True)``: the dashboard package, imported only when used."""
    from rayjupyter.dashboard.launch import start_dashboard

    return start_dashboard(connect_address, host=host, port=port)


hooks.register_dashboard(_start_dashboard)  # core starts dashboards without importing them


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext rayjupyter``: register the magics; Jupyter parts load only here, lazily."""
    from rayjupyter import notebook

    notebook.load_ipython_extension(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext rayjupyter``: stop showing progress bars on blocking calls."""
    from rayjupyter import notebook

    notebook.unload_ipython_extension(ipython)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Jupyter server: the clusters API and dashboard proxy (rayjupyter.server), loaded lazily."""
    from rayjupyter.server.app import RayJupyterExtension

    return [{"module": "rayjupyter", "app": RayJupyterExtension}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    """The classic entry point, for servers that load extensions without extension points."""
    from rayjupyter.server.app import RayJupyterExtension

    RayJupyterExtension._load_jupyter_server_extension(server_app)  # type: ignore[no-untyped-call]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """JupyterLab: the prebuilt extension inside the package (`jupyter labextension develop`)."""
    return [{"src": "labextension", "dest": "rayjupyter"}]


# Notebook helpers reachable as rj.progress / rj.resource_chart, imported on first use so a
# worker never loads Jupyter packages; they are extras, so they stay out of __all__.
_NOTEBOOK_HELPERS = ("progress", "resource_chart")


def __getattr__(name: str) -> Any:
    if name in _NOTEBOOK_HELPERS:
        from rayjupyter import notebook

        return getattr(notebook, name)
    if name in ("util", "data"):  # rj.util.state, rj.data.range: imported on first use
        import importlib

        return importlib.import_module(f"rayjupyter.{name}")
    raise AttributeError(f"module 'rayjupyter' has no attribute {name!r}")


__all__ = [
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
]
