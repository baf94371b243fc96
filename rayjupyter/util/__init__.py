"""Ray's util layer: joblib backend, Executor, Pool, ActorPool, Queue, placement groups and
the state API."""

from rayjupyter.core.actor import list_named_actors
from rayjupyter.util import queue, scheduling_strategies
from rayjupyter.util.actor_pool import ActorPool
from rayjupyter.util.executor import Executor, as_completed
from rayjupyter.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

__all__ = [
    "ActorPool",
    "Executor",
    "PlacementGroup",
    "as_completed",
    "get_current_placement_group",
    "get_placement_group",
    "list_named_actors",
    "placement_group",
    "placement_group_table",
    "queue",
    "remove_placement_group",
    "scheduling_strategies",
]
