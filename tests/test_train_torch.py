"""TorchTrainer on real clusters: two workers form one torch.distributed group (world
size 2, distinct ranks) and DDP keeps their parameters equal after a step, on one node
and across two. Skipped when torch is not installed (it is the `train` extra)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_for_condition
from test_multinode import Nodes

import rayjupyter as rj
from rayjupyter import train
from rayjupyter.train import RunConfig, ScalingConfig

pytest.importorskip("torch")

from rayjupyter.train.torch import TorchTrainer  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def ddp_step_loop(config: dict[str, Any]) -> None:
    """Each rank starts from different weights and sees different data; DDP syncs both
    (weights at wrapping, gradients at backward), so one step leaves equal parameters."""
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, TensorDataset

    from rayjupyter.train.torch import get_device, prepare_data_loader, prepare_model

    context = train.get_context()
    torch.manual_seed(100 + context.get_world_rank())
    model = prepare_model(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)))
    dataset = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    loader = prepare_data_loader(DataLoader(dataset, batch_size=4, shuffle=True))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = next(iter(loader))
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    out = {
        "rank": dist.get_rank(),
        "world": dist.get_world_size(),
        "env": {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")},
        "device": str(get_device()),
        "is_ddp": isinstance(model, torch.nn.parallel.DistributedDataParallel),
        "sampler": type(loader.sampler).__name__,
        "batches": len(loader),
        "node_rank": context.get_node_rank(),
        "local_rank": context.get_local_rank(),
        "params": torch.cat([p.detach().flatten() for p in model.parameters()]).tolist(),
    }
    with open(os.path.join(config["out"], f"rank{context.get_world_rank()}.json"), "w") as f:
        json.dump(out, f)
    train.report({"loss_rank": float(dist.get_rank())})


def fit_two_workers(tmp_path: Any, strategy: str) -> list[dict[str, Any]]:
    TorchTrainer(
        ddp_step_loop,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, placement_strategy=strategy),
        run_config=RunConfig(name="ddp", storage_path=str(tmp_path), verbose=0),
    ).fit()
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def assert_one_ddp_group(ranks: list[dict[str, Any]]) -> None:
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {r["world"] for r in ranks} == {2}
    assert [r["env"]["RANK"] for r in ranks] == ["0", "1"]
    assert ranks[0]["env"]["MASTER_PORT"] == ranks[1]["env"]["MASTER_PORT"]
    assert all(r["is_ddp"] and r["sampler"] == "DistributedSampler" for r in ranks)
    assert all(r["batches"] == 2 and r["device"] == "cpu" for r in ranks)  # 8 rows each
    assert ranks[0]["params"] == pytest.approx(ranks[1]["params"], abs=1e-6)


def test_two_workers_one_process_group(cluster: Any, tmp_path: Any) -> None:
    ranks = fit_two_workers(tmp_path, "PACK")
    assert_one_ddp_group(ranks)
    assert [r["local_rank"] for r in ranks] == [0, 1]
    assert [r["env"]["LOCAL_RANK"] for r in ranks] == ["0", "1"]


@pytest.fixture
def two_nodes() -> Iterator[Nodes]:
    head = rj.init(num_cpus=1)
    nodes = Nodes(head)
    try:
        nodes.join(num_cpus=1)
        wait_for_condition(lambda: sum(1 for n in rj.nodes() if n["Alive"]) == 2, timeout=20)
        yield nodes
    finally:
        nodes.stop()
        rj.shutdown()


def test_two_workers_across_two_nodes(two_nodes: Nodes, tmp_path: Any) -> None:
    ranks = fit_two_workers(tmp_path, "STRICT_SPREAD")
    assert_one_ddp_group(ranks)
    assert [r["node_rank"] for r in ranks] == [0, 1]  # one worker per node
    assert [r["local_rank"] for r in ranks] == [0, 0]
