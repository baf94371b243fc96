"""Facts about the machine and the code that ran, kept beside the numbers so runs compare."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

PACKAGES = [
    *("rayjupyter", "ray", "dask", "distributed"),
    *("numpy", "pyzmq", "cloudpickle", "pyarrow", "psutil"),
]


def machine_info(repo_root: Path) -> dict[str, Any]:
    """CPU, memory, Python, package versions and the git commit, in one JSON-ready dict."""
    return {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_model": _cpu_model(),
        "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
        # Other work on the machine skews every figure, so record how busy it was.
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "git": _git(repo_root),
    }


def summary_line(info: dict[str, Any]) -> str:
    """One line for the top of the printed report."""
    versions = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    git = info["git"]
    commit = (git["commit"] or "no commit")[:12] + (" (dirty)" if git["dirty"] else "")
    return (
        f"{info['cpu_count']} CPUs ({info['cpu_model']}), {info['ram_gb']} GB RAM, "
        f"load {info['load_avg_1m']} at start, Python {info['python']}; "
        f"{versions}; commit {commit}"
    )


def _version(name: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or the platform's guess elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(repo_root: Path) -> dict[str, Any]:
    """HEAD commit and whether the tree has uncommitted changes (read-only git commands)."""

    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=repo_root, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(status)}
