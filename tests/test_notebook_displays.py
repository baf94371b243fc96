"""Live displays in a real kernel: the progress widget moves while ``get`` blocks, and the
resource chart's data sources get new rows while the kernel is busy and while it is idle."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from conftest import shared_notebook_kernel
from kernel_helpers import Kernel

pytestmark = pytest.mark.timeout(180)

SETUP = """
import time
import rayjupyter as rj

@rj.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds

@rj.remote
def fail(i):
    raise ValueError(i)
"""


@pytest.fixture(scope="module")
def nb() -> Iterator[Kernel]:
    with shared_notebook_kernel(SETUP) as kernel:
        yield kernel


def _progress_values(reply, bar_id):
    return [s["value"] for s in reply.comm_updates(bar_id) if "value" in s]


def test_progress_widget_updates_while_get_blocks(nb):
    nb.ok("from rayjupyter.notebook import configure_progress\nconfigure_progress(delay=0.3)")
    reply = nb.ok("len(rj.get([nap.remote(0.25) for _ in range(12)]))")
    assert reply.result == {"text/plain": "12"}
    (bar,) = reply.widget_states("IntProgressModel")
    assert bar["description"] == "nap" and bar["max"] == 12
    values = _progress_values(reply, bar["comm_id"])
    assert values[-1] == 12
    assert len(set(values)) >= 2, values  # it moved while the kernel was blocked in get
    # every update came before the result: the bar moved while get blocked
    order = [m["msg_type"] for m in reply.messages]
    last_update = max(i for i, m in enumerate(reply.messages) if m["msg_type"] == "comm_msg")
    assert last_update < order.index("execute_result")


def test_short_or_small_waits_show_no_widget(nb):
    reply = nb.ok("rj.get([nap.remote(0.0) for _ in range(3)])")
    assert not reply.widget_states("IntProgressModel")
    nb.ok("configure_progress(enabled=False)")
    reply = nb.ok("_ = rj.get([nap.remote(0.1) for _ in range(12)])")
    assert not reply.widget_states("IntProgressModel")
    nb.ok("configure_progress(enabled=True, delay=0.3)")


def test_progress_counts_failures_per_function(nb):
    mark = len(nb.history)
    reply = nb.ok(
        "refs = [nap.remote(0.2) for _ in range(4)] + [fail.remote(i) for i in range(3)]\n"
        "rj.progress(refs)"
    )
    bars = {s["description"]: s for s in reply.widget_states("IntProgressModel")}
    assert set(bars) == {"nap", "fail"}

    def finished(message):
        state = message["content"].get("data", {}).get("state", {})
        mine = message["content"].get("comm_id") == bars["nap"]["comm_id"]
        return mine and state.get("value") == 4

    nb.wait_for_message(finished, since=mark)

    def failed(message):
        state = message["content"].get("data", {}).get("state", {})
        return "3 failed" in json.dumps(state)

    nb.wait_for_message(failed, since=mark)


def test_progress_rejects_what_is_not_a_ref(nb):
    reply = nb.execute("rj.progress([1, 2])")
    assert reply.error["ename"] == "TypeError" and "expects an ObjectRef" in reply.error["evalue"]


def _streamed(message, source_key, value=""):
    """A bokeh document patch that streams rows into the source with column source_key."""
    payload = message["content"].get("data", {}).get("content", {}).get("payload", "")
    return "ColumnsStreamed" in payload and f'"{source_key}"' in payload and value in payload


def test_resource_chart_sources_update_idle_and_busy(nb):
    reply = nb.ok("%ray_dashboard --interval 0.2")
    scripts = [d["application/javascript"] for d in reply.displays if "application/javascript" in d]
    assert scripts and len(scripts[0]) > 1_000_000, "BokehJS must be embedded inline (no CDN)"
    (model,) = reply.widget_states("BokehModel")
    mark = len(nb.history)
    # idle kernel: samples of CPU, memory and the store keep arriving
    nb.wait_for_message(lambda m: _streamed(m, "cpu"), since=mark)
    nb.wait_for_message(lambda m: _streamed(m, "used"), since=mark)
    # busy kernel: the task stream gets bars for the tasks that finished
    mark = len(nb.history)
    busy = nb.ok("_ = rj.get([nap.remote(0.3) for _ in range(4)])")
    assert any(_streamed(m, "running") for m in busy.messages)
    nb.wait_for_message(lambda m: _streamed(m, "start", '"nap"'), since=mark)
    assert model["_model_name"] == "BokehModel"
