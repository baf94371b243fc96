"""The trial's side of the conversation: ``report``, ``get_checkpoint``, ``get_context``.

A trial runs in an actor; the runner installs a `Session` for it before calling the user's
function. ``report`` hands the metrics (and a persisted checkpoint) to the runner and waits
until the controller has decided on them, so a trial never runs ahead of its scheduler.
``rayjupyter.train``'s functions reach the same session: `install` hands it to
``rayjupyter.train._session`` as well, and ``tune.report`` inside a Train worker's loop
goes to that worker's session (as ``train.report``), so either name works in either place.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from rayjupyter.train import _session as train_session
from rayjupyter.tune.checkpoint import Checkpoint


class StopTrial(BaseException):
    """Raised inside ``report`` when the controller stopped the trial: unwinds the user's
    function (a BaseException so a user's ``except Exception`` does not swallow it)."""


class TuneContext:
    """What a trial may ask about itself (Ray's ``tune.get_context()``)."""

    def __init__(self, info: dict[str, Any]) -> None:
        self._info = info

    def get_trial_id(self) -> str:
        return str(self._info["trial_id"])

    def get_trial_name(self) -> str:
        return str(self._info["trial_name"])

    def get_trial_dir(self) -> str:
        return str(self._info["trial_dir"])

    def get_experiment_name(self) -> str:
        return str(self._info["experiment_name"])

    def get_trial_resources(self) -> dict[str, float]:
        return dict(self._info.get("resources", {}))

    # A trial is a world of one, so Train's questions have these answers (as in Ray).
    def get_world_rank(self) -> int:
        return 0

    def get_world_size(self) -> int:
        return 1

    def get_local_rank(self) -> int:
        return 0

    def get_local_world_size(self) -> int:
        return 1

    def get_node_rank(self) -> int:
        return 0

    def get_metadata(self) -> dict[str, Any]:
        return {}


class Session:
    def __init__(
        self,
        info: dict[str, Any],
        checkpoint: Checkpoint | None,
        first_checkpoint_index: int,
        deliver: Callable[[dict[str, Any], str | None], None],
    ) -> None:
        self.context = TuneContext(info)
        self.checkpoint = checkpoint
        self._next_index = first_checkpoint_index
        self._deliver = deliver

    def persist(self, checkpoint: Checkpoint) -> str:
        """Copy a reported checkpoint under the trial's directory (unless already there)."""
        trial_dir = os.path.abspath(self.context.get_trial_dir())
        source = os.path.abspath(checkpoint.path)
        if os.path.dirname(source) == trial_dir:
            return source
        target = os.path.join(trial_dir, f"checkpoint_{self._next_index:06d}")
        self._next_index += 1
        shutil.copytree(source, target, dirs_exist_ok=True)
        return target

    def report(self, metrics: dict[str, Any], checkpoint: Checkpoint | None) -> None:
        path = None
        if checkpoint is not None:
            path = self.persist(checkpoint)
            self.checkpoint = Checkpoint(path)
        self._deliver(dict(metrics), path)


_session: Session | None = None


def install(session: Session | None) -> None:
    global _session
    _session = session
    train_session.set_trial_session(session)


def get_session() -> Session | None:
    return _session


def report(metrics: dict[str, Any], *, checkpoint: Checkpoint | None = None) -> None:
    """Send one result (and optionally a checkpoint) from inside a trial."""
    if not isinstance(metrics, dict):
        raise TypeError(f"report() takes a dict of metrics, got {type(metrics).__name__}")
    if _session is None:
        if train_session.get_worker_session() is not None:  # inside a Train worker's loop
            train_session.report(metrics, checkpoint)
            return
        raise RuntimeError(
            "tune.report() was called outside a trial: run the function with Tuner(...).fit()"
        )
    _session.report(metrics, checkpoint)


def get_checkpoint() -> Checkpoint | None:
    """The checkpoint this trial restarts from (after a failure, a pause or a PBT exploit)."""
    if _session is None and train_session.get_worker_session() is not None:
        return train_session.get_checkpoint()
    return None if _session is None else _session.checkpoint


def get_context() -> Any:
    if _session is None:
        if train_session.get_worker_session() is not None:
            return train_session.get_context()
        raise RuntimeError("tune.get_context() was called outside a trial")
    return _session.context
