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

    def __init__(self, metric: str | None, mode: str | None) -> None:
        self.metric, self.mode = metric, mode
        self.started = time.monotonic()

    def best(self, trial: Trial) -> float | None:
        if not self.metric:
            return None
        values = [float(r[self.metric]) for r in trial.history if self.metric in r]
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return None
        return max(values) if self.mode == "max" else min(values)

    def rows(self, trials: list[Trial]) -> list[list[str]]:
        def order(trial: Trial) -> tuple[int, float]:
            best = self.best(trial)
            if best is None:
                return (1, 0.0)
            return (0, -best if self.mode == "max" else best)

        out = []
        for trial in sorted(trials, key=order)[:MAX_ROWS]:
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


class WidgetReporter:
    """One ``ipywidgets.HTML`` table, redrawn in place while ``fit()`` runs."""

    def __init__(self, model: TrialTableModel) -> None:
        import ipywidgets
        from IPython.display import display

        self.model = model
        self.widget = ipywidgets.HTML(value=html_table(model, []))
        display(self.widget)  # type: ignore[no-untyped-call]
        self._last = 0.0
        self._trials: list[Trial] = []

    def __call__(self, trials: list[Trial]) -> None:
        self._trials = trials
        now = time.monotonic()
        if now - self._last >= WIDGET_INTERVAL_S:
            self._last = now
            self.widget.value = html_table(self.model, trials)

    def close(self) -> None:
        self.widget.value = html_table(self.model, self._trials)


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
