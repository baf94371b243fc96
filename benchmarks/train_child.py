"""One measurement of ``python -m benchmarks.train`` in a fresh process:
``python -m benchmarks.train_child {rayjupyter,ray,torchrun} EPOCHS OUT.json``.

For rayjupyter and Ray Train: the time from ``fit()`` to the first report, with a loop that
reports at once (no framework) and with the LeNet loop under TorchTrainer (torch's import
in fresh workers included, as a user pays it); then the LeNet epochs. For torchrun: this
module is the script torchrun starts on each of 2 processes, rank 0 writing the epochs."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any

from benchmarks.train_lenet import train_epochs


def _lenet_loop(train: Any, prepare_model: Any) -> Any:
    def loop(config: dict[str, Any]) -> None:
        """Reports at once, then each epoch; rank 0 also logs every report to a file (Ray
        Train's Result keeps only the last metrics)."""
        context = train.get_context()
        rank = context.get_world_rank()

        def report(metrics: dict[str, Any]) -> None:
            train.report(metrics)
            if rank == 0:
                with open(config["log"], "a") as file:
                    file.write(json.dumps(metrics) + "\n")

        report({"at": time.time(), "epoch": -1, "epoch_s": 0.0, "loss": 0.0})
        train_epochs(config["epochs"], rank, context.get_world_size(), prepare_model, report)

    return loop


def run_library(name: str, epochs: int) -> dict[str, Any]:
    if name == "rayjupyter":
        import rayjupyter as lib
        from rayjupyter import train
        from rayjupyter.train import DataParallelTrainer, RunConfig, ScalingConfig
        from rayjupyter.train.torch import TorchTrainer, prepare_model
    else:
        import ray as lib  # type: ignore[no-redef]
        from ray import train  # type: ignore[no-redef]
        from ray.train import RunConfig, ScalingConfig  # type: ignore[no-redef]
        from ray.train.torch import TorchTrainer, prepare_model  # type: ignore[no-redef]
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer  # type: ignore
    lib.init(num_cpus=2)
    storage = tempfile.mkdtemp(prefix=f"bench_train_{name}_")
    quiet = {"verbose": 0} if name == "rayjupyter" else {}
    out: dict[str, Any] = {}

    def plain_loop(config: dict[str, Any]) -> None:
        at = time.time()
        train.report({"at": at})
        if train.get_context().get_world_rank() == 0:
            with open(config["log"], "w") as file:
                file.write(str(at))

    first_log = os.path.join(storage, "first.txt")
    started = time.time()
    DataParallelTrainer(
        plain_loop,
        train_loop_config={"log": first_log},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="first", storage_path=storage, **quiet),
    ).fit()
    with open(first_log) as file:
        out["first_report_s"] = float(file.read()) - started
    out["fit_s"] = time.time() - started

    log = os.path.join(storage, "lenet.jsonl")
    started = time.time()
    TorchTrainer(
        _lenet_loop(train, prepare_model),
        train_loop_config={"epochs": epochs, "log": log},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="lenet", storage_path=storage, **quiet),
    ).fit()
    with open(log) as file:
        history = [json.loads(line) for line in file]
    out["torch_first_report_s"] = history[0]["at"] - started
    out["torch_fit_s"] = time.time() - started
    out["epoch_s"] = [row["epoch_s"] for row in history if row["epoch"] >= 0]
    lib.shutdown()
    return out


def torchrun_worker() -> None:
    """Under torchrun: plain DDP, rank 0 writes its epochs to the file named in argv."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows: list[dict[str, Any]] = []
    train_epochs(int(sys.argv[2]), rank, world, DistributedDataParallel, rows.append)
    if rank == 0:
        with open(sys.argv[3], "w") as file:
            json.dump({"epoch_s": [row["epoch_s"] for row in rows]}, file)
    dist.destroy_process_group()


def main() -> None:
    name, epochs, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if name == "torchrun":
        torchrun_worker()
        return
    result = run_library(name, epochs)
    with open(path, "w") as file:
        json.dump(result, file)
    os._exit(0)  # skip the runtimes' atexit hooks: the measurement is written


if __name__ == "__main__":
    main()
