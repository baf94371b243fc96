"""``import ray`` answered by rayjupyter, for running Ray's own test files against it.

Put ``benchmarks/ray_compat/shim`` first on PYTHONPATH (the runner does, for the driver and
so for every worker it starts). Then:

- ``ray.X`` is ``rayjupyter.X``; a public name rayjupyter lacks raises AttributeError, so the
  test that needs it fails and shows the gap;
- ``ray.util``, ``ray.exceptions``, ``ray.actor``, ``ray.util.queue``, ... are rayjupyter's
  modules of the same role (``MODULES``);
- Ray's internals (``ray._private``, ``ray._raylet``, GCS and raylet helpers) are
  ``InternalModule``s: a test that uses one is skipped, with the name it used;
- Ray's generic test helpers (``wait_for_condition``, ``SignalActor``, ...) and
  ``ray.cluster_utils.Cluster`` are ours, over rayjupyter's public API;
- ``ray.init`` drops Ray's ``_system_config`` (internal tuning) when it starts a cluster, and
  passes it on when it connects to one, where ``rj.init`` refuses it as Ray's init does.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

import rayjupyter as _rj
from benchmarks.ray_compat.internals import InternalModule
from rayjupyter import *  # noqa: F403

# ray's module -> the module that answers for it (ours or rayjupyter's)
MODULES = {
    "ray.util": "rayjupyter.util",
    "ray.util.queue": "rayjupyter.util.queue",
    "ray.util.placement_group": "rayjupyter.util.placement_group",
    "ray.util.scheduling_strategies": "rayjupyter.util.scheduling_strategies",
    "ray.util.state": "rayjupyter.util.state",
    "ray.util.actor_pool": "rayjupyter.util.actor_pool",
    "ray.util.multiprocessing": "rayjupyter.util.multiprocessing",
    "ray.util.joblib": "rayjupyter.util.joblib",
    "ray.experimental.state.api": "rayjupyter.util.state",
    "ray.exceptions": "rayjupyter.exceptions",
    "ray.actor": "rayjupyter.actor",
    "ray.runtime_context": "rayjupyter.runtime_context",
    "ray.runtime_env": "rayjupyter.runtime_env",
    "ray.job_submission": "rayjupyter.job_submission",
    "ray.cloudpickle": "cloudpickle",
    "ray.data": "rayjupyter.data",
    "ray.train": "rayjupyter.train",
    "ray.tune": "rayjupyter.tune",
    "ray.serve": "rayjupyter.serve",
    "ray.cluster_utils": "benchmarks.ray_compat.cluster_utils",
    "ray._private.test_utils": "benchmarks.ray_compat.test_utils",
    "ray._common.test_utils": "benchmarks.ray_compat.test_utils",
    "ray.tests.client_test_utils": "benchmarks.ray_compat.test_utils",
}

# names of ``ray`` that are Ray's internals (old aliases of ray._private modules included)
INTERNAL_NAMES = {
    "worker",
    "state",
    "ray_constants",
    "serialization",
    "services",
    "gcs_utils",
    "autoscaler",
    "dashboard",
    "core",
    "includes",
    "internal",
    "client",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: types.ModuleType) -> None:
        """The target module ran when it was imported."""


class _InternalLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        known: dict[str, Any] = {}
        if spec.name == "ray._raylet":  # public classes Ray also exports from ray._raylet
            known = {"ObjectRef": _rj.ObjectRef, "ObjectRefGenerator": _rj.ObjectRefGenerator}
        elif spec.name == "ray._private":  # Ray Client's flag: never in client mode here
            hook = InternalModule(
                f"{spec.name}.client_mode_hook", {"is_client_mode_enabled": False}
            )
            sys.modules[hook.__name__] = hook
            known = {"client_mode_hook": hook}
        return InternalModule(spec.name, known)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing runs: every name in it is looked up on use."""


class _Finder(importlib.abc.MetaPathFinder):
    """Answers every ``ray.*`` import: an alias from MODULES, else a module of internals."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if not fullname.startswith("ray."):
            return None
        target = MODULES.get(fullname)
        if target is not None:
            try:
                found = importlib.util.find_spec(target)
            except ModuleNotFoundError:
                found = None
            if found is None:
                return None  # rayjupyter has no such module: ModuleNotFoundError, a failure
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(target))
        head = fullname.split(".")[1]
        if head.startswith("_") or head in INTERNAL_NAMES or head in ("tests", "experimental"):
            return importlib.machinery.ModuleSpec(fullname, _InternalLoader(), is_package=True)
        return None


sys.meta_path.insert(0, _Finder())

#: Ray's old name for ObjectRef
ObjectID = _rj.ObjectRef


def init(address: str | None = None, **kwargs: Any) -> Any:
    """``rj.init``; Ray's ``_system_config`` is dropped when it starts a cluster: Ray's internal
    tuning (GCS and raylet timeouts, retry delays) that Ray's tests pass to run faster, which
    means nothing here (rayjupyter's init refuses it), so the test runs on its own terms.
    Connecting to a cluster, it is passed on: there Ray's init raises ValueError, and so does
    rayjupyter's.

    With no address and no resources, it attaches to the newest ``ray.cluster_utils``
    cluster of this test run, as Ray's ``init()`` does; with resources it starts a new one.
    """
    resources = ("num_cpus", "num_gpus", "resources", "object_store_memory")
    if address is None and not any(kwargs.get(name) is not None for name in resources):
        from benchmarks.ray_compat import cluster_utils

        address = cluster_utils.current_address()
    if address is None:
        kwargs.pop("_system_config", None)
        # a new local cluster, not the one RAYJUPYTER_ADDRESS names (a Cluster a test made
        # and left running sets it, for the first .remote()'s auto-init)
        address = "local" if any(kwargs.get(name) is not None for name in resources) else None
    return _rj.init(address, **kwargs)


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    if name.startswith("_") or name in INTERNAL_NAMES:
        return importlib.import_module(f"ray.{name}")
    if hasattr(_rj, name):
        return getattr(_rj, name)
    if f"ray.{name}" in MODULES:
        return importlib.import_module(f"ray.{name}")
    raise AttributeError(f"module 'ray' (rayjupyter) has no attribute {name!r}")
