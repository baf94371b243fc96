"""Every argument of Ray's ``init``: honoured, or refused with one line saying why.

Ray code passes ``init`` arguments that mean something only to Ray's processes (Redis,
plasma, cgroups). Accepting one and doing nothing would let a port believe it asked for
something it did not get; so each is either carried out or refused here, in one table.
A default value (None, False, an empty dict) asks for nothing and is always accepted.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

#: Ray's arguments that cannot be honoured here, and why (said when one is given)
REFUSED: dict[str, str] = {
    "labels": "node labels (and label_selector scheduling) are not supported; drop labels=",
    "enable_resource_isolation": "resource isolation (cgroups) is not supported",
    "system_reserved_cpu": "resource isolation (cgroups) is not supported",
    "system_reserved_memory": "resource isolation (cgroups) is not supported",
    "cgroup_path": "resource isolation (cgroups) is not supported",
    "_cgroup_path": "resource isolation (cgroups) is not supported",
    "proxy_server_url": "there is no Ray Client proxy: connect with address=HOST:PORT",
    "storage": "cluster storage (a deprecated Ray argument) is not supported",
    "_temp_dir": "sessions live under /tmp/rayjupyter, where the Jupyter server finds them",
    "_system_config": "Ray's internal system config has no counterpart here",
    "_redis_password": "there is no Redis; the cluster's secret (rayjupyter://SECRET@...) "
    "guards it",
    "_plasma_directory": "objects live in /dev/shm (in the session's folder when /dev/shm is "
    "too small for the store; spilled to the session's folder)",
    "_metrics_export_port": "there is no Prometheus exporter; use the dashboard or the state API",
    "_driver_object_store_memory": "a driver has no object store of its own",
    "_node_name": "nodes are named by their id",
    "_tracing_startup_hook": "tracing hooks are not supported",
    "logging_config": "structured worker logging (LoggingConfig) is not supported; use "
    "logging_level and logging_format",
}

#: Ray's arguments whose default is also the only behaviour here
TRIVIAL: dict[str, Any] = {
    "_skip_env_hook": None,  # there is no runtime_env hook to skip
    "_enable_object_reconstruction": True,  # lineage reconstruction is always on
}

#: every keyword init takes besides those in its signature
EXTRA_KEYWORDS = frozenset(REFUSED) | frozenset(TRIVIAL) | {"_node_ip_address", "_memory"}

LOOPBACK = ("127.0.0.1", "localhost", "::1")
RAY_LOG_FORMAT = "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"


@dataclass
class JobSettings:
    """What ``job_config`` (Ray's JobConfig, or a dict of its fields) asks for."""

    runtime_env: dict[str, Any] | None = None
    namespace: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _given(value: Any) -> bool:
    return value not in (None, False, {}, [], (), "")


def check_extra(kwargs: dict[str, Any], attaching: bool) -> None:
    """Refuse what cannot be honoured; TypeError for a keyword Ray's init does not take."""
    unknown = set(kwargs) - EXTRA_KEYWORDS
    if unknown:
        raise TypeError(f"init() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    for name, value in kwargs.items():
        if name == "_system_config" and attaching and _given(value):
            raise ValueError(
                "init(_system_config=...) cannot be given when connecting to an existing "
                "cluster (as in Ray): a cluster's system config is fixed where it starts."
            )
        if name in REFUSED and _given(value):
            raise ValueError(f"init({name}=...) is refused: {REFUSED[name]}.")
        if name == "_enable_object_reconstruction" and value is False:
            raise ValueError(
                "init(_enable_object_reconstruction=False) is refused: lineage reconstruction "
                "is always on here."
            )
    ip = kwargs.get("_node_ip_address")
    if ip and (attaching or ip not in LOOPBACK):
        raise ValueError(
            f"init(_node_ip_address={ip!r}) is refused: a local cluster listens on loopback "
            f"only; to serve other machines start a head with `rayjupyter start --head "
            f"--node-ip {ip}` and connect to it."
        )


def job_settings(job_config: Any) -> JobSettings:
    """Ray's JobConfig (or a dict of its fields): its runtime_env and namespace are
    honoured; its Java fields, metadata and a detached default lifetime are refused."""
    if job_config is None:
        return JobSettings()

    def read(name: str, alias: str = "") -> Any:
        if isinstance(job_config, dict):
            return job_config.get(name, job_config.get(alias) if alias else None)
        value = getattr(job_config, name, None)
        return value if value is not None or not alias else getattr(job_config, alias, None)

    refused = {
        "code_search_path": "Java code search paths do not apply to Python workers",
        "jvm_options": "there is no JVM",
        "metadata": "job metadata is kept for submitted jobs only (rayjupyter job submit "
        "--metadata-json)",
        "_py_driver_sys_path": "a driver's sys.path reaches workers through runtime_env "
        "(working_dir, py_modules)",
    }
    for name, reason in refused.items():
        if _given(read(name)):
            raise ValueError(f"init(job_config=...): {name} is refused: {reason}.")
    lifetime = read("default_actor_lifetime")
    if lifetime not in (None, "non_detached"):
        raise ValueError(
            f"init(job_config=...): default_actor_lifetime={lifetime!r} is refused: give "
            f"lifetime='detached' to the actors that must outlive the driver."
        )
    runtime_env = read("runtime_env")
    if runtime_env is not None and not isinstance(runtime_env, dict):
        runtime_env = dict(runtime_env)
    return JobSettings(runtime_env or None, read("ray_namespace", "namespace") or None)


def warn_local_mode() -> None:
    warnings.warn(
        "init(local_mode=True): local mode (deprecated in Ray) is not supported; tasks and "
        "actors run in worker processes of a local cluster as usual. To step through a "
        "task's code, call the function itself (its .__wrapped__ / the original) in the "
        "driver.",
        UserWarning,
        stacklevel=3,
    )


_handler: logging.Handler | None = None


def configure_logging(level: int | str, fmt: str | None) -> None:
    """As Ray's ``configure_logging``: the package's logger gets a stderr handler with the
    format (Ray's by default) at the level; called again, it replaces its own handler."""
    global _handler
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ValueError(
                f"init(logging_level={level!r}): not a logging level; use one of "
                f"debug, info, warning, error, critical (or logging.INFO, ...)."
            )
        level = number
    logger = logging.getLogger("rayjupyter")
    if _handler is not None:
        logger.removeHandler(_handler)
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter(fmt or RAY_LOG_FORMAT))
    logger.addHandler(_handler)
    logger.setLevel(level)
