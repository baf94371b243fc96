"""TorchTrainer on real clusters: two workers form one torch.distributed group (world size
2, distinct ranks) whose DDP keeps their parameters equal while they train on different
shares of the data, on one node and across two; a worker SIGKILLed (by pid) mid-training
is resumed from the last checkpoint to the same final metrics. Skipped without torch
(the `train` extra); each fit pays torch's import in fresh workers, so the runs are few."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_for_condition
from test_multinode import Nodes

import rayjupyter as rj
from rayjupyter import train
from rayjupyter.train import FailureConfig, RunConfig, ScalingConfig

pytest.importorskip("torch")

from rayjupyter.train.torch import TorchTrainer

pytestmark = pytest.mark.timeout(150)


def ddp_loop(config: dict[str, Any]) -> None:
    """Seeded DDP training of a small regression, a checkpoint each epoch, resumed from
    get_checkpoint(). The ranks start from different weights (DDP broadcasts rank 0's) and
    see different shuffled shares of the data (DDP averages the gradients). Each epoch
    writes the worker's pid, for the test to SIGKILL; the end writes what the worker saw."""
    import tempfile
    import time

    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, TensorDataset

    from rayjupyter.train import Checkpoint
    from rayjupyter.train.torch import get_device, prepare_data_loader, prepare_model

    context = train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(100 + rank)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    start = 0
    checkpoint = train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, "state.pt"))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1
    model = prepare_model(model)
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))
    dataset = TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5]]))
    loader = prepare_data_loader(DataLoader(dataset, batch_size=8, shuffle=True))
    for epoch in range(start, config["epochs"]):
        loader.sampler.set_epoch(epoch)
        for xb, yb in loader:
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(xb), yb).backward()
            optimizer.step()
        saved = None
        if rank == 0:
            folder = tempfile.mkdtemp()
            state = {"model": model.module.state_dict(), "optimizer": optimizer.state_dict()}
            torch.save({**state, "epoch": epoch}, os.path.join(folder, "state.pt"))
            saved = Checkpoint.from_directory(folder)
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        train.report({"epoch": epoch, "params": [round(v, 5) for v in params.tolist()]}, saved)
        with open(os.path.join(config["out"], f"progress{rank}"), "w") as file:
            file.write(f"{os.getpid()} {epoch}")
        time.sleep(config["pause"])
    seen = {
        "rank": dist.get_rank(),
        "world": dist.get_world_size(),
        "env": {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")},
        "device": str(get_device()),
        "is_ddp": isinstance(model, torch.nn.parallel.DistributedDataParallel),
        "sampler": type(loader.sampler).__name__,
        "batches": len(loader),
        "node_rank": context.get_node_rank(),
        "local_rank": context.get_local_rank(),
        "params": params.tolist(),
        "pid": os.getpid(),
    }
    with open(os.path.join(config["out"], f"rank{rank}.json"), "w") as file:
        json.dump(seen, file)


def fit(tmp_path: Any, name: str, epochs: int, pause: float = 0.0, **scaling: Any) -> Any:
    out = tmp_path / name
    out.mkdir()
    result = TorchTrainer(
        ddp_loop,
        train_loop_config={"epochs": epochs, "out": str(out), "pause": pause},
        scaling_config=ScalingConfig(num_workers=2, **scaling),
        run_config=RunConfig(
            name=name,
            storage_path=str(tmp_path),
            verbose=0,
            failure_config=FailureConfig(max_failures=1),
        ),
    ).fit()
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return result, ranks


def assert_one_ddp_group(ranks: list[dict[str, Any]]) -> None:
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {r["world"] for r in ranks} == {2}
    assert [r["env"]["RANK"] for r in ranks] == ["0", "1"]
    assert ranks[0]["env"]["MASTER_PORT"] == ranks[1]["env"]["MASTER_PORT"]
    assert all(r["is_ddp"] and r["sampler"] == "DistributedSampler" for r in ranks)
    assert all(r["batches"] == 2 and r["device"] == "cpu" for r in ranks)  # 16 rows each
    assert ranks[0]["params"] == pytest.approx(ranks[1]["params"], abs=1e-6)


KILLER = """
import os, sys, time
path = sys.argv[1]
deadline = time.time() + 90
while time.time() < deadline:
    try:
        pid, epoch = open(path).read().split()
    except (OSError, ValueError):
        pid, epoch = None, -1
    if pid and int(epoch) >= 1:
        os.kill(int(pid), int(sys.argv[2]))
        print(pid)
        break
    time.sleep(0.02)
"""


def test_ddp_group_and_a_killed_worker_resumed(cluster: Any, tmp_path: Any) -> None:
    plain, ranks = fit(tmp_path, "plain", epochs=4)
    assert_one_ddp_group(ranks)
    assert [r["local_rank"] for r in ranks] == [0, 1]
    assert [r["env"]["LOCAL_RANK"] for r in ranks] == ["0", "1"]

    # A killer outside the cluster SIGKILLs rank 1 by its pid once epoch 1 is reported.
    killer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLER,
            str(tmp_path / "killed" / "progress1"),
            str(int(signal.SIGKILL)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        resumed, after = fit(tmp_path, "killed", epochs=4, pause=0.5)
        killed_pid = killer.communicate(timeout=30)[0].strip()
    finally:
        killer.kill()
        killer.wait()
    assert killed_pid.isdigit()
    assert after[1]["pid"] != int(killed_pid)  # rank 1 finished in a new worker
    assert_one_ddp_group(after)
    assert resumed.metrics == plain.metrics
    epochs = [m["epoch"] for m in resumed.metrics_history]
    assert epochs[-1] == 3 and sorted(set(epochs)) == [0, 1, 2, 3]


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


def test_ddp_group_across_two_nodes(two_nodes: Nodes, tmp_path: Any) -> None:
    _, ranks = fit(tmp_path, "spread", epochs=1, placement_strategy="STRICT_SPREAD")
    assert_one_ddp_group(ranks)
    assert [r["node_rank"] for r in ranks] == [0, 1]  # one worker per node
    assert [r["local_rank"] for r in ranks] == [0, 0]
