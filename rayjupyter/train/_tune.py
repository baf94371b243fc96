"""A trainer as a Tune trainable (``Tuner(trainer, param_space={"train_loop_config":
{...}})``), as in Ray: each trial runs the trainer's ``fit()`` with the trial's config
merged into the trainer's arguments, and rank 0's reports become the trial's results.

The trial's function runs in Tune's trial actor. It reports through this package's
``report``, which Tune's runner points at the trial's session, so Train never imports
Tune. A report waits for Tune's decision; when a scheduler stops the trial, that report
raises, which unwinds ``fit()`` and shuts the training workers down with their group.

Resources: the trial actor itself holds none (the run's controller holds none, as
``ScalingConfig(trainer_resources=...)`` is refused); Tune counts the trial as the
workers' bundles, so only as many trials run at once as the cluster's resources fit.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from collections.abc import Callable
from typing import Any

from rayjupyter.train import _session
from rayjupyter.train._checkpoint import Checkpoint
from rayjupyter.train._config import CheckpointConfig, RunConfig, ScalingConfig
from rayjupyter.train._controller import RunCallback
from rayjupyter.train._reports import Step

# the trainer arguments a param_space may set (each merged into the trainer's own)
TUNABLE_KEYS = ("train_loop_config", "scaling_config", "datasets", "metadata")
INNER_RUN = "train_run"  # the trial's training run's folder, under the trial's folder


def _scaling(base: ScalingConfig, value: Any) -> ScalingConfig:
    if value is None:
        return base
    if isinstance(value, ScalingConfig):
        return value
    if isinstance(value, dict):
        return dataclasses.replace(base, **value)
    raise TypeError(
        "param_space's scaling_config must be a ScalingConfig or a dict of its fields, "
        f"got {type(value).__name__}"
    )


def check_param_space(space: dict[str, Any]) -> None:
    """Refuse keys a trainer has no argument for (called by the Tuner, before any trial)."""
    unknown = sorted(set(space) - set(TUNABLE_KEYS))
    if unknown:
        raise ValueError(
            f"param_space for a trainer sets {', '.join(unknown)}: only the trainer's "
            f"arguments {', '.join(TUNABLE_KEYS)} can be tuned (put loop options under "
            "'train_loop_config')"
        )


def merged(trainer: Any, config: dict[str, Any]) -> Any:
    """A copy of ``trainer`` with the trial's ``config`` merged into its arguments."""
    check_param_space(config)
    new = copy.copy(trainer)
    if config.get("train_loop_config") is not None:
        loop_config = config["train_loop_config"]
        if not isinstance(loop_config, dict):
            raise TypeError("param_space's train_loop_config must be a dict")
        new.train_loop_config = {**(trainer.train_loop_config or {}), **loop_config}
    new.scaling_config = _scaling(trainer.scaling_config, config.get("scaling_config"))
    new.datasets = {**trainer.datasets, **(config.get("datasets") or {})}
    new.metadata = {**trainer.metadata, **(config.get("metadata") or {})}
    return new


def trial_resources(trainer: Any, config: dict[str, Any]) -> dict[str, float]:
    """What Tune counts for one trial: every worker's bundle."""
    scaling = _scaling(trainer.scaling_config, config.get("scaling_config"))
    bundle = scaling.worker_bundle
    return {key: amount * scaling.num_workers for key, amount in bundle.items()}


class _ToTune(RunCallback):
    """Each finished step of the run (rank 0's metrics) is one result of the trial."""

    def on_step(self, step: Step, checkpoint: Checkpoint | None) -> None:
        _session.report(dict(step.metrics), checkpoint)


def as_trainable(trainer: Any) -> Callable[[dict[str, Any]], None]:
    """The function trainable that runs ``trainer`` with each trial's config."""

    def run_trial(config: dict[str, Any]) -> None:
        if _session.get_worker_session() is not None or _session._trial_session is None:
            raise RuntimeError("a trainer's Tune trainable runs only inside a Tune trial")
        trial = merged(trainer, config)
        trial_dir = _session.get_context().get_trial_dir()
        run_dir = os.path.join(trial_dir, INNER_RUN)
        shutil.rmtree(run_dir, ignore_errors=True)  # a restarted trial's stale run
        # The run keeps only its latest checkpoint (its restart point after a worker dies):
        # every one is copied into the trial's folder when reported to Tune, whose
        # CheckpointConfig decides what stays there.
        trial.run_config = RunConfig(
            name=INNER_RUN,
            storage_path=trial_dir,
            failure_config=trainer.run_config.failure_config,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            verbose=0,
        )
        trial.resume_from_checkpoint = _session.get_checkpoint() or trainer.resume_from_checkpoint
        trial._callbacks = [*trainer._callbacks, _ToTune()]
        try:
            trial.fit()
        finally:  # its checkpoints were copied into the trial's folder as reported
            shutil.rmtree(run_dir, ignore_errors=True)

    run_trial.__name__ = run_trial.__qualname__ = type(trainer).__name__
    run_trial._tune_resources = lambda config: trial_resources(trainer, config)  # type: ignore[attr-defined]
    run_trial._tune_runner_resources = {}  # type: ignore[attr-defined]
    run_trial._tune_check_param_space = check_param_space  # type: ignore[attr-defined]
    return run_trial
