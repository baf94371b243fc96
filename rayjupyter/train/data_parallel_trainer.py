"""``DataParallelTrainer``: run one training loop on every worker of a gang-scheduled
group, as Ray Train's; the framework trainers (torch, tensorflow) add a backend."""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Callable
from typing import Any

from rayjupyter.train._backend import BackendConfig
from rayjupyter.train._checkpoint import Checkpoint
from rayjupyter.train._config import Result, RunConfig, ScalingConfig
from rayjupyter.train._controller import Controller, RunCallback


class DataParallelTrainer:
    """``fit()`` runs ``train_loop_per_worker(train_loop_config)`` (or with no argument, if
    it takes none) on ``scaling_config.num_workers`` workers and returns a ``Result``."""

    _default_backend_config: Callable[[], BackendConfig] = BackendConfig

    def __init__(
        self,
        train_loop_per_worker: Callable[..., Any],
        *,
        train_loop_config: dict[str, Any] | None = None,
        backend_config: BackendConfig | None = None,
        scaling_config: ScalingConfig | None = None,
        run_config: RunConfig | None = None,
        datasets: dict[str, Any] | None = None,
        dataset_config: Any = None,
        resume_from_checkpoint: Checkpoint | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not callable(train_loop_per_worker):
            raise TypeError("train_loop_per_worker must be a function")
        if len(inspect.signature(train_loop_per_worker).parameters) > 1:
            raise ValueError(
                "train_loop_per_worker takes at most one argument (train_loop_config): "
                f"{train_loop_per_worker.__name__} takes more"
            )
        if train_loop_config is not None and not isinstance(train_loop_config, dict):
            raise TypeError("train_loop_config must be a dict")
        if dataset_config is not None:
            raise ValueError(
                "dataset_config is not supported yet: every dataset is split evenly across "
                "the workers; leave it out"
            )
        if resume_from_checkpoint is not None and not isinstance(
            resume_from_checkpoint, Checkpoint
        ):
            raise TypeError("resume_from_checkpoint must be a rayjupyter.train.Checkpoint")
        if datasets is not None and not isinstance(datasets, dict):
            raise TypeError("datasets must be a dict of name to dataset")
        self.train_loop_per_worker = train_loop_per_worker
        self.train_loop_config = train_loop_config
        self.backend_config = backend_config or type(self)._default_backend_config()
        self.scaling_config = scaling_config or ScalingConfig()
        self.run_config = run_config or RunConfig()
        self.datasets = dict(datasets or {})
        self.resume_from_checkpoint = resume_from_checkpoint
        self.metadata = dict(metadata or {})
        self._callbacks: list[RunCallback] = []

    def _run_name(self) -> str:
        if self.run_config.name:
            return self.run_config.name
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        return f"{type(self).__name__}_{stamp}"

    def fit(self) -> Result:
        """Train; return the result, or raise the user's error (or TrainingFailedError
        once workers died more often than FailureConfig.max_failures allows)."""
        callbacks = list(self._callbacks)
        name = self._run_name()
        if self.run_config.verbose:
            from rayjupyter.train._view import live_view

            callbacks.append(live_view(name, self.scaling_config.num_workers))
        controller = Controller(
            self.train_loop_per_worker,
            self.train_loop_config,
            self.backend_config,
            self.scaling_config,
            self.run_config,
            self.datasets,
            self.resume_from_checkpoint,
            name,
            callbacks,
        )
        return controller.fit()

    def as_trainable(self) -> Callable[[dict[str, Any]], None]:
        """This trainer as a Tune trainable (what ``Tuner(trainer, ...)`` runs): each
        trial fits a copy with the trial's config merged into ``train_loop_config``,
        ``scaling_config``, ``datasets`` or ``metadata``."""
        from rayjupyter.train._tune import as_trainable

        return as_trainable(self)
