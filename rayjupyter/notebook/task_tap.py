"""Names and submit times of this driver's tasks, by return object id, for the displays.

The node knows every task's name, but a driver only holds object ids. Until the node
reports task events per object id, the notebook observes this driver's submits (the
core's ``submit_observers``, installed by ``%load_ext``, removed by ``%unload_ext``): a few
dict writes per submitted task.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict

from rayjupyter.core import client as client_module
from rayjupyter.core import protocol as P

LIMIT = 50_000  # ids remembered; older ones fall back to the name "task"


class TaskTap:
    """(name, submit time, is-first-return) per return object id, oldest first."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._info: OrderedDict[bytes, tuple[str, float, bool]] = OrderedDict()
        self._lock = threading.Lock()
        self.count = 0  # entries recorded so far: the cursor since() takes

    def record(self, message: P.SubmitTask) -> None:
        now = time.time()
        with self._lock:
            for index, object_id in enumerate(message.return_ids):
                self._info[object_id] = (message.name, now, index == 0)
                self.count += 1
            while len(self._info) > self.limit:
                self._info.popitem(last=False)

    def name(self, object_id: bytes) -> str:
        entry = self._info.get(object_id)
        return entry[0] if entry is not None else "task"

    def since(self, cursor: int) -> tuple[int, list[tuple[bytes, str, float]]]:
        """Tasks recorded after cursor as (first return id, name, submit time); new cursor."""
        with self._lock:
            fresh = min(self.count - cursor, len(self._info))
            start = len(self._info) - fresh
            tail = itertools.islice(self._info.items(), start, None)
            tasks = [(oid, name, at) for oid, (name, at, first) in tail if first]
            return self.count, tasks

    def install(self) -> None:
        """Observe every client's submits (drivers started before or after this call)."""
        if self.record not in client_module.submit_observers:
            client_module.submit_observers.append(self.record)

    def uninstall(self) -> None:
        if self.record in client_module.submit_observers:
            client_module.submit_observers.remove(self.record)


TAP = TaskTap()
