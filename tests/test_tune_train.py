"""rayjupyter.tune with rayjupyter.train on a real 2-CPU cluster: one Checkpoint class,
Train's report/get_checkpoint/get_context inside a Tune trial, and a trainer tuned as a
trainable (best config, a scheduler's early stops, checkpoints, resources given back)."""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from typing import Any

import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter import train, tune
from rayjupyter.train import DataParallelTrainer, ScalingConfig
from rayjupyter.tune.schedulers import ASHAScheduler

pytestmark = [pytest.mark.usefixtures("shared_cluster"), pytest.mark.timeout(120)]


def quiet(tmp_path: Any, **kwargs: Any) -> tune.RunConfig:
    return tune.RunConfig(storage_path=str(tmp_path), verbose=0, **kwargs)


def save(state: dict[str, Any]) -> train.Checkpoint:
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "state.json"), "w") as file:
        json.dump(state, file)
    return train.Checkpoint.from_directory(folder)


def load(checkpoint: Any) -> dict[str, Any]:
    with checkpoint.as_directory() as folder, open(os.path.join(folder, "state.json")) as file:
        state: dict[str, Any] = json.load(file)
        return state


def test_one_checkpoint_class(tmp_path: Any) -> None:
    assert tune.Checkpoint is train.Checkpoint
    checkpoint = tune.Checkpoint.from_directory(tmp_path)
    checkpoint.set_metadata({"a": 1})
    checkpoint.update_metadata({"b": 2})
    assert train.Checkpoint(str(tmp_path)).get_metadata() == {"a": 1, "b": 2}
    assert checkpoint == train.Checkpoint.from_directory(str(tmp_path))


def test_train_report_inside_a_tune_function_trainable(tmp_path: Any) -> None:
    def loop(config: dict[str, Any]) -> None:
        context = train.get_context()
        start = train.get_checkpoint()
        assert start is None and tune.get_context().get_trial_id() == context.get_trial_id()
        for step in range(1, 4):
            train.report(
                {"score": config["x"] * step, "rank": context.get_world_rank(), "step": step},
                checkpoint=save({"step": step}),
            )
            assert load(train.get_checkpoint())["step"] == step

    grid = tune.Tuner(
        loop,
        param_space={"x": tune.grid_search([1, 2])},
        tune_config=tune.TuneConfig(metric="score", mode="max"),
        run_config=quiet(tmp_path),
    ).fit()
    assert grid.num_errors == 0 and grid.num_terminated == 2
    best = grid.get_best_result()
    assert best.config == {"x": 2} and best.metrics["score"] == 6 and best.metrics["rank"] == 0
    assert isinstance(best.checkpoint, train.Checkpoint) and load(best.checkpoint)["step"] == 3


def climb(config: dict[str, Any]) -> None:
    start = train.get_checkpoint()
    first = load(start)["step"] + 1 if start else 1
    for step in range(first, config["steps"] + 1):
        checkpoint = save({"step": step, "rate": config["rate"]})
        train.report({"score": config["rate"] * step, "step": step}, checkpoint=checkpoint)


def test_a_data_parallel_trainer_tuned_with_asha(tmp_path: Any) -> None:
    trainer = DataParallelTrainer(
        climb,
        train_loop_config={"steps": 8, "rate": 0.0},
        scaling_config=ScalingConfig(num_workers=1),
        run_config=train.RunConfig(name="ignored", storage_path=str(tmp_path)),
    )
    total = rj.cluster_resources()["CPU"]
    grid = tune.Tuner(
        trainer,
        param_space={"train_loop_config": {"rate": tune.grid_search([0.9, 0.7, 0.3, 0.1])}},
        tune_config=tune.TuneConfig(
            metric="score",
            mode="max",
            scheduler=ASHAScheduler(max_t=8, grace_period=1, reduction_factor=2),
        ),
        run_config=quiet(tmp_path, name="asha"),
    ).fit()
    assert grid.num_errors == 0 and len(grid) == 4
    best = grid.get_best_result()
    assert best.config == {"train_loop_config": {"rate": 0.9}}
    assert best.metrics["step"] == 8 and best.metrics["training_iteration"] == 8
    assert load(best.checkpoint) == {"step": 8, "rate": 0.9}
    assert os.path.dirname(best.checkpoint.path) == best.path  # kept in the trial's folder
    iterations = [r.metrics["training_iteration"] for r in grid]
    assert sum(iterations) < 4 * 8 and min(iterations) < 8, iterations  # stopped early
    for result in grid:  # each trial's last result has its last checkpoint
        assert load(result.checkpoint)["step"] == result.metrics["step"]
    # stopped trials' workers are gone: their placement groups gave the CPUs back
    wait_for_condition(lambda: rj.available_resources().get("CPU") == total, timeout=30)


def test_trainer_param_space_is_checked_and_scaling_sets_resources(tmp_path: Any) -> None:
    trainer = DataParallelTrainer(climb, train_loop_config={"steps": 2, "rate": 1.0})
    with pytest.raises(ValueError, match="only the trainer's arguments"):
        tune.Tuner(trainer, param_space={"lr": 1}, run_config=quiet(tmp_path))
    grid = tune.Tuner(
        trainer,
        param_space={"scaling_config": {"num_workers": tune.grid_search([2, 1])}},
        tune_config=tune.TuneConfig(metric="score", mode="max"),
        run_config=quiet(tmp_path, name="scaling"),
    ).fit()
    assert grid.num_errors == 0 and [r.metrics["score"] for r in grid] == [2.0, 2.0]


def test_over_large_trainer_trial_is_refused(tmp_path: Any) -> None:
    trainer = DataParallelTrainer(
        climb,
        train_loop_config={"steps": 1, "rate": 1.0},
        scaling_config=ScalingConfig(num_workers=3),
    )
    with pytest.raises(ValueError, match="asks for 3 CPU"):
        tune.Tuner(trainer, run_config=quiet(tmp_path)).fit()


def torch_loop(config: dict[str, Any]) -> None:
    import torch

    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
    xs = torch.linspace(-1, 1, 16).unsqueeze(1)
    for epoch in range(config["epochs"]):
        loss = torch.nn.functional.mse_loss(model(xs), 3 * xs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        folder = tempfile.mkdtemp()
        torch.save(model.state_dict(), os.path.join(folder, "model.pt"))
        checkpoint = train.Checkpoint.from_directory(folder)
        train.report({"loss": loss.item(), "epoch": epoch}, checkpoint=checkpoint)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_a_torch_trainer_trial(tmp_path: Any) -> None:
    from rayjupyter.train.torch import TorchTrainer

    trainer = TorchTrainer(
        torch_loop,
        train_loop_config={"epochs": 2},
        scaling_config=ScalingConfig(num_workers=2),
    )
    grid = tune.Tuner(
        trainer,
        param_space={"train_loop_config": {"lr": 0.1}},
        tune_config=tune.TuneConfig(metric="loss", mode="min"),
        run_config=quiet(tmp_path, name="torch"),
    ).fit()
    assert grid.num_errors == 0, grid.errors
    result = grid.get_best_result()
    assert result.metrics["epoch"] == 1 and result.metrics["training_iteration"] == 2
    assert os.path.exists(os.path.join(result.checkpoint.path, "model.pt"))
