"""Ray's ``ray.actor`` module: ``exit_actor`` and the actor types."""

from rayjupyter.core.actor import ActorClass, ActorHandle, ActorMethod, exit_actor

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "exit_actor"]
