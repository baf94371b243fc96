"""The task stream: a bar per finished task, on its worker's lane, coloured by function
(failed ones outlined red), like dask's task stream; it follows the last few minutes."""

from __future__ import annotations

from bokeh.document import Document
from bokeh.models import ColumnDataSource, DataRange1d, FactorRange, HoverTool
from bokeh.plotting import figure

from rayjupyter.dashboard.feed import STREAM_KEEP
from rayjupyter.dashboard.page_data import stream_columns
from rayjupyter.dashboard.pages.common import PageContext, figure_options, mount

FOLLOW_MS = 5 * 60 * 1000  # the x axis shows at most the last five minutes while following


def make(doc: Document, context: PageContext) -> None:
    feed = context.feed
    colours: dict[str, str] = {}
    cursor, rows = feed.bars_since(0)
    source = ColumnDataSource(stream_columns(rows, colours))
    lanes = sorted(set(source.data["worker"]), key=_pid)
    y_range = FactorRange(factors=lanes or ["(no tasks yet)"])
    fig = figure(
        title="Task stream (finished tasks per worker; failed ones outlined red)",
        y_range=y_range,
        x_range=DataRange1d(follow="end", follow_interval=FOLLOW_MS, range_padding=0.02),
        **figure_options(x_axis_type="datetime", height=480, tools="xpan,xwheel_zoom,reset,save"),
    )
    fig.hbar(
        y="worker",
        left="start",
        right="end",
        height=0.8,
        fill_color="colour",
        line_color="line",
        line_width=1.5,
        source=source,
    )
    fig.add_tools(
        HoverTool(
            tooltips=[
                ("task", "@name"),
                ("state", "@state"),
                ("duration", "@duration{0.000} s"),
                ("worker", "@worker"),
            ]
        )
    )
    fig.ygrid.grid_line_color = None
    state = {"cursor": cursor}

    def update() -> None:
        state["cursor"], fresh = feed.bars_since(state["cursor"])
        if not fresh:
            return
        columns = stream_columns(fresh, colours)
        source.stream({**columns}, rollover=STREAM_KEEP)
        known = [
            lane for lane in y_range.factors if isinstance(lane, str) and lane.startswith("worker ")
        ]
        new = sorted(set(columns["worker"]) - set(known), key=_pid)
        if new:
            y_range.factors = sorted(known + new, key=_pid)
            fig.height = max(240, min(900, 60 + 26 * len(y_range.factors)))

    mount(doc, context, "task-stream", [fig], update)


def _pid(lane: str) -> int:
    tail = lane.rpartition(" ")[2]
    return int(tail) if tail.isdigit() else 0
