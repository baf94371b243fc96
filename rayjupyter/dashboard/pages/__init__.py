"""The dashboard's pages: one bokeh application each, at ``{prefix}/{path}``.

``PAGES`` is importable without bokeh (the Jupyter side lists the pages from it); the
builders live in the submodules named here and are imported by the server only.
"""

from __future__ import annotations

#: path -> (title, module under rayjupyter.dashboard.pages that has ``make(doc, context)``)
PAGES: dict[str, tuple[str, str]] = {
    "overview": ("Overview", "overview"),
    "task-stream": ("Task stream", "task_stream"),
    "progress": ("Progress", "progress"),
    "actors": ("Actors", "tables"),
    "objects": ("Objects", "tables"),
    "jobs": ("Jobs", "tables"),
    "logs": ("Logs", "logs"),
}
DEFAULT_PAGE = "overview"
