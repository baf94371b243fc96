"""The actors, objects and jobs pages: one live table each."""

from __future__ import annotations

from bokeh.document import Document
from bokeh.models import ColumnDataSource
from bokeh.models.widgets import DataTable, Div, NumberFormatter, TableColumn

from rayjupyter.dashboard.page_data import table_columns
from rayjupyter.dashboard.pages.common import PageContext, mount

BYTES = "0.[0] b"  # a NumberFormatter format (models cannot be shared between documents)

#: page -> (feed kind, [(row key, column title, number format or None)])
TABLES: dict[str, tuple[str, list[tuple[str, str, str | None]]]] = {
    "actors": (
        "actors",
        [
            ("actor_id", "actor", None),
            ("class_name", "class", None),
            ("name", "name", None),
            ("state", "state", None),
            ("pid", "pid", None),
            ("num_restarts", "restarts", None),
            ("ray_namespace", "namespace", None),
            ("job_id", "job", None),
            ("death_cause", "death cause", None),
        ],
    ),
    "objects": (
        "objects",
        [
            ("object_id", "object", None),
            ("object_size", "size", BYTES),
            ("reference_count", "holds", None),
            ("where", "where", None),
            ("spilled", "spilled", None),
            ("ready", "ready", None),
            ("is_error", "error", None),
        ],
    ),
    "jobs": (
        "jobs",
        [
            ("submission_id", "submission", None),
            ("job_id", "job", None),
            ("type", "type", None),
            ("status", "status", None),
            ("entrypoint", "entrypoint", None),
            ("driver_pid", "driver pid", None),
            ("message", "message", None),
        ],
    ),
}


def _column(key: str, title: str, fmt: str | None) -> TableColumn:
    """A table column; numbers in the given NumberFormatter format, if any."""
    if fmt:
        return TableColumn(field=key, title=title, formatter=NumberFormatter(format=fmt))
    return TableColumn(field=key, title=title)


def make_table(doc: Document, context: PageContext, page: str) -> None:
    kind, spec = TABLES[page]
    feed = context.feed
    keys = [key for key, _, _ in spec]
    source = ColumnDataSource(table_columns(feed.want(kind) or [], keys))
    count = Div(text="")
    table = DataTable(
        source=source,
        columns=[_column(key, title, fmt) for key, title, fmt in spec],
        height=600,
        index_position=None,
        reorderable=False,
        sizing_mode="stretch_width",
    )

    def update() -> None:
        rows = feed.want(kind)
        if rows is None:
            return
        count.text = f"<b>{len(rows)}</b> {kind}"
        columns = table_columns(rows, keys)
        if columns != dict(source.data):
            source.data = columns

    mount(doc, context, page, [count, table], update)


def make_actors(doc: Document, context: PageContext) -> None:
    make_table(doc, context, "actors")


def make_objects(doc: Document, context: PageContext) -> None:
    make_table(doc, context, "objects")


def make_jobs(doc: Document, context: PageContext) -> None:
    make_table(doc, context, "jobs")
