"""Ray's util layer: joblib backend, Executor, Pool, ActorPool, Queue, placement groups and
the state API."""

import importlib
from typing import Any

from rayjupyter.core.actor import list_named_actors
from rayjupyter.util import queue, scheduling_strategies
from rayjupyter.util.actor_pool import ActorPool
from rayjupyter.util.completion import as_completed, map_unordered
from rayjupyter.util.debug import disable_log_once_globally, enable_periodic_logging, log_once
from rayjupyter.util.executor import Executor
from rayjupyter.util.node import get_node_instance_id, get_node_ip_address
from rayjupyter.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from rayjupyter.util.serialization import (
    deregister_serializer,
    inspect_serializability,
    register_serializer,
)

__all__ = [
    "ActorPool",
    "Executor",
    "PlacementGroup",
    "as_completed",
    "deregister_serializer",
    "disable_log_once_globally",
    "enable_periodic_logging",
    "get_current_placement_group",
    "get_node_instance_id",
    "get_node_ip_address",
    "get_placement_group",
    "inspect_serializability",
    "list_named_actors",
    "log_once",
    "map_unordered",
    "placement_group",
    "placement_group_table",
    "queue",
    "register_serializer",
    "remove_placement_group",
    "scheduling_strategies",
]

#: submodules reached as attributes (``rj.util.state.list_actors()``), imported on first use
_LAZY_SUBMODULES = ("state", "multiprocessing", "joblib")


def __getattr__(name: str) -> Any:
    """``rj.util.state`` and friends without an import first, as Ray's ``ray.util`` allows."""
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
