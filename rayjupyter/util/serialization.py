"""Ray's serialization helpers: custom serializers per type, and finding what won't pickle."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any, TextIO

from rayjupyter.core import serialization


def register_serializer(
    cls: type, *, serializer: Callable[[Any], Any], deserializer: Callable[[Any], Any]
) -> None:
    """Serialize instances of ``cls`` with ``serializer`` and rebuild them with
    ``deserializer`` (Ray's ``ray.util.register_serializer``).

    It applies in the process that registers it (register it where values of ``cls`` are
    made: the driver, or in a task for values that task returns); the deserializer travels
    with each value, so the reading side needs nothing registered.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_serializer needs a class, got {cls!r}")
    if not callable(serializer) or not callable(deserializer):
        raise TypeError("register_serializer needs callable serializer= and deserializer=")

    def reduce(obj: Any) -> tuple[Any, tuple[Any]]:
        return deserializer, (serializer(obj),)

    serialization.custom_reducers[cls] = reduce


def deregister_serializer(cls: type) -> None:
    """Forget the serializer registered for ``cls`` (pickle's own way applies again)."""
    serialization.custom_reducers.pop(cls, None)


class FailureTuple:
    """An object that cannot be serialized, its name, and what holds it (hashed by
    identity, since unpicklable objects are often unhashable)."""

    def __init__(self, obj: Any, name: str, parent: Any) -> None:
        self.obj = obj
        self.name = name
        self.parent = parent

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, FailureTuple)
            and other.obj is self.obj
            and other.name == self.name
            and other.parent is self.parent
        )

    def __hash__(self) -> int:
        return hash((id(self.obj), self.name, id(self.parent)))

    def __repr__(self) -> str:
        return f"FailTuple({self.name} [obj={self.obj!r}, parent={self.parent!r}])"


def _pickles(obj: Any) -> bool:
    try:
        serialization.dumps(obj)
    except Exception:
        return False
    return True


def _members(obj: Any) -> list[tuple[str, Any]]:
    """What an object holds that pickling it would pickle too."""
    if inspect.isfunction(obj):
        closure = inspect.getclosurevars(obj)
        return [*closure.nonlocals.items(), *closure.globals.items()]
    if isinstance(obj, dict):
        return [(repr(k), v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    if inspect.isclass(obj):
        return [(k, v) for k, v in vars(obj).items() if not k.startswith("__")]
    if hasattr(obj, "__dict__"):
        return list(vars(obj).items())
    return []


def inspect_serializability(
    base_obj: Any,
    name: str | None = None,
    depth: int = 3,
    print_file: TextIO | None = None,
) -> tuple[bool, set[FailureTuple]]:
    """Whether ``base_obj`` serializes, and if not the innermost members that do not.

    Walks functions (their closures and globals), containers, classes and objects' attributes
    up to ``depth`` levels, printing what it checks to ``print_file`` (stdout by default).
    """
    out = print_file or sys.stdout
    failures: set[FailureTuple] = set()
    label = name or getattr(base_obj, "__name__", None) or repr(base_obj)[:60]

    def walk(obj: Any, obj_name: str, parent: Any, level: int) -> bool:
        if _pickles(obj):
            return True
        print(f"{'  ' * level}Serializing {obj_name!r} {obj!r:.60}... FAILED", file=out)
        found_inner = False
        if level < depth:
            for member_name, member in _members(obj):
                if not walk(member, member_name, obj, level + 1):
                    found_inner = True
        if not found_inner:
            failures.add(FailureTuple(obj, obj_name, parent))
        return False

    ok = walk(base_obj, label, None, 0)
    if ok:
        print(f"Serializing {label!r}... OK", file=out)
    return ok, failures
