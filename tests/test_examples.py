"""The README's first command runs the quickstart example: keep it working."""

from __future__ import annotations

import subprocess
import sys


def test_quickstart_example_runs_on_a_local_cluster():
    out = subprocess.run(
        [sys.executable, "-m", "rayjupyter.examples.quickstart"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    assert "chain: 0 + 1 + ... + 10 = 55" in out.stdout
    assert "tree: sum(range(16)) = 120" in out.stdout
    assert "actor: 1000 calls, in order, last = 1000" in out.stdout
