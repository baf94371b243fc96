"""Execution progress: one row per physical operator (rows done, rows/s, store use).

The model is ``rows(executor)``, pure; the views are a text line outside a kernel (off by
default in scripts, as logs) and an ipywidgets bar per operator in a kernel, collapsed to
one summary line when the run ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rayjupyter.data.context import DataContext
from rayjupyter.data.plan import PhysicalSpec


@dataclass(frozen=True)
class OpProgress:
    name: str
    rows: int
    total_rows: int | None
    rows_per_s: float
    queued_bytes: int
    running: int
    done: bool


def rows(executor: Any) -> list[OpProgress]:
    now = time.monotonic()
    out = []
    for op in executor.ops:
        s = op.stats
        elapsed = max(1e-6, (s.finished or now) - s.started)
        out.append(
            OpProgress(
                s.name,
                s.rows_out,
                s.total_rows,
                s.rows_out / elapsed,
                max(0, op.queued_bytes),
                op.usage().running,
                op.completed(),
            )
        )
    return out


def _in_kernel() -> bool:
    """True in a Jupyter kernel. rayjupyter.notebook.kernel.in_kernel asks the same, but this
    library uses only the public API (test_data_plan), so it keeps its own copy."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class TextProgress:
    """The terminal view: one line rewritten in place, a summary line at the end."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.started = time.monotonic()

    @staticmethod
    def line(progress: list[OpProgress]) -> str:
        parts = []
        for row in progress:
            total = f"/{row.total_rows:,}" if row.total_rows else ""
            parts.append(f"{row.name}: {row.rows:,}{total} rows")
        return " | ".join(parts)

    def __call__(self, executor: Any) -> None:
        progress = rows(executor)
        if executor.finished:
            elapsed = time.monotonic() - self.started
            self.stream.write(f"\r{self.line(progress)} | done in {elapsed:.1f} s\n")
        else:
            self.stream.write(f"\r{self.line(progress)[:200]}")
        self.stream.flush()


def progress_callback(specs: list[PhysicalSpec], ctx: DataContext) -> Callable[[Any], None] | None:
    """A widget in a kernel, a line on a terminal's stderr, nothing in logs or when
    ``DataContext.enable_progress_bars`` is False."""
    if not ctx.enable_progress_bars:
        return None
    if _in_kernel():
        try:
            from rayjupyter.data.display import WidgetProgress
        except ImportError:
            return None
        return WidgetProgress(specs)
    import sys

    stream = sys.stderr
    if stream is not None and stream.isatty():
        return TextProgress(stream)
    return None
