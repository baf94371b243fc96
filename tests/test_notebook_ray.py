"""The notebook's front door on a real Ray cluster: ``%ray_connect --ray``, ``%%remote``
(namespace round trip, streamed prints, rich output, Ctrl-C cancelling the task), the
automatic progress bar on ``ray.get``, ``rj.progress`` of Ray refs, ``%ray_status``, the
charts, the util helpers on Ray, and switching engines, in real kernels.

The cluster is two real nodes (``ray start --head`` and ``ray start --address``) started by
``ray_helpers.ray_cluster`` and stopped by the PIDs it started.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _SHARED
from helpers import wait_for_condition, wait_for_pids_gone
from kernel_helpers import Kernel, running_kernel
from ray_helpers import RayCluster, ray_cluster

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None,
        reason="Ray is not installed: pip install 'ray[default]' to test the notebook on Ray",
    ),
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayCluster]:
    """A 2-node Ray cluster (2 + 1 CPUs) with its dashboard, for the session; its processes
    gone afterwards."""
    # a short path: Ray's unix sockets live under it (108 bytes at most)
    tmp = Path(tempfile.mkdtemp(prefix="rj-ray-"))
    try:
        with ray_cluster(tmp, dashboard=True) as cluster:  # Ray's state API: names, failures
            yield cluster
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _kernel_beside(cluster: RayCluster, *setup: str) -> Iterator[Kernel]:
    """A kernel whose processes and the cluster's the leak check leaves to their own
    teardown, which checks they are gone. The cluster's stay excluded after the kernel:
    Ray starts and ends workers (and a Ray Client server per client) on its own time."""
    starters = {starter.pid for starter in cluster.starters}
    with running_kernel("%load_ext rayjupyter", *setup) as kernel:
        saved = _SHARED.roots, _SHARED.active
        _SHARED.roots = {kernel.pid} | starters | saved[0]
        _SHARED.active = True
        try:
            yield kernel
        finally:
            _SHARED.roots, _SHARED.active = saved[0] | starters, saved[1]


@pytest.fixture(scope="module")
def rnb(ray_head: RayCluster) -> Iterator[Kernel]:
    """One kernel attached to the Ray cluster as a driver, for the module."""
    with _kernel_beside(ray_head) as kernel:
        reply = kernel.ok(f"%ray_connect --ray {ray_head.address}", timeout=120)
        assert "Ray · cluster" in reply.displays[-1]["text/plain"], reply.displays
        kernel.ok("from rayjupyter.notebook import configure_progress\nimport ray")
        yield kernel
        kernel.ok("%ray_disconnect", timeout=60)


# ------------------------------------------------------------------ connecting


def test_connect_shows_the_ray_summary_and_again_is_idempotent(rnb, ray_head):
    reply = rnb.ok(f"%ray_connect --ray {ray_head.address}")
    assert "Switched" not in reply.stdout
    (shown,) = reply.displays
    text = shown["text/plain"]
    assert "Ray · cluster" in text and ray_head.address in text
    assert "nodes" in text and "2:" in text  # both nodes listed
    assert "CPUs" in text and "3 (" in text
    assert "var(--jp-" in shown["text/html"] and "connected" in shown["text/html"]
    assert rnb.value("ray.is_initialized()") == "True"


def test_wrong_ray_addresses_fail_in_one_line_and_keep_the_connection(rnb):
    reply = rnb.execute("%ray_connect --ray 127.0.0.1:1")
    assert reply.error is not None
    assert reply.traceback.strip().count("\n") == 0, reply.traceback
    assert "No Ray cluster at 127.0.0.1:1" in reply.traceback
    assert "ray start --head" in reply.traceback
    reply = rnb.execute("%ray_connect ray://127.0.0.1:1")
    assert "No Ray Client server at 127.0.0.1:1" in reply.traceback
    reply = rnb.execute("%ray_connect --ray 127.0.0.1:1 --num-cpus 2")
    assert "only apply to a local Ray" in reply.traceback
    reply = rnb.execute("%ray_connect 127.0.0.1:1 --ray 127.0.0.1:2")
    assert "UsageError" in reply.stderr + reply.traceback
    assert rnb.value("ray.is_initialized()") == "True"


def test_a_wrong_rayjupyter_address_keeps_the_ray_connection(rnb):
    """The other engine is left only once the new one has connected."""
    reply = rnb.execute("%ray_connect 127.0.0.1:1", timeout=120)
    assert reply.error is not None
    assert "Switched engines" not in reply.stdout, reply.stdout
    assert rnb.value("ray.is_initialized()") == "True"
    assert rnb.value("ray.get(ray.put(7))") == "7"
    reply = rnb.ok("%%remote\nafter = 6 * 7\n", timeout=120)
    assert rnb.value("after") == "42"
    assert rnb.value("import rayjupyter as rj; rj.is_initialized()") == "False"


def test_status_lists_both_nodes_and_says_what_ray_leaves_out(rnb):
    reply = rnb.ok("%ray_status")
    (shown,) = reply.displays
    text = shown["text/plain"]
    assert text.startswith("Nodes")
    node_lines = [line for line in text.splitlines() if "ALIVE" in line or "alive" in line]
    assert len(node_lines) == 2, text
    assert "CPU" in text and "3" in text
    assert "metrics endpoint" in text  # where the machine figures come from, said
    assert "no node's free resources" in text  # what Ray does not give is said, not faked
    assert "var(--jp-" in shown["text/html"]


# ------------------------------------------------------------------ %%remote


def test_remote_round_trip_streams_prints_and_rich_output(rnb):
    rnb.ok("x = 21\ndef twice(v):\n    return 2 * v\n")
    reply = rnb.ok(
        "%%remote\n"
        "import os\n"
        "from IPython.display import HTML, display\n"
        "print('hello', x)\n"
        "display(HTML('<b>rich from ray</b>'))\n"
        "y = twice(x)\n"
        "worker_pid = os.getpid()\n"
        "import sys\n"
        "runner_imported = 'rayjupyter.notebook.cell_runner' in sys.modules\n"
        "y + 1\n",
        timeout=120,
    )
    assert "hello 21\n" in reply.stdout
    assert "pid=" not in reply.stdout and "\x1b[" not in reply.stdout
    assert any("<b>rich from ray</b>" in d.get("text/html", "") for d in reply.displays)
    assert reply.result is not None and reply.result["text/plain"] == "43"
    assert rnb.value("y") == "42"
    assert rnb.value("import os; worker_pid != os.getpid()") == "True"
    # the runner travelled by value: a cluster without rayjupyter installed runs the cell
    assert rnb.value("runner_imported") == "False"


def test_remote_error_shows_the_cells_own_lines(rnb):
    reply = rnb.execute("%%remote\na = 1\nb = a / 0\n", timeout=120)
    assert reply.error is not None
    assert "ZeroDivisionError" in reply.traceback
    assert "Cell In[" in reply.traceback and "line 3" in reply.traceback
    assert "cell_runner.py" not in reply.traceback  # our runner's frames are left out


def test_interrupt_cancels_the_remote_cell(rnb, tmp_path):
    marker = tmp_path / "pid"
    rnb.ok(f"MARK = {str(marker)!r}")
    msg_id = rnb.submit(
        "%%remote\n"
        "import os, pathlib, time\n"
        "pathlib.Path(MARK).write_text(str(os.getpid()))\n"
        "while True:\n"
        "    time.sleep(0.05)\n"
    )
    wait_for_condition(lambda: marker.exists() and marker.read_text(), timeout=60)
    worker = int(marker.read_text())
    rnb.interrupt()
    reply = rnb.collect(msg_id, timeout=60)
    assert reply.error is not None and reply.error["ename"] == "KeyboardInterrupt"
    wait_for_pids_gone([worker], timeout=30)  # ray.cancel(force=True) ended its worker


def test_no_block_cell_on_ray_brings_its_names_back_later(rnb):
    reply = rnb.ok(
        "%%remote --no-block\nimport time\ntime.sleep(0.5)\nprint('in the background')\nlate = 7\n",
        timeout=60,
    )
    assert len(reply.widget_states("OutputModel")) == 1  # its output goes to its widget
    rnb.wait_in_kernel("'late' in globals()", timeout=60)
    assert rnb.value("late") == "7"


def test_timeout_cancels_a_slow_cell_on_ray(rnb):
    reply = rnb.execute("%%remote --timeout 1\nimport time\ntime.sleep(60)\n", timeout=60)
    assert "did not finish within --timeout 1 s and was cancelled" in reply.traceback


# ------------------------------------------------------------------ progress and charts


def test_ray_get_of_many_refs_shows_the_progress_bar(rnb):
    rnb.ok(
        "configure_progress(delay=0.2)\n"
        "@ray.remote\n"
        "def slow(i):\n"
        "    import time\n"
        "    time.sleep(0.2)\n"
        "    return i\n"
    )
    reply = rnb.ok("refs = [slow.remote(i) for i in range(12)]\ntotal = sum(ray.get(refs))", 120)
    (bar,) = reply.widget_states("IntProgressModel")
    assert bar["max"] == 12
    values = [s["value"] for s in reply.comm_updates(bar["comm_id"]) if "value" in s]
    assert values and values[-1] == 12
    assert rnb.value("total") == str(sum(range(12)))
    reply = rnb.ok("ray.get(refs[:3])")  # fewer than min_refs: no bar
    assert not reply.widget_states("IntProgressModel")


def test_ray_init_called_by_the_user_gets_the_progress_bar_too(ray_head):
    """No %ray_connect: the hook follows the user's own ray.init() and ray.shutdown()."""
    with _kernel_beside(ray_head) as kernel:
        kernel.ok(
            "from rayjupyter.notebook import configure_progress\n"
            "from rayjupyter.notebook.engines import ray_progress\n"
            "import ray\n"
            f"ray.init(address={ray_head.address!r})\n"
            "configure_progress(delay=0.2)\n",
            timeout=120,
        )
        reply = kernel.ok(
            "@ray.remote\n"
            "def slow(i):\n"
            "    import time\n"
            "    time.sleep(0.2)\n"
            "    return i\n"
            "total = sum(ray.get([slow.remote(i) for i in range(12)]))",
            timeout=120,
        )
        (bar,) = reply.widget_states("IntProgressModel")
        assert bar["max"] == 12
        assert kernel.value("total") == str(sum(range(12)))
        kernel.ok("ray.shutdown()", timeout=60)
        assert kernel.value("bool(ray_progress._original_get)") == "False"


def test_rj_progress_takes_ray_refs(rnb):
    reply = rnb.ok(
        "import rayjupyter as rj\n"
        "more = [slow.remote(i) for i in range(4)]\n"
        "rj.progress(more)\n"
        "ray.get(more)\n",
        timeout=120,
    )
    (bar,) = reply.widget_states("IntProgressModel")
    assert bar["max"] == 4
    since = len(rnb.history)
    rnb.wait_for_message(  # the bar reaches 4 (from the ticker thread, maybe after the cell)
        lambda m: (
            m["msg_type"] == "comm_msg"
            and m["content"]["comm_id"] == bar["comm_id"]
            and m["content"]["data"].get("state", {}).get("value") == 4
        ),
        timeout=30,
        since=max(0, since - len(reply.messages)),
    )


def test_resource_charts_draw_from_rays_state(rnb):
    reply = rnb.ok("%ray_dashboard --interval 0.3", timeout=120)
    (model,) = reply.widget_states("BokehModel")
    assert model["_model_name"] == "BokehModel"
    rnb.ok(
        "from rayjupyter.notebook import engines\n"
        "from rayjupyter.notebook.chart_data import sample\n"
        "row = sample(engines.active().status())\n"
        "assert row['store']['capacity'][0] > 0 and row['usage']['cpu_slots'] is not None\n"
    )


def test_machine_cpu_and_memory_come_from_each_ray_nodes_metrics(rnb):
    """Each node's metrics agent gives its machine: the charts' CPU and memory lines."""
    rnb.ok(
        "import time\n"
        "from rayjupyter.notebook import engines\n"
        "from rayjupyter.notebook.chart_data import sample\n"
        "deadline = time.monotonic() + 60\n"  # an agent reports every few seconds
        "while True:\n"
        "    status = engines.active().status()\n"
        "    if len(status.node_machines) == 2 or time.monotonic() > deadline:\n"
        "        break\n"
        "    time.sleep(0.5)\n"
        "row = sample(status)\n",
        timeout=120,
    )
    machines = json.loads(
        rnb.value(
            "import json, dataclasses\n"
            "json.dumps({k: dataclasses.asdict(m) for k, m in status.node_machines.items()})"
        ).strip("'")
    )
    alive = json.loads(rnb.value("json.dumps([n.NodeID for n in status.alive_nodes])").strip("'"))
    assert sorted(machines) == sorted(alive) and len(alive) == 2
    for usage in machines.values():
        assert 0 < usage["cpu_percent"] <= 100
        assert 0 < usage["memory_used"] < usage["memory_total"]
    assert rnb.value("row['usage']['cpu'][0] > 0 and 0 < row['usage']['memory'][0] < 100") == (
        "True"
    )
    text = rnb.ok("%ray_status").displays[0]["text/plain"]
    assert "Machine: CPU" in text and text.count("machine CPU") == 2, text


def test_a_get_of_ray_refs_that_fail_shows_their_names_and_failures(rnb):
    """Names and failures from Ray's state API: the bar names the function, counts the
    failures in red with their exception class, and keeps updating after get raised."""
    rnb.ok(
        "configure_progress(delay=0.2)\n"
        "@ray.remote(max_retries=0)\n"
        "def flaky(i):\n"
        "    import time\n"
        "    time.sleep(1.0 if i % 4 == 0 else 0.2)\n"  # the first failure after the bar shows
        "    if i % 4 == 0:\n"
        "        raise ValueError(i)\n"
        "    return i\n"
    )
    since = len(rnb.history)
    reply = rnb.execute("ray.get([flaky.remote(i) for i in range(12)])", timeout=120)
    assert reply.error is not None and "ValueError" in reply.error["ename"]
    # one bar; or, while Ray's state API has named some refs and not yet the others, a
    # second row for the unnamed ("task") that merges into "flaky" once they are named
    bars = reply.widget_states("IntProgressModel")
    assert 1 <= len(bars) <= 2, bars
    bar_ids = {bar["comm_id"] for bar in bars}

    def state_of(message: dict) -> dict:
        content = message["content"]
        return content.get("data", {}).get("state", {}) if "comm_id" in content else {}

    rnb.wait_for_message(
        lambda m: (
            m["msg_type"] == "comm_msg"
            and m["content"]["comm_id"] in bar_ids
            and state_of(m).get("bar_style") == "danger"
        ),
        timeout=60,
        since=since,
    )
    rnb.wait_for_message(
        lambda m: "3 failed (ValueError)" in str(state_of(m).get("value", "")),
        timeout=60,
        since=since,
    )
    descriptions = [
        state_of(m).get("description")
        for m in rnb.history[since:]
        if m["msg_type"] == "comm_msg" and m["content"].get("comm_id") in bar_ids
    ]
    assert "flaky" in [bar["description"] for bar in bars] + descriptions


# ------------------------------------------------------------------ util helpers on Ray


def test_joblib_executor_and_pool_run_on_ray(rnb):
    reply = rnb.ok(
        "import joblib, os\n"
        "import rayjupyter as rj\n"
        "from rayjupyter.util import Executor\n"
        "from rayjupyter.util.joblib import register_rayjupyter\n"
        "from rayjupyter.util.multiprocessing import Pool\n"
        "def where(i):\n"
        "    import os\n"
        "    return i * i, os.getpid()\n"
        "register_rayjupyter()\n"
        "with joblib.parallel_backend('rayjupyter'):\n"
        "    by_joblib = joblib.Parallel(n_jobs=2)(joblib.delayed(where)(i) for i in range(6))\n"
        "with Executor() as ex:\n"
        "    futures = [ex.submit(where, i) for i in range(4)]\n"
        "    by_executor = [f.result(timeout=60) for f in futures]\n"
        "with Pool(2) as pool:\n"
        "    by_pool = pool.map(where, range(5))\n"
        "pids = {p for _, p in by_joblib + by_executor + by_pool}\n"
        "print([v for v, _ in by_joblib], [v for v, _ in by_executor], [v for v, _ in by_pool])\n"
        "print(os.getpid() in pids, rj.is_initialized())\n",
        timeout=180,
    )
    assert "[0, 1, 4, 9, 16, 25] [0, 1, 4, 9] [0, 1, 4, 9, 16]" in reply.stdout
    assert "False False" in reply.stdout  # ran in Ray's workers; our runtime never started


def test_a_joblib_call_on_ray_shows_a_progress_bar_that_follows_its_batches(rnb):
    rnb.ok(
        "import joblib, time\n"
        "from rayjupyter.util.joblib import register_rayjupyter\n"
        "register_rayjupyter()\n"
        "configure_progress(delay=0.3)\n"
        "def nap(seconds):\n"
        "    import time\n"
        "    time.sleep(seconds)\n"
        "    return seconds\n"
    )
    reply = rnb.ok(
        "with joblib.parallel_backend('ray'):\n"
        "    out = joblib.Parallel(n_jobs=-1, batch_size=1)(\n"
        "        joblib.delayed(nap)(0.25) for _ in range(12))\n"
        "len(out)",
        timeout=180,
    )
    assert reply.result == {"text/plain": "12"}
    (bar,) = reply.widget_states("IntProgressModel")
    assert bar["description"] == "nap"  # the batch's own name, known at submit
    updates = reply.comm_updates(bar["comm_id"])
    maxima = [bar["max"]] + [s["max"] for s in updates if "max" in s]
    values = [s["value"] for s in updates if "value" in s]
    assert maxima[-1] == 12, maxima  # the bar grew with the batches joblib submitted
    assert values[-1] == 12, values
    assert len(set(values)) >= 2, values  # it moved while joblib waited


# ------------------------------------------------------------------ engines


def test_switching_engines_disconnects_the_other_cleanly(ray_head):
    with _kernel_beside(ray_head) as kernel:
        kernel.ok("%ray_connect --num-cpus 1", timeout=120)
        ours = kernel.tree() - {kernel.pid}
        assert ours  # our local cluster runs under the kernel
        reply = kernel.ok(f"%ray_connect --ray {ray_head.address}", timeout=120)
        assert "Switched engines from rayjupyter to ray" in reply.stdout
        assert "Stopped the local cluster" in reply.stdout
        wait_for_pids_gone(ours, timeout=30)
        assert kernel.value("import rayjupyter as rj; rj.is_initialized()") == "False"
        reply = kernel.ok("%ray_connect --num-cpus 1", timeout=120)
        assert "Switched engines from ray to rayjupyter" in reply.stdout
        assert "Disconnected from the Ray cluster" in reply.stdout
        assert kernel.value("import ray; ray.is_initialized()") == "False"
        assert kernel.value("rj.is_initialized()") == "True"
        kernel.ok("%ray_disconnect")


def test_environment_variable_makes_plain_connect_use_ray(ray_head, monkeypatch):
    monkeypatch.setenv("RAYJUPYTER_ENGINE", "ray")
    monkeypatch.setenv("RAY_ADDRESS", ray_head.address)
    with _kernel_beside(ray_head) as kernel:
        reply = kernel.ok("%ray_connect", timeout=120)
        assert "Ray · cluster" in reply.displays[-1]["text/plain"]
        reply = kernel.ok("%%remote\nimport sys\nanswer = 6 * 7\nprint('on ray')\n", 120)
        assert "on ray" in reply.stdout and kernel.value("answer") == "42"
        assert "Disconnected from the Ray cluster" in kernel.ok("%ray_disconnect").stdout


def test_ray_client_address_connects_through_ray_client(ray_head):
    with _kernel_beside(ray_head) as kernel:
        reply = kernel.execute(f"%ray_connect {ray_head.client_address}", timeout=180)
        if "Starting Ray client server failed" in reply.traceback:
            # Ray's client server starts a server process per client; on a loaded machine
            # that start can miss Ray's own deadline once (the error says so in one line)
            reply = kernel.execute(f"%ray_connect {ray_head.client_address}", timeout=180)
        assert reply.error is None, reply.traceback
        assert "Ray · cluster" in reply.displays[-1]["text/plain"]
        reply = kernel.ok(
            "import ray\n@ray.remote\ndef add(a, b):\n    return a + b\nray.get(add.remote(2, 3))",
            timeout=120,
        )
        assert reply.result is not None and reply.result["text/plain"] == "5"
        kernel.ok("%ray_disconnect", timeout=60)


def test_ray_with_no_address_starts_a_local_ray_that_stops_on_disconnect(ray_head):
    with _kernel_beside(ray_head) as kernel:
        reply = kernel.ok(
            "%ray_connect --ray --num-cpus 1 --object-store-memory 100MB", timeout=240
        )
        assert "Ray · local cluster" in reply.displays[-1]["text/plain"]
        local = kernel.tree() - {kernel.pid}
        assert local  # Ray's processes, started by this kernel
        reply = kernel.ok("%%remote\nz = sum(range(10))\n", timeout=120)
        assert kernel.value("z") == "45"
        assert "Stopped the local Ray" in kernel.ok("%ray_disconnect", timeout=60).stdout
        wait_for_pids_gone(local, timeout=60)


def test_env_var_with_a_bad_engine_name_is_a_usage_error(ray_head, monkeypatch):
    monkeypatch.setenv("RAYJUPYTER_ENGINE", "spark")
    with _kernel_beside(ray_head) as kernel:
        reply = kernel.execute("%ray_connect")
        assert "RAYJUPYTER_ENGINE='spark' is not an engine" in reply.stderr + reply.traceback
        assert os.environ["RAYJUPYTER_ENGINE"] == "spark"


def test_a_killed_kernel_leaves_no_local_ray_behind(ray_head):
    """Ray's agents can outlive a SIGKILLed driver: the kernel's guard ends them."""
    kernel = Kernel()
    try:
        kernel.ok("%load_ext rayjupyter")
        kernel.ok("%ray_connect --ray --num-cpus 1 --object-store-memory 100MB", timeout=240)
        local = kernel.tree() - {kernel.pid}
        assert len(local) > 2
        os.kill(kernel.pid, signal.SIGKILL)
        wait_for_pids_gone(local, timeout=60)
    finally:
        kernel.shutdown()


# ------------------------------------------------------------------ the example notebooks on Ray

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
#: the example notebooks whose code is Ray's core API only (the list and the reasons for
#: the others are in notebooks/README.md)
RAY_API_NOTEBOOKS = ("01_quickstart", "03_task_dags", "04_actors", "06_remote_cells")
#: cells whose output differs on Ray for a reason of Ray's own, so compared on our runtime
#: only: (notebook, a line of the cell) -> why. The cells still run on Ray (and must not
#: fail); their outputs are not compared there
RAY_DIFFERENCES = {
    ("01_quickstart", 'print(f"hello, {name}")'): "a task's print reaches a Ray driver through "
    "Ray's log monitor a fraction of a second after ray.get returns: under a later cell",
    ("04_actors", "rj.kill(counter)"): "Ray's kill is asynchronous: a call made right after it "
    "can still run and answer",
    ("06_remote_cells", "ratio = ratio / 0"): "Ray's error text frames the remote traceback its "
    "own way (a colored ray:: task name, the node's address, the cell runner's frame)",
}
#: the one line a Ray user changes to run on our runtime, changed back
OUR_IMPORT, RAY_IMPORT = "import rayjupyter as rj", "import ray as rj"
NBVAL_ON_RAY_TIMEOUT_S = 600


def _as_ray_notebook(source: Path, target: Path) -> int:
    """A copy of the notebook whose ``rj`` is Ray's module and whose RAY_DIFFERENCES cells
    are tagged not to be compared; how many it tagged. A use of rayjupyter beyond that import
    and the magics would not be a Ray notebook, so it fails here, saying which."""
    notebook = json.loads(source.read_text())
    differing = [line for name, line in RAY_DIFFERENCES if name == source.stem]
    tagged = 0
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        ours = [line for line in lines if "rayjupyter" in line]
        ours = [line for line in ours if line not in (OUR_IMPORT, "%load_ext rayjupyter")]
        assert not ours, f"{source.name} uses rayjupyter beyond its import: {ours}"
        cell["source"] = [line.replace(OUR_IMPORT, RAY_IMPORT) for line in cell["source"]]
        if any(line.strip() in differing for line in lines):
            cell["metadata"].setdefault("tags", []).append("nbval-ignore-output")
            tagged += 1
    target.write_text(json.dumps(notebook))
    return tagged


@pytest.mark.timeout(NBVAL_ON_RAY_TIMEOUT_S + 60)
def test_the_ray_api_example_notebooks_give_the_same_outputs_on_ray(ray_head, tmp_path):
    """nbval runs the notebooks (copies with ``import ray as rj``) in kernels whose plain
    ``%ray_connect`` attaches to the Ray cluster (RAYJUPYTER_ENGINE=ray, RAY_ADDRESS), against
    the outputs stored from our runtime and the same sanitizer."""
    tagged = sum(
        _as_ray_notebook(NOTEBOOKS / f"{name}.ipynb", tmp_path / f"{name}.ipynb")
        for name in RAY_API_NOTEBOOKS
    )
    assert tagged == len(RAY_DIFFERENCES)  # each difference names a cell that is there
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # none of this repository's addopts
    root = str(NOTEBOOKS.parent)
    env = dict(os.environ, RAYJUPYTER_ENGINE="ray", RAY_ADDRESS=ray_head.address)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
        "--nbval", "--nbval-current-env", "--nbval-cell-timeout=120",
        f"--nbval-sanitize-with={NOTEBOOKS / 'nbval_sanitize.cfg'}",
        *(f"{name}.ipynb" for name in RAY_API_NOTEBOOKS),
    ]  # fmt: skip
    starters = {starter.pid for starter in ray_head.starters}
    saved = _SHARED.roots, _SHARED.active
    _SHARED.roots, _SHARED.active = saved[0] | starters, True  # Ray's workers: the cluster's
    try:
        run = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=NBVAL_ON_RAY_TIMEOUT_S,
        )  # fmt: skip
    finally:
        _SHARED.roots, _SHARED.active = saved[0] | starters, saved[1]
    assert run.returncode == 0, (run.stdout + run.stderr)[-8000:]
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-4000:]
