"""rayjupyter.train.torch: TorchTrainer and the helpers used inside its loop.

``TorchTrainer`` and ``TorchConfig`` import no torch until a run starts on the workers;
``prepare_model``, ``prepare_data_loader`` and ``get_device`` load it when first used.
"""

from typing import Any

from rayjupyter.train.torch.config import TorchConfig, TorchTrainer

_LOOP_UTILS = (
    "enable_reproducibility",
    "get_device",
    "get_devices",
    "prepare_data_loader",
    "prepare_model",
)


def __getattr__(name: str) -> Any:
    if name in _LOOP_UTILS:
        from rayjupyter.train.torch import train_loop_utils

        return getattr(train_loop_utils, name)
    raise AttributeError(f"module 'rayjupyter.train.torch' has no attribute {name!r}")


__all__ = ["TorchConfig", "TorchTrainer", *_LOOP_UTILS]
