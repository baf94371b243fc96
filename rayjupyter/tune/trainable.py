"""What a trial runs: a function ``f(config)`` that calls ``tune.report``, or a subclass of
`Trainable` (setup, step, save_checkpoint, load_checkpoint); plus the wrappers
``with_resources`` and ``with_parameters``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import rayjupyter as rj

_RESOURCES_ATTR = "_tune_resources"
_DEFAULT_RESOURCES: dict[str, float] = {"CPU": 1.0}


class Trainable:
    """Subclass and override ``setup``, ``step`` and, to checkpoint, ``save_checkpoint``
    (write files into the directory given, or return a dict) and ``load_checkpoint``
    (receives that dict, or the directory)."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = dict(config or {})
        self.iteration = 0
        self.setup(dict(self.config))

    def setup(self, config: dict[str, Any]) -> None:
        pass

    def step(self) -> dict[str, Any]:
        raise NotImplementedError("a Trainable subclass must define step()")

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any] | None:
        return None

    def load_checkpoint(self, checkpoint: dict[str, Any] | str) -> None:
        pass

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Return True if this instance took ``new_config`` in place (actor reuse)."""
        return False

    def cleanup(self) -> None:
        pass

    @classmethod
    def default_resource_request(cls, config: dict[str, Any]) -> dict[str, float] | None:
        return None


def is_class_trainable(trainable: Any) -> bool:
    return inspect.isclass(trainable) and issubclass(trainable, Trainable)


def _normalize(resources: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in resources.items():
        name = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}.get(key.lower(), key)
        if value is not None and float(value) > 0:
            out[name] = float(value)
    return out


def with_resources(trainable: Any, resources: dict[str, Any] | Any) -> Any:
    """Each trial of ``trainable`` asks for ``resources`` ({"cpu": 2, "gpu": 1, ...}, or a
    function of the config returning such a dict)."""
    if not (callable(resources) or isinstance(resources, dict)):
        raise ValueError(
            "with_resources() takes a dict like {'cpu': 1, 'gpu': 0} or a function of config"
        )
    if is_class_trainable(trainable):
        wrapped: Any = type(trainable.__name__, (trainable,), {})
    else:

        @functools.wraps(trainable)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            return trainable(*args, **kwargs)

    setattr(wrapped, _RESOURCES_ATTR, resources)
    return wrapped


def resources_for(trainable: Any, config: dict[str, Any]) -> dict[str, float]:
    spec = getattr(trainable, _RESOURCES_ATTR, None)
    if callable(spec):
        spec = spec(config)
    if spec is None and is_class_trainable(trainable):
        spec = trainable.default_resource_request(config)
    if spec is None:
        return dict(_DEFAULT_RESOURCES)
    return _normalize(dict(spec))


def with_parameters(trainable: Any, **kwargs: Any) -> Any:
    """Pass large objects to every trial through the object store: each is put once, here,
    and every trial gets it from there (not pickled into each trial's function)."""
    refs = {name: rj.put(value) for name, value in kwargs.items()}
    if is_class_trainable(trainable):

        class _WithParameters(trainable):  # type: ignore[misc]
            _tune_parameter_refs = refs

            def setup(self, config: dict[str, Any]) -> None:
                values = dict(zip(refs, rj.get(list(refs.values())), strict=True))
                trainable.setup(self, config, **values)

        _WithParameters.__name__ = trainable.__name__
        wrapped: Any = _WithParameters
    else:

        def wrapped(config: dict[str, Any]) -> Any:
            values = dict(zip(refs, rj.get(list(refs.values())), strict=True))
            return trainable(config, **values)

        functools.update_wrapper(wrapped, trainable)
        wrapped._tune_parameter_refs = refs
    if hasattr(trainable, _RESOURCES_ATTR):
        setattr(wrapped, _RESOURCES_ATTR, getattr(trainable, _RESOURCES_ATTR))
    return wrapped


def trainable_name(trainable: Any) -> str:
    return str(getattr(trainable, "__name__", type(trainable).__name__)).strip("_") or "trainable"
