"""What a worker prints, counted, so a task that printed is answered by the node.

A task's output goes from the worker's stdout and stderr pipes to the node, which forwards it
to the drivers; a small result answered on a direct link (direct_links.py) would reach the
driver first, and a notebook cell would end before the task's prints show. The node drains a
worker's pipes before it answers for it, so a task whose call printed anything is answered
by the node. What a process writes to the descriptors without Python's streams (a C
library, a child process) is not counted: it may still show after the result.

Each stream also says whose output follows: a marker line with the task's name, written
when a task of another name begins (as Ray's workers mark theirs for its log monitor). The
node takes the markers out and names the lines after them: a task a driver sent a leased
worker itself (task_leases.py) may print before the node has heard of it.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys


class _CountingRaw(io.RawIOBase):
    """An unbuffered stream over a descriptor that counts the bytes written to it."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self.count = 0

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        total = len(view)
        while view:  # (a pipe may take part of a large write)
            view = view[os.write(self._fd, view) :]
        self.count += total
        return total


#: starts a line that names the task whose output follows (never a user's: a NUL first)
TASK_MARKER = b"\x00rj-task:"


class OutputCount:
    """The bytes this process printed through ``sys.stdout`` and ``sys.stderr``."""

    def __init__(self) -> None:
        self._raws: list[_CountingRaw] = []
        self.marked = ""  # the task named by the last marker

    def mark_task(self, name: str) -> None:
        """From now on the output is ``name``'s: say so in both streams (not counted)."""
        if name == self.marked or not self._raws:
            return
        self.marked = name
        line = TASK_MARKER + name.replace("\n", " ").encode(errors="replace") + b"\n"
        for raw in self._raws:
            with contextlib.suppress(OSError):
                os.write(raw.fileno(), line)

    def install(self) -> None:
        """Replace both streams with unbuffered counting ones on the same descriptors (a
        worker's streams are unbuffered anyway: PYTHONUNBUFFERED)."""
        for name in ("stdout", "stderr"):
            old = getattr(sys, name)
            if old is None:
                continue
            try:
                fd = old.fileno()
                old.flush()
            except (OSError, ValueError, AttributeError):
                continue
            raw = _CountingRaw(fd)
            stream = io.TextIOWrapper(  # type: ignore[type-var]
                raw,
                encoding=getattr(old, "encoding", None) or "utf-8",
                errors=getattr(old, "errors", None) or "backslashreplace",
                write_through=True,
            )
            with contextlib.suppress(AttributeError):
                stream.mode = "w"  # type: ignore[misc]
            setattr(sys, name, stream)
            self._raws.append(raw)

    @property
    def total(self) -> int:
        return sum(raw.count for raw in self._raws)


#: the worker's count (installed by worker_main; zero elsewhere)
output = OutputCount()
