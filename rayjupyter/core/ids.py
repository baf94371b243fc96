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


def task_of(object_id: bytes) -> bytes:
    """The task (or put) that made an object."""
    return object_id[:TASK_ID_SIZE]


def owner_of(object_id: bytes) -> bytes:
    """The client that submitted the task (or put) behind an object."""
    return object_id[:CLIENT_ID_SIZE]
