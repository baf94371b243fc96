"""The live view of an experiment: one model (a row per trial) and two views, a text
table outside a kernel and one HTML widget inside it, picked by where we run."""

from __future__ import annotations

import html
import math
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from rayjupyter.tune.trial import Trial, TrialState

TEXT_INTERVAL_S = 5.0  # a text table is printed at most this often (and at the end)
WIDGET_INTERVAL_S = 0.5
MAX_ROWS = 50  # the widget and the table show this many trials (the best first)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class TrialTableModel:
    """Rows of (trial, state, config, iterations, latest and best metric)."""

    SORT_KEYS = ("best", "trial", "state", "iterations")

    def __init__(self, metric: str | None, mode: str | None) -> None:
        self.metric, self.mode = metric, mode
        self.started = time.monotonic()
        self.sort_by = "best" if metric else "trial"

    def best(self, trial: Trial) -> float | None:
        if not self.metric:
            return None
        values = [float(r[self.metric]) for r in trial.history if self.metric in r]
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return None
        return max(values) if self.mode == "max" else min(values)

    def rows(self, trials: list[Trial]) -> list[list[str]]:
        def by_best(trial: Trial) -> tuple[int, float]:
            best = self.best(trial)
            if best is None:
                return (1, 0.0)
            return (0, -best if self.mode == "max" else best)

        if self.sort_by == "best":
            ordered = sorted(trials, key=by_best)
        elif self.sort_by == "state":
            ordered = sorted(trials, key=lambda t: t.state.value)
        elif self.sort_by == "iterations":
            ordered = sorted(trials, key=lambda t: -t.last_result.get("training_iteration", 0))
        else:
            ordered = list(trials)
        out = []
        for trial in ordered[:MAX_ROWS]:
            last = trial.last_result
            config = ", ".join(
                f"{k}={_fmt(v)}" for k, v in trial.config.items() if not isinstance(v, dict)
            )
            latest = last.get(self.metric) if self.metric else None
            best = self.best(trial)
            out.append(
                [
                    trial.trial_name,
                    trial.state.value,
                    config,
                    str(last.get("training_iteration", 0)),
                    "" if latest is None else _fmt(latest),
                    "" if best is None else _fmt(best),
                ]
            )
        return out

    def header(self) -> list[str]:
        metric = self.metric or "metric"
        return ["trial", "state", "config", "iter", metric, f"best {metric}"]

    def summary(self, trials: list[Trial]) -> str:
        counts: dict[str, int] = {}
        for trial in trials:
            counts[trial.state.value] = counts.get(trial.state.value, 0) + 1
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        return f"{len(trials)} trials ({states}), {time.monotonic() - self.started:.1f} s"


def text_table(model: TrialTableModel, trials: list[Trial]) -> str:
    rows = [model.header(), *model.rows(trials)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join([model.summary(trials), *lines])


class TextReporter:
    def __init__(self, model: TrialTableModel, stream: IO[str] | None = None) -> None:
        self.model, self.stream = model, stream or sys.stdout
        self._last = 0.0
        self._trials: list[Trial] = []

    def __call__(self, trials: list[Trial]) -> None:
        self._trials = trials
        now = time.monotonic()
        if now - self._last >= TEXT_INTERVAL_S:
            self._last = now
            self.stream.write(text_table(self.model, trials) + "\n\n")

    def close(self) -> None:
        self.stream.write(text_table(self.model, self._trials) + "\n")


_STATE_STYLE = {
    TrialState.TERMINATED.value: "opacity:0.6",
    TrialState.ERROR.value: "color:var(--jp-error-color1, #d32f2f)",
    TrialState.PAUSED.value: "opacity:0.8;font-style:italic",
}


def html_table(model: TrialTableModel, trials: list[Trial]) -> str:
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in model.header())
    body = []
    for row in model.rows(trials):
        style = _STATE_STYLE.get(row[1], "")
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in row)
        body.append(f"<tr style='{style}'>{cells}</tr>")
    return (
        "<div style='font-family:var(--jp-code-font-family, monospace);"
        "font-size:var(--jp-code-font-size, 12px)'>"
        f"<div>{html.escape(model.summary(trials))}</div>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f",
)  # fmt: skip
MAX_LINES = 40  # trials drawn in the chart (the first ones made); the table shows the rest
MAX_POINTS = 1000  # points kept per trial's line (older ones roll off)
_GREY = "#b0b0b0"


class TrialChart:
    """A bokeh figure: the metric over ``training_iteration``, one line per trial, lines of
    finished trials greyed. ``update`` streams only the rows each trial added since."""

    def __init__(self, metric: str) -> None:
        from bokeh.plotting import figure

        self.metric = metric
        self.figure = figure(
            title=f"{metric} per trial", height=260, width=640, tools="pan,wheel_zoom,reset"
        )
        self.figure.xaxis.axis_label = "training_iteration"
        self.figure.yaxis.axis_label = metric
        self._lines: dict[str, tuple[Any, Any, int]] = {}  # trial -> (source, renderer, rows)

    def update(self, trials: list[Trial]) -> None:
        from bokeh.models import ColumnDataSource

        for trial in trials:
            entry = self._lines.get(trial.trial_id)
            if entry is None:
                if len(self._lines) >= MAX_LINES:
                    continue
                source = ColumnDataSource(data={"x": [], "y": []})
                colour = _PALETTE[len(self._lines) % len(_PALETTE)]
                line = self.figure.line("x", "y", source=source, color=colour, line_width=2)
                entry = (source, line, 0)
            source, line, seen = entry
            fresh = [r for r in trial.history[seen:] if self.metric in r]
            if fresh:
                source.stream(
                    {
                        "x": [r.get("training_iteration", 0) for r in fresh],
                        "y": [float(r[self.metric]) for r in fresh],
                    },
                    rollover=MAX_POINTS,
                )
            if trial.is_finished and line.glyph.line_color != _GREY:
                line.glyph.line_color, line.glyph.line_alpha = _GREY, 0.6
            self._lines[trial.trial_id] = (source, line, len(trial.history))


class WidgetReporter:
    """One widget redrawn in place while ``fit()`` runs: the HTML table of trials and,
    with a metric and bokeh installed, the chart of the metric per trial."""

    def __init__(self, model: TrialTableModel) -> None:
        import ipywidgets
        from IPython.display import display

        self.model = model
        self.table = ipywidgets.HTML(value=html_table(model, []))
        self.sort = ipywidgets.Dropdown(
            options=list(model.SORT_KEYS), value=model.sort_by, description="sort by"
        )
        self.sort.observe(self._resort, names="value")
        self.chart: TrialChart | None = None
        children: list[Any] = [self.sort, self.table]
        if model.metric:
            try:
                from jupyter_bokeh.widgets import BokehModel

                from rayjupyter.notebook.charts import _load_bokehjs

                _load_bokehjs()
                self.chart = TrialChart(model.metric)
                children.append(BokehModel(self.chart.figure))
            except ImportError:  # the notebook extra is not installed: the table alone
                self.chart = None
        self.widget = ipywidgets.VBox(children)
        display(self.widget)  # type: ignore[no-untyped-call]
        self._last = 0.0
        self._trials: list[Trial] = []

    def _resort(self, change: dict[str, Any]) -> None:
        self.model.sort_by = str(change["new"])
        self.table.value = html_table(self.model, self._trials)

    def _draw(self) -> None:
        self.table.value = html_table(self.model, self._trials)
        if self.chart is not None:
            self.chart.update(self._trials)

    def __call__(self, trials: list[Trial]) -> None:
        self._trials = trials
        now = time.monotonic()
        if now - self._last >= WIDGET_INTERVAL_S:
            self._last = now
            self._draw()

    def close(self) -> None:
        self._draw()


def make_reporter(
    metric: str | None, mode: str | None, verbose: int
) -> Callable[[list[Trial]], None] | None:
    if verbose <= 0:
        return None
    from rayjupyter.notebook.kernel import in_kernel

    model = TrialTableModel(metric, mode)
    if in_kernel():
        try:
            return WidgetReporter(model)
        except ImportError:
            pass
    return TextReporter(model)
