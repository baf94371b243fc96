"""The LeNet workload of ``python -m benchmarks.train``, shared by every runner (rayjupyter,
Ray Train, torchrun) so that they time the same code: the seeds' LeNet-style CNN
(44,426 parameters) on scikit-learn's digits scaled to 28x28, data-parallel with DDP."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

BATCH_SIZE = 32


def digits_28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, each pixel a 3x3 block, padded to 28x28 (no download)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images / 16.0, np.ones((3, 3)))
    images = np.pad(images, ((0, 0), (2, 2), (2, 2))).astype(np.float32)[:, None]
    return images, digits.target.astype(np.int64)


def lenet() -> Any:
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 120),
        torch.nn.ReLU(),
        torch.nn.Linear(120, 84),
        torch.nn.ReLU(),
        torch.nn.Linear(84, 10),
    )


def train_epochs(
    epochs: int,
    rank: int,
    world: int,
    prepare_model: Callable[[Any], Any],
    report: Callable[[dict[str, Any]], None],
) -> None:
    """DDP training, one thread per worker (as torchrun and Ray set it); each epoch's time is
    measured inside the worker and reported."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = digits_28()
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True)
    loader = DataLoader(data, batch_size=BATCH_SIZE, sampler=sampler)
    model = prepare_model(lenet())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
        report({"epoch": epoch, "epoch_s": time.perf_counter() - started, "loss": loss.item()})
