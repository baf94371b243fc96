"""The worker side of a run: ``report``, ``get_checkpoint``, ``get_context`` and
``get_dataset_shard``, which a training loop calls inside ``train_loop_per_worker``.

A worker process runs one loop at a time, so the session is one module global, set by the
worker actor around the loop. A report copies the checkpoint's files into the run's
storage first, then puts a small record (rank, report index, metrics, checkpoint path) on
the run's queue, which the controller reads; the queue is bounded, so a loop that reports
faster than the controller reads waits in ``report``.

Inside a Tune trial (a function trainable) there is no worker session: Tune's runner
installs its trial session here with `set_trial_session`, and ``report``,
``get_checkpoint`` and ``get_context`` go to it, so a loop written for Train also runs as
a Tune trainable, as in Ray. Train never imports Tune; Tune pushes the hook in.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

from rayjupyter.train._checkpoint import Checkpoint

REPORT_PUT_TIMEOUT_S = 600.0  # a report waits this long for room on the run's queue


@dataclasses.dataclass
class TrainContext:
    """Who this worker is in the run: ``get_context()`` returns it, as in Ray Train."""

    world_rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    experiment_name: str
    run_dir: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def get_world_rank(self) -> int:
        return self.world_rank

    def get_world_size(self) -> int:
        return self.world_size

    def get_local_rank(self) -> int:
        return self.local_rank

    def get_local_world_size(self) -> int:
        return self.local_world_size

    def get_node_rank(self) -> int:
        return self.node_rank

    def get_experiment_name(self) -> str:
        return self.experiment_name

    def get_trial_name(self) -> str:
        return self.experiment_name

    def get_trial_id(self) -> str:
        return self.experiment_name

    def get_trial_dir(self) -> str:
        return self.run_dir

    def get_metadata(self) -> dict[str, Any]:
        return dict(self.metadata)


@dataclasses.dataclass
class Report:
    """One ``report`` call as the controller receives it."""

    rank: int
    index: int  # the n-th report of this attempt's run, counted across attempts
    metrics: dict[str, Any]
    checkpoint_path: str | None


class _Session:
    def __init__(
        self,
        context: TrainContext,
        queue: Any,
        first_index: int,
        checkpoint: Checkpoint | None,
        dataset_shards: dict[str, Any],
    ) -> None:
        self.context = context
        self.queue = queue
        self.next_index = first_index
        self.checkpoint = checkpoint
        self.dataset_shards = dataset_shards

    def report(self, metrics: dict[str, Any], checkpoint: Checkpoint | None) -> None:
        if not isinstance(metrics, dict):
            raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
        path = None
        if checkpoint is not None:
            if not isinstance(checkpoint, Checkpoint):
                raise TypeError(
                    "checkpoint must be a rayjupyter.train.Checkpoint: "
                    "use Checkpoint.from_directory(folder)"
                )
            path = os.path.join(self.context.run_dir, f"checkpoint_{self.next_index:06d}")
            if os.path.abspath(checkpoint.path) != path:
                shutil.copytree(checkpoint.path, path, dirs_exist_ok=True)
            self.checkpoint = Checkpoint(path)
        record = Report(self.context.world_rank, self.next_index, dict(metrics), path)
        self.next_index += 1
        from rayjupyter.util.queue import Full

        try:
            self.queue.put(record, timeout=REPORT_PUT_TIMEOUT_S)
        except Full:
            raise RuntimeError(
                f"train.report() waited {REPORT_PUT_TIMEOUT_S:.0f} s (REPORT_PUT_TIMEOUT_S) for "
                "the driver to take earlier reports off the run's queue (REPORT_QUEUE_SIZE in "
                "rayjupyter/train/_controller.py): is the driver process busy or stopped?"
            ) from None


_session: _Session | None = None
# A Tune trial's session (rayjupyter.tune.session.Session), installed by Tune's runner:
# it has report(metrics, checkpoint), .checkpoint and .context.
_trial_session: Any = None


def set_trial_session(session: Any) -> None:
    """Called by Tune's runner around a trial: the session Train's functions fall back to."""
    global _trial_session
    _trial_session = session


def get_worker_session() -> _Session | None:
    """This process's running training loop's session, if one runs here."""
    return _session


def _current(what: str) -> _Session:
    if _session is None:
        raise RuntimeError(
            f"rayjupyter.train.{what}() is called inside train_loop_per_worker, "
            "while a trainer's fit() runs it"
        )
    return _session


def report(metrics: dict[str, Any], checkpoint: Checkpoint | None = None) -> None:
    """Report this step's metrics, and optionally a checkpoint (copied into the run's
    storage before this returns). Every worker calls it the same number of times; rank 0's
    metrics are the run's, and every worker's checkpoint files go into one folder. Inside
    a Tune trial, this is ``tune.report``."""
    if _session is None and _trial_session is not None:
        if not isinstance(metrics, dict):
            raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
        _trial_session.report(metrics, checkpoint)
        return
    _current("report").report(metrics, checkpoint)


def get_checkpoint() -> Checkpoint | None:
    """The checkpoint to resume from: the latest one reported, after a restart, or
    ``resume_from_checkpoint``; None on a fresh start (inside a Tune trial: the trial's)."""
    if _session is None and _trial_session is not None:
        checkpoint: Checkpoint | None = _trial_session.checkpoint
        return checkpoint
    return _current("get_checkpoint").checkpoint


def get_context() -> Any:
    """This worker's rank, world size, local rank, node rank and run name (inside a Tune
    trial: the trial's context, a world of one)."""
    if _session is None and _trial_session is not None:
        return _trial_session.context
    return _current("get_context").context


def get_dataset_shard(name: str) -> Any:
    """This worker's share of ``datasets[name]`` given to the trainer."""
    shards = _current("get_dataset_shard").dataset_shards
    if name not in shards:
        raise KeyError(
            f"no dataset named {name!r} was given to the trainer "
            f"(datasets: {', '.join(sorted(shards)) or 'none'})"
        )
    return shards[name]
