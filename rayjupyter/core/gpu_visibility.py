"""Which GPUs a worker's task or actor sees: ``CUDA_VISIBLE_DEVICES``, set as Ray 2.60 does.

A task or actor given GPU ids gets them in ``CUDA_VISIBLE_DEVICES``; one given none leaves
the variable as the worker inherited it (Ray stopped writing an empty value in 2.x; its
``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1`` brings the empty value back, and is read here too).
``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1`` (or our own
``RAYJUPYTER_NOSET_CUDA_VISIBLE_DEVICES=1``) in the environment the cluster starts in makes
workers never touch it: for code that picks its devices itself. Pure but for ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

VARIABLE = "CUDA_VISIBLE_DEVICES"
#: either of these set to 1/true: workers leave CUDA_VISIBLE_DEVICES alone
NOSET_VARIABLES = (
    "RAYJUPYTER_NOSET_CUDA_VISIBLE_DEVICES",
    "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES",
)
#: set to 1/true: work given no GPU sees CUDA_VISIBLE_DEVICES="" (Ray's older behaviour)
OVERRIDE_ON_ZERO_VARIABLE = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in ("1", "true")


def visible_devices(gpu_ids: tuple[int, ...], environ: Mapping[str, str]) -> str | None:
    """The value CUDA_VISIBLE_DEVICES takes for work given ``gpu_ids``; None: leave it."""
    if not gpu_ids and not _flag(environ, OVERRIDE_ON_ZERO_VARIABLE):
        return None  # (every task without GPUs: one variable read, not three)
    if any(_flag(environ, name) for name in NOSET_VARIABLES):
        return None
    return ",".join(map(str, gpu_ids))


def apply(gpu_ids: tuple[int, ...], environ: MutableMapping[str, str] = os.environ) -> None:
    """Set CUDA_VISIBLE_DEVICES for work given ``gpu_ids`` (see ``visible_devices``)."""
    value = visible_devices(gpu_ids, environ)
    if value is not None:
        environ[VARIABLE] = value
