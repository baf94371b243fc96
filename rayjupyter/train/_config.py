"""The configuration objects of Ray Train, and what ``fit()`` returns.

Each option is checked when the object is made, so a wrong value fails at the line that
wrote it, with what to write instead.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from rayjupyter.train._checkpoint import Checkpoint

_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class TrainingFailedError(RuntimeError):
    """Training failed more times than ``FailureConfig(max_failures=...)`` allows; the last
    failure is the ``__cause__``."""


@dataclasses.dataclass
class ScalingConfig:
    """How many workers, and what each one holds; the workers are gang-scheduled as one
    placement group of ``num_workers`` bundles laid out by ``placement_strategy``."""

    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None
    placement_strategy: str = "PACK"
    trainer_resources: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ValueError(f"num_workers must be an int >= 1, got {self.num_workers!r}")
        if self.placement_strategy not in _STRATEGIES:
            raise ValueError(
                f"placement_strategy must be one of {', '.join(_STRATEGIES)}, "
                f"got {self.placement_strategy!r}"
            )
        if self.resources_per_worker is not None and not isinstance(
            self.resources_per_worker, dict
        ):
            raise TypeError("resources_per_worker must be a dict, e.g. {'CPU': 2}")
        if self.trainer_resources:
            raise ValueError(
                "trainer_resources is not supported: the controller runs in the calling "
                "process and holds no resources; leave it out"
            )

    @property
    def worker_bundle(self) -> dict[str, float]:
        """One worker's resources: 1 CPU by default, plus 1 GPU with use_gpu, as in Ray."""
        bundle = dict(self.resources_per_worker or {})
        if "CPU" not in bundle:
            bundle["CPU"] = 1
        if self.use_gpu and "GPU" not in bundle:
            bundle["GPU"] = 1
        if not self.use_gpu and bundle.get("GPU"):
            raise ValueError("resources_per_worker asks for GPUs: set use_gpu=True as well")
        return {name: float(amount) for name, amount in bundle.items() if amount}


@dataclasses.dataclass
class FailureConfig:
    """How many times a run restarts after a worker or node dies (-1: without limit)."""

    max_failures: int = 0
    fail_fast: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_failures, int) or self.max_failures < -1:
            raise ValueError(f"max_failures must be an int >= -1, got {self.max_failures!r}")
        if self.fail_fast and self.max_failures:
            raise ValueError("fail_fast=True cannot be used with max_failures; drop one")


@dataclasses.dataclass
class CheckpointConfig:
    """Which checkpoints stay on disk: the ``num_to_keep`` best by the score attribute (the
    most recent ones without one); the latest is always kept, as the restart point."""

    num_to_keep: int | None = None
    checkpoint_score_attribute: str | None = None
    checkpoint_score_order: str = "max"
    checkpoint_frequency: int = 0
    checkpoint_at_end: bool | None = None

    def __post_init__(self) -> None:
        if self.num_to_keep is not None and (
            not isinstance(self.num_to_keep, int) or self.num_to_keep < 1
        ):
            raise ValueError(
                f"num_to_keep must be None (keep all) or an int >= 1, got {self.num_to_keep!r}"
            )
        if self.checkpoint_score_order not in ("max", "min"):
            raise ValueError(
                f"checkpoint_score_order must be 'max' or 'min', "
                f"got {self.checkpoint_score_order!r}"
            )
        if self.checkpoint_frequency or self.checkpoint_at_end:
            raise ValueError(
                "checkpoint_frequency and checkpoint_at_end apply to Tune's class trainables; "
                "with a Train loop, pass checkpoint= to train.report() instead"
            )


@dataclasses.dataclass
class RunConfig:
    """Where the run keeps its files, and how it handles failures and checkpoints."""

    name: str | None = None
    storage_path: str | None = None
    failure_config: FailureConfig | None = None
    checkpoint_config: CheckpointConfig | None = None
    verbose: int = 1

    def __post_init__(self) -> None:
        if self.failure_config is None:
            self.failure_config = FailureConfig()
        if self.checkpoint_config is None:
            self.checkpoint_config = CheckpointConfig()
        if self.storage_path is not None and "://" in str(self.storage_path):
            raise ValueError(
                "storage_path must be a local or shared folder (a cloud URI is not "
                f"supported): got {self.storage_path!r}"
            )

    def resolved_storage(self) -> str:
        """``storage_path``, or ``~/rayjupyter_results`` as Ray's ``~/ray_results``."""
        base = self.storage_path or os.path.join("~", "rayjupyter_results")
        return os.path.abspath(os.path.expanduser(str(base)))


@dataclasses.dataclass
class Result:
    """What ``fit()`` returns: rank 0's last metrics, the latest checkpoint, the kept ones
    with their metrics, every report as a table, the run's folder, and its error."""

    metrics: dict[str, Any] | None
    checkpoint: Checkpoint | None
    path: str
    best_checkpoints: list[tuple[Checkpoint, dict[str, Any]]] = dataclasses.field(
        default_factory=list
    )
    metrics_history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    error: BaseException | None = None

    @property
    def metrics_dataframe(self) -> Any:
        """Every report of rank 0 as a pandas DataFrame (pandas is needed only here)."""
        import pandas as pd

        return pd.DataFrame(self.metrics_history)

    @property
    def config(self) -> dict[str, Any] | None:
        return (self.metrics or {}).get("config")
