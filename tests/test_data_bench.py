"""A smoke run of ``python -m benchmarks.data`` at its tiny size, rayjupyter only, so the Data
benchmark never rots (it asserts no speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(200)
def test_data_benchmark_runs_every_workload_at_tiny_size(tmp_path):
    result = tmp_path / "data.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.data",
            "--tiny",
            "--against",
            "none",
            "--json",
            str(result),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ours = json.loads(result.read_text())["results"]["rayjupyter"]
    assert ours["errors"] == {}
    assert set(ours["metrics"]) == {
        "map_batches",
        "parquet_pipeline",
        "random_shuffle",
        "groupby_mean",
    }
    assert all(m["s"] > 0 and m["peak_pss_mb"] > 0 for m in ours["metrics"].values())
    assert "| map_batches 0.04 GB: rows/s |" in out.stdout
