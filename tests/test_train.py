"""rayjupyter.train on a real 2-CPU cluster, without a framework: ranks and contexts,
reports and checkpoints kept per num_to_keep, dataset shards, TF_CONFIG, a user error
raised with its type, and a worker SIGKILLed mid-run resumed from its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import rayjupyter as rj
from rayjupyter import train
from rayjupyter.train import (
    Checkpoint,
    CheckpointConfig,
    DataParallelTrainer,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
)
from rayjupyter.train.tensorflow import TensorflowTrainer

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def two_cpus(shared_cluster: Any) -> Iterator[Any]:
    yield shared_cluster


def run_config(tmp_path: Any, name: str, **kwargs: Any) -> RunConfig:
    return RunConfig(name=name, storage_path=str(tmp_path), verbose=0, **kwargs)


def save(state: dict[str, Any]) -> Checkpoint:
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "state.json"), "w") as file:
        json.dump(state, file)
    return Checkpoint.from_directory(folder)


def load(checkpoint: Checkpoint | None) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder, open(os.path.join(folder, "state.json")) as file:
        state: dict[str, Any] = json.load(file)
        return state


def contexts_loop(config: dict[str, Any]) -> None:
    context = train.get_context()
    shard = train.get_dataset_shard("train")
    rows = [int(x) for batch in shard.iter_batches(batch_size=4) for x in batch]
    for step in range(config["steps"]):
        checkpoint = save({"step": step}) if context.get_world_rank() == 0 else None
        train.report(
            {
                "step": step,
                "loss": [3.0, 1.0, 2.0, 5.0][step],
                "rank": context.get_world_rank(),
                "world": context.get_world_size(),
                "local": context.get_local_rank(),
                "node_rank": context.get_node_rank(),
                "rows": rows,
            },
            checkpoint=checkpoint,
        )
    path = os.path.join(context.get_trial_dir(), f"rank{context.get_world_rank()}.json")
    with open(path, "w") as file:
        json.dump({"rank": context.get_world_rank(), "local": context.get_local_rank()}, file)


def test_two_workers_report_and_keep_checkpoints(two_cpus: Any, tmp_path: Any) -> None:
    trainer = DataParallelTrainer(
        contexts_loop,
        train_loop_config={"steps": 4},
        scaling_config=ScalingConfig(num_workers=2),
        datasets={"train": np.arange(10)},
        run_config=run_config(
            tmp_path,
            "keep",
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min"
            ),
        ),
    )
    result = trainer.fit()
    assert result.metrics is not None
    assert {k: result.metrics[k] for k in ("step", "rank", "world")} == {
        "step": 3,
        "rank": 0,
        "world": 2,
    }
    assert result.metrics["rows"] == [0, 1, 2, 3, 4]  # rank 0's contiguous half
    assert [m["step"] for m in result.metrics_history] == [0, 1, 2, 3]
    ranks = [json.loads((tmp_path / "keep" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [{"rank": 0, "local": 0}, {"rank": 1, "local": 1}]
    # num_to_keep=2 by lowest loss (steps 1 and 2), and the latest (step 3) stays too
    on_disk = sorted(p for p in os.listdir(tmp_path / "keep") if p.startswith("checkpoint_"))
    assert on_disk == ["checkpoint_000001", "checkpoint_000003"]
    assert result.checkpoint == Checkpoint(str(tmp_path / "keep" / "checkpoint_000003"))
    assert load(result.checkpoint) == {"step": 3}
    assert [load(c)["step"] for c, _ in result.best_checkpoints] == [1, 3]  # type: ignore[index]
    assert list(result.metrics_dataframe["loss"]) == [3.0, 1.0, 2.0, 5.0]


def resume_loop() -> None:
    state = load(train.get_checkpoint())
    train.report({"resumed_from": state["step"] if state else None})


def test_resume_from_checkpoint(two_cpus: Any, tmp_path: Any) -> None:
    result = DataParallelTrainer(
        resume_loop,
        resume_from_checkpoint=save({"step": 41}),
        run_config=run_config(tmp_path, "resume"),
    ).fit()
    assert result.metrics == {"resumed_from": 41}


class LossDiverged(Exception):
    def __init__(self, step: int, detail: str) -> None:  # a type with its own arguments
        super().__init__(step, detail)


def failing_loop() -> None:
    if train.get_context().get_world_rank() == 1:
        raise LossDiverged(7, "nan")
    time.sleep(60)  # rank 0 is stopped when rank 1 fails


def test_user_error_stops_all_workers_and_keeps_its_type(two_cpus: Any, tmp_path: Any) -> None:
    started = time.monotonic()
    trainer = DataParallelTrainer(
        failing_loop,
        scaling_config=ScalingConfig(num_workers=2),
        run_config=run_config(tmp_path, "fail", failure_config=FailureConfig(max_failures=3)),
    )
    with pytest.raises(LossDiverged) as info:
        trainer.fit()
    assert "failing_loop" in str(info.value)  # the remote traceback comes along
    assert time.monotonic() - started < 30  # rank 0 did not sleep its 60 s out
    rj.get(rj.remote(lambda: 1).remote(), timeout=30)  # and its CPU is free again


def killed_loop(config: dict[str, Any]) -> None:
    """Six deterministic steps from the latest checkpoint; on the first attempt rank 1 is
    SIGKILLed (by its pid) right after step 2's report."""
    context = train.get_context()
    state = load(train.get_checkpoint()) or {"step": -1, "value": 1.0}
    value = state["value"]
    for step in range(state["step"] + 1, 6):
        value = value * 1.5 + step
        checkpoint = save({"step": step, "value": value}) if context.get_world_rank() == 0 else None
        train.report({"step": step, "value": value}, checkpoint=checkpoint)
        marker = config["marker"]
        first_attempt = config["kill"] and not os.path.exists(marker)
        if first_attempt and step == 2 and context.get_world_rank() == 1:
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.05)


def test_killed_worker_resumes_from_last_checkpoint(two_cpus: Any, tmp_path: Any) -> None:
    def fit(name: str, kill: bool, max_failures: int = 2) -> Any:
        return DataParallelTrainer(
            killed_loop,
            train_loop_config={"kill": kill, "marker": str(tmp_path / f"{name}.killed")},
            scaling_config=ScalingConfig(num_workers=2),
            run_config=run_config(
                tmp_path, name, failure_config=FailureConfig(max_failures=max_failures)
            ),
        ).fit()

    plain = fit("plain", kill=False)
    resumed = fit("killed", kill=True)
    assert os.path.exists(tmp_path / "killed.killed")
    assert resumed.metrics == plain.metrics
    # steps 0-2 before the kill, 3-5 after resuming from step 2's checkpoint: no repeats
    assert [m["step"] for m in resumed.metrics_history] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(TrainingFailedError, match="max_failures=0") as info:
        fit("no_retry", kill=True, max_failures=0)
    assert isinstance(info.value.__cause__, Exception)


def tf_config_loop() -> None:
    context = train.get_context()
    train.report(
        {"tf_config": json.loads(os.environ["TF_CONFIG"]), "rank": context.get_world_rank()}
    )
    path = os.path.join(context.get_trial_dir(), f"tf{context.get_world_rank()}.json")
    with open(path, "w") as file:
        file.write(os.environ["TF_CONFIG"])


def test_tensorflow_trainer_sets_tf_config(two_cpus: Any, tmp_path: Any) -> None:
    TensorflowTrainer(
        tf_config_loop,
        scaling_config=ScalingConfig(num_workers=2),
        run_config=run_config(tmp_path, "tf"),
    ).fit()
    configs = [json.loads((tmp_path / "tf" / f"tf{rank}.json").read_text()) for rank in (0, 1)]
    workers = configs[0]["cluster"]["worker"]
    assert len(workers) == 2 and len(set(workers)) == 2
    assert all(w.startswith("127.0.0.1:") for w in workers)
    for rank, config in enumerate(configs):
        assert config == {"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}}


def test_report_outside_a_run_says_where_it_belongs() -> None:
    with pytest.raises(RuntimeError, match="inside train_loop_per_worker"):
        train.report({"x": 1})
    with pytest.raises(ValueError, match="at most one argument"):
        DataParallelTrainer(lambda a, b: None)


def tensorflow_loop() -> None:
    """A custom loop, not Keras fit: Keras 3 refuses MultiWorkerMirroredStrategy upstream
    (keras-team/keras#20585), while strategy.run with its all-reduce is what it exists for."""
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    rank = train.get_context().get_world_rank()
    with strategy.scope():
        weights = tf.Variable(tf.zeros((4, 1)))
        optimizer = tf.keras.optimizers.SGD(learning_rate=0.1)
    # each rank sees different rows: equal weights afterwards prove the gradients were reduced
    x = np.random.default_rng(rank).normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)

    @tf.function
    def step() -> Any:
        def replica_step() -> Any:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((tf.matmul(x, weights) - y) ** 2)
            optimizer.apply_gradients([(tape.gradient(loss, weights), weights)])
            return loss

        return strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(replica_step), None)

    losses = [float(step()) for _ in range(20)]
    train.report(
        {
            "first_loss": losses[0],
            "last_loss": losses[-1],
            "replicas": strategy.num_replicas_in_sync,
            "weights": weights.numpy().ravel().tolist(),
        }
    )
    path = os.path.join(train.get_context().get_trial_dir(), f"weights{rank}.json")
    with open(path, "w") as file:
        json.dump(weights.numpy().ravel().tolist(), file)


@pytest.mark.timeout(240)  # two processes importing TensorFlow on 2 CPUs
def test_tensorflow_trainer_trains_with_multi_worker_mirrored_strategy(
    two_cpus: Any, tmp_path: Any
) -> None:
    pytest.importorskip("tensorflow")  # large and optional: the TF_CONFIG test runs without it
    result = TensorflowTrainer(
        tensorflow_loop,
        scaling_config=ScalingConfig(num_workers=2),
        run_config=run_config(tmp_path, "tensorflow"),
    ).fit()
    assert result.metrics is not None and result.metrics["replicas"] == 2
    assert result.metrics["last_loss"] < result.metrics["first_loss"] / 4
    per_rank = [
        json.loads((tmp_path / "tensorflow" / f"weights{r}.json").read_text()) for r in (0, 1)
    ]
    np.testing.assert_allclose(per_rank[0], per_rank[1], rtol=1e-6)
