"""The experiment's live view: the table model and its text/HTML views and the bokeh chart
(plain objects), and in a real kernel the widget and a kernel interrupt that leaves the
experiment restorable."""

from __future__ import annotations

import pytest

from rayjupyter.tune.progress import TrialChart, TrialTableModel, html_table, text_table
from rayjupyter.tune.trial import Trial, TrialState


def trial(tid, acc, state=TrialState.RUNNING):
    t = Trial(tid, {"lr": 0.1, "nested": {"x": 1}}, f"/tmp/exp/fn_{tid}", {"CPU": 1.0})
    t.history = [{"training_iteration": i + 1, "acc": a} for i, a in enumerate(acc)]
    if state != TrialState.RUNNING:
        t.set_state(TrialState.RUNNING)
    t.set_state(state)
    return t


def test_table_rows_are_sorted_best_first_with_latest_and_best():
    model = TrialTableModel("acc", "max")
    trials = [
        trial("a", [0.1, 0.3, 0.2]),
        trial("b", [0.9], TrialState.TERMINATED),
        trial("c", [], TrialState.PENDING),
    ]
    rows = model.rows(trials)
    assert [r[0] for r in rows] == ["fn_b", "fn_a", "fn_c"]
    assert rows[1][1:] == ["RUNNING", "lr=0.1", "3", "0.2", "0.3"]
    model.sort_by = "iterations"
    assert [r[0] for r in model.rows(trials)] == ["fn_a", "fn_b", "fn_c"]
    model.sort_by = "state"
    assert [r[1] for r in model.rows(trials)] == ["PENDING", "RUNNING", "TERMINATED"]
    text = text_table(model, trials)
    assert "3 trials (1 PENDING, 1 RUNNING, 1 TERMINATED)" in text and "best acc" in text
    html = html_table(model, trials)
    assert html.count("<tr style=") == 3 and "opacity:0.6" in html  # the finished one greyed


def test_chart_streams_new_points_and_greys_finished_trials():
    pytest.importorskip("bokeh")
    chart = TrialChart("acc")
    a, b = trial("a", [0.1, 0.2]), trial("b", [0.5])
    chart.update([a, b])
    source, line, _ = chart._lines["a"]
    assert source.data["y"] == [0.1, 0.2]
    a.history.append({"training_iteration": 3, "acc": 0.4})
    a.set_state(TrialState.TERMINATED)
    chart.update([a, b])
    assert source.data["x"] == [1, 2, 3] and line.glyph.line_color == "#b0b0b0"
    assert chart._lines["b"][1].glyph.line_color != "#b0b0b0"


SETUP = """
import json, os, tempfile, time
import rayjupyter as rj
from rayjupyter import tune

GATE = tempfile.mkdtemp()

def gated(config):
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with open(os.path.join(checkpoint.path, "s.json")) as f:
            start = json.load(f)["step"]
    for step in range(start + 1, 5):
        if step == 3:
            print("running", flush=True)
        while step == 3 and not os.path.exists(os.path.join(GATE, "open")):
            time.sleep(0.05)
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "s.json"), "w") as f:
                json.dump({"step": step}, f)
            tune.report({"acc": step * config["q"], "start": start},
                        checkpoint=tune.Checkpoint.from_directory(d))

tuner = tune.Tuner(
    gated,
    param_space={"q": tune.grid_search([1, 2, 3])},
    tune_config=tune.TuneConfig(metric="acc", mode="max"),
    run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), name="nb"),
)
"""


def test_kernel_shows_a_widget_and_an_interrupt_leaves_the_experiment_restorable():
    from conftest import shared_notebook_kernel

    with shared_notebook_kernel() as kernel:
        kernel.ok(SETUP)
        msg_id = kernel.submit("results = tuner.fit()")

        def running(message):
            return message["msg_type"] == "stream" and "running" in message["content"]["text"]

        first = kernel.collect(msg_id, timeout=60, until=running)
        kernel.interrupt()
        reply = kernel.collect(msg_id, timeout=30)
        assert reply.error is None, reply.traceback
        assert "Tuner.restore(" in reply.stdout
        opened = [*first.messages, *reply.messages]
        models = {
            m["content"]["data"]["state"].get("_model_name")
            for m in opened
            if m["msg_type"] == "comm_open" and "state" in m["content"].get("data", {})
        }
        assert {"VBoxModel", "HTMLModel", "DropdownModel", "BokehModel"} <= models, models
        path = kernel.value("results.experiment_path")
        assert kernel.value("tune.Tuner.can_restore(results.experiment_path)") == "True"
        kernel.ok("open(os.path.join(GATE, 'open'), 'w').close()")
        kernel.ok(f"again = tune.Tuner.restore({path}, trainable=gated).fit()", timeout=60)
        assert kernel.value("again.num_terminated") == "3"
        # the trial that printed "running" had reported twice: it went on from step 2
        assert kernel.value("max(r.metrics['start'] for r in again)") == "2"
