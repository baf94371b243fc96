"""The engine layer without processes: Ray's facts as our read model, the output router on
Ray's line format, which engine ``%ray_connect`` picks, and the progress tracker over a
ProgressSource. No Ray needed (``ray`` is never imported here)."""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence

import pytest
from IPython.core.error import UsageError

from rayjupyter.notebook import engines
from rayjupyter.notebook.engines import ray_status
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
    assert status.machine.memory_total == 0  # not given by Ray's core API: not drawn
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


#: the only modules that may import ``ray`` (and only inside functions run on Ray)
RAY_IMPORTERS = {
    "rayjupyter/notebook/engines/ray_engine.py",
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
