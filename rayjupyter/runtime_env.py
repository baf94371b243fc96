"""Ray's ``ray.runtime_env`` module: ``RuntimeEnv``, a checked runtime_env dict."""

from __future__ import annotations

from typing import Any

from rayjupyter.core import runtime_env as _runtime_env

__all__ = ["RuntimeEnv"]


class RuntimeEnv(dict[str, Any]):
    """``RuntimeEnv(working_dir=..., py_modules=[...], env_vars={...})``: a runtime_env as
    Ray's class, usable wherever a runtime_env dict is. Keys rayjupyter does not support
    (``pip``, ``conda``, ``container``, ...) are refused here, with the reason."""

    def __init__(
        self,
        *,
        py_modules: list[str] | None = None,
        working_dir: str | None = None,
        env_vars: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        given = {"py_modules": py_modules, "working_dir": working_dir, "env_vars": env_vars}
        given.update(kwargs)
        given = {key: value for key, value in given.items() if value is not None}
        _runtime_env.validate("runtime_env", given)  # a bad key or value fails here
        super().__init__(given)
