"""Ray's ID classes (``JobID``, ``NodeID``, ``TaskID``, ``ActorID``, ...) over our ids.

They wrap the bytes our engine uses, so their sizes are ours (a task id is 16 bytes, an
object id 20), not Ray's; what a user does with them is Ray's: ``hex()``, ``binary()``,
``from_hex``, ``from_random``, ``nil()``, equality and hashing. An id also equals its hex
string, so code written against the old string-valued runtime-context properties still
compares (Ray's ids never equal a string: a deliberate, harmless difference).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, TypeVar

_I = TypeVar("_I", bound="BaseID")


class BaseID:
    """An id: fixed-size bytes, shown and parsed as hex."""

    SIZE: ClassVar[int] = 16
    __slots__ = ("_bytes",)

    def __init__(self, id_bytes: bytes) -> None:
        if not isinstance(id_bytes, bytes):
            raise TypeError(f"{type(self).__name__} needs bytes, got {type(id_bytes).__name__}")
        self._bytes = id_bytes

    @classmethod
    def size(cls) -> int:
        return cls.SIZE

    @classmethod
    def from_binary(cls: type[_I], id_bytes: bytes) -> _I:
        return cls(id_bytes)

    @classmethod
    def from_hex(cls: type[_I], hex_id: str | bytes) -> _I:
        text = hex_id.decode() if isinstance(hex_id, bytes) else hex_id
        return cls(bytes.fromhex(text))

    @classmethod
    def from_random(cls: type[_I]) -> _I:
        return cls(os.urandom(cls.SIZE))

    @classmethod
    def nil(cls: type[_I]) -> _I:
        return cls(b"\xff" * cls.SIZE)

    def is_nil(self) -> bool:
        return self._bytes == b"\xff" * len(self._bytes) or not self._bytes

    def binary(self) -> bytes:
        return self._bytes

    def hex(self) -> str:
        return self._bytes.hex()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return other == self.hex()
        return type(other) is type(self) and other._bytes == self._bytes

    def __hash__(self) -> int:
        return hash(self.hex())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hex()})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._bytes,))


class UniqueID(BaseID):
    """A generic unique id."""


class JobID(BaseID):
    """A driver's job (ours: the driver's client id)."""

    SIZE = 8


class NodeID(BaseID):
    """A node daemon."""


class WorkerID(BaseID):
    """A worker process (ours: its client id)."""

    SIZE = 8


class TaskID(BaseID):
    """A task or actor call (ours: client id + counter, 16 bytes)."""


class ActorID(BaseID):
    """An actor (ours: its creation task's id with an index, 20 bytes)."""

    SIZE = 20


class PlacementGroupID(BaseID):
    """A placement group."""


class FunctionID(BaseID):
    """A remote function's content id."""


class ActorClassID(BaseID):
    """An actor class's content id."""


class ClusterID(BaseID):
    """A cluster (ours: its session)."""


__all__ = [
    "ActorClassID",
    "ActorID",
    "BaseID",
    "ClusterID",
    "FunctionID",
    "JobID",
    "NodeID",
    "PlacementGroupID",
    "TaskID",
    "UniqueID",
    "WorkerID",
]
