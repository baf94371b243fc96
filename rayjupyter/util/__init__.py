"""Ray's util layer: joblib backend, Executor, Pool, ActorPool, Queue and the state API."""

from rayjupyter.core.actor import list_named_actors
from rayjupyter.util import queue
from rayjupyter.util.actor_pool import ActorPool
from rayjupyter.util.executor import Executor, as_completed

__all__ = ["ActorPool", "Executor", "as_completed", "list_named_actors", "queue"]
