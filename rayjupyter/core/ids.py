"""Ids that any process makes without asking anyone: a random client prefix and a counter.

A task id is ``client_id (8) + counter (8)``; its return values are ``task_id + index (4)``;
a put is a task id of its own with index 0. So the node can tell which task made an object
from the id alone (the lineage hook for lost-object recovery on several nodes).
"""

from __future__ import annotations

import itertools
import os

CLIENT_ID_SIZE = 8
TASK_ID_SIZE = 16
OBJECT_ID_SIZE = 20
#: a client's counter starts at 1 and counts up by one: at a million ids a second it would
#: take nine years to get here, so an id with a larger counter was made by no client
MAX_COUNTER = 2**48


def new_client_id() -> bytes:
    return os.urandom(CLIENT_ID_SIZE)


class IdGenerator:
    """Task and object ids for one client; ``next`` on itertools.count is thread-safe."""

    def __init__(self, client_id: bytes) -> None:
        self._prefix = client_id
        self._counter = itertools.count(1)

    def task_id(self) -> bytes:
        return self._prefix + next(self._counter).to_bytes(8, "big")

    def object_id(self, task_id: bytes, index: int = 0) -> bytes:
        return task_id + index.to_bytes(4, "big")


#: the index of a large argument the caller stored for one call (``f.remote(big_array)``):
#: its task id is a put's, so nothing rebuilds it from lineage; readers know it is used once
ARGUMENT_INDEX = 0xFFFFFFFE
_ARGUMENT_SUFFIX = ARGUMENT_INDEX.to_bytes(4, "big")


def is_call_argument(object_id: bytes) -> bool:
    """True for a large by-value argument stored for one call (see ARGUMENT_INDEX)."""
    return object_id.endswith(_ARGUMENT_SUFFIX)


def task_of(object_id: bytes) -> bytes:
    """The task (or put) that made an object."""
    return object_id[:TASK_ID_SIZE]


def owner_of(object_id: bytes) -> bytes:
    """The client that submitted the task (or put) behind an object."""
    return object_id[:CLIENT_ID_SIZE]


def object_id_problem(object_id: object) -> str:
    """Why ``object_id`` cannot be an object id ("" when it can): not bytes, not 20 of them,
    or a counter no client reaches (random bytes)."""
    if not isinstance(object_id, bytes):
        hint = (
            " (bytes.fromhex() turns a hex string into one)" if isinstance(object_id, str) else ""
        )
        return f"an object id is {OBJECT_ID_SIZE} bytes, got {type(object_id).__name__}{hint}"
    if len(object_id) != OBJECT_ID_SIZE:
        return f"an object id is {OBJECT_ID_SIZE} bytes, got {len(object_id)}"
    counter = int.from_bytes(object_id[CLIENT_ID_SIZE:TASK_ID_SIZE], "big")
    if not 0 < counter < MAX_COUNTER:
        return (
            f"{object_id.hex()} was not made by any task or put (its counter {counter} is "
            f"outside 1..2**48): random bytes?"
        )
    return ""
