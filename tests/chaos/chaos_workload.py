"""What the chaos suite's drivers run: tasks whose every execution leaves a line in a ledger.

Workers import this module by name (the suite puts tests/chaos on their PYTHONPATH), so the
function travels by reference. Each execution appends two lines to the ledger with one
``O_APPEND`` write each (atomic for lines this short): ``B`` when it begins and ``E`` when its
side effect is done, just before it returns. Losses and duplicates are then counted from
the file, not guessed: an index with no result at ``get`` is lost, an index with two ``E``
lines ran its side effect twice.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import rayjupyter as rj


def append_line(path: str, line: str) -> None:
    """One line, one write, O_APPEND: concurrent writers never interleave within it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@rj.remote(max_retries=3)
def step(i: int, ledger: str, seconds: float) -> int:
    """i * i after `seconds` of work, its begin and its side effect written to the ledger."""
    node = rj.get_runtime_context().get_node_id()
    append_line(ledger, f"B {i} {os.getpid()} {node} {time.time():.6f}")
    time.sleep(seconds)
    append_line(ledger, f"E {i} {os.getpid()} {node} {time.time():.6f}")
    return i * i


@dataclass
class Execution:
    """One line of the ledger."""

    kind: str  # "B" (began) or "E" (side effect done)
    index: int
    pid: int
    node: str
    at: float  # unix time


@dataclass
class Ledger:
    """The ledger file of one run, read back."""

    path: str
    lines: list[Execution] = field(default_factory=list)

    def read(self) -> Ledger:
        self.lines = []
        try:
            with open(self.path) as fh:
                text = fh.read()
        except FileNotFoundError:
            return self
        for raw in text.splitlines():
            parts = raw.split()
            if len(parts) == 5:  # a torn line is impossible with one O_APPEND write each
                kind, index, pid, node, at = parts
                self.lines.append(Execution(kind, int(index), int(pid), node, float(at)))
        return self

    def ends(self) -> dict[int, int]:
        """How many times each index's side effect was done."""
        counts: dict[int, int] = {}
        for line in self.lines:
            if line.kind == "E":
                counts[line.index] = counts.get(line.index, 0) + 1
        return counts

    def running(self) -> list[Execution]:
        """Executions that began and have not written their side effect (their pid's)."""
        ended = {(line.index, line.pid) for line in self.lines if line.kind == "E"}
        return [
            line for line in self.lines if line.kind == "B" and (line.index, line.pid) not in ended
        ]
