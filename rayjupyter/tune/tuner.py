"""``Tuner``: the entry point (``Tuner(trainable, param_space=..., tune_config=...,
run_config=...).fit()``), and ``Tuner.restore`` to go on with an interrupted experiment."""

from __future__ import annotations

import datetime
import os
from typing import Any

import rayjupyter as rj
from rayjupyter.tune import state_file
from rayjupyter.tune.config import RunConfig, TuneConfig
from rayjupyter.tune.controller import TuneController
from rayjupyter.tune.result_grid import ResultGrid
from rayjupyter.tune.trainable import trainable_name
from rayjupyter.tune.trial import Trial, TrialState


def _remap(path: str | None, old: str, new: str) -> str | None:
    if path is None or old == new or not path.startswith(old + os.sep):
        return path
    return new + path[len(old) :]


class Tuner:
    def __init__(
        self,
        trainable: Any = None,
        *,
        param_space: dict[str, Any] | None = None,
        tune_config: TuneConfig | None = None,
        run_config: RunConfig | None = None,
    ) -> None:
        if trainable is not None and not isinstance(trainable, type):
            as_trainable = getattr(trainable, "as_trainable", None)
            if callable(as_trainable):  # a rayjupyter.train trainer, as in Ray
                own = trainable.run_config  # used where the Tuner is given none, as in Ray
                if run_config is None:
                    run_config = RunConfig(
                        name=own.name, storage_path=own.storage_path, verbose=own.verbose
                    )
                trainable = as_trainable()
        if trainable is None or not callable(trainable):
            raise ValueError(
                "Tuner needs a trainable: a function of config, a Trainable subclass or a "
                "rayjupyter.train trainer "
                "(trainables registered by name are not supported)"
            )
        if param_space is not None and not isinstance(param_space, dict):
            raise ValueError(f"param_space must be a dict, got {type(param_space).__name__}")
        check = getattr(trainable, "_tune_check_param_space", None)
        if check is not None:
            check(dict(param_space or {}))
        self.trainable = trainable
        self.param_space = dict(param_space or {})
        self.tune_config = tune_config or TuneConfig()
        self.run_config = run_config or RunConfig()
        self._restored: dict[str, Any] | None = None
        self._path: str | None = None
        self._result_grid: ResultGrid | None = None

    @property
    def experiment_path(self) -> str:
        if self._path is None:
            name = self.run_config.name or "{}_{}".format(
                trainable_name(self.trainable),
                datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"),
            )
            self._path = os.path.join(self.run_config.storage(), name)
        return self._path

    @classmethod
    def can_restore(cls, path: str) -> bool:
        return state_file.can_restore(path)

    @classmethod
    def restore(
        cls,
        path: str,
        trainable: Any,
        resume_unfinished: bool = True,
        resume_errored: bool = False,
        restart_errored: bool = False,
        param_space: dict[str, Any] | None = None,
    ) -> Tuner:
        """A Tuner that goes on with the experiment saved at ``path``: finished trials are
        kept, unfinished ones start again from their latest checkpoint, and the searcher
        continues its sequence."""
        path = os.path.abspath(os.path.expanduser(path))
        saved = state_file.load_tuner(path)
        tuner = cls(
            trainable,
            param_space=param_space if param_space is not None else saved["param_space"],
            tune_config=saved["tune_config"],
            run_config=saved["run_config"],
        )
        tuner._path = path
        state = state_file.load_experiment(path)
        old = saved["path"]
        trials: list[Trial] = state["trials"]
        for trial in trials:
            trial.path = _remap(trial.path, old, path) or trial.path
            trial.checkpoint = _remap(trial.checkpoint, old, path)
            trial.checkpoints = [(_remap(p, old, path) or p, m) for p, m in trial.checkpoints]
            resume = trial.state == TrialState.RUNNING or (
                trial.state == TrialState.ERROR and (resume_errored or restart_errored)
            )
            if trial.state == TrialState.PENDING and not resume_unfinished:
                trial.set_state(TrialState.TERMINATED)
            if not resume:
                continue
            if trial.state == TrialState.RUNNING and not resume_unfinished:
                trial.set_state(TrialState.TERMINATED)
                continue
            from_scratch = trial.state == TrialState.ERROR and restart_errored
            trial.error, trial.error_text, trial.num_failures = None, None, 0
            trial.set_state(TrialState.PENDING)
            trial.restore_from = None if from_scratch else trial.checkpoint
            trial.restored = (
                trial.checkpoint_counters(trial.checkpoint)
                if trial.restore_from and trial.checkpoint
                else {}
            )
        tuner._restored = state
        return tuner

    def _controller(self) -> TuneController:
        from rayjupyter.tune import progress

        if not rj.is_initialized():
            rj.init()
        path = self.experiment_path
        os.makedirs(path, exist_ok=True)
        on_update = progress.make_reporter(
            self.tune_config.metric, self.tune_config.mode, self.run_config.verbose
        )
        restored = self._restored or {}
        controller = TuneController(
            self.trainable,
            self.param_space,
            self.tune_config,
            self.run_config,
            path,
            trials=restored.get("trials"),
            searcher=restored.get("searcher"),
            scheduler=restored.get("scheduler"),
            on_update=on_update,
        )
        if not self._restored:
            tune_config = TuneConfig(
                **{**vars(self.tune_config), "search_alg": None, "scheduler": None}
            )
            state_file.save_tuner(
                path,
                {
                    "param_space": self.param_space,
                    "tune_config": tune_config,
                    "run_config": self.run_config,
                    "path": path,
                },
            )
        return controller

    def fit(self) -> ResultGrid:
        controller = self._controller()
        try:
            trials = controller.run()
        finally:
            close = getattr(controller._on_update, "close", None)
            if close is not None:
                close()
        if controller.interrupted:
            print(
                "The experiment was interrupted; its state is saved. Go on with:\n"
                f"    Tuner.restore({controller.path!r}, trainable=...).fit()"
            )
        self._result_grid = ResultGrid(
            trials, controller.path, self.tune_config.metric, self.tune_config.mode
        )
        return self._result_grid

    def get_results(self) -> ResultGrid:
        if self._result_grid is None:
            if self._restored is None:
                raise RuntimeError("get_results() before fit(): call fit() first")
            return ResultGrid(
                self._restored["trials"],
                self.experiment_path,
                self.tune_config.metric,
                self.tune_config.mode,
            )
        return self._result_grid
