"""rayjupyter.tune with rayjupyter.train on a real 2-CPU cluster: one Checkpoint class,
Train's report/get_checkpoint/get_context inside a Tune trial, and a trainer tuned as a
trainable (best config, a scheduler's early stops, checkpoints, resources given back)."""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import time
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


def timed(config: dict[str, Any]) -> None:
    """Notes when each worker of the trial starts and ends, to see which trials overlap."""
    context = train.get_context()
    trial = os.path.basename(os.path.dirname(context.get_trial_dir()))
    log = os.path.join(config["log"], f"{trial}.{context.get_world_rank()}")
    began = time.time()
    # tune.report inside a training loop is train.report, as in Ray
    tune.report({"score": 1.0, "size": context.get_world_size()})
    train.report({"score": 2.0, "size": tune.get_context().get_world_size()})
    with open(log, "w") as file:
        file.write(f"{began} {time.time()}")


def test_trainer_param_space_is_checked_and_scaling_sets_concurrency(tmp_path: Any) -> None:
    log = tmp_path / "log"
    log.mkdir()
    trainer = DataParallelTrainer(
        timed,
        train_loop_config={"log": str(log)},
        run_config=train.RunConfig(name="from_trainer", storage_path=str(tmp_path), verbose=0),
    )
    with pytest.raises(ValueError, match="only the trainer's arguments"):
        tune.Tuner(trainer, param_space={"lr": 1})
    # a 2-worker trial takes both CPUs: it runs alone; 1-worker trials may share them
    sizes = [{"num_workers": 2}, {"num_workers": 1}, {"num_workers": 2}, {"num_workers": 1}]
    grid = tune.Tuner(
        trainer,
        param_space={"scaling_config": tune.grid_search(sizes)},
        tune_config=tune.TuneConfig(metric="score", mode="max"),
    ).fit()
    assert grid.num_errors == 0 and len(grid) == 4
    assert os.path.basename(grid.experiment_path) == "from_trainer"  # the trainer's RunConfig
    assert sorted(r.metrics["size"] for r in grid) == [1, 1, 2, 2]
    assert all(r.metrics["training_iteration"] == 2 for r in grid)
    spans: dict[str, tuple[float, float, int]] = {}
    for entry in os.listdir(log):
        trial, _ = entry.split(".")
        began, ended = map(float, (log / entry).read_text().split())
        old = spans.get(trial, (began, ended, 0))
        spans[trial] = (min(old[0], began), max(old[1], ended), old[2] + 1)
    assert sorted(count for _, _, count in spans.values()) == [1, 1, 2, 2]
    for name, (began, ended, count) in spans.items():
        if count == 2:  # no other trial ran while this one did
            others = [(b, e) for other, (b, e, _) in spans.items() if other != name]
            assert all(e < began or b > ended for b, e in others), spans


def fails_once(config: dict[str, Any]) -> None:
    start = train.get_checkpoint()
    first = load(start)["step"] + 1 if start else 1
    for step in range(first, 5):
        if step == 3 and not os.path.exists(config["marker"]):
            open(config["marker"], "w").close()
            raise RuntimeError("first attempt fails at step 3")
        train.report({"step": step, "first": first}, checkpoint=save({"step": step}))


def test_a_failed_trainer_trial_retries_from_its_checkpoint(tmp_path: Any) -> None:
    trainer = DataParallelTrainer(
        fails_once, train_loop_config={"marker": str(tmp_path / "failed")}
    )
    grid = tune.Tuner(
        trainer,
        tune_config=tune.TuneConfig(metric="step", mode="max"),
        run_config=quiet(tmp_path, failure_config=tune.FailureConfig(max_failures=1)),
    ).fit()
    assert grid.num_errors == 0
    result = grid[0]
    assert result.metrics["step"] == 4 and result.metrics["first"] == 3  # resumed after 2
    assert load(result.checkpoint) == {"step": 4}
    assert [row["step"] for row in result.metrics_dataframe.to_dict("records")] == [1, 2, 3, 4]


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
