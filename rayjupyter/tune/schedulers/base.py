"""Trial schedulers: pure decision objects (Ray Tune's ``TrialScheduler`` interface).

``on_trial_result(trial, result)`` returns CONTINUE, PAUSE or STOP (PBT may also return an
`Exploit`). A trial here is anything with ``trial_id`` and ``config``; the schedulers
hold numbers only, so ASHA, HyperBand, the median rule and PBT are tested with numbers.
Decisions about *other* trials (HyperBand resuming or stopping paused ones) are queued and
handed out by ``drain_actions``.
"""

from __future__ import annotations

import math
import random
from typing import Any, NamedTuple


class Exploit(NamedTuple):
    """PBT's decision: restart this trial from ``clone_from``'s checkpoint, ``new_config``."""

    clone_from: str
    new_config: dict[str, Any]


def _check_mode(mode: str | None) -> None:
    if mode not in (None, "min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")


def percentile(values: list[float], fraction: float) -> float:
    """Linear-interpolated percentile (``fraction`` in [0, 1]), NaNs ignored."""
    clean = sorted(v for v in values if not math.isnan(v))
    if not clean:
        return math.nan
    pos = fraction * (len(clean) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return clean[lo] + (clean[hi] - clean[lo]) * (pos - lo)


class TrialScheduler:
    CONTINUE = "CONTINUE"
    PAUSE = "PAUSE"
    STOP = "STOP"
    NOOP = "NOOP"
    RESUME = "RESUME"  # a drained action: a paused trial may run again

    def __init__(self, metric: str | None = None, mode: str | None = None) -> None:
        _check_mode(mode)
        self.metric, self.mode = metric, mode
        self._actions: list[tuple[str, str]] = []

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self.metric = self.metric or metric
        self.mode = self.mode or mode
        return True

    def _score(self, result: dict[str, Any]) -> float | None:
        """The result's metric, sign-flipped so that larger is always better."""
        if self.metric is None or self.metric not in result:
            return None
        value = float(result[self.metric])
        return -value if self.mode == "min" else value

    def _require_metric(self) -> None:
        if not self.metric or not self.mode:
            raise ValueError(
                f"{type(self).__name__} needs metric and mode: pass them to it or to TuneConfig"
            )

    def on_trial_add(self, trial: Any) -> None:
        pass

    def on_trial_result(self, trial: Any, result: dict[str, Any]) -> Any:
        return self.CONTINUE

    def on_trial_complete(self, trial: Any, result: dict[str, Any] | None) -> None:
        pass

    def on_trial_error(self, trial: Any) -> None:
        self.on_trial_remove(trial)

    def on_trial_remove(self, trial: Any) -> None:
        pass

    def on_no_more_trials(self) -> None:
        """The searcher will add no trial: wait no longer for brackets to fill."""

    def drain_actions(self) -> list[tuple[str, str]]:
        """Decisions about trials other than the one just reported: (trial_id, RESUME|STOP)."""
        out, self._actions = self._actions, []
        return out

    def may_resume(self, trial_id: str) -> bool:
        """Whether a PAUSED trial may run again now."""
        return True

    def on_trial_resumed(self, trial_id: str) -> None:
        """A PAUSED trial runs again."""


class FIFOScheduler(TrialScheduler):
    """Every trial runs to its end, in the order the searcher made them."""


class _AshaBracket:
    def __init__(self, min_t: float, max_t: float, rf: float, s: int, stop_last: bool) -> None:
        self.rf, self.max_t, self.stop_last = rf, max_t, stop_last
        count = int(math.log(max_t / min_t) / math.log(rf) + 1e-9) + 1
        milestones = [min_t * rf ** (k + s) for k in range(max(count - s, 0))]
        self.rungs: list[tuple[float, dict[str, float]]] = [
            (m, {}) for m in reversed(milestones) if m <= max_t
        ]

    def on_result(self, trial_id: str, t: float, score: float) -> str:
        if self.stop_last and t >= self.max_t:
            return TrialScheduler.STOP
        for milestone, recorded in self.rungs:  # highest rung first
            if t < milestone or trial_id in recorded:
                continue
            action = TrialScheduler.CONTINUE
            if recorded:
                cutoff = percentile(list(recorded.values()), 1 - 1 / self.rf)
                if score < cutoff:
                    action = TrialScheduler.STOP
            recorded[trial_id] = score
            return action
        return TrialScheduler.CONTINUE


class AsyncHyperBandScheduler(TrialScheduler):
    """ASHA: at each rung (``grace_period * reduction_factor**k``) a trial goes on only if
    its metric is in the top ``1/reduction_factor`` of the trials that reached that rung
    before it; nobody waits for anybody."""

    def __init__(
        self,
        time_attr: str = "training_iteration",
        metric: str | None = None,
        mode: str | None = None,
        max_t: float = 100,
        grace_period: float = 1,
        reduction_factor: float = 4,
        brackets: int = 1,
        stop_last_trials: bool = True,
    ) -> None:
        if grace_period <= 0 or max_t < grace_period:
            raise ValueError("ASHA needs 0 < grace_period <= max_t")
        if reduction_factor <= 1:
            raise ValueError("ASHA needs reduction_factor > 1")
        if brackets < 1:
            raise ValueError("ASHA needs brackets >= 1")
        super().__init__(metric, mode)
        self.time_attr, self.max_t = time_attr, max_t
        self._brackets = [
            _AshaBracket(grace_period, max_t, reduction_factor, s, stop_last_trials)
            for s in range(brackets)
        ]
        self._of: dict[str, _AshaBracket] = {}
        self._rng = random.Random(0)

    def on_trial_add(self, trial: Any) -> None:
        self._require_metric()
        weights = [math.exp(len(b.rungs)) for b in self._brackets]
        self._of[trial.trial_id] = self._rng.choices(self._brackets, weights)[0]

    def on_trial_result(self, trial: Any, result: dict[str, Any]) -> Any:
        score = self._score(result)
        if self.time_attr not in result or score is None:
            return self.CONTINUE
        bracket = self._of.get(trial.trial_id) or self._brackets[0]
        return bracket.on_result(trial.trial_id, float(result[self.time_attr]), score)

    def on_trial_complete(self, trial: Any, result: dict[str, Any] | None) -> None:
        score = None if result is None else self._score(result)
        if result is not None and score is not None and self.time_attr in result:
            bracket = self._of.get(trial.trial_id) or self._brackets[0]
            bracket.on_result(trial.trial_id, float(result[self.time_attr]), score)
        self._of.pop(trial.trial_id, None)


ASHAScheduler = AsyncHyperBandScheduler


class MedianStoppingRule(TrialScheduler):
    """Stops a trial whose best result so far is worse than the median of the other
    trials' running means at the same time (after ``grace_period``)."""

    def __init__(
        self,
        time_attr: str = "time_total_s",
        metric: str | None = None,
        mode: str | None = None,
        grace_period: float = 60.0,
        min_samples_required: int = 3,
        min_time_slice: float = 0,
        hard_stop: bool = True,
    ) -> None:
        if min_time_slice:
            raise ValueError(
                "MedianStoppingRule(min_time_slice=) is not supported: leave it 0 (a paused "
                "trial here restarts from its checkpoint when it runs again)"
            )
        super().__init__(metric, mode)
        self.time_attr, self.grace_period = time_attr, grace_period
        self.min_samples_required, self.hard_stop = min_samples_required, hard_stop
        self._history: dict[str, list[tuple[float, float]]] = {}

    def on_trial_add(self, trial: Any) -> None:
        self._require_metric()

    def on_trial_result(self, trial: Any, result: dict[str, Any]) -> Any:
        score = self._score(result)
        if self.time_attr not in result or score is None:
            return self.CONTINUE
        t = float(result[self.time_attr])
        history = self._history.setdefault(trial.trial_id, [])
        history.append((t, score))
        if t < self.grace_period:
            return self.CONTINUE
        means = []
        for other, points in self._history.items():
            upto = [s for when, s in points if when <= t]
            if other != trial.trial_id and upto:
                means.append(sum(upto) / len(upto))
        if len(means) < self.min_samples_required:
            return self.CONTINUE
        best = max(s for _, s in history)
        if best < percentile(means, 0.5):
            return self.STOP if self.hard_stop else self.PAUSE
        return self.CONTINUE

    def on_trial_remove(self, trial: Any) -> None:
        self._history.pop(trial.trial_id, None)
