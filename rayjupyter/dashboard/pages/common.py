"""What every page shares: the navigation bar, figure defaults, colours, the refresh loop."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bokeh.document import Document
from bokeh.layouts import column
from bokeh.models import LayoutDOM
from bokeh.models.widgets import Div

from rayjupyter.dashboard.feed import ClusterFeed
from rayjupyter.dashboard.pages import PAGES

REFRESH_MS = 1000

STYLE = """
<style>
.rj-nav { display: flex; gap: 4px; align-items: baseline; flex-wrap: wrap;
  font-family: system-ui, sans-serif; font-size: 14px; margin: 4px 0 8px 0; }
.rj-nav .rj-brand { font-weight: 600; margin-right: 12px; }
.rj-nav a { padding: 3px 10px; border-radius: 4px; text-decoration: none; color: #1f4e79; }
.rj-nav a.rj-current { background: #1f77b4; color: white; }
.rj-nav .rj-session { margin-left: auto; color: #666; font-size: 12px; }
</style>
"""


@dataclass
class PageContext:
    """What a page builder gets: the feed and where the pages live."""

    feed: ClusterFeed
    prefix: str  # "" or "/some/path", no trailing slash

    def url(self, page: str) -> str:
        return f"{self.prefix}/{page}"


def nav(context: PageContext, current: str) -> Div:
    """Links to every page; absolute paths under the prefix, so they work through a proxy."""
    links = "".join(
        f'<a href="{html.escape(context.url(path))}"'
        f"{' class=rj-current' if path == current else ''}>{html.escape(title)}</a>"
        for path, (title, _) in PAGES.items()
    )
    session = html.escape(f"session {context.feed.session} at {context.feed.address}")
    return Div(
        text=f'{STYLE}<div class="rj-nav"><span class="rj-brand">rayjupyter</span>{links}'
        f'<span class="rj-session">{session}</span></div>',
        sizing_mode="stretch_width",
    )


def figure_options(**overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "height": 240,
        "sizing_mode": "stretch_width",
        "tools": "pan,xwheel_zoom,box_zoom,reset,save",
        "toolbar_location": "above",
    }
    options.update(overrides)
    return options


def mount(
    doc: Document,
    context: PageContext,
    page: str,
    body: list[LayoutDOM],
    update: Callable[[], None],
) -> None:
    """Put the page in the document and refresh it every second while it is open."""
    doc.title = f"rayjupyter: {PAGES[page][0]}"
    doc.add_root(column(nav(context, page), *body, sizing_mode="stretch_width"))
    update()
    doc.add_periodic_callback(update, REFRESH_MS)
