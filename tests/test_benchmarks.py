"""Smoke runs of the benchmark runners at tiny sizes, rayjupyter only, so they never rot.

These check that every workload runs and reports; they assert no speed (the full runs in
benchmarks/RESULTS.md are for that, on an idle machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKLOAD_KEYS = {
    "first_result_s",
    "shutdown_s",
    "idle_rss_mb",
    "idle_pss_mb",
    "sync_median_us",
    "sync_p99_us",
    "async_per_s",
    "actor_create_1_s",
    "actor_sync_median_us",
    "actor_async_per_s",
    "chain_s",
    "put_gbps",
    "get_ms",
    "ref_sum_first_s",
    "ref_sum_s",
    "value_sum_s",
    "primes_speedup",
}


def _run(result: Path, *args: str) -> tuple[str, dict[str, Any]]:
    """Run a benchmark module writing its JSON to result: (its stdout, that JSON)."""
    out = subprocess.run(
        [sys.executable, "-m", *args, "--json", str(result)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, json.loads(result.read_text())


@pytest.mark.timeout(300)
def test_runner_measures_every_workload_at_tiny_sizes(tmp_path):
    result = tmp_path / "tiny.json"
    stdout, report = _run(result, "benchmarks", "--tiny", "--repeat", "1", "--against", "none")
    ours = report["backends"]["rayjupyter"]
    assert ours["status"] == "ok" and ours["errors"] == {}
    summary = ours["summary"]
    assert set(summary) >= WORKLOAD_KEYS, WORKLOAD_KEYS - set(summary)
    assert all(summary[key]["median"] > 0 for key in WORKLOAD_KEYS)
    assert summary["get_zero_copy"]["value"] is True
    assert summary["chain_length"]["median"] == 10
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["git"]
    # the markdown table goes to stdout and beside the JSON
    assert "| workload | unit | better | rayjupyter |" in stdout
    assert result.with_suffix(".md").read_text().strip() in stdout


@pytest.mark.timeout(300)
def test_multinode_runner_crosses_nodes_at_tiny_sizes(tmp_path):
    _, report = _run(
        tmp_path / "multinode.json",
        "benchmarks.multinode",
        "--sizes-mb",
        "8",
        "--calls",
        "20",
        "--repeat",
        "1",
        "--against",
        "none",
        "--no-curve",
    )
    (ours,) = [row for row in report["results"] if row["backend"] == "rayjupyter"]
    assert ours["cross_node_sync_us"]["median"] > 0
    assert ours["same_node_sync_us"]["median"] > 0
    assert ours["transfers"]["8"]["bytes"] == 8 << 20
    assert ours["transfers"]["8"]["best_gb_s"] > 0


@pytest.mark.timeout(300)
def test_the_serve_benchmark_measures_handles_http_and_batching_at_tiny_sizes(tmp_path):
    result = tmp_path / "serve.json"
    stdout, report = _run(result, "benchmarks.serve", "--tiny", "--against", "none")
    metrics = report["results"]["rayjupyter"]["metrics"]
    for key in ("handle_1r", "handle_2r", "http_1r", "http_2r"):
        assert metrics[key]["rps"] > 0 and metrics[key]["p50_ms"] > 0, key
    assert metrics["http_1r"]["errors"] == metrics["http_2r"]["errors"] == 0
    assert metrics["batched_1ms"]["rps"] > 0
    assert "| handle, 1 replica: p50 ms |" in stdout


def test_tune_runner_at_tiny_sizes(tmp_path):
    stdout, report = _run(tmp_path / "tune.json", "benchmarks.tune", "--tiny", "--against", "none")
    (ours,) = report["results"]
    assert ours["backend"] == "rayjupyter" and "error" not in ours, ours
    assert ours["trials_per_s"] > 0 and ours["asha_s"] > 0
    assert 8 <= ours["asha_iterations"] < 8 * 16  # ASHA stopped some of the 8 trials
    assert "trials x 10 reports" in stdout
