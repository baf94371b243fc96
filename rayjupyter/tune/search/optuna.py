"""``OptunaSearch``: Optuna's samplers (TPE by default) behind the `Searcher` interface.

Uses Optuna's ask-and-tell API, so Optuna decides and we only translate: our domains to
Optuna distributions on the way in, the trial's final metric on the way out.
"""

from __future__ import annotations

import copy
from typing import Any

from rayjupyter.tune import variants
from rayjupyter.tune.sample import Categorical, Domain, Float, Integer
from rayjupyter.tune.search.basic import Searcher


def _distribution(path: str, domain: Domain) -> Any:
    import optuna.distributions as od

    if isinstance(domain, Float) and domain.sampler in ("uniform", "loguniform"):
        assert domain.lower is not None and domain.upper is not None
        if domain.sampler == "loguniform" and domain.q is not None:
            raise ValueError(f"OptunaSearch: {path!r}: Optuna has no quantized log-uniform")
        return od.FloatDistribution(
            domain.lower, domain.upper, log=domain.sampler == "loguniform", step=domain.q
        )
    if isinstance(domain, Integer):
        upper = domain.upper - 1 if domain.q == 1 else domain.upper
        return od.IntDistribution(
            domain.lower, upper, log=domain.sampler == "loguniform", step=domain.q
        )
    if isinstance(domain, Categorical):
        return od.CategoricalDistribution(domain.categories)
    raise ValueError(
        f"OptunaSearch: {path!r}: {domain!r} has no Optuna equivalent; use uniform, "
        "loguniform, randint, lograndint or choice"
    )


class OptunaSearch(Searcher):
    """Optuna's sampler proposes each config; the trial's last ``metric`` is told back."""

    def __init__(
        self,
        space: dict[str, Any] | None = None,
        metric: str | None = None,
        mode: str | None = None,
        points_to_evaluate: list[dict[str, Any]] | None = None,
        sampler: Any = None,
        seed: int | None = None,
    ) -> None:
        try:
            import optuna
        except ImportError as exc:
            raise ImportError("OptunaSearch needs optuna: pip install 'rayjupyter[tune]'") from exc
        super().__init__(metric, mode)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._sampler = sampler or optuna.samplers.TPESampler(seed=seed)
        self._points = list(points_to_evaluate or [])
        self._space: dict[str, Any] = {}
        self._dists: dict[str, Any] = {}
        self._study: Any = None
        self._trials: dict[str, Any] = {}
        if space:
            self._set_space(space)

    def _set_space(self, space: dict[str, Any]) -> None:
        if variants.grid_paths(space):
            raise ValueError("OptunaSearch cannot search a grid_search; use tune.choice")
        self._space = space
        self._dists = {
            "/".join(map(str, path)): _distribution("/".join(map(str, path)), domain)
            for path, domain in variants.domain_paths(space)
        }

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        super().set_search_properties(metric, mode, config)
        if self._space and config and variants.domain_paths(config):
            raise ValueError(
                "OptunaSearch got a search space twice: pass it to OptunaSearch(space=...) "
                "or to Tuner(param_space=...), not both"
            )
        if not self._space:
            self._set_space(config)
        return True

    def _ensure_study(self) -> Any:
        import optuna

        if self._study is None:
            if not self.metric or not self.mode:
                raise ValueError("OptunaSearch needs metric and mode (here or in TuneConfig)")
            self._study = optuna.create_study(
                sampler=self._sampler, direction="maximize" if self.mode == "max" else "minimize"
            )
            for point in self._points:
                self._study.enqueue_trial(variants.flatten(point))
        return self._study

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        study = self._ensure_study()
        trial = study.ask(self._dists)
        self._trials[trial_id] = trial
        config = copy.deepcopy(self._space)
        for path, value in trial.params.items():
            keys = tuple(int(k) if k.isdigit() else k for k in path.split("/"))
            variants.set_path(config, keys, value)
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        import optuna

        trial = self._trials.pop(trial_id, None)
        if trial is None:
            return
        value = None if result is None or self.metric is None else result.get(self.metric)
        if error or value is None:
            self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self._study.tell(trial, float(value))
