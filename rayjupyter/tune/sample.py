"""Search-space primitives (``tune.uniform``, ``tune.choice``, ``tune.grid_search`` ...).

Each ``tune.*`` call returns a `Domain`: a small value object that knows its bounds and how
to draw one value from a `random.Random`. The domains are data, not behaviour tied to a
searcher, so the built-in generator, Optuna and PBT's explore step all read the same
bounds. Randomness always comes from an explicit ``random.Random`` so a seeded search is
reproducible and its state pickles with the experiment (Tuner.restore continues the
same sequence).
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Callable, Sequence
from typing import Any


class Domain:
    """A set of values a hyperparameter may take; ``sample`` draws one."""

    def sample(self, spec: Any = None, random_state: random.Random | None = None) -> Any:
        raise NotImplementedError

    def is_grid(self) -> bool:
        return False

    def is_function(self) -> bool:
        return False


def _rng(random_state: random.Random | int | None) -> random.Random:
    if isinstance(random_state, random.Random):
        return random_state
    return random.Random(random_state)


def _quantize(value: float, q: float | None) -> float:
    if q is None:
        return value
    return round(value / q) * q


class Float(Domain):
    """A real interval; the sampler is uniform, log-uniform or normal, maybe quantized."""

    def __init__(
        self,
        lower: float | None,
        upper: float | None,
        *,
        sampler: str = "uniform",
        base: float = 10,
        q: float | None = None,
        mean: float = 0.0,
        sd: float = 1.0,
    ) -> None:
        if sampler in ("uniform", "loguniform"):
            if lower is None or upper is None or not lower < upper:
                raise ValueError(f"{sampler}() needs lower < upper, got {lower!r}, {upper!r}")
            if sampler == "loguniform" and lower <= 0:
                raise ValueError(f"loguniform() needs lower > 0, got {lower!r}")
        if q is not None and q <= 0:
            raise ValueError(f"the quantization q must be positive, got {q!r}")
        self.lower, self.upper, self.sampler = lower, upper, sampler
        self.base, self.q, self.mean, self.sd = base, q, mean, sd

    def sample(self, spec: Any = None, random_state: random.Random | None = None) -> float:
        rng = _rng(random_state)
        if self.sampler == "normal":
            return _quantize(rng.gauss(self.mean, self.sd), self.q)
        assert self.lower is not None and self.upper is not None
        if self.sampler == "loguniform":
            lo, hi = math.log(self.lower, self.base), math.log(self.upper, self.base)
            value = float(self.base ** rng.uniform(lo, hi))
        else:
            value = rng.uniform(self.lower, self.upper)
        value = _quantize(value, self.q)
        return min(max(value, self.lower), self.upper)  # quantizing may step past a bound

    def __repr__(self) -> str:
        if self.sampler == "normal":
            return f"Normal(mean={self.mean}, sd={self.sd}, q={self.q})"
        return f"Float({self.sampler}, {self.lower}, {self.upper}, q={self.q})"


class Integer(Domain):
    """An integer range ``[lower, upper)`` (``upper`` inclusive when quantized, as in Ray)."""

    def __init__(
        self, lower: int, upper: int, *, sampler: str = "uniform", base: float = 10, q: int = 1
    ) -> None:
        if not lower < upper:
            raise ValueError(f"randint() needs lower < upper, got {lower!r}, {upper!r}")
        if sampler == "loguniform" and lower <= 0:
            raise ValueError(f"lograndint() needs lower > 0, got {lower!r}")
        self.lower, self.upper, self.sampler, self.base, self.q = lower, upper, sampler, base, q

    def sample(self, spec: Any = None, random_state: random.Random | None = None) -> int:
        rng = _rng(random_state)
        if self.sampler == "loguniform":
            lo, hi = math.log(self.lower, self.base), math.log(self.upper, self.base)
            value = int(self.base ** rng.uniform(lo, hi))
        else:
            value = rng.randrange(self.lower, self.upper)
        if self.q != 1:
            value = int(round(value / self.q) * self.q)
        upper = self.upper if self.q != 1 else self.upper - 1
        return min(max(value, self.lower), upper)

    def __repr__(self) -> str:
        return f"Integer({self.sampler}, {self.lower}, {self.upper}, q={self.q})"


class Categorical(Domain):
    """One of a list of values, each equally likely."""

    def __init__(self, categories: Sequence[Any]) -> None:
        self.categories = list(categories)
        if not self.categories:
            raise ValueError("choice() needs at least one category")

    def sample(self, spec: Any = None, random_state: random.Random | None = None) -> Any:
        return _rng(random_state).choice(self.categories)

    def __repr__(self) -> str:
        return f"Categorical({self.categories!r})"


class Function(Domain):
    """``sample_from(func)``: ``func(spec)`` sees the config resolved so far as
    ``spec.config.<name>`` (or takes no argument)."""

    def __init__(self, func: Callable[..., Any]) -> None:
        if not callable(func):
            raise ValueError(f"sample_from() needs a callable, got {type(func).__name__}")
        self.func = func
        try:
            self._pass_spec = len(inspect.signature(func).parameters) > 0
        except (TypeError, ValueError):
            self._pass_spec = True

    def sample(self, spec: Any = None, random_state: random.Random | None = None) -> Any:
        return self.func(spec) if self._pass_spec else self.func()

    def is_function(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"Function({self.func!r})"


def uniform(lower: float, upper: float) -> Float:
    return Float(lower, upper)


def quniform(lower: float, upper: float, q: float) -> Float:
    return Float(lower, upper, q=q)


def loguniform(lower: float, upper: float, base: float = 10) -> Float:
    return Float(lower, upper, sampler="loguniform", base=base)


def qloguniform(lower: float, upper: float, q: float, base: float = 10) -> Float:
    return Float(lower, upper, sampler="loguniform", base=base, q=q)


def randn(mean: float = 0.0, sd: float = 1.0) -> Float:
    return Float(None, None, sampler="normal", mean=mean, sd=sd)


def qrandn(mean: float, sd: float, q: float) -> Float:
    return Float(None, None, sampler="normal", mean=mean, sd=sd, q=q)


def randint(lower: int, upper: int) -> Integer:
    """An integer in ``[lower, upper)``."""
    return Integer(lower, upper)


def qrandint(lower: int, upper: int, q: int = 1) -> Integer:
    """A multiple of ``q`` in ``[lower, upper]`` (upper inclusive, as in Ray)."""
    return Integer(lower, upper + 1 if q == 1 else upper, q=q)


def lograndint(lower: int, upper: int, base: float = 10) -> Integer:
    """An integer in ``[lower, upper)``, log-uniformly."""
    return Integer(lower, upper, sampler="loguniform", base=base)


def qlograndint(lower: int, upper: int, q: int, base: float = 10) -> Integer:
    return Integer(lower, upper, sampler="loguniform", base=base, q=q)


def choice(categories: Sequence[Any]) -> Categorical:
    return Categorical(categories)


def sample_from(func: Callable[..., Any]) -> Function:
    return Function(func)


def grid_search(values: Sequence[Any]) -> dict[str, list[Any]]:
    """Every value is tried (times ``num_samples``), crossed with the other grid axes."""
    return {"grid_search": list(values)}
