"""Ray's ``ray.runtime_context`` module: the RuntimeContext class and its getter."""

from rayjupyter.core.api import get_runtime_context
from rayjupyter.core.runtime_context import RuntimeContext

__all__ = ["RuntimeContext", "get_runtime_context"]
