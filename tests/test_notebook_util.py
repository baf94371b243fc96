"""rayjupyter.util in a real kernel: top-level ``await`` on refs (the kernel's event loop
keeps running meanwhile) and the progress bar of a joblib call on the cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import shared_notebook_kernel
from kernel_helpers import Kernel

pytestmark = pytest.mark.timeout(180)

SETUP = """
import asyncio
import os
import time

import rayjupyter as rj

@rj.remote
def add_one(x):
    return x + 1

@rj.remote
def wait_for_file(path):
    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)

async def create(path):
    open(path, "w").close()
"""


@pytest.fixture(scope="module")
def nb() -> Iterator[Kernel]:
    with shared_notebook_kernel(SETUP) as kernel:
        yield kernel


def test_top_level_await_on_refs(nb):
    reply = nb.ok(
        "one = await add_one.remote(1)\n"
        "many = await asyncio.gather(*[add_one.remote(i) for i in range(5)])\n"
        "one, many"
    )
    assert reply.result == {"text/plain": "(2, [1, 2, 3, 4, 5])"}


def test_awaiting_a_ref_leaves_the_kernel_loop_running(nb, tmp_path):
    # the task finishes only once an asyncio task of the kernel's loop has created the file:
    # if awaiting the ref blocked the loop, that task could not run and the answer is False
    path = str(tmp_path / "released")
    reply = nb.ok(
        f"creator = asyncio.ensure_future(create({path!r}))\n"
        f"released = await wait_for_file.remote({path!r})\n"
        "released, creator.done()"
    )
    assert reply.result == {"text/plain": "(True, True)"}


def test_a_cancelled_await_leaves_the_connection_working(nb):
    reply = nb.execute("await asyncio.wait_for(wait_for_file.remote('/nonexistent'), 0.1)")
    assert reply.error is not None and "Timeout" in reply.error["ename"]
    assert nb.value("await add_one.remote(41)") == "42"


def test_a_joblib_call_shows_a_progress_bar_that_follows_its_batches(nb):
    nb.ok(
        "import joblib\n"
        "from rayjupyter.notebook import configure_progress\n"
        "from rayjupyter.util.joblib import register_rayjupyter\n"
        "register_rayjupyter()\n"
        "configure_progress(delay=0.3)\n"
        "def nap(seconds):\n"
        "    time.sleep(seconds)\n"
        "    return seconds\n"
    )
    reply = nb.ok(
        "with joblib.parallel_backend('rayjupyter'):\n"
        "    out = joblib.Parallel(n_jobs=-1, batch_size=1)(\n"
        "        joblib.delayed(nap)(0.25) for _ in range(12))\n"
        "len(out)"
    )
    assert reply.result == {"text/plain": "12"}
    (bar,) = reply.widget_states("IntProgressModel")
    assert bar["description"] == "nap"
    updates = reply.comm_updates(bar["comm_id"])
    maxima = [bar["max"]] + [s["max"] for s in updates if "max" in s]
    values = [s["value"] for s in updates if "value" in s]
    assert maxima[-1] == 12, maxima  # the bar grew with the batches joblib submitted
    assert values[-1] == 12, values
    assert len(set(values)) >= 2, values  # it moved while joblib waited
