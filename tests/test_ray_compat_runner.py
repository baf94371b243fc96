"""The yardstick's own machinery (benchmarks/ray_compat): a Ray-style test file, written
here, run through the shim: ``import ray`` is rayjupyter, Ray's fixtures work, a test that
uses Ray's internals is skipped with the name it used, a missing API fails."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

RAY_STYLE_FILE = """
import pytest
import ray
from ray._private.test_utils import wait_for_condition, SignalActor
from ray.util.queue import Queue


def test_task(ray_start_regular_shared):
    @ray.remote
    def f(x):
        return x + 1

    assert ray.get(f.remote(1)) == 2
    assert ray.get_runtime_context().get_task_id() is None


def test_signal_and_wait_for_condition(ray_start_regular_shared):
    signal = SignalActor.remote()
    ref = signal.wait.remote()
    ray.get(signal.send.remote())
    wait_for_condition(lambda: ray.wait([ref], timeout=0)[0] == [ref])
    assert isinstance(ray.exceptions.RayError("x"), Exception)
    Queue().put(1)


def test_internals_are_skipped(ray_start_regular_shared):
    ray._private.worker.global_worker.core_worker.object_exists(ray.put(1))


def test_missing_api_fails(ray_start_regular_shared):
    ray.no_such_api()


@pytest.mark.asyncio
async def test_async_test(ray_start_regular_shared):
    @ray.remote
    def g():
        return 3

    assert await g.remote() == 3


def test_placement_group_helper(ray_start_regular_shared):
    from ray._private.test_utils import placement_group_assert_no_leak

    group = ray.util.placement_group([{"CPU": 1}])
    ray.get(group.ready())
    placement_group_assert_no_leak([group])
    assert ray.available_resources()["CPU"] == 1
"""


def test_runner_on_a_ray_style_file(tmp_path):
    (tmp_path / "test_style.py").write_text(textwrap.dedent(RAY_STYLE_FILE))
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.ray_compat",
            "--tests",
            str(tmp_path),
            "--targets",
            "rayjupyter",
            "--test-timeout",
            "60",
            "--json",
            str(out),
            "test_style.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tests = json.loads(out.read_text())["runs"]["rayjupyter"]["test_style.py"]["tests"]
    outcomes = {name: result["outcome"] for name, result in tests.items()}
    assert outcomes == {
        "test_task": "passed",
        "test_signal_and_wait_for_condition": "passed",
        "test_internals_are_skipped": "skipped",
        "test_missing_api_fails": "failed",
        "test_async_test": "passed",
        "test_placement_group_helper": "passed",
    }
    assert "ray._private.worker" in tests["test_internals_are_skipped"]["message"]
    assert "no_such_api" in tests["test_missing_api_fails"]["message"]
    assert "| test_style.py" in proc.stdout  # the side-by-side table


DIES_MIDWAY = """
import os


def test_first():
    assert True


def test_kills_pytest():
    os._exit(3)


def test_never_runs():
    assert True
"""


def test_runner_keeps_what_ran_when_pytest_dies(tmp_path):
    (tmp_path / "test_dies.py").write_text(textwrap.dedent(DIES_MIDWAY))
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ray_compat", "--tests", str(tmp_path),
         "--targets", "rayjupyter", "--json", str(out), "test_dies.py"],
        cwd=REPO, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads(out.read_text())["runs"]["rayjupyter"]["test_dies.py"]
    assert {name: r["outcome"] for name, r in run["tests"].items()} == {"test_first": "passed"}
    assert run["note"] == "pytest ended early"
