"""The magics against a real IPython kernel with a local cluster: %ray_connect, %ray_status
and %%remote with every option, including the error paths."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from conftest import shared_notebook_kernel
from kernel_helpers import Kernel

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def nb() -> Iterator[Kernel]:
    """One kernel with the extension loaded and a 2-CPU local cluster, for the module."""
    with shared_notebook_kernel() as kernel:
        kernel.ok(
            "import numpy as np\n"
            "import rayjupyter as rj\n"
            "BASE = 10\n"
            "def square(v):\n"
            "    return v * v\n"
            "class Point:\n"
            "    def __init__(self, x):\n"
            "        self.x = x\n"
            "    def __repr__(self):\n"
            "        return f'Point({self.x})'\n"
            "    def _repr_html_(self):\n"
            "        return f'<b>Point {self.x}</b>'\n"
        )
        yield kernel


# ------------------------------------------------------------------ %ray_connect, %ray_status


def test_connect_again_is_idempotent_and_shows_the_summary(nb):
    before = nb.value("rj.get_runtime_context().get_node_id()")
    reply = nb.ok("%ray_connect")
    (shown,) = reply.displays
    assert "var(--jp-" in shown["text/html"] and "CPUs" in shown["text/html"]
    assert "local cluster" in shown["text/plain"] and "2 (" in shown["text/plain"]
    assert nb.value("rj.get_runtime_context().get_node_id()") == before


def test_connect_with_other_resources_says_to_disconnect_first(nb):
    reply = nb.execute("%ray_connect --num-cpus 3")
    assert "UsageError" in reply.stderr and "%ray_disconnect first" in reply.stderr


def test_status_shows_nodes_resources_and_tasks(nb):
    reply = nb.ok("%ray_status")
    (shown,) = reply.displays
    text = shown["text/plain"]
    assert "Nodes" in text and "CPU" in text and "Tasks:" in text
    assert "var(--jp-" in shown["text/html"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("%ray_connect --num-cpus -1", "must be >= 0"),
        ("%ray_connect --object-store-memory lots", "expected bytes"),
        ("%ray_connect 127.0.0.1:1 --num-cpus 2", "only apply to a local cluster"),
        ("%ray_connect not-an-address", "bad address"),
        ("%ray_status now", "takes no arguments"),
        ("%ray_dashboard --interval 0", "must be > 0"),
        ("%%remote --bogus\n1", "unrecognized arguments: --bogus"),
        ("%%remote --resources notjson\n1", "expected JSON"),
        ("%%remote --resources '[1]'\n1", "JSON object of resource amounts"),
        ("%%remote --push 1a,b\n1", "comma-separated variable names"),
        ("%%remote --timeout 0\n1", "must be > 0"),
        ("%%remote --max-retries lots\n1", "whole number"),
        ("%%remote --num-cpus x\n1", "expected a number"),
    ],
)
def test_bad_options_are_usage_errors(nb, line, expected):
    reply = nb.execute(line)
    assert "UsageError" in reply.stderr, reply.stderr + reply.traceback
    assert expected in reply.stderr


# ------------------------------------------------------------------ %%remote


def test_remote_ships_reads_brings_back_writes_and_shows_the_last_value(nb):
    reply = nb.ok(
        "%%remote\n"
        "import os\n"
        "arr = np.arange(4) + BASE\n"
        "p = Point(square(3))\n"
        "where = os.getpid()\n"
        "print('computed', arr.sum())\n"
        "int(arr.sum()) * 2\n"
    )
    assert reply.stdout == "computed 46\n"  # the worker's print, without its (task pid=) prefix
    assert reply.result == {"text/plain": "92"}
    assert nb.value("arr.tolist(), p, type(p) is Point") == "([10, 11, 12, 13], Point(9), True)"
    assert nb.value("where != os.getpid()") == "True"  # it ran in a worker


def test_remote_display_calls_and_rich_last_value(nb):
    reply = nb.ok(
        "%%remote\n"
        "from IPython.display import display, HTML\n"
        "display(HTML('<i>from the cluster</i>'))\n"
        "Point(5)\n"
    )
    (shown,) = reply.displays
    assert shown["text/html"] == "<i>from the cluster</i>"
    assert reply.result == {"text/plain": "Point(5)", "text/html": "<b>Point 5</b>"}


def test_remote_pull_limits_what_comes_back_and_push_adds_names(nb):
    nb.ok("hidden = 7")
    reply = nb.ok(
        "%%remote --pull a,missing --push hidden\n"
        "a = eval('hidden') + 1\n"  # read only through eval: shipped because of --push
        "b = 2\n"
    )
    assert "--pull named 'missing', not defined after the cell" in reply.stderr
    assert nb.value("a") == "8"
    assert nb.value("'b' in dir()") == "False"


def test_remote_exception_shows_the_cells_own_lines(nb):
    reply = nb.execute("%%remote\nx = 1\ny = x / 0\n")
    trace = reply.traceback
    assert reply.error["ename"] == "RayTaskError(ZeroDivisionError)"
    assert "line 3, in <module>" in trace and "y = x / 0" in trace
    assert "Cell In[" in trace
    assert "cell_runner" not in trace
    assert nb.value("isinstance(y, int) if 'y' in dir() else 'absent'") == "'absent'"


def test_remote_error_in_a_notebook_function_quotes_its_cell(nb):
    nb.ok("def broken(v):\n    return v['nope']\n")
    reply = nb.execute("%%remote\nbroken({})\n")
    assert reply.error["ename"] == "RayTaskError(KeyError)"
    assert "return v['nope']" in reply.traceback


def test_unpicklable_captured_variable_is_named(nb):
    nb.ok("import threading\nlock = threading.Lock()")
    reply = nb.execute("%%remote\nwith lock:\n    pass\n")
    assert reply.error["ename"] == "RemoteCellError"
    assert "cannot send 'lock' (lock) to the cluster" in reply.error["evalue"]


def test_unpicklable_result_is_left_behind_with_a_note(nb):
    reply = nb.ok("%%remote\nimport threading\nmade = threading.Lock()\nkept = 3\n")
    assert "'made' was not brought back" in reply.stderr
    assert nb.value("kept") == "3"


def test_remote_syntax_error_names_the_line(nb):
    reply = nb.execute("%%remote\nx = 1\n!ls\n")
    assert reply.error["ename"] == "RemoteCellError"
    assert (
        "line 3" in reply.error["evalue"] and "no %magics or !shell lines" in reply.error["evalue"]
    )


def test_remote_resource_options_reach_the_task(nb):
    reply = nb.ok("%%remote --num-cpus 2\nfree_inside = rj.available_resources().get('CPU', 0.0)\n")
    assert reply.error is None
    assert nb.value("free_inside") == "0.0"
    resources = json.dumps({"missing_accelerator": 1})
    reply = nb.execute(f"%%remote --resources '{resources}' --timeout 2\n1\n")
    assert reply.error["ename"] == "RemoteCellError" and "--timeout 2 s" in reply.error["evalue"]


def test_remote_max_retries_reruns_a_cell_whose_worker_died(nb, tmp_path):
    marker = tmp_path / "first-attempt"
    cell = (
        "import os\n"
        f"if not os.path.exists({str(marker)!r}):\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    os._exit(1)\n"
        "attempt = 'second'\n"
    )
    reply = nb.ok("%%remote --max-retries 1\n" + cell)
    assert reply.error is None and nb.value("attempt") == "'second'"
    marker.unlink()
    reply = nb.execute("%%remote --max-retries 0\n" + cell)
    assert reply.error is not None and "WorkerCrashedError" in reply.error["ename"]


def test_remote_timeout_cancels(nb):
    reply = nb.execute("%%remote --timeout 0.5\nimport time\ntime.sleep(30)\n", timeout=30)
    assert reply.error["ename"] == "RemoteCellError"
    assert "did not finish within --timeout 0.5 s and was cancelled" in reply.error["evalue"]
    nb.wait_in_kernel("rj.available_resources().get('CPU') == 2.0")


def test_no_block_returns_at_once_and_names_arrive_with_a_note(nb):
    gate = "import os, time\n"
    mark = len(nb.history)
    reply = nb.ok(
        "%%remote --no-block\n"
        + gate
        + "print('started')\n"
        + "time.sleep(1.0)\n"
        + "late = 41 + 1\n"
        + "late\n"
    )
    assert reply.seconds < 1.0
    assert len(reply.widget_states("OutputModel")) == 1  # where its output goes
    assert {"_dom_classes": ["rayjupyter-remote-cell"]} in reply.comm_updates()
    assert nb.value("'late' in dir()") == "False"
    nb.wait_in_kernel("'late' in dir()")
    assert nb.value("late") == "42"

    def note(message):
        state = message["content"].get("data", {}).get("state", {})
        return "arrived in the notebook namespace" in json.dumps(state.get("outputs", []))

    seen = nb.wait_for_message(note, since=mark)
    texts = json.dumps([m["content"] for m in seen])
    assert "started" in texts and "late arrived" in texts


def test_no_block_failure_shows_the_traceback_in_the_widget(nb):
    mark = len(nb.history)
    nb.ok("%%remote --no-block\nraise ValueError('boom in the background')\n")

    def failed(message):
        state = message["content"].get("data", {}).get("state", {})
        return "ValueError: boom in the background" in json.dumps(state.get("outputs", []))

    nb.wait_for_message(failed, since=mark)
