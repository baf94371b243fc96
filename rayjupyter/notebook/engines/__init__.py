"""The notebook's cluster engines: rayjupyter's runtime (the default) and Ray, chosen by
``%ray_connect`` (``--ray``, ``ray://``) or the ``RAYJUPYTER_ENGINE`` environment variable.

One engine is active per kernel; switching engines disconnects the other one first.
"""

from __future__ import annotations

import os

from rayjupyter.notebook.engines.base import ConnectRequest, Engine, EngineName, ProgressSource

__all__ = [
    "ENGINE_ENV",
    "ConnectRequest",
    "Engine",
    "EngineName",
    "ProgressSource",
    "active",
    "engine",
    "environment_engine",
]

#: "ray" makes a plain ``%ray_connect`` attach to Ray (at RAY_ADDRESS, or a local Ray):
#: the example notebooks run on Ray unchanged
ENGINE_ENV = "RAYJUPYTER_ENGINE"
ENGINE_NAMES: tuple[EngineName, ...] = ("rayjupyter", "ray")

_engines: dict[str, Engine] = {}
_active: list[EngineName] = ["rayjupyter"]


def engine(name: EngineName) -> Engine:
    """The kernel's engine of that name (made on first use; Ray is not imported by this)."""
    if name not in _engines:
        if name == "ray":
            from rayjupyter.notebook.engines.ray_engine import RayEngine

            _engines[name] = RayEngine()
        else:
            from rayjupyter.notebook.engines.rayjupyter_engine import RayJupyterEngine

            _engines[name] = RayJupyterEngine()
    return _engines[name]


def active() -> Engine:
    """The engine ``%ray_connect`` last chose (rayjupyter's until then)."""
    return engine(_active[0])


def activate(name: EngineName) -> None:
    _active[0] = name


def environment_engine() -> EngineName:
    """The engine the environment asks for; a bad value is a one-line error naming the fix."""
    value = os.environ.get(ENGINE_ENV, "").strip().lower() or "rayjupyter"
    if value not in ENGINE_NAMES:
        raise ValueError(
            f"{ENGINE_ENV}={value!r} is not an engine: set it to one of {', '.join(ENGINE_NAMES)}"
        )
    return "ray" if value == "ray" else "rayjupyter"
