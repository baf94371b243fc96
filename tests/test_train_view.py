"""The run's live view: the text lines outside a kernel (a real run), and in a real kernel
the widgets (workers, metrics chart, checkpoints) updated while fit() runs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import shared_notebook_kernel

import rayjupyter as rj
from rayjupyter import train
from rayjupyter.train import Checkpoint, DataParallelTrainer, RunConfig, ScalingConfig
from rayjupyter.train._reports import Step
from rayjupyter.train._view import RunModel, TextView, numeric

pytestmark = pytest.mark.timeout(120)


def test_numeric_keeps_what_a_chart_can_draw() -> None:
    assert numeric({"a": 1, "b": 2.5, "c": True, "d": [1], "e": float("nan"), "f": "x"}) == {
        "a": 1.0,
        "b": 2.5,
    }


def test_text_view_prints_steps_checkpoints_and_the_end(capsys: Any) -> None:
    model = RunModel("demo", 2)
    model.views.append(TextView())

    class Worker:
        node_id, ip, pid = "n1", "127.0.0.1", 11

    model.on_attempt(0, [Worker(), Worker()])
    model.on_step(Step(0, {"loss": 0.5}, None), None)
    model.on_step(Step(1, {"loss": 0.25}, None), None)  # within a second: held back
    model.on_step(Step(2, {"loss": 0.125}, "/r/checkpoint_000002"), Checkpoint("/r/c2"))
    model.on_failure(1, RuntimeError("gone"))
    model.on_end(None, ValueError("bad"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[demo] 2 workers on 1 node(s)"
    assert lines[1] == "[demo] step 0: loss=0.5"
    assert lines[2] == "[demo] step 2: loss=0.125 -> /r/c2"
    assert "restarting from the latest checkpoint (failure 1)" in lines[3]
    assert lines[4].startswith("[demo] failed: ValueError in ")
    assert [w.state for w in model.workers] == ["failed", "failed"]


def steps_loop() -> None:
    for step in range(3):
        train.report({"loss": 1.0 / (step + 1)})


def test_fit_prints_a_text_view_outside_a_kernel(cluster: Any, tmp_path: Any, capsys: Any) -> None:
    DataParallelTrainer(
        steps_loop,
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="texty", storage_path=str(tmp_path)),
    ).fit()
    out = capsys.readouterr().out
    assert "[texty] 2 workers on 1 node(s)" in out
    assert "[texty] step 2: loss=0.3333" in out
    assert "[texty] finished in" in out


NOTEBOOK_RUN = """
import tempfile, os
from rayjupyter import train
from rayjupyter.train import DataParallelTrainer, RunConfig, ScalingConfig, Checkpoint
import rayjupyter as rj

def loop():
    for step in range(4):
        folder = tempfile.mkdtemp()
        checkpoint = Checkpoint.from_directory(folder) if step % 2 else None
        train.report({"loss": 1.0 / (step + 1), "acc": step / 4}, checkpoint=checkpoint)

result = DataParallelTrainer(loop, scaling_config=ScalingConfig(num_workers=2),
    run_config=RunConfig(name="nb", storage_path=tempfile.mkdtemp())).fit()
result.metrics["loss"]
"""


def test_notebook_view_shows_workers_chart_and_checkpoints() -> None:
    with shared_notebook_kernel() as kernel:
        reply = kernel.ok(NOTEBOOK_RUN, timeout=90)
        assert reply.result == {"text/plain": "0.25"}
        html_states = reply.widget_states("HTMLModel")
        assert len(html_states) == 3  # header, workers, checkpoints
        updates = [s["value"] for s in reply.comm_updates() if isinstance(s.get("value"), str)]
        final = "\n".join(updates[-4:])
        assert "finished" in final and "4 steps" in final
        tables = [value for value in updates if "<th>rank</th>" in value]
        assert tables[-1].count(">finished</td>") == 2  # both workers, at the end
        assert any("checkpoint_000003" in value for value in updates)
        # the chart: a bokeh widget opened once, with both metrics as lines
        (chart,) = reply.widget_states("BokehModel")
        assert "loss" in json.dumps(chart) and "acc" in json.dumps(chart)
        assert not rj.is_initialized()  # the cluster lives in the kernel, not here

        # Interrupting the kernel while fit() runs stops the workers and frees their CPUs.
        msg_id = kernel.submit(SLOW_RUN)

        def first_step(message: dict[str, Any]) -> bool:
            state = message["content"].get("data", {}).get("state", {})
            return message["msg_type"] == "comm_msg" and "1 steps" in str(state.get("value"))

        kernel.collect(msg_id, timeout=60, until=first_step)
        kernel.interrupt()
        reply = kernel.collect(msg_id, timeout=20)
        assert reply.error is not None and reply.error["ename"] == "KeyboardInterrupt"
        kernel.wait_in_kernel("rj.available_resources().get('CPU') == 2.0", timeout=20)


SLOW_RUN = """
import time
def slow_loop():
    train.report({"loss": 1.0})
    time.sleep(120)

DataParallelTrainer(slow_loop, scaling_config=ScalingConfig(num_workers=2),
    run_config=RunConfig(name="slow", storage_path=tempfile.mkdtemp())).fit()
"""
