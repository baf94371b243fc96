"""Cluster summary and status as HTML (themed by JupyterLab's ``--jp-*`` variables) and text.

Pure string rendering from the node's status snapshot (``read_models.NodeStatus``), so it
stays in core (which never imports Jupyter) and the notebook, the terminal and the
dashboard show the same facts.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from rayjupyter.core.state_names import TASK_STATES

if TYPE_CHECKING:
    from rayjupyter.core.read_models import NodeStatus  # (what it renders: built elsewhere)

#: resources counted in bytes (shown apart from the counts: the store, and tasks' memory=)
_BYTE_RESOURCES = ("object_store_memory", "memory")

# Each var() has a fallback, so the HTML also reads well outside JupyterLab (VS Code, nbviewer).
_BOX = (
    "font-family: var(--jp-ui-font-family, sans-serif); "
    "font-size: var(--jp-ui-font-size1, 13px); color: var(--jp-ui-font-color1, #212121); "
    "background: var(--jp-layout-color1, transparent); "
    "border: var(--jp-border-width, 1px) solid var(--jp-border-color2, #e0e0e0); "
    "border-radius: 4px; padding: 6px 10px; margin: 2px 0; display: inline-block; "
    "min-width: 22em"
)
_TITLE = "font-weight: 600; font-size: var(--jp-ui-font-size2, 14px); margin-bottom: 4px"
_TABLE = "border-collapse: collapse; margin: 0"
_KEY = (
    "text-align: left; padding: 1px 12px 1px 0; color: var(--jp-ui-font-color2, #616161); "
    "font-weight: normal; white-space: nowrap"
)
_VALUE = (
    "text-align: left; padding: 1px 8px 1px 0; font-family: var(--jp-code-font-family, monospace)"
)
_HEAD = (
    "text-align: left; padding: 2px 10px 2px 0; font-weight: 600; "
    "border-bottom: 1px solid var(--jp-border-color2, #e0e0e0)"
)
_SECTION = "font-weight: 600; margin: 6px 0 2px 0"
_MUTED = "color: var(--jp-ui-font-color2, #616161)"
_OK = "color: var(--jp-success-color1, #388e3c)"
_BAD = "color: var(--jp-error-color1, #d32f2f)"


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB': sizes as people read them."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop always returns


def format_amount(value: float) -> str:
    """2.0 -> '2', 0.5 -> '0.5': resource amounts without float noise."""
    return f"{value:g}"


def summary_rows(
    address: str,
    local: bool,
    status: NodeStatus | None,
    dashboard_url: str | None,
) -> list[tuple[str, str]]:
    """(label, value) rows of the cluster summary; the text and HTML views share them."""
    rows = [("address", address)]
    if status is None:
        rows.append(("state", "not connected"))
        return rows
    total = status.total
    free = status.available
    alive = status.alive_nodes
    listed = str(len(alive))
    if len(alive) > 1:  # which machines, and what each offers
        listed += ": " + "; ".join(
            f"{row.address} ("
            + ", ".join(
                f"{k} {format_amount(v)}"
                for k, v in sorted(row.Resources.items())
                if k not in _BYTE_RESOURCES
            )
            + ")"
            for row in alive
        )
    rows.append(("nodes", listed))
    cpus = total.get("CPU", 0.0)
    rows.append(("CPUs", f"{format_amount(cpus)} ({format_amount(free.get('CPU', 0.0))} free)"))
    rows.append(("GPUs", format_amount(total.get("GPU", 0.0))))
    machine = status.machine
    if machine.memory_total:
        rows.append(
            (
                "memory",
                f"{format_bytes(machine.memory_used)} used of {format_bytes(machine.memory_total)}",
            )
        )
    store = status.store
    capacity = store.capacity or total.get("object_store_memory", 0.0)
    rows.append(
        (
            "object store",
            f"{format_bytes(store.used_bytes)} used of {format_bytes(capacity)}"
            + _store_place(status),
        )
    )
    custom = sorted(k for k in total if k not in ("CPU", "GPU", *_BYTE_RESOURCES))
    if custom:
        rows.append(("resources", ", ".join(f"{k}: {format_amount(total[k])}" for k in custom)))
    rows.append(("dashboard", dashboard_url or "not running (%ray_dashboard shows live charts)"))
    if not local:
        rows.append(("owner", "attached: the cluster keeps running after this process"))
    return rows


def summary_title(local: bool) -> str:
    return "rayjupyter · local cluster" if local else "rayjupyter · cluster"


def summary_text(
    address: str,
    local: bool,
    status: NodeStatus | None,
    dashboard_url: str | None = None,
    *,
    title: str | None = None,
) -> str:
    """A few aligned lines for terminals and ``repr`` in IPython."""
    rows = summary_rows(address, local, status, dashboard_url)
    width = max(len(label) for label, _ in rows)
    lines = [title or summary_title(local)]
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines)


def summary_html(
    address: str,
    local: bool,
    status: NodeStatus | None,
    dashboard_url: str | None = None,
    *,
    title: str | None = None,
) -> str:
    """A small themed card: what ``rj.init()`` and ``%ray_connect`` show in a notebook
    (``title``: another engine's name, for a Ray cluster)."""
    rows = summary_rows(address, local, status, dashboard_url)
    body = []
    for label, value in rows:
        if label == "dashboard" and dashboard_url:
            url = html.escape(dashboard_url)
            cell = f'<a href="{url}" target="_blank">{html.escape(value)}</a>'
        else:
            cell = html.escape(value)
        body.append(
            f'<tr><th style="{_KEY}">{html.escape(label)}</th><td style="{_VALUE}">{cell}</td></tr>'
        )
    state = (
        f'<span style="{_BAD}">● disconnected</span>'
        if status is None
        else f'<span style="{_OK}">● connected</span>'
    )
    return (
        f'<div class="rayjupyter-summary" style="{_BOX}">'
        f'<div style="{_TITLE}">{html.escape(title or summary_title(local))} {state}</div>'
        f'<table style="{_TABLE}">{"".join(body)}</table></div>'
    )


# ------------------------------------------------------------------ status


def _resource_rows(status: NodeStatus) -> list[tuple[str, str, str, str]]:
    """(resource, used, total, percent) for every resource the cluster has."""
    total = status.total
    free = status.available
    store = status.store
    rows = []
    for key in sorted(total, key=lambda k: (k != "CPU", k != "GPU", k)):
        if key == "object_store_memory":
            used = float(store.used_bytes)
            cap = float(store.capacity or total[key])
            rows.append(("object store", format_bytes(used), format_bytes(cap), _pct(used, cap)))
            continue
        cap = float(total[key])
        used = max(cap - float(free.get(key, 0.0)), 0.0)
        show = format_bytes if key == "memory" else format_amount
        rows.append((key, show(used), show(cap), _pct(used, cap)))
    return rows


def _pct(used: float, cap: float) -> str:
    return f"{100.0 * used / cap:.0f}%" if cap else "-"


def _node_rows(status: NodeStatus) -> list[tuple[str, str, str, str]]:
    """(node id, address, state, resources) per node."""
    rows = []
    for node in status.nodes:
        shown = ", ".join(
            f"{k}: {format_amount(v)}"
            for k, v in node.Resources.items()
            if k not in _BYTE_RESOURCES
        )
        machine = status.node_machines.get(node.NodeID)
        if machine is not None and node.Alive:  # Ray: each node's machine, from its agent
            shown += (
                f"; machine CPU {machine.cpu_percent:.0f}%, memory "
                f"{format_bytes(machine.memory_used)} of {format_bytes(machine.memory_total)}"
            )
        state = "alive" if node.Alive else "dead"
        rows.append((node.NodeID[:16], node.address, state, shown))
    return rows


def _count_rows(counts: Mapping[str, int], order: Sequence[str] = ()) -> list[tuple[str, str]]:
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    return [(k.lower(), str(counts[k])) for k in keys]


def _machine_line(status: NodeStatus) -> str:
    machine = status.machine
    if not machine.memory_total:
        return ""
    return (
        f"CPU {machine.cpu_percent:.0f}%, memory "
        f"{format_bytes(machine.memory_used)} of "
        f"{format_bytes(machine.memory_total)}"
    )


def _store_place(status: NodeStatus) -> str:
    """Where the store is, when not where it is expected (/dev/shm too small for it)."""
    store = status.store
    if store.directory == "/dev/shm":
        return ""
    return f", in files under {store.directory} (/dev/shm too small)"


def _process_line(status: NodeStatus) -> str:
    return f"{status.workers} task workers, {status.drivers} drivers"


def status_text(status: NodeStatus) -> str:
    """``%ray_status`` for terminals: nodes, resource use, tasks and actors by state."""
    lines = ["Nodes"]
    lines += [f"  {i}  {a}  {s}  {r}" for i, a, s, r in _node_rows(status)]
    lines.append("Resources (used / total)")
    lines += [f"  {n:<14} {u} / {t}  ({p})" for n, u, t, p in _resource_rows(status)]
    tasks = _count_rows(status.tasks, TASK_STATES)
    lines.append("Tasks: " + (", ".join(f"{n} {s}" for s, n in tasks) if tasks else "none"))
    actors = _count_rows(status.actors)
    lines.append("Actors: " + (", ".join(f"{n} {s}" for s, n in actors) if actors else "none"))
    lines.append("Processes: " + _process_line(status))
    if status.store.note:
        lines.append("Object store: " + status.store.note)
    machine = _machine_line(status)
    if machine:
        lines.append("Machine: " + machine)
    return "\n".join(lines)


def _html_table(head: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = "".join(f'<th style="{_HEAD}">{html.escape(h)}</th>' for h in head)
    body = "".join(
        "<tr>" + "".join(f'<td style="{_VALUE}">{html.escape(c)}</td>' for c in row) + "</tr>"
        for row in rows
    )
    return f'<table style="{_TABLE}"><tr>{header}</tr>{body}</table>'


def _html_counts(title: str, counts: list[tuple[str, str]]) -> str:
    text = ", ".join(f"{n} {s}" for s, n in counts) if counts else "none"
    return f'<div style="{_SECTION}">{html.escape(title)}</div><div>{html.escape(text)}</div>'


def status_html(status: NodeStatus) -> str:
    """``%ray_status`` in a notebook: the same facts as status_text, as a themed card."""
    parts = [
        f'<div class="rayjupyter-status" style="{_BOX}">',
        f'<div style="{_TITLE}">rayjupyter · cluster status</div>',
        f'<div style="{_SECTION}">Nodes</div>',
        _html_table(("node", "address", "state", "resources"), _node_rows(status)),
        f'<div style="{_SECTION}">Resources</div>',
        _html_table(("resource", "used", "total", "use"), _resource_rows(status)),
        _html_counts("Tasks", _count_rows(status.tasks, TASK_STATES)),
        _html_counts("Actors", _count_rows(status.actors)),
        f'<div style="{_SECTION}">Processes</div><div>{html.escape(_process_line(status))}</div>',
    ]
    if status.store.note:
        parts.append(
            f'<div style="{_SECTION}">Object store</div><div>{html.escape(status.store.note)}</div>'
        )
    machine = _machine_line(status)
    if machine:
        parts.append(f'<div style="{_MUTED}; margin-top: 4px">{html.escape(machine)}</div>')
    parts.append("</div>")
    return "".join(parts)
