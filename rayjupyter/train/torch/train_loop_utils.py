"""Inside a TorchTrainer loop: the worker's device, the model wrapped in DDP, the data
loader given a DistributedSampler, as Ray Train's ``prepare_model`` and friends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

_use_cuda = False


def _set_device(use_cuda: bool) -> None:
    global _use_cuda
    _use_cuda = use_cuda
    if use_cuda:
        torch.cuda.set_device(get_device())


def _world() -> tuple[int, int]:
    from rayjupyter.train import get_context

    context = get_context()
    return context.get_world_rank(), context.get_world_size()


def get_device() -> torch.device:
    """This worker's device: its GPU (the first visible to it) with use_gpu, else the CPU."""
    if _use_cuda and torch.cuda.is_available():
        return torch.device("cuda", 0 if torch.cuda.device_count() == 1 else _local_gpu())
    return torch.device("cpu")


def get_devices() -> list[torch.device]:
    return [get_device()]


def _local_gpu() -> int:
    import rayjupyter as rj

    ids = rj.get_gpu_ids()
    return int(ids[0]) if ids else 0


def prepare_model(
    model: torch.nn.Module,
    move_to_device: bool = True,
    parallel_strategy: str | None = "ddp",
    parallel_strategy_kwargs: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """Move the model to this worker's device and wrap it in DistributedDataParallel when
    there is more than one worker."""
    if parallel_strategy not in ("ddp", None):
        raise ValueError(
            f"parallel_strategy {parallel_strategy!r} is not supported: use 'ddp' or None"
        )
    device = get_device()
    if move_to_device:
        model = model.to(device)
    _, world = _world()
    if parallel_strategy == "ddp" and world > 1:
        from torch.nn.parallel import DistributedDataParallel

        kwargs = dict(parallel_strategy_kwargs or {})
        if device.type == "cuda":
            kwargs.setdefault("device_ids", [device])
            kwargs.setdefault("output_device", device)
        model = DistributedDataParallel(model, **kwargs)
    return model


class _DeviceLoader:
    """A DataLoader whose batches arrive on the worker's device."""

    def __init__(self, loader: DataLoader[Any], device: torch.device) -> None:
        self._loader = loader
        self._device = device

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def _move(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(self._device, non_blocking=True)
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._move(item) for item in batch)
        if isinstance(batch, dict):
            return {key: self._move(value) for key, value in batch.items()}
        return batch

    def __iter__(self) -> Iterator[Any]:
        for batch in self._loader:
            yield self._move(batch)


def prepare_data_loader(
    data_loader: DataLoader[Any],
    add_dist_sampler: bool = True,
    move_to_device: bool = True,
    auto_transfer: bool = True,
) -> Any:
    """Give each worker its share of the data (a DistributedSampler, shuffling if the
    loader shuffled) and, on a GPU, batches already on the device. Call
    ``loader.sampler.set_epoch(epoch)`` each epoch for a new shuffle, as with plain DDP."""
    rank, world = _world()
    if add_dist_sampler and world > 1 and not isinstance(data_loader.sampler, DistributedSampler):
        shuffle = isinstance(data_loader.sampler, RandomSampler)
        data_loader = DataLoader(
            data_loader.dataset,
            batch_size=data_loader.batch_size,
            sampler=DistributedSampler(
                data_loader.dataset, num_replicas=world, rank=rank, shuffle=shuffle
            ),
            num_workers=data_loader.num_workers,
            collate_fn=data_loader.collate_fn,
            pin_memory=data_loader.pin_memory,
            drop_last=data_loader.drop_last,
            timeout=data_loader.timeout,
            worker_init_fn=data_loader.worker_init_fn,
            generator=data_loader.generator,
        )
    device = get_device()
    if move_to_device and device.type != "cpu":
        return _DeviceLoader(data_loader, device)
    return data_loader


def enable_reproducibility(seed: int = 0) -> None:
    """Seed torch, numpy and random alike on every worker, and ask for deterministic
    algorithms; call it first in the loop."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    torch.use_deterministic_algorithms(True)
