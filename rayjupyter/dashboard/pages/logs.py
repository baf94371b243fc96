"""Recent logs per worker: pick a worker (or all of them) and see its last lines."""

from __future__ import annotations

from typing import Any

from bokeh.document import Document
from bokeh.models.widgets import Div, Select

from rayjupyter.dashboard.page_data import log_html
from rayjupyter.dashboard.pages.common import PageContext, mount

ALL = "all workers"


def make(doc: Document, context: PageContext) -> None:
    feed = context.feed
    first: list[str | tuple[Any, str]] = [(ALL, ALL)]
    select = Select(title="Worker", value=ALL, options=first, width=420)
    text = Div(text="", sizing_mode="stretch_width")
    shown = {"html": ""}

    def update() -> None:
        workers = feed.want("logs")
        if workers is None:
            return
        options: list[str | tuple[Any, str]] = [(ALL, ALL)]
        options += [(str(w["pid"]), f"pid {w['pid']}: {w['name']}") for w in reversed(workers)]
        if options != [tuple(option) for option in select.options if option is not None]:
            select.options = options
        if select.value not in {option[0] for option in options}:
            select.value = ALL  # that worker's lines are gone
        pid = None if select.value == ALL else int(select.value)
        html = log_html(workers, pid)
        if html != shown["html"]:
            shown["html"] = text.text = html

    select.on_change("value", lambda attr, old, new: update())
    mount(doc, context, "logs", [select, text], update)
