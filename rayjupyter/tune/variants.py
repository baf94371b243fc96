"""Turning a ``param_space`` (nested dicts and lists holding domains and grid axes) into
concrete configs: find the paths, cross the grid axes, draw the rest.

Pure functions over plain data, shared by the built-in generator and the Optuna adapter.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Iterator
from typing import Any

from rayjupyter.tune.sample import Domain

Path = tuple[Any, ...]


def is_grid(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "grid_search" in value


def _walk(spec: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    if is_grid(spec) or isinstance(spec, Domain):
        yield prefix, spec
    elif isinstance(spec, dict):
        for key, value in spec.items():
            yield from _walk(value, (*prefix, key))
    elif isinstance(spec, list | tuple):
        for index, value in enumerate(spec):
            yield from _walk(value, (*prefix, index))


def grid_paths(spec: Any) -> list[tuple[Path, list[Any]]]:
    return [(path, value["grid_search"]) for path, value in _walk(spec) if is_grid(value)]


def domain_paths(spec: Any) -> list[tuple[Path, Domain]]:
    return [(path, value) for path, value in _walk(spec) if isinstance(value, Domain)]


def get_path(config: Any, path: Path) -> Any:
    for key in path:
        config = config[key]
    return config


def set_path(config: Any, path: Path, value: Any) -> None:
    for key in path[:-1]:
        config = config[key]
    if isinstance(config, tuple):
        raise ValueError(f"cannot place a sampled value inside a tuple at {path!r}; use a list")
    config[path[-1]] = value


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``, the column names Ray's dataframes use."""
    out: dict[str, Any] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            name = f"{prefix}/{key}" if prefix else str(key)
            if isinstance(value, dict) and value:
                out.update(flatten(value, name))
            else:
                out[name] = value
    return out


class _AttrDict(dict[str, Any]):
    """What ``sample_from`` functions see: ``spec.config.lr`` as well as ``spec["config"]``."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return _AttrDict(value) if isinstance(value, dict) else value


def grid_size(spec: Any) -> int:
    size = 1
    for _, values in grid_paths(spec):
        size *= len(values)
    return size


def grid_variants(spec: Any) -> list[Any]:
    """One copy of ``spec`` per point of the grid's cross product (first axis slowest)."""
    axes = grid_paths(spec)
    if not axes:
        return [copy.deepcopy(spec)]
    out = []
    for point in itertools.product(*(values for _, values in axes)):
        variant = copy.deepcopy(spec)
        for (path, _), value in zip(axes, point, strict=True):
            set_path(variant, path, value)
        out.append(variant)
    return out


def resolve(spec: Any, rng: random.Random) -> Any:
    """Draw every domain in ``spec`` (grid axes already fixed): plain domains first, then
    ``sample_from`` functions, which may read the values drawn so far."""
    config = copy.deepcopy(spec)
    domains = domain_paths(config)
    for path, domain in domains:
        if not domain.is_function():
            set_path(config, path, domain.sample(random_state=rng))
    for path, domain in domains:
        if domain.is_function():
            set_path(config, path, domain.sample(_AttrDict(config=config), random_state=rng))
    return config
