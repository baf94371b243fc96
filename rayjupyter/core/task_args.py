"""Packing a task's arguments on the caller and unpacking them on the worker.

Top-level ObjectRef arguments become dependencies: the node waits for them and the worker
gets their values, as in Ray. Refs inside containers stay refs. A large argument is put in
the object store once instead of being copied into the task message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from rayjupyter.core.object_ref import ObjectRef
from rayjupyter.core.serialization import INLINE_THRESHOLD, SerializedObject, serialize


class DepMarker(NamedTuple):
    """Stands in the argument tuple for the value of dependency number ``position``."""

    position: int


class PackedArgs(NamedTuple):
    blob: bytes
    deps: tuple[bytes, ...]
    nested: tuple[bytes, ...]
    keep_alive: list[ObjectRef]  # refs of promoted large arguments, until the submit is sent


#: a call without arguments, packed (``((), {})``, as pack_args would serialize it)
_NO_ARGS = serialize(((), {})).to_bytes()


def pack_args(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    task_name: str,
    put: Callable[[SerializedObject], ObjectRef],
) -> PackedArgs:
    """Serialize (args, kwargs) for a task; ``put`` stores a large argument and returns its ref."""
    if not args and not kwargs:  # f.remote(): the same bytes every time
        return PackedArgs(_NO_ARGS, (), (), [])
    deps: list[bytes] = []
    keep_alive: list[ObjectRef] = []

    def mark(value: Any) -> Any:
        if type(value) is ObjectRef:
            deps.append(value.binary())
            return DepMarker(len(deps) - 1)
        return value

    packed_args = tuple(mark(a) for a in args) if args else args
    packed_kwargs = {k: mark(v) for k, v in kwargs.items()} if kwargs else kwargs
    try:
        sobj = serialize((packed_args, packed_kwargs), what=f"the arguments of task {task_name!r}")
    except TypeError:
        _raise_for_culprit(packed_args, packed_kwargs, task_name)
        raise
    if sobj.nbytes > INLINE_THRESHOLD:

        def promote(value: Any, label: str) -> Any:
            if type(value) is DepMarker:
                return value
            part = serialize(value, what=f"{label} of task {task_name!r}")
            if part.nbytes <= INLINE_THRESHOLD // 4:
                return value
            ref = put(part)
            keep_alive.append(ref)
            deps.append(ref.binary())
            return DepMarker(len(deps) - 1)

        packed_args = tuple(promote(a, f"argument {i}") for i, a in enumerate(packed_args))
        packed_kwargs = {k: promote(v, f"argument {k!r}") for k, v in packed_kwargs.items()}
        sobj = serialize((packed_args, packed_kwargs), what=f"the arguments of task {task_name!r}")
    nested = tuple(ref.binary() for ref in sobj.contained_refs)
    return PackedArgs(sobj.to_bytes(), tuple(deps), nested, keep_alive)


def _raise_for_culprit(args: tuple[Any, ...], kwargs: dict[str, Any], task_name: str) -> None:
    """Name the argument that cannot be pickled, rather than the whole tuple."""
    for label, value in [(f"argument {i}", a) for i, a in enumerate(args)] + [
        (f"argument {k!r}", v) for k, v in kwargs.items()
    ]:
        serialize(value, what=f"{label} of task {task_name!r}")  # raises for the culprit


def unpack_args(
    blob: bytes, dep_values: list[Any], deserialize: Callable[[bytes], Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's (args, kwargs) with dependency markers replaced by their values."""
    args, kwargs = deserialize(blob)
    if dep_values:
        args = tuple(dep_values[a.position] if type(a) is DepMarker else a for a in args)
        kwargs = {
            k: dep_values[v.position] if type(v) is DepMarker else v for k, v in kwargs.items()
        }
    return args, kwargs
