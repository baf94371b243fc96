"""What ``%load_ext rayjupyter`` sets up, and ``%unload_ext`` takes down."""

from __future__ import annotations

from typing import Any

from rayjupyter.notebook.engines.ray_progress import follow_ray_sessions
from rayjupyter.notebook.kernel import in_kernel
from rayjupyter.notebook.progress_display import AUTO
from rayjupyter.notebook.task_tap import TAP

_previous_observer: list[Any] = []


def load(ipython: Any) -> None:
    """Register the magics, remember task names, and show progress on slow blocking calls."""
    from rayjupyter.core import api
    from rayjupyter.notebook.magics import RayMagics

    ipython.register_magics(RayMagics)
    TAP.install()
    if in_kernel() and api.wait_observer is not AUTO:
        _previous_observer[:] = [api.wait_observer]
        api.wait_observer = AUTO
    if in_kernel() and follow_ray_sessions not in ipython.events.callbacks["post_run_cell"]:
        ipython.events.register("post_run_cell", follow_ray_sessions)


def unload(ipython: Any) -> None:
    from rayjupyter.core import api
    from rayjupyter.notebook.output_routing import ROUTER

    TAP.uninstall()
    if follow_ray_sessions in ipython.events.callbacks["post_run_cell"]:
        ipython.events.unregister("post_run_cell", follow_ray_sessions)
    if api.wait_observer is AUTO:
        api.wait_observer = _previous_observer[0] if _previous_observer else None
    ROUTER.uninstall()
