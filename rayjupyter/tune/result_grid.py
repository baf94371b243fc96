"""``Result`` and ``ResultGrid``: what ``Tuner.fit()`` returns (Ray's names and scopes)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rayjupyter.tune.checkpoint import Checkpoint
from rayjupyter.tune.trial import Trial, TrialState
from rayjupyter.tune.variants import flatten

_SCOPES = ("last", "avg", "last-5-avg", "last-10-avg", "all")


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:
        raise ImportError("dataframes need pandas: pip install 'rayjupyter[tune]'") from exc
    return pandas


@dataclass
class Result:
    metrics: dict[str, Any]
    config: dict[str, Any]
    path: str
    checkpoint: Checkpoint | None = None
    error: BaseException | None = None
    best_checkpoints: list[tuple[Checkpoint, dict[str, Any]]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def metrics_dataframe(self) -> Any:
        """Every reported result, one row each (nested metrics as ``a/b`` columns)."""
        rows = [flatten({k: v for k, v in r.items() if k != "config"}) for r in self.history]
        return _pandas().DataFrame(rows)

    @classmethod
    def from_trial(cls, trial: Trial) -> Result:
        return cls(
            metrics=dict(trial.last_result),
            config=trial.config,
            path=trial.path,
            checkpoint=Checkpoint(trial.checkpoint) if trial.checkpoint else None,
            error=trial.error,
            best_checkpoints=[(Checkpoint(p), m) for p, m in trial.checkpoints],
            history=list(trial.history),
        )


def _score(trial: Trial, metric: str, scope: str) -> float | None:
    values = [float(r[metric]) for r in trial.history if metric in r]
    if not values:
        return None
    if scope == "last":
        return values[-1]
    if scope == "avg":
        return sum(values) / len(values)
    if scope.startswith("last-"):
        n = int(scope.split("-")[1])
        tail = values[-n:]
        return sum(tail) / len(tail)
    return None  # "all" is handled by the caller with the mode


class ResultGrid:
    def __init__(
        self,
        trials: list[Trial],
        experiment_path: str,
        metric: str | None = None,
        mode: str | None = None,
    ) -> None:
        self._trials = list(trials)
        self._results = [Result.from_trial(t) for t in self._trials]
        self.experiment_path = experiment_path
        self._metric, self._mode = metric, mode

    def __len__(self) -> int:
        return len(self._results)

    def __getitem__(self, index: int) -> Result:
        return self._results[index]

    def __iter__(self) -> Iterator[Result]:
        return iter(self._results)

    @property
    def errors(self) -> list[BaseException]:
        return [r.error for r in self._results if r.error is not None]

    @property
    def num_errors(self) -> int:
        return sum(t.state == TrialState.ERROR for t in self._trials)

    @property
    def num_terminated(self) -> int:
        return sum(t.state == TrialState.TERMINATED for t in self._trials)

    def get_best_result(
        self,
        metric: str | None = None,
        mode: str | None = None,
        scope: str = "last",
        filter_nan_and_inf: bool = True,
    ) -> Result:
        metric, mode = metric or self._metric, mode or self._mode
        if not metric or not mode:
            raise ValueError(
                "get_best_result() needs metric and mode: pass them here or to TuneConfig"
            )
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if scope not in _SCOPES:
            raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
        best: tuple[float, int] | None = None
        for index, trial in enumerate(self._trials):
            if scope == "all":
                values = [float(r[metric]) for r in trial.history if metric in r]
                values = [v for v in values if not filter_nan_and_inf or math.isfinite(v)]
                score = (max(values) if mode == "max" else min(values)) if values else None
            else:
                score = _score(trial, metric, scope)
            if score is None or (filter_nan_and_inf and not math.isfinite(score)):
                continue
            key = score if mode == "max" else -score
            if best is None or key > best[0]:
                best = (key, index)
        if best is None:
            raise RuntimeError(
                f"no trial reported a finite {metric!r}: check the trials' errors "
                "(ResultGrid.errors) and that the trainable reports that metric"
            )
        return self._results[best[1]]

    def get_dataframe(
        self, filter_metric: str | None = None, filter_mode: str | None = None
    ) -> Any:
        """One row per trial: its last result (or its best ``filter_metric`` result),
        with ``config/...`` columns."""
        rows = []
        for trial in self._trials:
            row: dict[str, Any] = dict(trial.last_result)
            if filter_metric and filter_mode:
                scored = [r for r in trial.history if filter_metric in r]
                if scored:
                    pick = max if filter_mode == "max" else min
                    row = dict(pick(scored, key=lambda r: r[filter_metric]))
            row.pop("config", None)
            row = flatten(row)
            row.update({f"config/{k}": v for k, v in flatten(trial.config).items()})
            row["trial_id"], row["trial_name"] = trial.trial_id, trial.trial_name
            row["logdir"] = trial.path
            rows.append(row)
        return _pandas().DataFrame(rows)

    def __repr__(self) -> str:
        return (
            f"ResultGrid<{len(self)} trials: {self.num_terminated} terminated, "
            f"{self.num_errors} errors>"
        )
