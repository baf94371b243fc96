"""``PopulationBasedTraining``: every ``perturbation_interval`` a trial in the bottom
quantile exploits one in the top quantile (restarts from its checkpoint) and explores
(perturbs its hyperparameters). A pure decision object: it returns an `Exploit` and the
controller does the copying.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from typing import Any

from rayjupyter.tune.sample import Domain
from rayjupyter.tune.schedulers.base import Exploit, TrialScheduler


def explore(
    config: dict[str, Any],
    mutations: dict[str, Any],
    resample_probability: float,
    perturbation_factors: tuple[float, float],
    rng: random.Random,
) -> dict[str, Any]:
    """A perturbed copy of ``config``: each mutated key is resampled (with the given
    probability), moved to a neighbouring list entry, or scaled by a perturbation factor."""
    new = copy.deepcopy(config)
    for key, spec in mutations.items():
        value = config.get(key)
        if isinstance(spec, dict):
            new[key] = explore(value or {}, spec, resample_probability, perturbation_factors, rng)
        elif isinstance(spec, list | tuple):
            if rng.random() < resample_probability or value not in spec:
                new[key] = rng.choice(spec)
            else:
                index = spec.index(value) + rng.choice([-1, 1])
                new[key] = spec[min(max(index, 0), len(spec) - 1)]
        elif isinstance(spec, Domain) or callable(spec):
            if rng.random() < resample_probability or value is None:
                new[key] = spec.sample(random_state=rng) if isinstance(spec, Domain) else spec()
            else:
                scaled = float(value) * rng.choice(perturbation_factors)
                new[key] = round(scaled) if isinstance(value, int) else scaled
        else:
            raise ValueError(
                f"hyperparam_mutations[{key!r}] must be a list, a tune domain, a callable "
                f"or a dict of those, got {type(spec).__name__}"
            )
    return new


class PopulationBasedTraining(TrialScheduler):
    def __init__(
        self,
        time_attr: str = "time_total_s",
        metric: str | None = None,
        mode: str | None = None,
        perturbation_interval: float = 60.0,
        burn_in_period: float = 0.0,
        hyperparam_mutations: dict[str, Any] | None = None,
        quantile_fraction: float = 0.25,
        resample_probability: float = 0.25,
        perturbation_factors: tuple[float, float] = (1.2, 0.8),
        custom_explore_fn: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        seed: int | None = None,
    ) -> None:
        if not hyperparam_mutations and custom_explore_fn is None:
            raise ValueError("PBT needs hyperparam_mutations or custom_explore_fn")
        if not 0 <= quantile_fraction <= 0.5:
            raise ValueError("quantile_fraction must be between 0 and 0.5")
        if perturbation_interval <= 0:
            raise ValueError("perturbation_interval must be positive")
        super().__init__(metric, mode)
        self.time_attr, self.interval, self.burn_in = (
            time_attr,
            perturbation_interval,
            burn_in_period,
        )
        self.mutations = hyperparam_mutations or {}
        self.quantile_fraction, self.resample_probability = quantile_fraction, resample_probability
        self.perturbation_factors = perturbation_factors
        self.custom_explore_fn = custom_explore_fn
        self._rng = random.Random(seed)
        self._last_time: dict[str, float] = {}
        self._score_of: dict[str, float] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self.num_perturbations = 0

    def on_trial_add(self, trial: Any) -> None:
        self._require_metric()
        for key, spec in self.mutations.items():  # keys only in the mutations start sampled
            if key not in trial.config and not isinstance(spec, dict):
                trial.config[key] = explore({}, {key: spec}, 1.0, (1, 1), self._rng)[key]
        self._last_time[trial.trial_id] = 0.0
        self._configs[trial.trial_id] = trial.config

    def _quantiles(self) -> tuple[list[str], list[str]]:
        ranked = sorted(self._score_of, key=lambda tid: self._score_of[tid])
        size = math.ceil(len(ranked) * self.quantile_fraction)
        size = min(size, len(ranked) // 2)
        if size == 0:
            return [], []
        return ranked[:size], ranked[-size:]

    def on_trial_result(self, trial: Any, result: dict[str, Any]) -> Any:
        tid = trial.trial_id
        score = self._score(result)
        if self.time_attr not in result or score is None:
            return self.CONTINUE
        t = float(result[self.time_attr])
        self._configs[tid] = trial.config
        if t < self.burn_in or t - self._last_time.get(tid, 0.0) < self.interval:
            return self.CONTINUE
        self._last_time[tid] = t
        self._score_of[tid] = score
        lower, upper = self._quantiles()
        if tid not in lower or not upper:
            return self.CONTINUE
        source = self._rng.choice(upper)
        new_config = explore(
            self._configs[source],
            self.mutations,
            self.resample_probability,
            self.perturbation_factors,
            self._rng,
        )
        if self.custom_explore_fn is not None:
            new_config = self.custom_explore_fn(new_config)
        self.num_perturbations += 1
        self._configs[tid] = new_config
        return Exploit(source, new_config)

    def on_trial_remove(self, trial: Any) -> None:
        self._score_of.pop(trial.trial_id, None)

    def on_trial_complete(self, trial: Any, result: dict[str, Any] | None) -> None:
        pass  # a finished trial's last score still ranks the population, as in Ray
