"""The overview: headline numbers, the nodes, and CPU, memory, object store and tasks
over time (from the feed's status history, so a page opened late still sees the past)."""

from __future__ import annotations

from bokeh.document import Document
from bokeh.layouts import gridplot
from bokeh.models import ColumnDataSource, DataRange1d, NumeralTickFormatter, Range1d
from bokeh.models.widgets import DataTable, DateFormatter, Div, NumberFormatter, TableColumn
from bokeh.plotting import figure

from rayjupyter.dashboard.page_data import node_columns, summary_cards, usage_row, usage_rows
from rayjupyter.dashboard.pages.common import PageContext, figure_options, mount

WINDOW = 600  # samples kept on the charts (ten minutes at one a second)


def make(doc: Document, context: PageContext) -> None:
    feed = context.feed
    status = feed.status
    cards = Div(text=summary_cards(status) if status else "", sizing_mode="stretch_width")
    nodes = ColumnDataSource(node_columns(status.nodes if status else []))
    node_table = DataTable(
        source=nodes,
        columns=[
            TableColumn(field="node_id", title="node"),
            TableColumn(field="address", title="address"),
            TableColumn(field="alive", title="state"),
            TableColumn(field="cpus", title="CPUs", formatter=NumberFormatter(format="0.[00]")),
            TableColumn(field="gpus", title="GPUs", formatter=NumberFormatter(format="0.[00]")),
            TableColumn(
                field="store", title="object store", formatter=NumberFormatter(format="0.[0] b")
            ),
            TableColumn(
                field="started",
                title="started",
                formatter=DateFormatter(format="%Y-%m-%d %H:%M:%S"),
            ),
        ],
        height=90,
        index_position=None,
        reorderable=False,
        sizing_mode="stretch_width",
    )
    source = ColumnDataSource(usage_rows(feed.history(), -1.0) or usage_row(None))
    common = figure_options(x_axis_type="datetime", height=220)
    cpu = figure(title="CPU (%)", y_range=Range1d(start=0, end=105), **common)
    cpu.line("time", "cpu", source=source, legend_label="machine CPU", line_width=2)
    cpu.line(
        "time",
        "cpu_slots",
        source=source,
        color="#2ca02c",
        line_dash="dashed",
        legend_label="CPU slots in use",
        line_width=2,
    )
    memory = figure(title="Memory", x_range=cpu.x_range, **common)
    memory.varea("time", y1=0, y2="memory_used", source=source, alpha=0.3)
    memory.line("time", "memory_used", source=source, legend_label="used", line_width=2)
    memory.line(
        "time",
        "memory_total",
        source=source,
        color="#7f7f7f",
        line_dash="dashed",
        legend_label="total",
    )
    store = figure(title="Object store", x_range=cpu.x_range, **common)
    store.varea("time", y1=0, y2="store_used", source=source, alpha=0.3, color="#9467bd")
    store.line(
        "time", "store_used", source=source, color="#9467bd", legend_label="used", line_width=2
    )
    store.line(
        "time",
        "store_capacity",
        source=source,
        color="#7f7f7f",
        line_dash="dashed",
        legend_label="capacity",
    )
    store.line(
        "time", "store_spilled", source=source, color="#ff7f0e", legend_label="spilled to disk"
    )
    tasks = figure(
        title="Tasks", x_range=cpu.x_range, y_range=DataRange1d(start=0, min_interval=4), **common
    )
    tasks.line("time", "running", source=source, legend_label="running", line_width=2)
    tasks.line(
        "time", "pending", source=source, color="#ff7f0e", legend_label="pending", line_width=2
    )
    for fig in (memory, store):
        fig.yaxis.formatter = NumeralTickFormatter(format="0.0 b")
    for fig in (cpu, memory, store, tasks):
        fig.legend.location = "top_left"
        fig.legend.label_text_font_size = "8pt"
        fig.legend.background_fill_alpha = 0.6
    charts = gridplot(
        [[cpu, memory], [store, tasks]], sizing_mode="stretch_width", toolbar_location="right"
    )
    shown = {"time": max(source.data["time"] or [0.0])}

    def update() -> None:
        latest = feed.status
        if latest is None:
            return
        cards.text = summary_cards(latest)
        fresh_nodes = node_columns(latest.nodes)
        if fresh_nodes != dict(nodes.data):
            nodes.data = fresh_nodes
        rows = usage_rows(feed.history(), shown["time"])
        if rows:
            shown["time"] = rows["time"][-1]
            source.stream({**rows}, rollover=WINDOW)

    mount(doc, context, "overview", [cards, node_table, charts], update)
