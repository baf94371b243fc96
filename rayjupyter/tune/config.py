"""``TuneConfig``, ``RunConfig``, ``CheckpointConfig``, ``FailureConfig`` (Ray's names and
defaults; every field is honoured, checked here once)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

DEFAULT_STORAGE = "~/rayjupyter_results"


@dataclass
class TuneConfig:
    metric: str | None = None
    mode: str | None = None
    search_alg: Any = None
    scheduler: Any = None
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    time_budget_s: float | None = None
    reuse_actors: bool | None = None  # None: True for function trainables, as in Ray
    trial_name_creator: Any = None
    trial_dirname_creator: Any = None

    def __post_init__(self) -> None:
        if self.mode not in (None, "min", "max"):
            raise ValueError(f"TuneConfig(mode=) must be 'min' or 'max', got {self.mode!r}")
        if self.num_samples == -1:
            raise ValueError("num_samples=-1 (infinite) needs a stop condition; not supported")
        if self.num_samples < 1:
            raise ValueError(f"TuneConfig(num_samples=) must be >= 1, got {self.num_samples}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ValueError("TuneConfig(max_concurrent_trials=) must be >= 1 or None")


@dataclass
class CheckpointConfig:
    num_to_keep: int | None = None
    checkpoint_score_attribute: str | None = None
    checkpoint_score_order: str = "max"
    checkpoint_frequency: int = 0  # class trainables: save every N steps
    checkpoint_at_end: bool | None = None  # class trainables: save when the trial ends

    def __post_init__(self) -> None:
        if self.num_to_keep is not None and self.num_to_keep < 1:
            raise ValueError("CheckpointConfig(num_to_keep=) must be None or >= 1")
        if self.checkpoint_score_order not in ("min", "max"):
            raise ValueError("CheckpointConfig(checkpoint_score_order=) must be 'min' or 'max'")


@dataclass
class FailureConfig:
    max_failures: int = 0  # retries per trial from its latest checkpoint; -1: forever
    fail_fast: bool | str = False  # True: stop the experiment; "raise": and raise the error

    def __post_init__(self) -> None:
        if self.fail_fast not in (True, False, "raise"):
            raise ValueError("FailureConfig(fail_fast=) must be True, False or 'raise'")


@dataclass
class RunConfig:
    name: str | None = None
    storage_path: str | None = None
    stop: Any = None  # {metric: threshold} or fn(trial_id, result) -> bool or a Stopper
    checkpoint_config: CheckpointConfig | None = None
    failure_config: FailureConfig | None = None
    verbose: int = 1  # 0: silent; 1+: the live table

    def storage(self) -> str:
        return os.path.abspath(
            os.path.expanduser(
                self.storage_path or os.environ.get("RAYJUPYTER_RESULTS_DIR") or DEFAULT_STORAGE
            )
        )


class Stopper:
    """Ray's ``tune.stopper.Stopper``: ``__call__(trial_id, result)`` stops one trial,
    ``stop_all()`` the experiment."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return False


class _DictStopper(Stopper):
    def __init__(self, criteria: dict[str, float]) -> None:
        self.criteria = criteria

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return any(k in result and result[k] >= v for k, v in self.criteria.items())


class _FunctionStopper(Stopper):
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return bool(self.fn(trial_id, result))


def make_stopper(stop: Any) -> Stopper:
    if stop is None:
        return Stopper()
    if isinstance(stop, Stopper):
        return stop
    if isinstance(stop, dict):
        return _DictStopper(stop)
    if callable(stop):
        return _FunctionStopper(stop)
    raise ValueError(
        "RunConfig(stop=) takes a dict {metric: threshold}, a function (trial_id, result) -> "
        f"bool or a Stopper, got {type(stop).__name__}"
    )
