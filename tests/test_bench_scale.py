"""The scale suite (``python -m benchmarks.scale``) at tiny sizes, rayjupyter only, so it never
rots: every row runs and reports, a row past its timeout is reported (not waited on), a row
that would not fit is not started, and the plots are drawn from the JSON alone. It asserts
no speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from benchmarks import scale, scale_report

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )


@pytest.mark.timeout(300)
def test_every_row_runs_and_reports_at_tiny_sizes(tmp_path):
    result = tmp_path / "scale.json"
    out = _run("--tiny", "--against", "none", "--json", str(result))
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads(result.read_text())
    rows = {(r["workload"], r["size"]): r for r in record["rows"]}
    expected = {(w, s) for w, sizes in scale.SIZES["tiny"].items() for s in sizes}
    assert set(rows) == expected
    for key, row in rows.items():
        assert row["backend"] == "rayjupyter"
        assert row["status"] == "ok", (key, row["status"], row.get("log_tail"))
        assert row["metrics"]["s"] > 0 and row["peak"]["total_mb"] > 0, key
        assert row["metrics"]["after_over_idle_mb"] is not None, key
    assert rows[("tree", 4)]["metrics"]["tasks"] == 15
    assert rows[("fanout", 2)]["metrics"]["nodes_used"] == 2
    assert rows[("actors", 6)]["metrics"]["per_actor_mb"] > 0
    # the report: a table per workload and the targets, printed and beside the JSON
    for workload in scale.WORKLOADS:
        assert scale_report.TITLES[workload].split(" ")[0] in out.stdout
    assert "no rayjupyter workload hangs or dies (9 rows): met" in out.stdout
    assert result.with_suffix(".md").read_text().strip() in out.stdout
    # the plot, drawn from the JSON (a PNG with matplotlib, else bokeh's HTML)
    plotted = [p for p in (result.with_suffix(".png"), result.with_suffix(".html")) if p.exists()]
    assert plotted and plotted[0].stat().st_size > 1000


@pytest.mark.timeout(120)
def test_a_row_past_its_timeout_is_reported_and_its_processes_are_gone(tmp_path):
    result = tmp_path / "scale.json"
    out = _run(  # a million tasks cannot finish in 3 s (the guard is off: it is killed)
        "--tiny", "--against", "none", "--only", "tasks", "--tasks", "1000000,2000000",
        "--timeout", "3", "--memory-share", "100", "--json", str(result), "--no-plot",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = json.loads(result.read_text())["rows"]
    assert first["status"].startswith("timeout after 3 s (in "), first["status"]
    assert second["status"] == "not run: a smaller size did not finish"
    assert "MISSED: tasks 1,000,000 tasks: timeout after 3 s" in out.stdout
    # (the leak check of conftest.py fails the test if a process of the killed row is left)


def test_a_row_that_would_not_fit_in_memory_is_not_started():
    done = {
        "backend": "ray",
        "workload": "actors",
        "size": 10,
        "status": "ok",
        "wall_s": 5.0,
        "metrics": {"s": 4.0, "idle_driver_mb": 100.0, "idle_node_mb": 500.0},
        "peak": {"total_mb": 1600.0},
    }
    available_gb = psutil.virtual_memory().available / 1e9
    size = int(10 * available_gb * 1e3 / 1000) + 10  # ~1 GB per actor: more than all there is
    reason = scale.not_run_reason("ray", "actors", size, [done], timeout_s=1e9)
    assert reason is not None and reason.startswith("not run: would need ~")
    assert scale.not_run_reason("ray", "actors", 11, [done], timeout_s=1e9) is None
    # 1 s of start and settle plus 4 s of work grown 1.1 times: past a 2 s timeout
    slow = scale.not_run_reason("ray", "actors", 11, [done], timeout_s=2)
    assert slow == "not run: would take ~5 s, over the 2 s timeout"
