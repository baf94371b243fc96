"""``HyperBandScheduler``: synchronous successive halving in brackets (Li et al.).

Trials fill brackets in turn; a bracket with budget ``r`` pauses each trial when it has
run ``r`` units of ``time_attr``; once every live trial of a full bracket has paused there,
the best ``1/reduction_factor`` resume with budget ``r * reduction_factor`` and the others
stop. Pure numbers: the controller feeds results and applies ``drain_actions``.
"""

from __future__ import annotations

import math
from typing import Any

from rayjupyter.tune.schedulers.base import TrialScheduler


class _Bracket:
    def __init__(self, capacity: int, budget: float, max_t: float, eta: float) -> None:
        self.capacity, self.budget, self.max_t, self.eta = capacity, budget, max_t, eta
        self.live: set[str] = set()
        self.scores: dict[str, float] = {}  # live trials waiting at the current budget
        self.closed = False  # full, or no more trials will come

    def full(self) -> bool:
        return self.closed or len(self.live) >= self.capacity

    def halve(self) -> tuple[list[str], list[str]]:
        """When all live trials wait at the budget: (resume, stop) and the next budget."""
        if not self.full() or not self.live or set(self.scores) != self.live:
            return [], []
        ranked = sorted(self.scores, key=lambda tid: self.scores[tid], reverse=True)
        keep = max(1, int(len(ranked) / self.eta))
        good, bad = ranked[:keep], ranked[keep:]
        self.live -= set(bad)
        self.scores = {}
        self.budget = min(self.budget * self.eta, self.max_t)
        return good, bad


class HyperBandScheduler(TrialScheduler):
    def __init__(
        self,
        time_attr: str = "training_iteration",
        metric: str | None = None,
        mode: str | None = None,
        max_t: float = 81,
        reduction_factor: float = 3,
        stop_last_trials: bool = True,
    ) -> None:
        if reduction_factor <= 1 or max_t <= 0:
            raise ValueError("HyperBand needs reduction_factor > 1 and max_t > 0")
        super().__init__(metric, mode)
        self.time_attr, self.max_t, self.eta = time_attr, max_t, reduction_factor
        self.stop_last_trials = stop_last_trials
        self._s_max = int(math.log(max_t) / math.log(reduction_factor) + 1e-9)
        self._next_s = self._s_max
        self._brackets: list[_Bracket] = []
        self._of: dict[str, _Bracket] = {}
        self._paused: set[str] = set()
        self._released: set[str] = set()

    def _new_bracket(self) -> _Bracket:
        s = self._next_s
        self._next_s = self._s_max if s == 0 else s - 1
        capacity = math.ceil((self._s_max + 1) / (s + 1) * self.eta**s)
        bracket = _Bracket(capacity, self.max_t * self.eta ** (-s), self.max_t, self.eta)
        self._brackets.append(bracket)
        return bracket

    def on_trial_add(self, trial: Any) -> None:
        self._require_metric()
        open_ = [b for b in self._brackets if not b.full()]
        bracket = open_[0] if open_ else self._new_bracket()
        bracket.live.add(trial.trial_id)
        self._of[trial.trial_id] = bracket

    def on_no_more_trials(self) -> None:
        for bracket in self._brackets:
            bracket.closed = True
            self._settle(bracket)

    def _settle(self, bracket: _Bracket) -> None:
        good, bad = bracket.halve()
        for tid in good:
            self._released.add(tid)
            if tid in self._paused:
                self._actions.append((tid, self.RESUME))
        for tid in bad:
            self._of.pop(tid, None)
            self._actions.append((tid, self.STOP))

    def on_trial_result(self, trial: Any, result: dict[str, Any]) -> Any:
        tid = trial.trial_id
        score = self._score(result)
        bracket = self._of.get(tid)
        if bracket is None or score is None or self.time_attr not in result:
            return self.CONTINUE
        t = float(result[self.time_attr])
        if self.stop_last_trials and t >= self.max_t:
            return self.STOP
        if t < bracket.budget:
            return self.CONTINUE
        bracket.scores[tid] = score
        self._released.discard(tid)
        self._settle(bracket)
        # this trial's own fate is the return value, not a drained action
        mine = [a for a in self._actions if a[0] == tid]
        self._actions = [a for a in self._actions if a[0] != tid]
        if any(a[1] == self.STOP for a in mine):
            return self.STOP
        if tid in self._released:
            return self.CONTINUE
        self._paused.add(tid)
        return self.PAUSE

    def may_resume(self, trial_id: str) -> bool:
        return trial_id in self._released

    def on_trial_resumed(self, trial_id: str) -> None:
        self._paused.discard(trial_id)

    def on_trial_remove(self, trial: Any) -> None:
        bracket = self._of.pop(trial.trial_id, None)
        self._paused.discard(trial.trial_id)
        if bracket is not None:
            bracket.live.discard(trial.trial_id)
            bracket.scores.pop(trial.trial_id, None)
            self._settle(bracket)

    def on_trial_complete(self, trial: Any, result: dict[str, Any] | None) -> None:
        self.on_trial_remove(trial)
