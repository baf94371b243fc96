"""Progress per function: for each task name, the share finished, running, pending and
failed, over every task the head remembers."""

from __future__ import annotations

from bokeh.document import Document
from bokeh.models import ColumnDataSource, FactorRange, HoverTool, Range1d
from bokeh.plotting import figure

from rayjupyter.dashboard.page_data import FAILED_COLOUR, PROGRESS_PARTS, progress_columns
from rayjupyter.dashboard.pages.common import PageContext, figure_options, mount

COLOURS = {
    "finished": "#2ca02c",
    "running": "#1f77b4",
    "pending": "#c7c7c7",
    "failed": FAILED_COLOUR,
}


def make(doc: Document, context: PageContext) -> None:
    feed = context.feed
    source = ColumnDataSource(progress_columns(feed.want("summary") or {}))
    y_range = FactorRange(factors=_factors(list(source.data["name"])))
    fig = figure(
        title="Progress per function",
        y_range=y_range,
        x_range=Range1d(start=0, end=1.45),
        **figure_options(height=_height(len(source.data["name"])), tools="save"),
    )
    fig.hbar_stack(
        list(PROGRESS_PARTS),
        y="name",
        height=0.7,
        color=[COLOURS[part] for part in PROGRESS_PARTS],
        line_color=None,
        legend_label=list(PROGRESS_PARTS),
        source=source,
    )
    fig.text(
        x=1.02, y="name", text="label", source=source, text_baseline="middle", text_font_size="10pt"
    )
    fig.add_tools(
        HoverTool(
            tooltips=[
                ("function", "@name"),
                ("finished", "@finished_n"),
                ("running", "@running_n"),
                ("pending", "@pending_n"),
                ("failed", "@failed_n"),
            ]
        )
    )
    fig.xaxis.visible = False
    fig.xgrid.grid_line_color = None
    fig.ygrid.grid_line_color = None
    fig.legend.orientation = "horizontal"
    fig.legend.label_text_font_size = "9pt"
    fig.add_layout(fig.legend[0], "above")

    def update() -> None:
        summary = feed.want("summary")
        if summary is None:
            return
        columns = progress_columns(summary)
        if columns == dict(source.data):
            return
        names = _factors(columns["name"])
        if list(y_range.factors) != names:
            y_range.factors = names
            fig.height = _height(len(columns["name"]))
        source.data = columns

    mount(doc, context, "progress", [fig], update)


def _factors(names: list[str]) -> list[str]:
    return list(reversed(names)) or ["(no tasks yet)"]  # the first function at the top


def _height(rows: int) -> int:
    return max(160, min(1200, 90 + 34 * rows))
