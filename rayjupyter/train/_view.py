"""The run's live view while ``fit()`` runs: a model fed by the controller's hooks, and a
view that draws it; a notebook view (workers, a metrics chart, checkpoints) inside a
Jupyter kernel, a few text lines elsewhere. ``RunConfig(verbose=0)`` shows nothing."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from rayjupyter.train._checkpoint import Checkpoint
from rayjupyter.train._config import Result
from rayjupyter.train._controller import RunCallback
from rayjupyter.train._reports import Step

TEXT_EVERY_S = 1.0  # the text view prints a step at most this often (and always the last)
MAX_CHECKPOINTS_SHOWN = 5  # the newest checkpoints listed in the notebook view


@dataclasses.dataclass
class WorkerRow:
    rank: int
    node_id: str
    ip: str
    pid: int
    state: str  # running, restarting, finished, failed


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics a chart can draw: finite numbers (bools and lists left out)."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    }


class RunModel(RunCallback):
    """What a view shows, updated from the controller's hooks (no drawing here)."""

    def __init__(self, name: str, num_workers: int) -> None:
        self.name = name
        self.num_workers = num_workers
        self.started = time.monotonic()
        self.attempt = 0
        self.failures = 0
        self.workers: list[WorkerRow] = []
        self.last_step: Step | None = None
        self.checkpoints: list[str] = []
        self.status = "starting"
        self.error: BaseException | None = None
        self.views: list[Any] = []

    def _changed(self, what: str, *args: Any) -> None:
        for view in self.views:
            getattr(view, what)(self, *args)

    def on_attempt(self, attempt: int, workers: list[Any]) -> None:
        self.attempt = attempt
        self.status = "running"
        self.workers = [
            WorkerRow(rank, w.node_id, w.ip, w.pid, "running") for rank, w in enumerate(workers)
        ]
        self._changed("workers_changed")

    def on_step(self, step: Step, checkpoint: Checkpoint | None) -> None:
        self.last_step = step
        if checkpoint is not None:
            self.checkpoints.append(checkpoint.path)
        self._changed("step_added", step, checkpoint)

    def on_failure(self, failures: int, error: BaseException) -> None:
        self.failures = failures
        self.status = "restarting"
        for row in self.workers:
            row.state = "restarting"
        self._changed("workers_changed")

    def on_end(self, result: Result | None, error: BaseException | None) -> None:
        self.status = "finished" if error is None else "failed"
        self.error = error
        for row in self.workers:
            row.state = self.status
        self._changed("ended")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def format_metrics(metrics: dict[str, Any], limit: int = 6) -> str:
    shown = [f"{k}={v:.4g}" for k, v in list(numeric(metrics).items())[:limit]]
    return " ".join(shown)


class TextView:
    """Plain lines on stdout, for terminals and scripts."""

    def __init__(self) -> None:
        self._printed_at = 0.0
        self._pending: Step | None = None

    def workers_changed(self, model: RunModel) -> None:
        if model.status == "restarting":
            print(
                f"[{model.name}] a worker died; restarting from the latest checkpoint "
                f"(failure {model.failures})",
                flush=True,
            )
            return
        nodes = len({row.node_id for row in model.workers})
        print(
            f"[{model.name}] {len(model.workers)} workers on {nodes} node(s)"
            + (f", attempt {model.attempt + 1}" if model.attempt else ""),
            flush=True,
        )

    def step_added(self, model: RunModel, step: Step, checkpoint: Checkpoint | None) -> None:
        self._pending = step
        now = time.monotonic()
        if checkpoint is not None or now - self._printed_at >= TEXT_EVERY_S:
            self._print(model, step, checkpoint)

    def _print(self, model: RunModel, step: Step, checkpoint: Checkpoint | None) -> None:
        saved = f" -> {checkpoint.path}" if checkpoint is not None else ""
        print(
            f"[{model.name}] step {step.index}: {format_metrics(step.metrics)}{saved}", flush=True
        )
        self._printed_at = time.monotonic()
        self._pending = None

    def ended(self, model: RunModel) -> None:
        if self._pending is not None:
            self._print(model, self._pending, None)
        outcome = "finished" if model.error is None else f"failed: {type(model.error).__name__}"
        print(f"[{model.name}] {outcome} in {model.elapsed:.1f} s", flush=True)


def live_view(name: str, num_workers: int) -> RunModel:
    """The model with the view that suits where we run."""
    from rayjupyter.notebook.kernel import in_kernel

    model = RunModel(name, num_workers)
    if in_kernel():
        from rayjupyter.train._notebook_view import NotebookView

        model.views.append(NotebookView(model))
    else:
        model.views.append(TextView())
    return model
