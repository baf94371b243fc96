"""The notebook side's parts on their own: reprs, cell analysis, the progress model and its
text view, output routing, chart data, and the cell runner (no kernel needed)."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import textwrap

import pytest

import rayjupyter as rj
from rayjupyter.core import cluster_repr
from rayjupyter.core import protocol as P
from rayjupyter.core.read_models import MachineUsage, NodeRow, NodeStatus, StoreStats
from rayjupyter.notebook import cell_runner, templates
from rayjupyter.notebook.cell_names import analyze
from rayjupyter.notebook.chart_data import PALETTE, TaskStream, sample
from rayjupyter.notebook.output_routing import Router, RoutingStream, decode_display, encode_display
from rayjupyter.notebook.progress_model import ProgressModel, format_elapsed
from rayjupyter.notebook.progress_views import TextProgressView
from rayjupyter.notebook.task_tap import TaskTap

STATUS = NodeStatus(
    nodes=[
        NodeRow(
            NodeID="abc123",
            Alive=True,
            NodeManagerAddress="127.0.0.1",
            NodeManagerPort=4000,
            Resources={"CPU": 4.0, "GPU": 1.0, "object_store_memory": 2.0**30},
            Available={},
            StartTime=0.0,
        )
    ],
    total={"CPU": 4.0, "GPU": 1.0, "object_store_memory": 2.0**30, "<evil>": 1.0},
    available={"CPU": 1.0, "GPU": 1.0},
    tasks={"RUNNING": 3, "PENDING_NODE_ASSIGNMENT": 5},
    actors={"ALIVE": 2},
    workers=4,
    drivers=1,
    driver_pids=[],
    store=StoreStats(2**30, 2**29, 0, 0, 0, 0, 0, 0, 0),
    machine=MachineUsage(cpu_percent=75.0, memory_total=8 * 2**30, memory_used=2 * 2**30, time=0.0),
)


# ------------------------------------------------------------------ cluster reprs


def test_summary_text_and_html_show_the_cluster():
    text = cluster_repr.summary_text("127.0.0.1:4000", True, STATUS)
    assert text.splitlines()[0] == "rayjupyter · local cluster"
    assert "CPUs          4 (1 free)" in text and "GPUs          1" in text
    assert "512.0 MiB used of 1.0 GiB" in text
    html = cluster_repr.summary_html("127.0.0.1:4000", False, STATUS, "http://dash/x?a=1&b=2")
    assert "var(--jp-ui-font-color1" in html and "var(--jp-border-color2" in html
    assert "&lt;evil&gt;" in html and "<evil>" not in html
    assert 'href="http://dash/x?a=1&amp;b=2"' in html
    assert "connected" in html


def test_summary_of_a_disconnected_context():
    text = cluster_repr.summary_text("127.0.0.1:4000", True, None)
    assert "not connected" in text
    assert "disconnected" in cluster_repr.summary_html("127.0.0.1:4000", True, None)


def test_status_text_and_html():
    text = cluster_repr.status_text(STATUS)
    assert "abc123  127.0.0.1:4000  alive" in text
    assert "CPU            3 / 4  (75%)" in text
    assert "Tasks: 5 pending_node_assignment, 3 running" in text and "Actors: 2 alive" in text
    html = cluster_repr.status_html(STATUS)
    assert "var(--jp-" in html and "3 running" in html


def test_format_bytes():
    assert cluster_repr.format_bytes(512) == "512 B"
    assert cluster_repr.format_bytes(1536) == "1.5 KiB"
    assert cluster_repr.format_bytes(3 * 2**40) == "3.0 TiB"


def test_cluster_context_reprs_are_live(cluster):
    from IPython.lib.pretty import pretty

    html = cluster._repr_html_()
    assert cluster.address in html and "CPUs" in html and "● connected" in html
    assert "CPUs" in pretty(cluster) and "2 (" in pretty(cluster)
    rj.shutdown()
    assert "not connected" in pretty(cluster)


# ------------------------------------------------------------------ cell analysis


@pytest.mark.parametrize(
    ("source", "reads", "writes", "last"),
    [
        ("x = x + 1", {"x"}, {"x"}, False),
        ("total += 1", {"total"}, {"total"}, False),
        ("y = 1\nz = y + w", {"w"}, {"y", "z"}, False),
        ("def f():\n    return g(a)\nf()", {"g", "a"}, {"f"}, True),
        ("import numpy as np\nnp.zeros(3)", set(), {"np"}, True),
        ("class C:\n    v = k\n", {"k"}, {"C"}, False),
        ("[i * k for i in data]", {"k", "data"}, set(), True),
        ("if cond:\n    q = 1\nq", {"cond", "q"}, {"q"}, True),
        ("model = train(X)\nprint(model)", {"train", "X", "print"}, {"model"}, True),
        ("del old", {"old"}, {"old"}, False),
    ],
)
def test_cell_names(source, reads, writes, last):
    names = analyze(source)
    assert set(names.reads) == reads
    assert set(names.writes) == writes
    assert names.ends_with_expression is last


# ------------------------------------------------------------------ progress


def test_progress_model_counts_per_function_and_estimates_running():
    ids = [bytes([i]) for i in range(6)]
    names = {oid: ("a" if i < 4 else "b") for i, oid in enumerate(ids)}
    model = ProgressModel(ids, names, started=0.0)
    assert [r.name for r in model.rows] == ["a", "b"]
    assert model.update({ids[0]: False, ids[4]: True}, cluster_running=2)
    a, b = model.rows
    assert (a.total, a.done, a.failed, a.running, a.pending) == (4, 1, 0, 2, 1)
    assert (b.total, b.done, b.failed, b.running, b.pending) == (2, 0, 1, 0, 1)
    assert not model.update({ids[0]: False, ids[4]: True}, cluster_running=2)
    model.update({oid: False for oid in ids}, cluster_running=9)
    assert model.complete and model.ended is not None and model.failed == 1


def test_progress_model_grows_with_work_submitted_while_it_is_watched():
    model = ProgressModel([b"1"], {b"1": "fit"}, started=0.0)
    model.update({b"1": False}, cluster_running=0)
    assert model.complete and model.ended is not None
    model.add([b"1", b"2", b"3"], {b"2": "fit", b"3": "score"})  # b"1" is not counted twice
    assert not model.complete and model.ended is None
    assert [(r.name, r.total, r.done) for r in model.rows] == [("fit", 2, 1), ("score", 1, 0)]


def test_text_view_draws_bars_and_skips_repeats():
    ids = [b"1", b"2"]
    model = ProgressModel(ids, {b"1": "work", b"2": "work"})
    out = io.StringIO()
    view = TextProgressView(model, out)
    view.render()
    model.update({b"1": False}, 0)
    view.render()
    view.render()  # nothing new: no new line in a log
    view.close()
    lines = [line for line in out.getvalue().splitlines() if line.startswith("work")]
    assert lines[0].startswith("work [" + "." * 30 + "] 0/2 done")
    assert lines[1].startswith("work [" + "#" * 15 + "." * 15 + "] 1/2 done")
    assert len(lines) == 2


def test_format_elapsed():
    assert format_elapsed(3.21) == "3.2 s"
    assert format_elapsed(75) == "1m 15s"
    assert format_elapsed(3 * 3600 + 120) == "3h 02m"


def test_progress_outside_a_kernel_prints_a_text_bar_until_done(cluster, capsys):
    from rayjupyter.notebook.task_tap import TAP

    TAP.install()
    try:

        @rj.remote
        def double(x):
            return 2 * x

        refs = [double.remote(i) for i in range(5)]
        rj.progress(refs)
    finally:
        TAP.uninstall()
    err = capsys.readouterr().err
    assert "double [" + "#" * 30 + "] 5/5 done · 0 running · 0 pending · 0 failed" in err
    assert rj.get(refs) == [0, 2, 4, 6, 8]


def test_task_tap_remembers_names_and_cursors():
    tap = TaskTap(limit=3)
    for i in range(3):
        tap.record(
            P.SubmitTask(b"", b"", None, f"f{i}", b"", (), (), (bytes([i]),), {}, 0, False, b"", "")
        )
    assert tap.name(bytes([1])) == "f1" and tap.name(b"unknown") == "task"
    cursor, tasks = tap.since(1)
    assert cursor == 3 and [name for _, name, _ in tasks] == ["f1", "f2"]
    tap.record(P.SubmitTask(b"", b"", None, "g", b"", (), (), (b"x", b"y"), {}, 0, False, b"", ""))
    assert tap.name(bytes([0])) == "task"  # beyond the limit: forgotten
    cursor, tasks = tap.since(cursor)
    assert cursor == 5 and [name for _, name, _ in tasks] == ["g"]  # one bar per task


def test_templates_escape_names():
    html = templates.cell_state("<b>x</b>", "running", 1.5, "a & b")
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "a &amp; b" in html and "1.5 s" in html
    note = templates.arrival_note(["a", "b"], {"c": "lock cannot be pickled"}, ["d"])
    assert "a, b arrived in the notebook namespace." in note
    assert "'c' was not brought back: lock cannot be pickled" in note and "'d'" in note


# ------------------------------------------------------------------ output routing


class _ListSink:
    """Collects what the router hands to a sink."""

    def __init__(self) -> None:
        self.items: list[tuple[str, object]] = []

    def write(self, stream: str, text: str) -> None:
        self.items.append((stream, text))

    def display(self, data: dict, metadata: dict) -> None:
        self.items.append(("display", data))


def test_router_strips_the_prefix_of_routed_tasks_and_passes_the_rest():
    router = Router()
    sink = _ListSink()
    router._routes = {"(remote In[3] pid=": sink}
    inner = io.StringIO()
    stream = RoutingStream(inner, "stdout", router)
    shown = encode_display({"text/html": "<b>hi</b>"}, {})
    stream.write(
        "(remote In[3] pid=12) hello\n(other pid=13) not mine\n"
        f"(remote In[3] pid=12) {shown}(remote In[3] pid=nope) odd\n"
    )
    stream.write("(partial")
    stream.write(" print)\n")
    assert sink.items == [("stdout", "hello\n"), ("display", {"text/html": "<b>hi</b>"})]
    assert inner.getvalue() == (
        "(other pid=13) not mine\n(remote In[3] pid=nope) odd\n(partial print)\n"
    )


def test_display_lines_round_trip_and_survive_splitlines():
    line = encode_display({"text/plain": "x\ny"}, {"m": 1})
    assert len(line.splitlines()) == 1
    assert decode_display(line) == ({"text/plain": "x\ny"}, {"m": 1})
    assert decode_display("plain text\n") is None


# ------------------------------------------------------------------ chart data


def test_sample_makes_one_row_per_chart():
    rows = sample(
        dataclasses.replace(STATUS, machine=dataclasses.replace(STATUS.machine, time=10.0))
    )
    assert rows["usage"] == {
        "time": [10000.0],
        "cpu": [75.0],
        "memory": [25.0],
        "cpu_slots": [75.0],
    }
    assert rows["store"]["used"] == [512.0] and rows["store"]["capacity"] == [1024.0]
    assert rows["tasks"] == {"time": [10000.0], "running": [3], "pending": [5]}


def test_task_stream_places_bars_on_free_slots():
    stream = TaskStream(slots=2)
    stream.submitted([(b"a", "f", 1.0), (b"b", "f", 1.0), (b"c", "g", 1.0)])
    rows = stream.finished({b"a": False, b"b": True}, now=3.0)
    assert sorted(rows["row"]) == [1, 2] and rows["start"] == [1000.0, 1000.0]
    assert rows["end"] == [3000.0] * 2
    assert sorted(rows["state"]) == ["failed", "finished"] and rows["colour"] == [PALETTE[0]] * 2
    rows = stream.finished({b"c": False}, now=5.0)
    assert rows["start"] == [3000.0] and rows["name"] == ["g"]  # it waited for a free slot
    assert rows["colour"] == [PALETTE[1]]  # a new function, a new colour
    assert stream.waiting == []


def test_task_stream_splits_a_poll_between_the_tasks_of_a_slot():
    stream = TaskStream(slots=1)
    stream.submitted([(b"a", "f", 0.0), (b"b", "f", 0.0), (b"c", "f", 0.0)])
    rows = stream.finished({b"a": False, b"b": False, b"c": False}, now=3.0)
    assert rows["start"] == [0.0, 1000.0, 2000.0] and rows["end"] == [1000.0, 2000.0, 3000.0]
    assert rows["row"] == [1, 1, 1]


# ------------------------------------------------------------------ the cell runner


def _spec(body: str, bring_back=(), display_last=True) -> cell_runner.CellSpec:
    return cell_runner.CellSpec(
        task_name="remote In[7]",
        filename="<remote In[7]>",
        source="\n" + body,
        lines="%%remote\n" + body,
        bring_back=tuple(bring_back),
        display_last=display_last,
    )


class _Shown:
    def _repr_html_(self):
        return "<i>shown</i>"

    def __repr__(self):
        return "Shown()"


def test_run_cell_brings_back_names_and_the_last_value():
    import threading

    spec = _spec("b = a * 2\nlock = threading.Lock()\nb + 1\n", bring_back=("b", "lock", "zz"))
    result = cell_runner.run_cell(spec, {"a": 20, "threading": threading})
    assert result.values == {"b": 40}
    assert "lock" in result.skipped and "cannot be pickled" in result.skipped["lock"]
    assert result.missing == ["zz"] and result.value == 41


def test_run_cell_errors_carry_the_cells_line_numbers():
    import traceback

    with pytest.raises(ZeroDivisionError) as info:
        cell_runner.run_cell(_spec("x = 1\ny = x / 0\n"), {})
    text = "".join(traceback.format_exception(info.value))
    assert 'File "<remote In[7]>", line 3, in <module>' in text and "y = x / 0" in text


def test_format_display_uses_the_objects_reprs():
    data, _ = cell_runner.format_display(_Shown())
    assert data == {"text/html": "<i>shown</i>", "text/plain": "Shown()"}


# ------------------------------------------------------------------ imports


def test_core_and_the_cell_runner_never_load_jupyter():
    code = textwrap.dedent(
        """
        import sys
        import rayjupyter, rayjupyter.notebook, rayjupyter.notebook.cell_runner
        loaded = [m for m in ("IPython", "ipywidgets", "bokeh", "ipykernel") if m in sys.modules]
        print(loaded)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_notebook_helpers_are_reachable_but_not_in_all():
    assert callable(rj.progress) and callable(rj.resource_chart)
    assert callable(rj.load_ipython_extension)
    assert "progress" not in rj.__all__
    with pytest.raises(AttributeError):
        rj.no_such_thing  # noqa: B018
