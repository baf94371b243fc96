"""What the node took back from a worker after sending it ahead (prefetch.py).

A worker does not run a task the node took back (``RevokeTask``): the node gave it to
another worker. The message that sent it may have carried its function, which the tasks
sent after it count on: that is kept until one of them asks for it.
"""

from __future__ import annotations

from rayjupyter.core import protocol as P

#: functions of taken-back tasks kept at most (the oldest go first: the node then sends
#: the function again with its next task)
FUNCTIONS_MAX = 64


class RevokedTasks:
    """A worker's taken-back task ids and the functions their messages carried."""

    def __init__(self) -> None:
        self.ids: set[bytes] = set()
        self.functions: dict[bytes, bytes] = {}  # function id -> its pickled function

    def drop(self, task: P.ExecuteTask) -> bool:
        """True if ``task`` was taken back: it is not run, its function is kept."""
        if task.task_id not in self.ids:
            return False
        self.ids.discard(task.task_id)
        if task.func_blob is not None:
            kept = self.functions
            if len(kept) >= FUNCTIONS_MAX:
                del kept[next(iter(kept))]
            kept[task.func_id] = task.func_blob
        return True

    def function(self, func_id: bytes) -> bytes | None:
        """A kept function, handed over once (the worker caches what it unpickles)."""
        return self.functions.pop(func_id, None)
