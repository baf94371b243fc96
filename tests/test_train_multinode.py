"""rayjupyter.train when a node dies (its process SIGKILLed): its worker's death tears the
group down and the run restarts from the latest checkpoint on the nodes left, to the same
final metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_for_condition, wait_for_pids_gone
from test_multinode import Nodes

import rayjupyter as rj
from rayjupyter import train
from rayjupyter.train import (
    Checkpoint,
    DataParallelTrainer,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def nodes() -> Iterator[Nodes]:
    head = rj.init(num_cpus=2)
    started = Nodes(head)
    try:
        yield started
    finally:
        started.stop()
        rj.shutdown()


def stepping_loop(config: dict[str, Any]) -> None:
    """Deterministic steps from the latest checkpoint; rank 0 marks each step in a file."""
    context = train.get_context()
    started = os.path.join(
        config["started"], f"{rj.get_runtime_context().get_node_id()}-{os.getpid()}"
    )
    open(started, "w").close()
    checkpoint = train.get_checkpoint()
    state = {"step": -1, "value": 2.0}
    if checkpoint is not None:
        with checkpoint.as_directory() as folder, open(os.path.join(folder, "s.json")) as file:
            state = json.load(file)
    for step in range(state["step"] + 1, config["steps"]):
        state = {"step": step, "value": state["value"] * 0.5 + step}
        saved = None
        if context.get_world_rank() == 0:
            folder = tempfile.mkdtemp()
            with open(os.path.join(folder, "s.json"), "w") as file:
                json.dump(state, file)
            saved = Checkpoint.from_directory(folder)
        train.report(dict(state, node=rj.get_runtime_context().get_node_id()), checkpoint=saved)
        if context.get_world_rank() == 0:
            with open(config["marker"], "w") as file:
                file.write(str(step))
        time.sleep(config["pause"])


KILL_NODE = """
import os, sys, time
marker, pid = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 60
while time.time() < deadline:
    try:
        if int(open(marker).read() or -1) >= 1:
            os.kill(pid, int(sys.argv[3]))
            break
    except (OSError, ValueError):
        pass
    time.sleep(0.02)
"""


def test_node_killed_mid_training_resumes_on_the_nodes_left(nodes: Nodes, tmp_path: Any) -> None:
    doomed = nodes.join(num_cpus=1)
    wait_for_condition(lambda: sum(1 for n in rj.nodes() if n["Alive"]) == 2, timeout=20)
    head_id = rj.get_runtime_context().get_node_id()
    (doomed_id,) = [n["NodeID"] for n in rj.nodes() if n["NodeID"] != head_id]
    marker = tmp_path / "marker"
    (tmp_path / "started").mkdir()
    killer = subprocess.Popen(
        [sys.executable, "-c", KILL_NODE, str(marker), str(doomed.pid), str(int(signal.SIGKILL))],
        stdout=subprocess.DEVNULL,
    )
    try:
        result = DataParallelTrainer(
            stepping_loop,
            train_loop_config={
                "steps": 6,
                "marker": str(marker),
                "pause": 0.4,
                "started": str(tmp_path / "started"),
            },
            # one worker per node while both live (STRICT_SPREAD cannot be met after the
            # death, so the restart asks for SPREAD: PACK-like on the one node left)
            scaling_config=ScalingConfig(num_workers=2, placement_strategy="SPREAD"),
            run_config=RunConfig(
                name="node_death",
                storage_path=str(tmp_path),
                verbose=0,
                failure_config=FailureConfig(max_failures=1),
            ),
        ).fit()
        killer.wait(timeout=30)
    finally:
        killer.kill()
        killer.wait()
    wait_for_pids_gone([doomed.pid], timeout=10)
    assert killer.returncode == 0
    starts = [name.split("-")[0] for name in os.listdir(tmp_path / "started")]
    # two workers on two nodes, then two more on the head after the node died
    assert sorted(starts) == sorted([head_id, doomed_id, head_id, head_id])
    assert [m["step"] for m in result.metrics_history] == [0, 1, 2, 3, 4, 5]
    expected = 2.0
    for step in range(6):
        expected = expected * 0.5 + step
    assert result.metrics is not None and result.metrics["value"] == expected
    assert result.metrics["node"] == head_id  # rank 0 finished on the head, the node left
