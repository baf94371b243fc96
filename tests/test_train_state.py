"""rayjupyter.train's pure parts, without processes: which checkpoints are kept, how the
workers' reports make steps, what the configuration objects accept."""

from __future__ import annotations

import os

import pytest

from rayjupyter.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from rayjupyter.train._checkpoint_manager import CheckpointManager
from rayjupyter.train._dataset import split
from rayjupyter.train._reports import ReportCollector
from rayjupyter.train._session import Report


def register_all(manager: CheckpointManager, scores: list[float]) -> list[str]:
    deleted = []
    for index, score in enumerate(scores):
        for old in manager.register(Checkpoint(f"/c/{index}"), {"score": score, "i": index}):
            deleted.append(old.path)
    manager.validate()
    return deleted


def test_keeps_all_without_num_to_keep() -> None:
    manager = CheckpointManager(CheckpointConfig())
    assert register_all(manager, [1, 2, 3]) == []
    assert [c.path for c, _ in manager.best_checkpoints] == ["/c/0", "/c/1", "/c/2"]


def test_keeps_most_recent_without_a_score() -> None:
    manager = CheckpointManager(CheckpointConfig(num_to_keep=2))
    assert register_all(manager, [5, 1, 9, 0]) == ["/c/0", "/c/1"]
    assert manager.latest == Checkpoint("/c/3")


@pytest.mark.parametrize(("order", "kept"), [("max", {"/c/2", "/c/4"}), ("min", {"/c/1", "/c/4"})])
def test_keeps_best_by_score_and_always_the_latest(order: str, kept: set[str]) -> None:
    config = CheckpointConfig(
        num_to_keep=2,
        checkpoint_score_attribute="score",
        checkpoint_score_order=order,
    )
    manager = CheckpointManager(config)
    register_all(manager, [5, 1, 9, 3, 4])
    assert {c.path for c, _ in manager.best_checkpoints} == kept
    assert manager.latest == Checkpoint("/c/4")


def test_score_attribute_must_be_reported() -> None:
    manager = CheckpointManager(CheckpointConfig(checkpoint_score_attribute="acc"))
    with pytest.raises(KeyError, match="acc"):
        manager.register(Checkpoint("/c/0"), {"loss": 1.0})


def test_reports_make_steps_when_every_rank_has_reported() -> None:
    collector = ReportCollector(world_size=2, first_index=3)
    assert collector.add(Report(1, 3, {"r": 1}, "/run/checkpoint_000003")) == []
    assert collector.add(Report(1, 4, {"r": 1}, None)) == []
    steps = collector.add(Report(0, 3, {"r": 0}, None))
    assert [(s.index, s.metrics, s.checkpoint_path) for s in steps] == [
        (3, {"r": 0}, "/run/checkpoint_000003")
    ]
    assert [s.index for s in collector.add(Report(0, 4, {"r": 0}, None))] == [4]
    with pytest.raises(ValueError, match="twice"):
        collector.add(Report(0, 4, {}, None))
    collector.validate()


def test_split_gives_contiguous_shares() -> None:
    shards = split({"x": list(range(10)), "y": list(range(10, 20))}, 3)
    assert [s.count() for s in shards] == [3, 3, 4]
    batches = list(shards[2].iter_batches(batch_size=3))
    assert [list(b["x"]) for b in batches] == [[6, 7, 8], [9]]
    assert sum(len(b) for s in split(list(range(7)), 2) for b in s) == 7
    with pytest.raises(TypeError, match="numpy arrays"):
        split(iter([1]), 2)


def test_configs_refuse_what_they_cannot_do() -> None:
    with pytest.raises(ValueError, match="num_workers"):
        ScalingConfig(num_workers=0)
    with pytest.raises(ValueError, match="placement_strategy"):
        ScalingConfig(placement_strategy="RANDOM")
    with pytest.raises(ValueError, match="use_gpu=True"):
        _ = ScalingConfig(resources_per_worker={"GPU": 1}).worker_bundle
    assert ScalingConfig(use_gpu=True).worker_bundle == {"CPU": 1.0, "GPU": 1.0}
    with pytest.raises(ValueError, match="max_failures"):
        FailureConfig(max_failures=-2)
    with pytest.raises(ValueError, match="num_to_keep"):
        CheckpointConfig(num_to_keep=0)
    with pytest.raises(ValueError, match=r"train\.report"):
        CheckpointConfig(checkpoint_frequency=2)
    with pytest.raises(ValueError, match="cloud URI"):
        RunConfig(storage_path="s3://bucket/x")
    assert RunConfig(storage_path="~/x").resolved_storage() == os.path.expanduser("~/x")


def test_checkpoint_directories(tmp_path: os.PathLike[str]) -> None:
    source = os.path.join(tmp_path, "src")
    os.makedirs(source)
    with open(os.path.join(source, "w.txt"), "w") as file:
        file.write("7")
    checkpoint = Checkpoint.from_directory(source)
    copied = checkpoint.to_directory(os.path.join(tmp_path, "dst"))
    with open(os.path.join(copied, "w.txt")) as file:
        assert file.read() == "7"
    with checkpoint.as_directory() as folder:
        assert os.listdir(folder) == ["w.txt"]
    checkpoint.set_metadata({"epoch": 3})
    assert checkpoint.get_metadata() == {"epoch": 3}


def test_train_uses_only_the_public_api_and_imports_no_framework() -> None:
    import ast
    import subprocess
    import sys
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "rayjupyter" / "train"
    internal = [
        f"{path.name}:{node.lineno}"
        for path in package.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and any(
            name.startswith("rayjupyter.core")
            for name in (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
        )
    ]
    assert not internal, f"rayjupyter.train must use rayjupyter's public API: {internal}"
    code = (
        "import sys, rayjupyter.train, rayjupyter.train.torch, rayjupyter.train.tensorflow;"
        "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
