"""Searchers: decision objects that propose configs (``suggest``) and learn from results.

No I/O and no cluster: the controller calls ``suggest(trial_id)`` when it has room for a
trial and reports back with ``on_trial_result`` / ``on_trial_complete``. ``suggest`` returns
a config, ``None`` ("not now", e.g. a concurrency limit) or `Searcher.FINISHED`.
"""

from __future__ import annotations

import copy
import random
from typing import Any

from rayjupyter.tune import variants


class Searcher:
    """The interface every search algorithm implements (Ray's ``Searcher``)."""

    FINISHED = "FINISHED"

    def __init__(self, metric: str | None = None, mode: str | None = None) -> None:
        if mode not in (None, "min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.metric, self.mode = metric, mode

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        """Fill in what TuneConfig knows; False when the searcher cannot take it."""
        self.metric = self.metric or metric
        self.mode = self.mode or mode
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        raise NotImplementedError

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        pass

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        pass

    @property
    def total_samples(self) -> int | None:
        """How many trials this searcher makes by itself (None: the controller counts)."""
        return None


class BasicVariantGenerator(Searcher):
    """Random search crossed with grid search: ``num_samples`` passes over the grid, each
    grid point with freshly drawn random values. Each of ``points_to_evaluate`` takes the
    place of one pass (its keys fixed), first, as in Ray.

    Seeded by ``random_state``: the same seed gives the same configs in the same order."""

    def __init__(
        self,
        points_to_evaluate: list[dict[str, Any]] | None = None,
        max_concurrent: int = 0,
        random_state: int | random.Random | None = None,
        constant_grid_search: bool = False,
    ) -> None:
        super().__init__()
        self._points = [copy.deepcopy(p) for p in points_to_evaluate or []]
        self.max_concurrent = max_concurrent
        self._rng = (
            random_state if isinstance(random_state, random.Random) else random.Random(random_state)
        )
        self._constant_grid = constant_grid_search
        self._space: dict[str, Any] = {}
        self._num_samples = 1
        self._made = 0
        self._total = 0
        self._queue: list[Any] = []
        self._live: set[str] = set()

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        super().set_search_properties(metric, mode, config)
        self._space = config
        self._num_samples = int(spec.get("num_samples", 1))
        # as in Ray: each point is one of the num_samples passes, over what it leaves of
        # the grid; the remaining passes cover the whole grid
        self._total = sum(variants.grid_size(self._with_point(p)) for p in self._points)
        rest = self._num_samples - len(self._points)
        self._total += max(rest, 0) * variants.grid_size(config)
        return True

    def _with_point(self, point: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy(self._space)
        for name, value in variants.flatten(point).items():
            variants.set_path(spec, tuple(name.split("/")), value)
        return spec

    @property
    def total_samples(self) -> int:
        return self._total

    def _next(self) -> dict[str, Any] | None:
        if not self._queue:
            if self._made >= self.total_samples:
                return None
            # a point fixes its keys for one pass over the grid
            spec = self._with_point(self._points.pop(0)) if self._points else self._space
            grid = variants.grid_variants(spec)
            if self._constant_grid:  # one draw of the random values shared by the grid
                drawn = variants.resolve(spec, self._rng)
                for path, _ in variants.domain_paths(spec):
                    for variant in grid:
                        variants.set_path(variant, path, variants.get_path(drawn, path))
            self._queue = grid
        return dict(variants.resolve(self._queue.pop(0), self._rng))

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.max_concurrent and len(self._live) >= self.max_concurrent:
            return None
        if self._made >= self.total_samples:
            return Searcher.FINISHED
        config = self._next()
        if config is None:
            return Searcher.FINISHED
        self._made += 1
        self._live.add(trial_id)
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self._live.discard(trial_id)


class ConcurrencyLimiter(Searcher):
    """Lets at most ``max_concurrent`` suggested trials be unfinished at once."""

    def __init__(self, searcher: Searcher, max_concurrent: int, batch: bool = False) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        super().__init__(searcher.metric, searcher.mode)
        self.searcher, self.max_concurrent, self.batch = searcher, max_concurrent, batch
        self._live: set[str] = set()
        self._draining = False

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)
        self.metric, self.mode = self.searcher.metric, self.searcher.mode
        return ok

    @property
    def total_samples(self) -> int | None:
        return self.searcher.total_samples

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if len(self._live) >= self.max_concurrent or (self.batch and self._draining):
            return None
        config = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            self._live.add(trial_id)
            self._draining = self.batch and len(self._live) >= self.max_concurrent
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._live:
            self._live.discard(trial_id)
            self.searcher.on_trial_complete(trial_id, result, error)
            if not self._live:
                self._draining = False
