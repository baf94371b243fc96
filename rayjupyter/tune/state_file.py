"""The experiment's state on disk, so ``Tuner.restore`` can go on after a crash.

One pickle holds the trials, the searcher and the scheduler together, written to a
temporary file and renamed over the old one, so a driver killed at any moment leaves the
last complete state (the searcher's random sequence and the trials always agree).
"""

from __future__ import annotations

import os
from typing import Any

import cloudpickle

EXPERIMENT_STATE = "experiment_state.pkl"
TUNER_STATE = "tuner.pkl"


def _write(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        cloudpickle.dump(obj, f)
    os.replace(tmp, path)


def save_experiment(path: str, trials: list[Any], searcher: Any, scheduler: Any) -> None:
    _write(
        os.path.join(path, EXPERIMENT_STATE),
        {"trials": trials, "searcher": searcher, "scheduler": scheduler},
    )


def load_experiment(path: str) -> dict[str, Any]:
    with open(os.path.join(path, EXPERIMENT_STATE), "rb") as f:
        data: dict[str, Any] = cloudpickle.load(f)
    return data


def save_tuner(path: str, state: dict[str, Any]) -> None:
    _write(os.path.join(path, TUNER_STATE), state)


def load_tuner(path: str) -> dict[str, Any]:
    file = os.path.join(path, TUNER_STATE)
    if not os.path.exists(file):
        raise ValueError(f"Tuner.restore: {path!r} holds no experiment ({TUNER_STATE} missing)")
    with open(file, "rb") as f:
        data: dict[str, Any] = cloudpickle.load(f)
    return data


def can_restore(path: str) -> bool:
    return os.path.exists(os.path.join(os.path.expanduser(path), TUNER_STATE))
