"""The engine layer without processes: Ray's facts as our read model, the output router on
Ray's line format, which engine ``%ray_connect`` picks, and the progress tracker over a
ProgressSource. No Ray needed (``ray`` is never imported here)."""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from IPython.core.error import UsageError

from rayjupyter.core.read_models import MachineUsage
from rayjupyter.notebook import engines
from rayjupyter.notebook.engines import ray_metrics, ray_progress, ray_status
from rayjupyter.notebook.magics import _engine_and_address, _sizing_for_environment_address
from rayjupyter.notebook.output_routing import (
    END_MARKER,
    Router,
    RoutingStream,
    encode_display,
)
from rayjupyter.notebook.progress_display import Tracker

NODES = [
    {
        "NodeID": "aa" * 28,
        "Alive": True,
        "NodeManagerAddress": "10.0.0.1",
        "NodeManagerPort": 40000,
        "Resources": {"CPU": 2.0, "object_store_memory": 2e8, "node:10.0.0.1": 1.0},
    },
    {
        "NodeID": "bb" * 28,
        "Alive": False,
        "NodeManagerAddress": "10.0.0.2",
        "NodeManagerPort": 40001,
        "Resources": {"CPU": 1.0},
    },
]


def test_ray_facts_become_our_status_read_model():
    status = ray_status.node_status(
        NODES,
        {"CPU": 3.0, "object_store_memory": 4e8, "node:10.0.0.1": 1.0},
        {"CPU": 1.0, "object_store_memory": 3e8},
        tasks={"RUNNING": 2},
        now=5.0,
    )
    assert [row.Alive for row in status.nodes] == [True, False]
    assert "node:10.0.0.1" not in status.nodes[0].Resources  # Ray's per-node markers
    assert len(status.alive_nodes) == 1
    assert status.used("CPU") == 2.0
    assert status.store.capacity == 400_000_000 and status.store.used_bytes == 100_000_000
    assert status.machine.cpu_percent == pytest.approx(100 * 2 / 3)
    assert status.machine.memory_total == 0  # no metrics agent answered: not drawn
    assert status.tasks_running == 2 and status.machine.time == 5.0


def test_ray_task_states_fold_into_our_vocabulary_and_history_is_left_out():
    summary = {
        "cluster": {
            "summary": {
                "f": {"state_counts": {"RUNNING": 2, "FINISHED": 7, "PENDING_NODE_ASSIGNMENT": 1}},
                "g": {"state_counts": {"RUNNING_IN_RAY_GET": 1, "PENDING_ARGS_FETCH": 3}},
                "h": {"state_counts": {"SUBMITTED_TO_WORKER": 2, "FAILED": 1}},
            }
        }
    }
    assert ray_status.live_task_counts(summary) == {
        "RUNNING": 3,
        "PENDING_NODE_ASSIGNMENT": 3,
        "PENDING_ARGS_AVAIL": 3,
    }
    actors = {"cluster": {"summary": {"A": {"state_counts": {"ALIVE": 2, "DEAD": 1}}}}}
    assert ray_status.actor_counts(actors) == {"ALIVE": 2, "DEAD": 1}
    assert ray_status.live_task_counts(None) == {} == ray_status.actor_counts({})


class _ListSink:
    def __init__(self) -> None:
        self.items: list[tuple[str, object]] = []

    def write(self, stream: str, text: str) -> None:
        self.items.append((stream, text))

    def display(self, data: dict, metadata: dict) -> None:
        self.items.append(("display", data))


def test_router_takes_rays_coloured_prefix_its_ip_and_print_in_two_writes():
    router = Router()
    sink = _ListSink()
    router.route("remote In[4]", sink)
    inner = io.StringIO()
    stream = RoutingStream(inner, "stdout", router)
    try:
        # Ray's print(): the prefixed line, then its end, in a second write
        stream.write("\x1b[36m(remote In[4] pid=77)\x1b[0m hello")
        stream.write("\n")
        stream.write("\x1b[36m(remote In[4] pid=77, ip=10.0.0.2)\x1b[0m from node 2")
        stream.write("\n")
        shown = encode_display({"text/html": "<i>x</i>"}, {}).rstrip("\n")
        stream.write(f"\x1b[36m(remote In[4] pid=77)\x1b[0m {shown}")
        stream.write("\n")  # the display's line end is not output
        stream.write("\x1b[35m(other pid=78)\x1b[0m not mine\n")
        assert not router.wait_end("remote In[4]", 0)
        stream.write(f"(remote In[4] pid=77) {END_MARKER[:-1]}")
        stream.write("\n")
        assert router.wait_end("remote In[4]", 0)
    finally:
        router.unroute("remote In[4]")
    assert sink.items == [
        ("stdout", "hello"),
        ("stdout", "\n"),
        ("stdout", "from node 2"),
        ("stdout", "\n"),
        ("display", {"text/html": "<i>x</i>"}),
    ]
    assert inner.getvalue() == "\x1b[35m(other pid=78)\x1b[0m not mine\n"
    assert not isinstance(sys.stdout, RoutingStream)  # unwrapped once nothing is routed


@pytest.mark.parametrize(
    ("address", "ray", "env", "expected"),
    [
        (None, None, {}, ("rayjupyter", None)),
        ("10.0.0.1:6380", None, {}, ("rayjupyter", "10.0.0.1:6380")),
        (None, "", {}, ("ray", None)),  # --ray alone: a local Ray
        (None, "auto", {}, ("ray", "auto")),
        (None, "10.0.0.1:6379", {}, ("ray", "10.0.0.1:6379")),
        ("ray://10.0.0.1:10001", None, {}, ("ray", "ray://10.0.0.1:10001")),
        (None, None, {"RAYJUPYTER_ENGINE": "ray"}, ("ray", None)),
        (
            None,
            None,
            {"RAYJUPYTER_ENGINE": "Ray", "RAY_ADDRESS": "10.0.0.1:6379"},
            ("ray", "10.0.0.1:6379"),
        ),
        ("h:1", None, {"RAYJUPYTER_ENGINE": "ray"}, ("ray", "h:1")),
    ],
)
def test_connect_picks_the_engine_from_flags_and_environment(
    monkeypatch, address, ray, env, expected
):
    for name in ("RAYJUPYTER_ENGINE", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _engine_and_address(address, ray) == expected


def test_local_sizing_is_dropped_and_said_when_ray_address_comes_from_the_environment():
    """A notebook's `%ray_connect --num-cpus 2` sent to RAY_ADDRESS: the cluster keeps its own."""
    args = argparse.Namespace(num_cpus=2.0, num_gpus=0.0, object_store_memory=None)
    note = _sizing_for_environment_address(args, "10.0.0.1:6379")
    assert (args.num_cpus, args.num_gpus, args.object_store_memory) == (None, None, None)
    assert note.startswith("--num-cpus, --num-gpus not applied: RAY_ADDRESS=10.0.0.1:6379 is")
    unsized = argparse.Namespace(num_cpus=None, num_gpus=None, object_store_memory=None)
    assert _sizing_for_environment_address(unsized, "h:1") == ""


def test_connect_refuses_two_addresses_and_unknown_engines(monkeypatch):
    with pytest.raises(UsageError, match="give the Ray address once"):
        _engine_and_address("h:1", "h:2")
    monkeypatch.setenv("RAYJUPYTER_ENGINE", "dask")
    with pytest.raises(UsageError, match="RAYJUPYTER_ENGINE='dask' is not an engine"):
        _engine_and_address(None, None)


def test_choosing_an_engine_does_not_import_ray():
    had_ray = "ray" in sys.modules
    engine = engines.engine("ray")
    assert engine.name == "ray" and not engine.connected
    assert engine.disconnect() == "Not connected to a cluster."
    assert ("ray" in sys.modules) == had_ray


def test_ray_client_without_grpc_names_the_install(monkeypatch):
    from rayjupyter.notebook.engines import ray_engine

    monkeypatch.setattr(ray_engine.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ray_engine.RayConnectError, match=r'pip install "ray\[client\]"'):
        ray_engine.RayEngine().connect(engines.ConnectRequest("ray://10.0.0.1:10001"))


class _Source:
    """A ProgressSource over a dict: which ids are done (and failed), tasks running."""

    def __init__(self) -> None:
        self.done: dict[bytes, bool] = {}
        self.asked: list[list[bytes]] = []
        self.closed = False

    def finished(self, object_ids: Sequence[bytes]) -> dict[bytes, bool]:
        self.asked.append(list(object_ids))
        return {oid: self.done[oid] for oid in object_ids if oid in self.done}

    def running(self) -> int:
        return 5

    def name(self, object_id: bytes) -> str:
        return "f" if object_id < b"c" else "g"

    def wait(self, object_ids: Sequence[bytes], seconds: float) -> None:
        pass

    def error(self, object_id: bytes) -> str:
        return "ValueError"

    settle_s = 0.0


def test_tracker_counts_from_any_progress_source_and_asks_only_for_the_unfinished():
    source = _Source()
    tracker = Tracker(source, [b"a", b"b", b"c"])
    tracker.poll()
    assert [(r.name, r.total, r.done, r.running) for r in tracker.model.rows] == [
        ("f", 2, 0, 2),
        ("g", 1, 0, 1),
    ]
    source.done.update({b"a": False, b"c": True})
    tracker.poll()
    source.done[b"b"] = False
    tracker.poll()
    assert source.asked[-1] == [b"b"]  # a and c were settled: not asked again
    assert tracker.model.complete and tracker.model.failed == 1


def test_a_late_failure_turns_a_done_object_failed_while_the_source_settles(monkeypatch):
    """Ray's state API reports a failure after ray.wait saw the result: within settle_s
    the tracker asks again about objects counted done, and the failure wins."""
    clock = [100.0]
    monkeypatch.setattr("rayjupyter.notebook.progress_display.time.monotonic", lambda: clock[0])
    source = _Source()
    source.settle_s = 3.0  # type: ignore[misc]
    tracker = Tracker(source, [b"a", b"b"])
    source.done.update({b"a": False, b"b": False})
    tracker.poll()
    assert tracker.model.complete and not tracker.settled
    source.done[b"b"] = True  # the state API has caught up
    clock[0] += 1.0
    tracker.poll()
    assert source.asked[-1] == [b"a", b"b"]
    assert tracker.model.failed == 1 and tracker.model.rows[0].errors == ("ValueError",)
    clock[0] += 3.0
    asked = len(source.asked)
    tracker.poll()
    assert tracker.settled and len(source.asked) == asked  # settled: not asked again


def test_names_learned_late_move_objects_to_their_functions_row():
    source = _Source()
    names = {b"a": "task", b"b": "task", b"c": "task"}
    source.name = names.__getitem__  # type: ignore[method-assign]
    tracker = Tracker(source, [b"a", b"b", b"c"])
    assert tracker.model.unnamed() == [b"a", b"b", b"c"]
    tracker._named = -1e9  # due
    names.update({b"a": "f", b"b": "f"})
    tracker.poll()
    assert [(r.name, r.total) for r in tracker.model.rows] == [("f", 2), ("task", 1)]
    names[b"c"] = "g"
    tracker._named = -1e9
    tracker.poll()
    assert [(r.name, r.total) for r in tracker.model.rows] == [("f", 2), ("g", 1)]


def test_the_widget_keeps_its_bar_when_a_row_is_renamed():
    from rayjupyter.notebook.progress_model import ProgressModel
    from rayjupyter.notebook.progress_views import WidgetProgressView

    model = ProgressModel([b"a", b"b"], {})
    view = WidgetProgressView(model)
    (bar,) = view.bars.values()
    model.rename({b"a": "slow", b"b": "slow"})
    model.update({b"a": True}, 0, {b"a": "ValueError"})
    view.render()
    assert view.bars == {"slow": bar} and bar.description == "slow"
    assert bar.bar_style == "danger" and "1 failed (ValueError)" in view.labels["slow"].value
    model.rename({b"b": "fast"})
    view.render()
    assert set(view.bars) == {"slow", "fast"} and len(view.widget.children) == 3


PAGE = """# HELP ray_node_cpu_utilization Total CPU usage
ray_node_cpu_count{IsHeadNode="true",ip="10.0.0.1",SessionName="s"} 2.0
ray_node_mem_used{IsHeadNode="true",ip="10.0.0.1",SessionName="s"} 1.5e+09
ray_node_mem_used_host{IsHeadNode="true",ip="10.0.0.1"} 9.9e+09
ray_node_mem_total{IsHeadNode="true",ip="10.0.0.1",SessionName="s"} 4.0e+09
ray_node_cpu_utilization{IsHeadNode="true",ip="10.0.0.1",SessionName="s"} 37.5
ray_tasks{Name="f",State="RUNNING"} 3.0
"""


def test_node_metrics_pages_become_each_nodes_machine_and_the_clusters_line():
    gauges = ray_metrics.parse_gauges(PAGE)
    assert gauges == {
        "ray_node_cpu_count": 2.0,
        "ray_node_mem_used": 1.5e9,
        "ray_node_mem_total": 4.0e9,
        "ray_node_cpu_utilization": 37.5,
    }
    usage = ray_metrics.machine_usage(gauges, at=7.0)
    assert usage == MachineUsage(cpu_percent=37.5, memory_total=4e9, memory_used=1.5e9, time=7.0)
    assert ray_metrics.machine_usage({}, at=7.0) is None  # the agent has not reported yet
    other = MachineUsage(cpu_percent=62.5, memory_total=2e9, memory_used=1e9, time=7.0)
    status = ray_status.node_status(
        [NODES[0], {**NODES[1], "Alive": True, "NodeID": "cc" * 28}],
        {"CPU": 3.0},
        {"CPU": 3.0},
        machines={"aa" * 28: usage, "cc" * 28: other},
        now=8.0,
    )
    assert status.machine == MachineUsage(50.0, 6e9, 2.5e9, 8.0)  # mean CPU, summed memory
    assert status.node_machines["cc" * 28] == other


def test_node_metrics_are_scraped_in_parallel_cached_and_a_silent_node_left_a_while():
    asked: list[str] = []
    clock = [0.0]

    def fetch(url: str) -> str:
        asked.append(url)
        if "9002" in url:
            raise OSError("refused")
        return PAGE

    metrics = ray_metrics.NodeMetrics(fetch=fetch, clock=lambda: clock[0])
    nodes = [
        {"NodeID": "a", "Alive": True, "NodeManagerAddress": "10.0.0.1", "MetricsExportPort": 9001},
        {"NodeID": "b", "Alive": True, "NodeManagerAddress": "10.0.0.2", "MetricsExportPort": 9002},
        {"NodeID": "c", "Alive": False, "NodeManagerAddress": "10.0.0.3", "MetricsExportPort": 9},
    ]
    assert set(metrics.sample(nodes)) == {"a"} and metrics.answered
    assert sorted(asked) == ["http://10.0.0.1:9001/metrics", "http://10.0.0.2:9002/metrics"]
    clock[0] += 1.0
    assert set(metrics.sample(nodes)) == {"a"} and len(asked) == 2  # cached
    clock[0] += ray_metrics.MIN_INTERVAL_S
    metrics.sample(nodes)
    assert asked[-1] == "http://10.0.0.1:9001/metrics" and len(asked) == 3  # b left a while
    assert metrics.sample(nodes[1:]) == {}  # a node gone is forgotten


def test_a_failed_ray_task_shows_its_exception_class_or_rays_reason():
    message = 'ray::flaky() (pid=1, ip=10.0.0.1)\n  File "<ipython>", line 4\nValueError: 8'
    assert ray_progress.error_name("TASK_EXECUTION_EXCEPTION", message) == "ValueError"
    wrapped = "Traceback ...\nmodule.sub.CustomError"
    assert ray_progress.error_name("TASK_EXECUTION_EXCEPTION", wrapped) == "CustomError"
    assert ray_progress.error_name("WORKER_DIED", "the worker died") == "WORKER_DIED"
    assert ray_progress.error_name(None, None) == "failed"


#: the only modules that may import ``ray`` (and only inside functions run on Ray)
RAY_IMPORTERS = {
    "rayjupyter/notebook/engines/ray_engine.py",
    "rayjupyter/notebook/engines/ray_progress.py",  # ray.util.state, for names and failures
    "rayjupyter/notebook/cell_runner.py",  # Ray's cloudpickle, on a worker that has no other
    "rayjupyter/util/engine_api.py",  # ray.actor.exit_actor, inside a Ray actor
}


def test_ray_is_imported_only_by_the_ray_engine_and_only_inside_functions():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    found: dict[str, list[int]] = {}
    top_level: list[str] = []
    for path in sorted((root / "rayjupyter").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(name == "ray" or name.startswith("ray.") for name in names):
                relative = str(path.relative_to(root))
                found.setdefault(relative, []).append(node.lineno)
                if node in tree.body:
                    top_level.append(f"{relative}:{node.lineno}")
    assert set(found) <= RAY_IMPORTERS, found
    assert not top_level, top_level


def test_ray_task_names_and_failures_are_asked_for_sparingly(monkeypatch):
    """One state-API query a second at most, names given up on after a while (a put ref
    has no task), and nothing asked for a while after the API failed (no dashboard)."""
    clock = [0.0]
    queries: list[list[tuple[str, str, str]]] = []
    rows = [
        SimpleNamespace(task_id="t1", name="f", error_type=None, error_message=None),
        SimpleNamespace(
            task_id="t2", name="g", error_type="TASK_EXECUTION_EXCEPTION",
            error_message="ray::g()\nZeroDivisionError: division by zero",
        ),
    ]  # fmt: skip
    states = ray_progress.TaskStates("02000000", clock=lambda: clock[0])

    def listing(filters: list[tuple[str, str, str]], *, detail: bool) -> list[Any]:
        queries.append(filters)
        return rows if not filters else [rows[1]]

    monkeypatch.setattr(states, "_list", listing)
    assert states.name("t1") == "f" and states.name("t2") == "g" and len(queries) == 1
    assert states.name("put") is None and len(queries) == 1  # asked a moment ago
    clock[0] += ray_progress.REFRESH_S
    assert states.name("put") is None and len(queries) == 2
    clock[0] += ray_progress.NAME_WAIT_S
    assert states.name("put") is None and len(queries) == 2  # given up on
    assert states.failed(["t1", "t2"]) == {"t2": "ZeroDivisionError"}
    assert queries[-1] == [("state", "=", "FAILED")]
    assert states.failed(["t1"]) == {} and len(queries) == 3  # not again within the second
    states._down_until = clock[0] + 5
    clock[0] += 2
    assert not states.up and states.failed(["t1"]) == {} and len(queries) == 3
