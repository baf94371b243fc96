"""``TuneController``: runs the trials as actors and applies the searcher's and the
scheduler's decisions. The decisions live in those objects; this is the loop around them:
start trials while resources and ``max_concurrent_trials`` allow, wait for the next
result, record it, ask the scheduler, act, save the experiment state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from typing import Any

import rayjupyter as rj
from rayjupyter.tune import state_file
from rayjupyter.tune.config import (
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    TuneConfig,
    make_stopper,
)
from rayjupyter.tune.runner import TrialRunner
from rayjupyter.tune.schedulers.base import Exploit, FIFOScheduler, TrialScheduler
from rayjupyter.tune.search.basic import BasicVariantGenerator, Searcher
from rayjupyter.tune.trainable import is_class_trainable, resources_for, trainable_name
from rayjupyter.tune.trial import Trial, TrialState

log = logging.getLogger(__name__)

_RemoteRunner: Any = None
STOP_TIMEOUT_S = 60.0  # how long a trainer's trial may take to stop its workers
SAVE_INTERVAL_S = 0.5  # the experiment state is written at most this often (and at the end)
# results kept in memory per trial (for metrics_dataframe and the schedulers' views); older
# rows drop out with a warning, and every row stays in the trial's result.json
MAX_HISTORY = int(os.environ.get("RAYJUPYTER_TUNE_MAX_HISTORY", "10000"))


def _runner_class() -> Any:
    global _RemoteRunner
    if _RemoteRunner is None:
        _RemoteRunner = rj.remote(TrialRunner)
    return _RemoteRunner


class TuneController:
    def __init__(
        self,
        trainable: Any,
        param_space: dict[str, Any],
        tune_config: TuneConfig,
        run_config: RunConfig,
        experiment_path: str,
        *,
        trials: list[Trial] | None = None,
        searcher: Searcher | None = None,
        scheduler: TrialScheduler | None = None,
        on_update: Callable[[list[Trial]], None] | None = None,
    ) -> None:
        self.trainable, self.param_space = trainable, param_space
        self.tune_config, self.run_config = tune_config, run_config
        self.path = experiment_path
        self.trials: list[Trial] = trials or []
        self._by_id = {t.trial_id: t for t in self.trials}
        self.checkpoint_config = run_config.checkpoint_config or CheckpointConfig()
        self.failure_config = run_config.failure_config or FailureConfig()
        self.stopper = make_stopper(run_config.stop)
        metric, mode = tune_config.metric, tune_config.mode
        if searcher is None:
            searcher = tune_config.search_alg or BasicVariantGenerator()
            searcher.set_search_properties(
                metric, mode, param_space, num_samples=tune_config.num_samples
            )
        if scheduler is None:
            scheduler = tune_config.scheduler or FIFOScheduler()
            scheduler.set_search_properties(metric, mode)
        self.searcher, self.scheduler = searcher, scheduler
        self._made = len(self.trials)
        self._searcher_done = False
        self._on_update = on_update
        self._tag = uuid.uuid4().hex[:5]
        self._running: dict[str, Any] = {}  # trial_id -> actor
        self._inflight: dict[Any, str] = {}  # next_result ref -> trial_id
        self._idle: list[tuple[dict[str, float], Any]] = []  # reusable actors
        self._used: dict[str, float] = {}
        self._last_save = 0.0
        self._stop_all = False
        self._history_warned: set[str] = set()
        self.interrupted = False
        frequency = self.checkpoint_config.checkpoint_frequency
        if not is_class_trainable(trainable) and (
            frequency or self.checkpoint_config.checkpoint_at_end
        ):
            raise ValueError(
                "CheckpointConfig(checkpoint_frequency=, checkpoint_at_end=) work with class "
                "trainables only; a function trainable checkpoints with "
                "tune.report(..., checkpoint=)"
            )
        reuse = tune_config.reuse_actors
        self._reuse = (not is_class_trainable(trainable)) if reuse is None else bool(reuse)

    # ----- starting trials -------------------------------------------------------------
    def _limit_ok(self, resources: dict[str, float]) -> bool:
        cap = self.tune_config.max_concurrent_trials
        if cap is not None and len(self._running) >= cap:
            return False
        total = self._cluster
        for key, amount in resources.items():
            if amount > total.get(key, 0.0):
                raise ValueError(
                    f"a trial asks for {amount:g} {key} but the cluster has "
                    f"{total.get(key, 0.0):g}: lower tune.with_resources() or add nodes"
                )
            if self._used.get(key, 0.0) + amount > total[key] + 1e-9:
                return False
        return True

    def _new_trial(self) -> Trial | None:
        if self._searcher_done:
            return None
        total = self.searcher.total_samples
        if total is None and self._made >= self.tune_config.num_samples:
            self._finish_searcher()
            return None
        trial_id = f"{self._tag}_{self._made:05d}"
        config = self.searcher.suggest(trial_id)
        if config == Searcher.FINISHED:
            self._finish_searcher()
            return None
        if config is None:
            return None
        assert isinstance(config, dict)
        self._made += 1
        name = f"{trainable_name(self.trainable)}_{trial_id}"
        trial = Trial(
            trial_id, config, os.path.join(self.path, name), resources_for(self.trainable, config)
        )
        trial.trainable_name = trainable_name(self.trainable)
        if self.tune_config.trial_dirname_creator is not None:
            dirname = str(self.tune_config.trial_dirname_creator(trial))
            trial.path = os.path.join(self.path, dirname)
        if self.tune_config.trial_name_creator is not None:
            trial.name = str(self.tune_config.trial_name_creator(trial))
        self.trials.append(trial)
        self._by_id[trial_id] = trial
        self.scheduler.on_trial_add(trial)
        os.makedirs(trial.path, exist_ok=True)
        with open(os.path.join(trial.path, "params.json"), "w") as f:
            json.dump(trial.config, f, default=repr)
        return trial

    def _finish_searcher(self) -> None:
        if not self._searcher_done:
            self._searcher_done = True
            self.scheduler.on_no_more_trials()

    def _next_to_start(self) -> Trial | None:
        for trial in self.trials:
            if trial.state == TrialState.PENDING:
                return trial
        new = self._new_trial()
        if new is not None:
            return new
        for trial in self.trials:
            if trial.state == TrialState.PAUSED and self.scheduler.may_resume(trial.trial_id):
                trial.set_state(TrialState.PENDING)
                self.scheduler.on_trial_resumed(trial.trial_id)
                return trial
        return None

    def _fill(self) -> None:
        while not self._stop_all:
            trial = self._next_to_start()
            if trial is None:
                return
            if not self._limit_ok(trial.resources):
                return  # it stays PENDING and goes first next time
            self._start(trial)

    def _actor_for(self, resources: dict[str, float]) -> Any:
        for index, (res, actor) in enumerate(self._idle):
            if res == resources:
                del self._idle[index]
                return actor
        # A trainer's trial counts its workers' bundles but its actor holds nothing: the
        # workers' placement group takes the resources (rayjupyter/train/_tune.py).
        runner = getattr(self.trainable, "_tune_runner_resources", None)
        if runner is not None:
            resources = dict(runner)
        options: dict[str, Any] = {"num_cpus": resources.get("CPU", 0.0)}
        if resources.get("GPU"):
            options["num_gpus"] = resources["GPU"]
        if resources.get("memory"):
            options["memory"] = resources["memory"]
        custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory")}
        if custom:
            options["resources"] = custom
        return _runner_class().options(**options).remote()

    def _start(self, trial: Trial) -> None:
        actor = self._actor_for(trial.resources)
        info = {
            "trial_id": trial.trial_id,
            "trial_name": trial.trial_name,
            "trial_dir": trial.path,
            "experiment_name": os.path.basename(self.path),
            "resources": trial.resources,
        }
        restored = dict(trial.restored)
        restored["checkpoint_index"] = 1 + max(
            [
                int(p.rsplit("_", 1)[-1])
                for p, _ in trial.checkpoints
                if p.rsplit("_", 1)[-1].isdigit()
            ]
            or [-1]
        )
        ref = actor.begin.remote(
            self._trainable_ref,
            trial.config,
            info,
            trial.restore_from,
            restored,
            self.checkpoint_config.checkpoint_frequency,
        )
        trial.set_state(TrialState.RUNNING)
        self._running[trial.trial_id] = actor
        self._inflight[ref] = trial.trial_id
        for key, amount in trial.resources.items():
            self._used[key] = self._used.get(key, 0.0) + amount

    # ----- ending trials ---------------------------------------------------------------
    def _release(self, trial: Trial, *, reusable: bool) -> None:
        actor = self._running.pop(trial.trial_id, None)
        for key, amount in trial.resources.items():
            self._used[key] = self._used.get(key, 0.0) - amount
        if actor is None:
            return
        for ref, tid in list(self._inflight.items()):
            if tid == trial.trial_id:
                del self._inflight[ref]
        if reusable and self._reuse and not self._stop_all:
            actor.stop.remote()
            self._idle.append((trial.resources, actor))
        else:
            self._kill(actor)

    def _kill(self, actor: Any) -> None:
        """End a trial actor. A trainer's trial is stopped first, so its training workers
        and their placement group go with it (killing its actor alone would leave them)."""
        if getattr(self.trainable, "_tune_runner_resources", None) is not None:
            with contextlib.suppress(Exception):  # a dead actor has nothing left to stop
                rj.get(actor.stop.remote(), timeout=STOP_TIMEOUT_S)
        rj.kill(actor)

    def _save_class_checkpoint(self, trial: Trial, result: dict[str, Any] | None) -> None:
        actor = self._running.get(trial.trial_id)
        if actor is None or not is_class_trainable(self.trainable):
            return
        path = rj.get(actor.save_now.remote(), timeout=300)
        if path:
            self._add_checkpoint(trial, path, result or trial.last_result)

    def _terminate(self, trial: Trial, result: dict[str, Any] | None) -> None:
        if self.checkpoint_config.checkpoint_at_end:
            self._save_class_checkpoint(trial, result)
        if trial.history:
            trial.history[-1]["done"] = True
        self._release(trial, reusable=True)
        trial.set_state(TrialState.TERMINATED)
        self.searcher.on_trial_complete(trial.trial_id, result or trial.last_result or None)
        self.scheduler.on_trial_complete(trial, result or trial.last_result or None)

    def _restart_later(self, trial: Trial, checkpoint: str | None, owner: Trial) -> None:
        """Back to PENDING, to start again from ``checkpoint`` (``owner``'s)."""
        trial.restore_from = checkpoint
        trial.restored = owner.checkpoint_counters(checkpoint) if checkpoint else {}
        trial.set_state(TrialState.PENDING)
        self.trials.remove(trial)  # restarts go ahead of the trials that never ran
        first = next((i for i, t in enumerate(self.trials) if t.state == TrialState.PENDING), None)
        self.trials.insert(len(self.trials) if first is None else first, trial)

    def _fail(self, trial: Trial, exc: BaseException) -> None:
        self._release(trial, reusable=False)
        trial.num_failures += 1
        allowed = self.failure_config.max_failures
        if allowed < 0 or trial.num_failures <= allowed:
            log.warning("trial %s failed (%s); retrying from its checkpoint", trial.trial_id, exc)
            self._restart_later(trial, trial.checkpoint, trial)
            return
        trial.error, trial.error_text = exc, f"{type(exc).__name__}: {exc}"
        trial.set_state(TrialState.ERROR)
        with open(os.path.join(trial.path, "error.txt"), "w") as f:
            f.write(str(exc))
        self.searcher.on_trial_complete(trial.trial_id, None, error=True)
        self.scheduler.on_trial_error(trial)
        if self.failure_config.fail_fast:
            self._stop_all = True
            if self.failure_config.fail_fast == "raise":
                raise exc

    # ----- results ---------------------------------------------------------------------
    def _add_checkpoint(self, trial: Trial, path: str, result: dict[str, Any]) -> None:
        trial.checkpoint = path
        trial.checkpoints.append((path, result))
        keep = self.checkpoint_config.num_to_keep
        if keep is None or len(trial.checkpoints) <= keep:
            return
        attr = self.checkpoint_config.checkpoint_score_attribute
        ranked = list(trial.checkpoints[:-1])  # the latest is always kept, for restarts
        if attr is not None:
            sign = 1.0 if self.checkpoint_config.checkpoint_score_order == "max" else -1.0
            ranked.sort(key=lambda c: sign * float(c[1].get(attr, -math.inf * sign)))
        drop = ranked[0]
        trial.checkpoints.remove(drop)
        shutil.rmtree(drop[0], ignore_errors=True)

    def _on_result(self, trial: Trial, result: dict[str, Any], checkpoint: str | None) -> None:
        result["config"] = trial.config
        trial.history.append(result)
        if len(trial.history) > MAX_HISTORY:
            if trial.trial_id not in self._history_warned:
                self._history_warned.add(trial.trial_id)
                log.warning(
                    "trial %s has %d results in memory, the most kept "
                    "(RAYJUPYTER_TUNE_MAX_HISTORY); older ones stay only in %s",
                    trial.trial_id,
                    MAX_HISTORY,
                    os.path.join(trial.path, "result.json"),
                )
            del trial.history[0]
        with open(os.path.join(trial.path, "result.json"), "a") as f:
            f.write(json.dumps(result, default=repr) + "\n")
        if checkpoint:
            self._add_checkpoint(trial, checkpoint, result)
        self.searcher.on_trial_result(trial.trial_id, result)
        if self.stopper(trial.trial_id, result) or result.get("done"):
            decision: Any = TrialScheduler.STOP
            self._stop_all = self._stop_all or self.stopper.stop_all()
        else:
            decision = self.scheduler.on_trial_result(trial, result)
        self._apply(trial, decision, result)

    def _apply(self, trial: Trial, decision: Any, result: dict[str, Any]) -> None:
        if isinstance(decision, Exploit):
            source = self._by_id.get(decision.clone_from)
            if source is not None and source.state == TrialState.RUNNING:
                # a class trainable saves on demand (queued after its step in flight)
                self._save_class_checkpoint(source, source.last_result)
            if source is None or source.checkpoint is None:
                decision = TrialScheduler.CONTINUE
            else:
                self._release(trial, reusable=True)
                trial.config = decision.new_config
                self._restart_later(trial, source.checkpoint, source)
                return
        if decision == TrialScheduler.STOP:
            self._terminate(trial, result)
        elif decision == TrialScheduler.PAUSE:
            self._save_class_checkpoint(trial, result)
            self._release(trial, reusable=True)
            trial.restore_from = trial.checkpoint
            trial.restored = trial.checkpoint_counters(trial.checkpoint) if trial.checkpoint else {}
            trial.set_state(TrialState.PAUSED)
        else:
            ref = self._running[trial.trial_id].next_result.remote()
            self._inflight[ref] = trial.trial_id

    def _drain_scheduler(self) -> None:
        for trial_id, action in self.scheduler.drain_actions():
            trial = self._by_id.get(trial_id)
            if trial is None or trial.is_finished:
                continue
            if action == TrialScheduler.STOP:
                if trial.state == TrialState.RUNNING:
                    self._terminate(trial, None)
                else:
                    trial.set_state(TrialState.TERMINATED)
                    self.searcher.on_trial_complete(trial_id, trial.last_result or None)
            elif action == TrialScheduler.RESUME and trial.state == TrialState.PAUSED:
                trial.set_state(TrialState.PENDING)
                self.scheduler.on_trial_resumed(trial_id)

    def _handle(self, ref: Any) -> None:
        trial_id = self._inflight.pop(ref, None)
        if trial_id is None:
            return
        trial = self._by_id[trial_id]
        try:
            kind, result, checkpoint = rj.get(ref, timeout=60)
        except rj.exceptions.GetTimeoutError:
            raise
        except Exception as exc:
            self._fail(trial, exc)
            return
        if kind == "done":
            self._terminate(trial, None)
        else:
            assert result is not None
            self._on_result(trial, result, checkpoint)
        self._drain_scheduler()

    # ----- the loop --------------------------------------------------------------------
    def save(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_save >= SAVE_INTERVAL_S:
            self._last_save = now
            state_file.save_experiment(self.path, self.trials, self.searcher, self.scheduler)

    def _stuck(self) -> bool:
        """Nothing runs or can start, yet paused trials wait (their bracket cannot fill)."""
        return (
            not self._running
            and all(t.state != TrialState.PENDING for t in self.trials)
            and self._searcher_done
        )

    def _stop_running(self, state: TrialState) -> None:
        for trial_id in list(self._running):
            trial = self._by_id[trial_id]
            self._release(trial, reusable=False)
            if state == TrialState.TERMINATED:
                trial.set_state(TrialState.TERMINATED)
                self.searcher.on_trial_complete(trial_id, trial.last_result or None)
            else:  # left RUNNING in the saved state, so Tuner.restore starts it again
                trial.restore_from = trial.checkpoint
                trial.restored = (
                    trial.checkpoint_counters(trial.checkpoint) if trial.checkpoint else {}
                )

    def validate(self) -> None:
        """Invariants: resources in use are the running trials', each running trial waits
        on one call, and every trial's own invariants hold."""
        for key, amount in self._used.items():
            expected = sum(self._by_id[t].resources.get(key, 0.0) for t in self._running)
            assert abs(amount - expected) < 1e-6, (key, amount, expected)
        assert sorted(self._inflight.values()) == sorted(self._running), self._inflight
        for trial_id in self._running:
            assert self._by_id[trial_id].state == TrialState.RUNNING, trial_id
        for trial in self.trials:
            trial.validate()
        if not self.interrupted and not self._running:
            assert all(t.is_finished for t in self.trials), [t.state for t in self.trials]

    def run(self) -> list[Trial]:
        self._cluster = rj.cluster_resources()
        self._trainable_ref = rj.put(self.trainable)
        deadline = None
        if self.tune_config.time_budget_s is not None:
            deadline = time.monotonic() + self.tune_config.time_budget_s
        try:
            while True:
                if deadline is not None and time.monotonic() >= deadline:
                    self._stop_all = True
                if self._stop_all:
                    self._stop_running(TrialState.TERMINATED)
                    for trial in self.trials:
                        if trial.state in (TrialState.PENDING, TrialState.PAUSED):
                            trial.set_state(TrialState.TERMINATED)
                    break
                self._fill()
                if not self._inflight:
                    if self._stuck():
                        paused = [t for t in self.trials if t.state == TrialState.PAUSED]
                        if not paused:
                            break
                        for trial in paused:  # nobody can release them any more
                            trial.set_state(TrialState.TERMINATED)
                        continue
                    time.sleep(0.01)  # a searcher said "not now" with nothing running
                    continue
                refs = list(self._inflight)
                ready, rest = rj.wait(refs, num_returns=1, timeout=0.5)
                if ready and rest:
                    more, _ = rj.wait(rest, num_returns=len(rest), timeout=0)
                    ready += more
                for ref in ready:
                    self._handle(ref)
                self.save()
                if self._on_update is not None:
                    self._on_update(self.trials)
        except KeyboardInterrupt:
            self.interrupted = True
            self._stop_running(TrialState.RUNNING)
        finally:
            for _, actor in self._idle:
                self._kill(actor)
            self._idle = []
            if not self.interrupted:
                self._stop_running(TrialState.RUNNING)
            self.save(force=True)
            if self._on_update is not None:
                self._on_update(self.trials)
        self.validate()
        return self.trials
