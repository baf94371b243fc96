"""The numbers behind the pages, as columns for bokeh sources: no bokeh, no I/O.

Times become milliseconds since the epoch (bokeh's datetime axis); sizes stay in bytes
(the axes format them).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rayjupyter.core.read_models import FAILED, FINISHED, RUNNING, NodeRow, NodeStatus

Columns = dict[str, list[Any]]

# Category10, then Category20's light shades: functions get colours in order of appearance
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#dbdb8d",
    "#9edae5",
)
FAILED_COLOUR = "#d62728"


def colour(name: str, taken: dict[str, str]) -> str:
    """A function's colour: the next unused one when it first shows up."""
    if name not in taken:
        taken[name] = PALETTE[len(taken) % len(PALETTE)]
    return taken[name]


def usage_row(status: NodeStatus | None) -> Columns:
    """One sample of the overview's time charts from a status snapshot (None: zeros, for
    charts drawn before the first snapshot)."""
    if status is None:
        return {key: [0.0] for key in USAGE_KEYS}
    machine = status.machine
    store = status.store
    cpus = float(status.total.get("CPU", 0.0))
    return {
        "time": [machine.time * 1000.0],
        "cpu": [machine.cpu_percent],
        "cpu_slots": [100.0 * status.used("CPU") / cpus if cpus else 0.0],
        "memory_used": [machine.memory_used],
        "memory_total": [machine.memory_total],
        "store_used": [float(store.used_bytes)],
        "store_capacity": [float(store.capacity)],
        "store_spilled": [float(store.spilled_bytes)],
        "running": [status.tasks_running],
        "pending": [status.tasks_pending],
    }


USAGE_KEYS = (
    "time",
    "cpu",
    "cpu_slots",
    "memory_used",
    "memory_total",
    "store_used",
    "store_capacity",
    "store_spilled",
    "running",
    "pending",
)


def usage_rows(history: Iterable[NodeStatus], after: float) -> Columns:
    """The samples taken after ``after`` (ms), in order, as one block of columns."""
    rows: Columns = {}
    for status in history:
        row = usage_row(status)
        if row["time"][0] <= after:
            continue
        for key, values in row.items():
            rows.setdefault(key, []).extend(values)
    return rows


def node_columns(nodes: Sequence[NodeRow]) -> Columns:
    return {
        "node_id": [n.NodeID[:12] for n in nodes],
        "address": [n.address for n in nodes],
        "alive": ["alive" if n.Alive else "dead" for n in nodes],
        "cpus": [n.Resources.get("CPU", 0.0) for n in nodes],
        "gpus": [n.Resources.get("GPU", 0.0) for n in nodes],
        "store": [n.Resources.get("object_store_memory", 0.0) for n in nodes],
        "started": [n.StartTime * 1000.0 for n in nodes],
    }


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def summary_cards(status: NodeStatus) -> str:
    """HTML cards of the headline numbers (CPUs, tasks, actors, workers, store)."""
    total = status.total
    store = status.store
    cpus = float(total.get("CPU", 0.0))
    cards = [
        ("nodes", str(len(status.alive_nodes))),
        ("CPUs in use", f"{status.used('CPU'):g} / {cpus:g}"),
        ("tasks running", str(status.tasks_running)),
        ("tasks pending", str(status.tasks_pending)),
        ("actors alive", str(status.actors.get("ALIVE", 0))),
        ("workers", str(status.workers)),
        ("drivers", str(status.drivers)),
        ("object store", f"{human_bytes(store.used_bytes)} / {human_bytes(store.capacity)}"),
    ]
    if float(total.get("GPU", 0.0)):
        gpus = float(total["GPU"])
        cards.insert(2, ("GPUs in use", f"{status.used('GPU'):g} / {gpus:g}"))
    items = "".join(
        f'<div class="rj-card"><div class="rj-value">{html.escape(value)}</div>'
        f'<div class="rj-label">{html.escape(label)}</div></div>'
        for label, value in cards
    )
    return CARD_STYLE + f'<div class="rj-cards">{items}</div>'


CARD_STYLE = """<style>
.rj-cards { display: flex; flex-wrap: wrap; gap: 8px; font-family: system-ui, sans-serif; }
.rj-card { border: 1px solid #ddd; border-radius: 6px; padding: 6px 12px; min-width: 110px; }
.rj-value { font-size: 18px; font-weight: 600; }
.rj-label { font-size: 12px; color: #666; }
</style>"""


def stream_columns(rows: Sequence[Mapping[str, Any]], colours: dict[str, str]) -> Columns:
    """Task-stream bars: one per finished or failed task, on its worker's lane."""
    columns: Columns = {
        key: [] for key in ("start", "end", "worker", "name", "colour", "line", "state", "duration")
    }
    for row in rows:
        failed = row["state"] == FAILED
        columns["start"].append(row["start_time"] * 1000.0)
        columns["end"].append(row["end_time"] * 1000.0)
        columns["worker"].append(f"worker {row['worker_pid']}")
        columns["name"].append(row["name"])
        columns["colour"].append(colour(row["name"], colours))
        columns["line"].append(FAILED_COLOUR if failed else "white")
        columns["state"].append(row["state"])
        columns["duration"].append(row["end_time"] - row["start_time"])
    return columns


PROGRESS_PARTS = ("finished", "running", "pending", "failed")


def progress_columns(summary: Mapping[str, Mapping[str, int]]) -> Columns:
    """Per function: the fraction of its tasks finished, running, pending and failed."""
    columns: Columns = {key: [] for key in ("name", "total", "label", *PROGRESS_PARTS)}
    for part in PROGRESS_PARTS:
        columns[f"{part}_n"] = []
    for name, states in summary.items():
        counts = {
            "finished": states.get(FINISHED, 0),
            "running": states.get(RUNNING, 0),
            "failed": states.get(FAILED, 0),
        }
        counts["pending"] = sum(states.values()) - sum(counts.values())
        total = max(sum(counts.values()), 1)
        columns["name"].append(name)
        columns["total"].append(total)
        for part in PROGRESS_PARTS:
            columns[part].append(counts[part] / total)
            columns[f"{part}_n"].append(counts[part])
        label = f"{counts['finished']} / {total}"
        if counts["failed"]:
            label += f" ({counts['failed']} failed)"
        columns["label"].append(label)
    return columns


def table_columns(rows: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> Columns:
    """Rows as columns for a DataTable, None shown as empty (ids stay whole: they share
    their owner's prefix, so a shortened id would not tell objects apart)."""
    return {key: ["" if row.get(key) is None else row.get(key) for row in rows] for key in keys}


def log_html(workers: Sequence[Mapping[str, Any]], pid: int | None, limit: int = 500) -> str:
    """The chosen worker's lines (or everyone's, by time), stderr in red, escaped."""
    lines: list[tuple[float, int, str]] = []
    for worker in workers:
        if pid is not None and worker["pid"] != pid:
            continue
        label = "" if pid is not None else f"({worker['name']} pid={worker['pid']}) "
        lines.extend((at, stream, label + text) for at, stream, text in worker["lines"])
    lines.sort(key=lambda line: line[0])
    if not lines:
        return '<pre class="rj-log">(no output yet)</pre>'
    body = "\n".join(
        f'<span class="rj-err">{html.escape(text)}</span>' if stream == 2 else html.escape(text)
        for _, stream, text in lines[-limit:]
    )
    return LOG_STYLE + f'<pre class="rj-log">{body}</pre>'


LOG_STYLE = """<style>
.rj-log { font-size: 12px; background: #fafafa; border: 1px solid #ddd; padding: 8px;
  max-height: 75vh; overflow: auto; white-space: pre-wrap; display: block;
  width: calc(100vw - 40px); box-sizing: border-box; margin: 0; }
.rj-err { color: #c62828; }
</style>"""
