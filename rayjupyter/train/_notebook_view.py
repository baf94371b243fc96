"""The notebook's view of a run: a header, the workers (rank, node, pid, state), a bokeh
line chart of the numeric metrics per step, and the newest checkpoints. Widgets update
from the thread running ``fit()`` while the cell executes."""

from __future__ import annotations

import html
from typing import Any

from rayjupyter.train._checkpoint import Checkpoint
from rayjupyter.train._reports import Step
from rayjupyter.train._view import MAX_CHECKPOINTS_SHOWN, RunModel, numeric

MAX_POINTS = 10_000  # steps kept in the chart; older ones roll off
_TEXT = (
    "font-family: var(--jp-ui-font-family, sans-serif); font-size: var(--jp-ui-font-size1, 13px)"
)
_MUTED = "color: var(--jp-ui-font-color2, #616161)"
_MONO = "font-family: var(--jp-code-font-family, monospace)"
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
_STATE = {
    "running": "var(--jp-brand-color1, #1976d2)",
    "restarting": "var(--jp-warn-color1, #f57c00)",
    "finished": "var(--jp-success-color1, #388e3c)",
    "failed": "var(--jp-error-color1, #d32f2f)",
}


def header_html(model: RunModel) -> str:
    colour = _STATE.get(model.status, "inherit")
    steps = model.last_step.index + 1 if model.last_step else 0
    parts = [
        f"<b>{html.escape(model.name)}</b>",
        f'<b style="color: {colour}">{html.escape(model.status)}</b>',
        f"{steps} steps",
        f'<span style="{_MUTED}">{model.elapsed:.1f} s</span>',
    ]
    if model.failures:
        parts.append(f"{model.failures} restart(s)")
    if model.error is not None:
        parts.append(html.escape(f"{type(model.error).__name__}: {model.error}"[:200]))
    return f'<div style="{_TEXT}">{" · ".join(parts)}</div>'


def workers_html(model: RunModel) -> str:
    rows = "".join(
        f"<tr><td>{w.rank}</td><td style='{_MONO}'>{html.escape(w.node_id[:8])}</td>"
        f"<td>{html.escape(w.ip)}</td><td>{w.pid}</td>"
        f"<td style='color: {_STATE.get(w.state, 'inherit')}'>{html.escape(w.state)}</td></tr>"
        for w in model.workers
    )
    head = "<tr><th>rank</th><th>node</th><th>address</th><th>pid</th><th>state</th></tr>"
    return f'<table style="{_TEXT}">{head}{rows}</table>'


def checkpoints_html(model: RunModel) -> str:
    newest = model.checkpoints[-MAX_CHECKPOINTS_SHOWN:]
    if not newest:
        return f'<div style="{_TEXT}; {_MUTED}">no checkpoint yet</div>'
    items = "".join(f"<li style='{_MONO}'>{html.escape(p)}</li>" for p in reversed(newest))
    return f'<div style="{_TEXT}">checkpoints ({len(model.checkpoints)}):<ul>{items}</ul></div>'


class NotebookView:
    def __init__(self, model: RunModel) -> None:
        import ipywidgets as widgets

        from rayjupyter.notebook.ipython_typed import display

        self.header = widgets.HTML(header_html(model))
        self.workers = widgets.HTML(workers_html(model))
        self.checkpoints = widgets.HTML(checkpoints_html(model))
        self.chart_box = widgets.Box()
        self.source: Any = None
        self.figure: Any = None
        self.keys: list[str] = []
        box = widgets.VBox([self.header, self.workers, self.chart_box, self.checkpoints])
        display(box)

    def _chart(self, keys: list[str]) -> None:
        """The chart, made at the first step (the metric names are known only then)."""
        from bokeh.models import ColumnDataSource
        from bokeh.plotting import figure
        from jupyter_bokeh.widgets import BokehModel

        from rayjupyter.notebook.charts import _load_bokehjs

        _load_bokehjs()
        self.keys = keys
        self.source = ColumnDataSource(data={"step": [], **{k: [] for k in keys}})
        self.figure = figure(
            title="metrics per step", height=240, width=600, tools="pan,wheel_zoom,reset"
        )
        for index, key in enumerate(keys):
            colour = _COLOURS[index % len(_COLOURS)]
            self.figure.line("step", key, source=self.source, legend_label=key, color=colour)
        self.figure.legend.location = "top_left"
        self.figure.legend.click_policy = "hide"
        self.chart_box.children = (BokehModel(self.figure),)

    def workers_changed(self, model: RunModel) -> None:
        self.header.value = header_html(model)
        self.workers.value = workers_html(model)

    def step_added(self, model: RunModel, step: Step, checkpoint: Checkpoint | None) -> None:
        values = numeric(step.metrics)
        if self.source is None and values:
            self._chart(sorted(values))
        if self.source is not None:
            row = {"step": [step.index], **{k: [values.get(k, float("nan"))] for k in self.keys}}
            self.source.stream(row, rollover=MAX_POINTS)
        self.header.value = header_html(model)
        if checkpoint is not None:
            self.checkpoints.value = checkpoints_html(model)

    def ended(self, model: RunModel) -> None:
        self.workers_changed(model)
        self.checkpoints.value = checkpoints_html(model)
