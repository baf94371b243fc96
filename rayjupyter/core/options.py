"""The one table of options behind @remote, .options() and %%remote (Ray's names and defaults).

Each row names an option, checks and normalizes its value, and gives its default for tasks
and for actors; an option with no default for a kind does not apply to it. Everything
else here only reads the table.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

from rayjupyter.core import runtime_env, scheduling_strategies

__all__ = [
    "OPTIONS",
    "OptionSpec",
    "actor_defaults",
    "merge_options",
    "resource_demand",
    "task_defaults",
    "valid_option_names",
    "validate_options",
]

# Checks a value for the named option and returns it normalized; raises TypeError/ValueError.
Validator = Callable[[str, Any], Any]


class _NotApplicable:
    """Marks a kind (task or actor) that an option does not apply to."""

    def __repr__(self) -> str:
        return "NOT_APPLICABLE"


NOT_APPLICABLE: Final = _NotApplicable()

# Finest fraction of a resource, as in Ray: quantities are kept in units of 1/10000.
_RESOURCE_PRECISION = 0.0001
# Resource names that have their own option, and the option to use instead.
_RESERVED_RESOURCES = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}
_BUILTIN_STRATEGIES = ("DEFAULT", "SPREAD")


class OptionSpec(NamedTuple):  # (immutable: a frozen dataclass costs the node ~8x more)
    """One option: its name, its check, and its default for tasks and for actors."""

    name: str
    validate: Validator
    task_default: Any
    actor_default: Any
    doc: str

    def applies(self, *, for_actor: bool) -> bool:
        default = self.actor_default if for_actor else self.task_default
        return default is not NOT_APPLICABLE

    def default(self, *, for_actor: bool) -> Any:
        # Copied so a caller that mutates a default dict cannot change the table.
        return copy.deepcopy(self.actor_default if for_actor else self.task_default)


# --- validators -------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _quantity(name: str, value: Any) -> float | int:
    """A resource amount: a finite number >= 0, fractions down to 0.0001."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a number, got {value!r} of type {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if value != 0 and value < _RESOURCE_PRECISION:
        raise ValueError(f"{name} cannot be finer than {_RESOURCE_PRECISION}, got {value!r}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _optional(check: Validator) -> Validator:
    def validate(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return validate


def _integer(minimum: int, meaning: str = "") -> Validator:
    def validate(name: str, value: Any) -> int:
        if type(value) is bool or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if value < minimum:
            extra = f" ({meaning})" if meaning else ""
            raise ValueError(f"{name} must be >= {minimum}{extra}, got {value!r}")
        return int(value)

    return validate


def _pending_calls(name: str, value: Any) -> int:
    if type(value) is bool or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value == 0 or value < -1:
        raise ValueError(f"{name} must be -1 (no limit) or a positive integer, got {value!r}")
    return int(value)


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {value!r}")
    return value


def _choice(*allowed: object) -> Validator:
    def validate(name: str, value: Any) -> Any:
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        return value

    return validate


def _resources(name: str, value: Any) -> dict[str, float | int]:
    """Custom resources: {name: amount}; CPU, GPU and memory have options of their own."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict of resource name to amount, got {value!r}")
    checked: dict[str, float | int] = {}
    for key, amount in value.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{name} keys must be non-empty strings, got {key!r}")
        if key in _RESERVED_RESOURCES:
            raise ValueError(
                f"{name} cannot contain {key!r}: use {_RESERVED_RESOURCES[key]}= instead"
            )
        checked[key] = _quantity(f"{name}[{key!r}]", amount)
    return checked


def _retry_exceptions(name: str, value: Any) -> bool | tuple[type[BaseException], ...]:
    """True/False, or the exception types worth retrying (kept as a tuple for isinstance)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, list | tuple) and all(
        isinstance(kind, type) and issubclass(kind, BaseException) for kind in value
    ):
        return tuple(value)
    raise TypeError(f"{name} must be True, False or a list of exception classes, got {value!r}")


def _scheduling_strategy(name: str, value: Any) -> Any:
    """ "DEFAULT", "SPREAD", a PlacementGroupSchedulingStrategy or a
    NodeAffinitySchedulingStrategy (from rj.util.scheduling_strategies)."""
    if isinstance(value, str):
        return _choice(*_BUILTIN_STRATEGIES)(name, value)
    if not isinstance(value, scheduling_strategies.STRATEGY_TYPES):
        raise TypeError(
            f"{name} must be 'DEFAULT', 'SPREAD' or a scheduling strategy object "
            f"(PlacementGroupSchedulingStrategy or NodeAffinitySchedulingStrategy from "
            f"rj.util.scheduling_strategies), got {value!r}"
        )
    return value


def _placement_group(name: str, value: Any) -> Any:
    """Ray's older form of PlacementGroupSchedulingStrategy: a PlacementGroup or "default"."""
    if value == "default" or isinstance(getattr(value, "id", None), bytes):
        return value
    raise TypeError(
        f"{name} must be a PlacementGroup (rj.util.placement_group) or 'default', got "
        f"{value!r}; better: scheduling_strategy=PlacementGroupSchedulingStrategy(pg)"
    )


def _optional_bool(name: str, value: Any) -> bool | None:
    return None if value is None else _boolean(name, value)


def _concurrency_groups(name: str, value: Any) -> dict[str, int] | None:
    """Ray's ``concurrency_groups={"io": 2, "compute": 4}``: a group's name and its size."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict {{group name: max concurrency}}, got {value!r}")
    return {_string(f"{name} key", k): _integer(1)(f"{name}[{k!r}]", v) for k, v in value.items()}


def _num_returns(name: str, value: Any) -> int | str:
    """An integer >= 0, or "streaming" / "dynamic" for a generator function."""
    if isinstance(value, str):
        if value in ("streaming", "dynamic"):
            return value
        raise ValueError(f"{name} must be an integer >= 0, 'streaming' or 'dynamic', got {value!r}")
    checked: int = _integer(0)(name, value)
    return checked


def _backpressure(name: str, value: Any) -> int:
    """Items a streaming generator may run ahead of its caller; -1 for no bound."""
    checked: int = _integer(-1, "-1 means no bound")(name, value)
    if checked == 0:
        raise ValueError(
            f"{name}=0 would never let the generator make an item; give a number >= 1, or -1 "
            f"for no bound"
        )
    return checked


# --- the table --------------------------------------------------------------------------

_NA = NOT_APPLICABLE

OPTIONS: Final[Mapping[str, OptionSpec]] = {
    spec.name: spec
    for spec in (
        # Actors default to None: 1 CPU to place the actor, 0 while it runs (as in Ray).
        OptionSpec("num_cpus", _optional(_quantity), 1, None, "CPUs reserved while running"),
        OptionSpec("num_gpus", _optional(_quantity), 0, 0, "GPUs reserved while running"),
        OptionSpec("resources", _optional(_resources), {}, {}, "custom resources {name: amount}"),
        OptionSpec("memory", _optional(_quantity), None, None, "heap memory in bytes to reserve"),
        OptionSpec("num_returns", _num_returns, 1, _NA, "how many ObjectRefs .remote() returns"),
        OptionSpec(
            "_generator_backpressure_num_objects",
            _optional(_backpressure),
            None,
            _NA,
            "items a streaming generator may make ahead of the caller",
        ),
        OptionSpec(
            "max_retries", _integer(-1, "-1 retries forever"), 3, _NA, "retries on worker death"
        ),
        # None: 0 (no limit), or 1 for a function that asks for GPUs (RemoteFunction, as Ray)
        OptionSpec(
            "max_calls",
            _optional(_integer(0, "0 means no limit")),
            None,
            _NA,
            "runs of the function a worker makes before it exits (worker_pool.py)",
        ),
        OptionSpec(
            "retry_exceptions", _retry_exceptions, False, _NA, "also retry application errors"
        ),
        OptionSpec("name", _optional(_string), "", None, "task name / actor name"),
        OptionSpec("namespace", _optional(_string), _NA, None, "namespace of a named actor"),
        OptionSpec(
            "lifetime",
            _choice(None, "detached", "non_detached"),
            _NA,
            None,
            "detached outlives the driver",
        ),
        OptionSpec("get_if_exists", _boolean, _NA, False, "reuse the named actor if it exists"),
        OptionSpec(
            "max_restarts", _integer(-1, "-1 restarts forever"), _NA, 0, "restarts on death"
        ),
        OptionSpec(
            "max_task_retries", _integer(-1, "-1 retries forever"), _NA, 0, "per-call retries"
        ),
        OptionSpec(
            "max_concurrency", _optional(_integer(1)), _NA, None, "calls run at the same time"
        ),
        OptionSpec(
            "concurrency_groups",
            _concurrency_groups,
            _NA,
            None,
            "named call groups, each with its own max concurrency",
        ),
        OptionSpec(
            "max_pending_calls",
            _pending_calls,
            _NA,
            -1,
            "calls a caller may have pending (-1: no limit)",
        ),
        OptionSpec(
            "runtime_env", runtime_env.validate, None, None, "working_dir, py_modules, env_vars"
        ),
        OptionSpec(
            "scheduling_strategy",
            _optional(_scheduling_strategy),
            None,
            None,
            "placement policy",
        ),
        OptionSpec(
            "placement_group",
            _optional(_placement_group),
            "default",
            "default",
            "legacy: run in this group",
        ),
        OptionSpec(
            "placement_group_bundle_index",
            _integer(-1, "-1 means any bundle"),
            -1,
            -1,
            "legacy: the bundle to run in",
        ),
        OptionSpec(
            "placement_group_capture_child_tasks",
            _optional_bool,
            None,
            None,
            "legacy: nested work runs in the group too",
        ),
    )
}


def valid_option_names(*, for_actor: bool) -> list[str]:
    """The sorted option names that apply to actors (for_actor) or to tasks."""
    return sorted(name for name, spec in OPTIONS.items() if spec.applies(for_actor=for_actor))


def validate_options(options: Mapping[str, Any], *, for_actor: bool) -> dict[str, Any]:
    """Check every given option and return them normalized; unknown names are an error."""
    kind = "actors" if for_actor else "remote functions"
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if for_actor and name == "object_store_memory":  # Ray accepts it, deprecated
            warnings.warn(
                "object_store_memory= on an actor is deprecated (in Ray too) and ignored here: "
                "actors reserve no share of the object store; leave it out",
                DeprecationWarning,
                stacklevel=3,
            )
            continue
        spec = OPTIONS.get(name)
        if spec is None or not spec.applies(for_actor=for_actor):
            valid = ", ".join(valid_option_names(for_actor=for_actor))
            raise ValueError(f"Invalid option {name!r} for {kind}; valid options are: {valid}")
        checked[name] = spec.validate(name, value)
    if checked.get("placement_group") not in (None, "default") and checked.get(
        "scheduling_strategy"
    ):
        raise ValueError(
            "placement_group= and scheduling_strategy= cannot both be given: use "
            "scheduling_strategy=PlacementGroupSchedulingStrategy(...) alone"
        )
    if for_actor and checked.get("get_if_exists") and not checked.get("name"):
        raise ValueError("get_if_exists=True needs name= too: it looks the actor up by name")
    return checked


def task_defaults() -> dict[str, Any]:
    """A fresh dict of every task option at its default."""
    return _defaults(for_actor=False)


def actor_defaults() -> dict[str, Any]:
    """A fresh dict of every actor option at its default."""
    return _defaults(for_actor=True)


def _defaults(*, for_actor: bool) -> dict[str, Any]:
    return {
        name: spec.default(for_actor=for_actor)
        for name, spec in OPTIONS.items()
        if spec.applies(for_actor=for_actor)
    }


def merge_options(
    base: Mapping[str, Any], overrides: Mapping[str, Any], *, for_actor: bool
) -> dict[str, Any]:
    """base updated by overrides (as .options() does), all validated.

    An override of None resets the option to its default, as passing None does in Ray.
    """
    merged = dict(base)
    for name, value in validate_options(overrides, for_actor=for_actor).items():
        merged[name] = OPTIONS[name].default(for_actor=for_actor) if value is None else value
    return validate_options(merged, for_actor=for_actor)


def resource_demand(options: Mapping[str, Any], *, for_placement: bool = False) -> dict[str, float]:
    """What a task or actor needs from a node: {"CPU": .., "GPU": .., "memory": bytes,
    **resources}, no zeros.

    num_cpus=None is an actor's default: 1 CPU to place it (for_placement), 0 while it runs.
    """
    num_cpus = options.get("num_cpus", 1)
    if num_cpus is None:
        num_cpus = 1 if for_placement else 0
    demand: dict[str, float] = {
        "CPU": float(num_cpus),
        "GPU": float(options.get("num_gpus") or 0),
    }
    if options.get("memory"):  # bytes of the node's "memory" resource (config.node_totals)
        demand["memory"] = float(options["memory"])
    for name, amount in (options.get("resources") or {}).items():
        demand[name] = float(amount)
    return {name: amount for name, amount in demand.items() if amount != 0}
