"""Live bokeh charts of the cluster in the notebook: CPU and memory, the object store, tasks
running and pending, and a task stream. Hosted in an ipywidget (jupyter_bokeh's BokehModel)
so they update from a background thread every second, whether the kernel is idle or busy,
in JupyterLab 4 and VS Code; BokehJS is embedded inline (no CDN).

The samples come from the active engine's status (on Ray: its resource calls, its state
API and each node's metrics agent for machine CPU and memory); the task stream needs this
driver's submits, which only our runtime reports."""

from __future__ import annotations

import time
from typing import Any

from rayjupyter.core.object_ref import reference_counter
from rayjupyter.notebook.chart_data import TaskStream, sample
from rayjupyter.notebook.engines.base import Engine
from rayjupyter.notebook.engines.rayjupyter_engine import RayJupyterEngine
from rayjupyter.notebook.task_tap import TAP
from rayjupyter.notebook.ticker import TICKER

_bokeh_loaded = False


def _load_bokehjs() -> None:
    """Embed BokehJS in the notebook once per kernel (inline: there may be no network)."""
    global _bokeh_loaded
    if not _bokeh_loaded:
        from bokeh.io import output_notebook
        from bokeh.resources import INLINE

        output_notebook(resources=INLINE, hide_banner=True)
        _bokeh_loaded = True


class ResourceChart:
    """Four live figures fed by the engine's status; ``stop()`` ends the updates."""

    def __init__(self, engine: Engine, *, interval: float = 1.0, window: int = 300) -> None:
        from bokeh.layouts import gridplot
        from bokeh.models import ColumnDataSource, HoverTool, Range1d, SingleIntervalTicker
        from bokeh.plotting import figure

        self.engine = engine
        # the task stream draws this driver's own submits: our runtime's client only
        self.client: Any = engine.client() if isinstance(engine, RayJupyterEngine) else None
        self.interval = interval
        self.window = window
        self.updates = 0
        status = engine.status(timeout=10.0)
        first = sample(status)
        self.sources = {key: ColumnDataSource(data=rows) for key, rows in first.items()}
        self.sources["stream"] = ColumnDataSource(
            data={"start": [], "end": [], "row": [], "name": [], "colour": [], "state": []}
        )
        self.stream = TaskStream(int(status.total.get("CPU", 1)))
        self._cursor = TAP.count
        common: dict[str, Any] = {
            "x_axis_type": "datetime",
            "height": 220,
            "width": 440,
            "tools": "pan,wheel_zoom,reset",
            "toolbar_location": "right",
        }
        usage = figure(title="CPU and memory (%)", y_range=Range1d(start=0, end=105), **common)
        usage.line("time", "cpu", source=self.sources["usage"], legend_label="machine CPU")
        usage.line(
            "time",
            "memory",
            source=self.sources["usage"],
            color="#ff7f0e",
            legend_label="memory",
        )
        usage.line(
            "time",
            "cpu_slots",
            source=self.sources["usage"],
            color="#2ca02c",
            line_dash="dashed",
            legend_label="CPU slots in use",
        )
        store = figure(title="Object store (MiB)", **common)
        store.varea("time", y1=0, y2="used", source=self.sources["store"], alpha=0.4)
        store.line("time", "used", source=self.sources["store"], legend_label="used")
        store.line(
            "time",
            "capacity",
            source=self.sources["store"],
            color="#7f7f7f",
            line_dash="dashed",
            legend_label="capacity",
        )
        tasks = figure(title="Tasks", **common)
        tasks.line("time", "running", source=self.sources["tasks"], legend_label="running")
        tasks.line(
            "time", "pending", source=self.sources["tasks"], color="#ff7f0e", legend_label="pending"
        )
        stream_title = (
            "Task stream (this driver's tasks, by CPU slot)"
            if self.client is not None
            else "Task stream (not on Ray: its driver does not report task starts)"
        )
        stream = figure(title=stream_title, **common)
        stream.hbar(
            y="row",
            left="start",
            right="end",
            height=0.8,
            fill_color="colour",
            line_color="white",
            source=self.sources["stream"],
        )
        stream.add_tools(HoverTool(tooltips=[("task", "@name"), ("state", "@state")]))
        stream.yaxis.axis_label = "slot"
        stream.yaxis.ticker = SingleIntervalTicker(interval=1, num_minor_ticks=0)
        for fig in (usage, store, tasks):
            fig.legend.location = "top_left"
            fig.legend.label_text_font_size = "8pt"
            fig.legend.background_fill_alpha = 0.5
        self.layout = gridplot([[usage, store], [tasks, stream]], toolbar_location=None)
        self.widget: Any = None
        self.job: Any = None

    def show(self) -> ResourceChart:
        """Display the charts in the current cell and start updating them."""
        from jupyter_bokeh.widgets import BokehModel

        from rayjupyter.notebook.ipython_typed import display

        _load_bokehjs()
        self.widget = BokehModel(self.layout)
        display(self.widget)
        self.job = TICKER.every(self.interval, self.update)
        return self

    def update(self) -> bool:
        """Stream one new sample into each source; False (stop) once disconnected."""
        if not self.engine.connected:
            return False
        try:
            status = self.engine.status(timeout=max(2.0, self.interval))
        except Exception:  # busy or going away: skip a beat, stop once closed
            return self.engine.connected
        for key, rows in sample(status).items():
            self.sources[key].stream({**rows}, rollover=self.window)
        if self.client is not None:
            self._update_stream()
        self.updates += 1
        return True

    def _update_stream(self) -> None:
        self._cursor, fresh = TAP.since(self._cursor)
        self.stream.submitted(fresh)
        objects = self.client.objects
        waiting = self.stream.waiting
        done = {oid: bool(objects[oid][3]) for oid in waiting if oid in objects}
        # refs dropped since the last look: almost always right after a get, so finished
        done.update(
            (oid, False) for oid in waiting if oid not in done and not reference_counter.count(oid)
        )
        rows = self.stream.finished(done, time.time())
        if rows["start"]:
            self.sources["stream"].stream({**rows}, rollover=self.window * 10)

    def stop(self) -> None:
        if self.job is not None:
            self.job.cancel()


def resource_chart(*, interval: float = 1.0, window: int = 300) -> None:
    """Display live charts of the connected cluster in this notebook cell."""
    from rayjupyter.notebook import engines
    from rayjupyter.notebook.kernel import in_kernel

    if not in_kernel():
        raise RuntimeError(
            "resource_chart() draws in a Jupyter notebook; elsewhere use %ray_status in "
            "IPython, or rj.available_resources()."
        )
    if interval <= 0 or window < 2:
        raise ValueError("interval must be > 0 seconds and window at least 2 samples")
    engine = engines.active()
    if engine.name == "rayjupyter":
        from rayjupyter.core import api

        api._client()  # not connected: the core's own error, naming rj.init
    elif not engine.connected:
        raise RuntimeError("not connected to Ray: run %ray_connect --ray first")
    ResourceChart(engine, interval=interval, window=window).show()
