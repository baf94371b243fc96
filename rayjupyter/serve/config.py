"""The options of a deployment, of its autoscaling and of the HTTP proxy, checked once.

Every option Ray Serve's ``@serve.deployment`` takes that we honour is here with Ray's
default; one we do not honour is refused with an error that names it (never accepted and
ignored). The configs are plain frozen dataclasses, so they pickle into the controller and
compare by value (a redeploy that changes only ``user_config`` or ``num_replicas`` keeps
its replicas).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Ray Serve's defaults
DEFAULT_MAX_ONGOING_REQUESTS = 5
DEFAULT_HTTP_PORT = 8000
# A handle queues requests while every replica is at max_ongoing_requests. Ray's default
# (-1) means "unbounded"; ours is this many, and the error names max_queued_requests.
UNBOUNDED_QUEUE_CAP = 100_000


def _positive_number(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _int_at_least(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


@dataclass(frozen=True)
class AutoscalingConfig:
    """Replicas follow ongoing requests: ``ceil(total ongoing / target_ongoing_requests)``,
    kept between ``min_replicas`` and ``max_replicas``, changed only once the wish has held
    for ``upscale_delay_s`` (up) or ``downscale_delay_s`` (down)."""

    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    metrics_interval_s: float = 10.0
    look_back_period_s: float = 30.0
    upscaling_factor: float | None = None
    downscaling_factor: float | None = None

    def __post_init__(self) -> None:
        _int_at_least("min_replicas", self.min_replicas, 0)
        _int_at_least("max_replicas", self.max_replicas, 1)
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must not exceed max_replicas "
                f"({self.max_replicas})"
            )
        if self.initial_replicas is not None:
            _int_at_least("initial_replicas", self.initial_replicas, 0)
            if not self.min_replicas <= self.initial_replicas <= self.max_replicas:
                raise ValueError("initial_replicas must be between min_replicas and max_replicas")
        _positive_number("target_ongoing_requests", self.target_ongoing_requests)
        for name in ("upscale_delay_s", "downscale_delay_s", "look_back_period_s"):
            _positive_number(name, getattr(self, name), allow_zero=True)
        _positive_number("metrics_interval_s", self.metrics_interval_s)
        for name in ("upscaling_factor", "downscaling_factor"):
            if getattr(self, name) is not None:
                _positive_number(name, getattr(self, name))

    @classmethod
    def from_user(cls, value: Any) -> AutoscalingConfig:
        if isinstance(value, AutoscalingConfig):
            return value
        if not isinstance(value, dict):
            raise TypeError(
                f"autoscaling_config must be a dict or AutoscalingConfig, got {value!r}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"autoscaling_config does not take {unknown}; valid keys: {sorted(known)}"
            )
        return cls(**value)

    def start_replicas(self) -> int:
        return self.initial_replicas if self.initial_replicas is not None else self.min_replicas


@dataclass(frozen=True)
class DeploymentConfig:
    """What the controller needs to run one deployment's replicas."""

    num_replicas: int = 1
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS
    max_queued_requests: int = -1
    user_config: Any = None
    autoscaling_config: AutoscalingConfig | None = None
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    graceful_shutdown_timeout_s: float = 20.0
    graceful_shutdown_wait_loop_s: float = 2.0
    ray_actor_options: dict[str, Any] = field(default_factory=dict)

    def queue_cap(self) -> int:
        return UNBOUNDED_QUEUE_CAP if self.max_queued_requests < 0 else self.max_queued_requests

    def initial_target(self) -> int:
        if self.autoscaling_config is not None:
            return self.autoscaling_config.start_replicas()
        return self.num_replicas


# The @serve.deployment options: name -> checker returning the stored value. Options Ray
# Serve has that we do not run are in _REFUSED with the reason.
def _check_num_replicas(value: Any) -> Any:
    if value == "auto":
        return value
    return _int_at_least("num_replicas", value, 0)


def _check_actor_options(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"ray_actor_options must be a dict, got {value!r}")
    allowed = {"num_cpus", "num_gpus", "resources", "memory", "runtime_env"}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(f"ray_actor_options does not take {unknown}; valid: {sorted(allowed)}")
    return dict(value)


def _check_max_queued(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
        raise ValueError(f"max_queued_requests must be -1 (no limit) or >= 1, got {value!r}")
    return value


CHECKERS: dict[str, Any] = {
    "name": lambda v: v if isinstance(v, str) and v else _bad("name", "a non-empty str", v),
    "num_replicas": _check_num_replicas,
    "max_ongoing_requests": lambda v: _int_at_least("max_ongoing_requests", v, 1),
    "max_queued_requests": _check_max_queued,
    "user_config": lambda v: v,
    "autoscaling_config": lambda v: None if v is None else AutoscalingConfig.from_user(v),
    "health_check_period_s": lambda v: _positive_number("health_check_period_s", v),
    "health_check_timeout_s": lambda v: _positive_number("health_check_timeout_s", v),
    "graceful_shutdown_timeout_s": lambda v: _positive_number(
        "graceful_shutdown_timeout_s", v, allow_zero=True
    ),
    "graceful_shutdown_wait_loop_s": lambda v: _positive_number("graceful_shutdown_wait_loop_s", v),
    "ray_actor_options": _check_actor_options,
}

_REFUSED = {
    "route_prefix": "pass route_prefix to serve.run(app, route_prefix=...)",
    "placement_group_bundles": "placement groups for replicas are not supported yet",
    "placement_group_strategy": "placement groups for replicas are not supported yet",
    "logging_config": "replica logs go to the worker logs; logging_config is not supported",
    "max_replicas_per_node": "max_replicas_per_node is not supported yet",
}


def _bad(name: str, what: str, value: Any) -> Any:
    raise TypeError(f"{name} must be {what}, got {value!r}")


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """The checked options; an unknown or unsupported one raises naming the valid ones."""
    checked: dict[str, Any] = {}
    for key, value in options.items():
        if key in _REFUSED:
            raise ValueError(f"@serve.deployment option {key!r}: {_REFUSED[key]}")
        if key not in CHECKERS:
            raise ValueError(
                f"@serve.deployment got an unknown option {key!r}; valid: {sorted(CHECKERS)}"
            )
        checked[key] = CHECKERS[key](value)
    if checked.get("num_replicas") == "auto":
        checked.pop("num_replicas")
        checked.setdefault(
            "autoscaling_config", AutoscalingConfig(min_replicas=1, max_replicas=100)
        )
    if "num_replicas" in checked and checked.get("autoscaling_config") is not None:
        raise ValueError("set num_replicas or autoscaling_config, not both")
    return checked


def build_config(options: dict[str, Any]) -> DeploymentConfig:
    """The DeploymentConfig from checked options (the name is not part of it)."""
    fields = {k: v for k, v in options.items() if k != "name"}
    actor_options = fields.get("ray_actor_options", {})
    fields["ray_actor_options"] = {"num_cpus": 1, **actor_options}  # Ray: 1 CPU per replica
    return DeploymentConfig(**fields)


@dataclass(frozen=True)
class HTTPOptions:
    """Where the proxy listens: loopback unless ``host`` says otherwise; port 0 picks one."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_HTTP_PORT
    root_path: str = ""
    request_timeout_s: float | None = None

    @classmethod
    def from_user(cls, value: Any) -> HTTPOptions:
        if value is None:
            return cls()
        if isinstance(value, HTTPOptions):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"http_options must be a dict or HTTPOptions, got {value!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"http_options does not take {unknown}; valid keys: {sorted(known)}")
        options = cls(**value)
        _int_at_least("port", options.port, 0)
        if options.request_timeout_s is not None:
            _positive_number("request_timeout_s", options.request_timeout_s)
        if options.root_path and not options.root_path.startswith("/"):
            raise ValueError(f"root_path must start with '/', got {options.root_path!r}")
        return options
