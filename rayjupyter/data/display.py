"""How datasets show themselves: the plan as text or as HTML in JupyterLab's theme
(``--jp-*`` variables, with fallbacks), tables for ``take_batch``/``show``, and the live
progress widget (one bar per operator, collapsed to a summary line at the end)."""

from __future__ import annotations

import html
import time
from typing import Any

from rayjupyter.data.plan import PhysicalSpec

_TEXT = (
    "font-family: var(--jp-ui-font-family, sans-serif); font-size: var(--jp-ui-font-size1, 13px)"
)
_MUTED = "color: var(--jp-ui-font-color2, #616161)"
_MONO = "font-family: var(--jp-code-font-family, monospace)"
_BORDER = "border-bottom: 1px solid var(--jp-border-color2, #e0e0e0)"


def _known(ds: Any) -> tuple[int | None, Any]:
    """The source's row count and schema, only where known without running anything."""
    from rayjupyter.data.plan import known_rows, known_schema, leaf

    source = leaf(ds._op)
    return known_rows(source), known_schema(source)


def _schema_text(schema: Any) -> str:
    if schema is None:
        return "Unknown schema"
    return (
        "{" + ", ".join(f"{n}: {t}" for n, t in zip(schema.names, schema.types, strict=True)) + "}"
    )


def dataset_text(ds: Any) -> str:
    """Ray's shape: the last operator first, the source as ``Dataset(num_rows, schema)``."""
    rows, schema = _known(ds)
    plan = ds._plan_lines()
    leaf = (
        f"{type(ds).__name__ if len(plan) == 1 else 'Dataset'}("
        f"num_rows={'?' if rows is None else rows}, schema={_schema_text(schema)})"
    )
    lines = [*plan[:-1], leaf]
    return "\n".join([lines[0]] + [f"{'   ' * i}+- {name}" for i, name in enumerate(lines[1:])])


def table_html(names: list[str], rows: list[list[Any]], caption: str = "") -> str:
    head = "".join(f'<th style="text-align:left; {_BORDER}">{html.escape(n)}</th>' for n in names)
    body = "".join(
        "<tr>"
        + "".join(f'<td style="{_MONO}">{html.escape(_short(v))}</td>' for v in row)
        + "</tr>"
        for row in rows
    )
    cap = (
        f'<caption style="{_MUTED}; text-align:left">{html.escape(caption)}</caption>'
        if caption
        else ""
    )
    return (
        f'<table style="{_TEXT}">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def dataset_html(ds: Any) -> str:
    rows, schema = _known(ds)
    plan = ds._plan_lines()
    steps = "".join(f'<li style="{_MONO}">{html.escape(name)}</li>' for name in plan)
    count = "?" if rows is None else f"{rows:,}"
    parts = [
        f'<div style="{_TEXT}"><b>{type(ds).__name__}</b> '
        f'<span style="{_MUTED}">num_rows={count}</span>',
        f'<div style="{_MUTED}">plan (last operator first)</div><ol>{steps}</ol>',
    ]
    if schema is not None:
        parts.append(
            table_html(
                ["column", "type"],
                [[n, str(t)] for n, t in zip(schema.names, schema.types, strict=True)],
                "schema",
            )
        )
    else:
        parts.append(
            f'<div style="{_MUTED}">schema: known once executed '
            "(ds.schema() or ds.materialize())</div>"
        )
    return "".join(parts) + "</div>"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class WidgetProgress:
    """The executor's progress callback in a kernel: an ipywidgets bar per operator."""

    def __init__(self, specs: list[PhysicalSpec]) -> None:
        import ipywidgets as w
        from IPython.display import display

        self.w = w
        self.started = time.monotonic()
        self.bars = [
            w.IntProgress(
                value=0,
                min=0,
                max=1,
                description=spec.name[:40],
                style={"description_width": "initial"},
                layout=w.Layout(width="55%"),
            )
            for spec in specs
        ]
        self.labels = [w.HTML() for _ in specs]
        self.header = w.HTML(f'<div style="{_TEXT}">rayjupyter.data: running</div>')
        self.box = w.VBox(
            [
                self.header,
                *[w.HBox([b, lab]) for b, lab in zip(self.bars, self.labels, strict=True)],
            ]
        )
        display(self.box)  # type: ignore[no-untyped-call]

    def __call__(self, executor: Any) -> None:
        from rayjupyter.data.progress import rows

        progress = rows(executor)
        for bar, label, row in zip(self.bars, self.labels, progress, strict=True):
            total = row.total_rows if row.total_rows else max(row.rows, 1)
            bar.max = max(total, 1)
            bar.value = min(row.rows, bar.max)
            bar.bar_style = "success" if row.done else ""
            label.value = (
                f'<span style="{_TEXT}; {_MUTED}">{row.rows:,} rows · '
                f"{row.rows_per_s:,.0f} rows/s · {row.running} running · "
                f"{_bytes(row.queued_bytes)} in store</span>"
            )
        if executor.finished:
            elapsed = time.monotonic() - self.started
            out = progress[-1].rows if progress else 0
            self.header.value = (
                f'<div style="{_TEXT}">rayjupyter.data: done · {out:,} rows '
                f"out · {len(progress)} operators · {elapsed:.1f} s · peak "
                f"store {_bytes(executor.peak_in_use)}</div>"
            )
            self.box.children = (self.header,)
