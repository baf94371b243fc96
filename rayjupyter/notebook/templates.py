"""Small HTML snippets for the widgets and reprs, themed with JupyterLab's --jp-* variables.

Every var() carries a fallback so the same HTML reads well in VS Code and nbviewer.
"""

from __future__ import annotations

import html
import time

from rayjupyter.notebook.progress_model import Row, format_elapsed

_TEXT = (
    "font-family: var(--jp-ui-font-family, sans-serif); font-size: var(--jp-ui-font-size1, 13px)"
)
_MUTED = "color: var(--jp-ui-font-color2, #616161)"
_MONO = "font-family: var(--jp-code-font-family, monospace)"
_STATE_COLOURS = {
    "queued": "var(--jp-ui-font-color2, #616161)",
    "running": "var(--jp-brand-color1, #1976d2)",
    "finished": "var(--jp-success-color1, #388e3c)",
    "failed": "var(--jp-error-color1, #d32f2f)",
    "cancelled": "var(--jp-warn-color1, #f57c00)",
    "timed out": "var(--jp-warn-color1, #f57c00)",
}


def progress_header(finished: int, total: int, failed: int, elapsed: float, complete: bool) -> str:
    """'12/20 tasks finished · 1 failed · 3.2 s' above the bars."""
    parts = [f"<b>{finished}/{total}</b> tasks finished"]
    if failed:
        parts.append(f'<span style="color: var(--jp-error-color1, #d32f2f)">{failed} failed</span>')
    parts.append(f'<span style="{_MUTED}">{format_elapsed(elapsed)}</span>')
    if complete:
        parts.append(f'<span style="{_MUTED}">done</span>')
    return f'<div style="{_TEXT}">{" · ".join(parts)}</div>'


def progress_counts(row: Row) -> str:
    """The counts beside one function's bar."""
    why = f" ({html.escape(', '.join(row.errors))})" if row.errors else ""
    failed = (
        f' · <span style="color: var(--jp-error-color1, #d32f2f)">{row.failed} failed{why}</span>'
        if row.failed
        else " · 0 failed"
    )
    return (
        f'<span style="{_TEXT}; {_MONO}">{row.done}/{row.total}</span>'
        f'<span style="{_TEXT}; {_MUTED}"> · {row.running} running · {row.pending} pending'
        f"{failed}</span>"
    )


def cell_state(name: str, state: str, elapsed: float, detail: str = "") -> str:
    """The line a ``%%remote --no-block`` cell shows: its task, state and time."""
    colour = _STATE_COLOURS.get(state, "inherit")
    extra = f' · <span style="{_MUTED}">{html.escape(detail)}</span>' if detail else ""
    return (
        f'<div style="{_TEXT}"><span style="{_MONO}">{html.escape(name)}</span> · '
        f'<b style="color: {colour}">{html.escape(state)}</b> · '
        f'<span style="{_MUTED}">{format_elapsed(elapsed)}</span>{extra}</div>'
    )


def arrival_note(names: list[str], skipped: dict[str, str], missing: list[str]) -> str:
    """Plain-text note written under a finished ``%%remote --no-block`` cell."""
    stamp = time.strftime("%H:%M:%S")
    if names:
        text = f"[{stamp}] {', '.join(names)} arrived in the notebook namespace."
    else:
        text = f"[{stamp}] finished; no names to bring back."
    return text + "".join(f"\n{line}" for line in skipped_lines(skipped, missing))


def skipped_lines(skipped: dict[str, str], missing: list[str]) -> list[str]:
    """Why some names did not come back from a ``%%remote`` cell."""
    lines = [f"%%remote: {name!r} was not brought back: {why}" for name, why in skipped.items()]
    if missing:
        lines.append(
            f"%%remote: --pull named {', '.join(map(repr, missing))}, not defined after the cell."
        )
    return lines
