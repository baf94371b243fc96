"""Jupyter front end: magics, progress bars and live charts (imports core, never the reverse).

Everything here that needs IPython, ipywidgets or bokeh is imported on first use: a worker
that unpickles a ``%%remote`` cell imports this package and must not load Jupyter.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "configure_progress",
    "load_ipython_extension",
    "progress",
    "resource_chart",
    "unload_ipython_extension",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext rayjupyter``: magics, automatic progress bars, task names for displays."""
    from rayjupyter.notebook import extension

    extension.load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from rayjupyter.notebook import extension

    extension.unload(ipython)


def progress(refs: Any, *, wait: bool | None = None) -> Any:
    """Live progress of refs (ours or Ray's): a widget in a notebook, a text bar elsewhere."""
    from rayjupyter.notebook import progress_display as _progress

    return _progress.progress(refs, wait=wait)


def configure_progress(
    *, enabled: bool | None = None, delay: float | None = None, min_refs: int | None = None
) -> dict[str, Any]:
    """Tune the bar shown on slow ``get``/``wait`` calls in a notebook; returns the settings."""
    from rayjupyter.notebook import progress_display as _progress

    return _progress.AUTO.configure(enabled=enabled, delay=delay, min_refs=min_refs)


def resource_chart(*, interval: float = 1.0, window: int = 300) -> Any:
    """Live bokeh charts of the cluster (CPU, memory, object store, tasks, task stream)."""
    from rayjupyter.notebook import charts

    return charts.resource_chart(interval=interval, window=window)
