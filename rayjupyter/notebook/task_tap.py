"""Names and submit times of this driver's tasks, by return object id, for progress displays.

The node knows every task's name, but a driver only holds object ids. Until the node
reports task events per object id, the notebook taps ``Client.submit`` (installed by
``%load_ext``, removed by ``%unload_ext``): one dict write per submitted task.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from rayjupyter.core import protocol as P
from rayjupyter.core.client import Client

LIMIT = 50_000  # ids remembered; older ones fall back to the name "task"


class TaskTap:
    """Remembers (name, submit time) per return object id of tasks this process submits."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._info: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._original: Any = None

    def record(self, message: P.SubmitTask) -> None:
        entry = (message.name, time.time())
        with self._lock:
            for object_id in message.return_ids:
                self._info[object_id] = entry
            while len(self._info) > self.limit:
                self._info.popitem(last=False)

    def name(self, object_id: bytes) -> str:
        entry = self._info.get(object_id)
        return entry[0] if entry is not None else "task"

    def submitted_at(self, object_id: bytes) -> float | None:
        entry = self._info.get(object_id)
        return entry[1] if entry is not None else None

    def recent(self) -> list[tuple[bytes, str, float]]:
        """(object id, name, submit time) of every remembered task, oldest first."""
        with self._lock:
            return [(oid, name, at) for oid, (name, at) in self._info.items()]

    def install(self) -> None:
        """Tap every Client's submit (drivers started before or after this call)."""
        if self._original is not None:
            return
        original = Client.submit
        tap = self

        def submit(client: Client, message: P.SubmitTask) -> None:
            tap.record(message)
            original(client, message)

        self._original = original
        Client.submit = submit  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._original is not None:
            Client.submit = self._original  # type: ignore[method-assign]
            self._original = None


TAP = TaskTap()
