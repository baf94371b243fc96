"""Run each backend in a fresh child process, one at a time, repeated; clean up what it leaves."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import psutil

from benchmarks import procs

REPO_ROOT = Path(__file__).resolve().parent.parent
STDERR_TAIL_LINES = 15  # how much of a failed child's log goes into its reason
# A child's helpers (multiprocessing's resource tracker) may take a moment to exit after it.
LEFTOVER_GRACE_S = 5.0


def run_all(
    names: list[str], size: str, repeat: int, timeout_s: float, num_cpus: int
) -> dict[str, dict[str, Any]]:
    """Rounds of one run per backend, interleaved so drift hits all alike; drop one that fails."""
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        results[name] = {"status": "ok", "runs": [], "errors": {}}
    with tempfile.TemporaryDirectory(prefix="rj-bench-") as workdir:
        for rep in range(1, repeat + 1):
            for name in names:
                if results[name]["status"] != "ok":
                    continue
                t0 = time.perf_counter()
                run = run_child(name, size, timeout_s, num_cpus, Path(workdir))
                took = time.perf_counter() - t0
                why = f" ({run['unavailable']})" if "unavailable" in run else ""
                _log(f"run {rep}/{repeat} {name}: {took:.1f} s{why}")
                if "unavailable" in run:
                    results[name]["status"] = f"unavailable: {run['unavailable']}"
                    continue
                results[name]["runs"].append(run)
                results[name]["errors"].update(run.get("errors", {}))
    return results


def run_child(
    name: str, size: str, timeout_s: float, num_cpus: int, workdir: Path
) -> dict[str, Any]:
    """One fresh ``python -m benchmarks.child``; a crash or timeout is recorded, never raised."""
    out = workdir / f"{name}-{time.monotonic_ns()}.json"
    log = out.with_suffix(".log")
    cmd = [sys.executable, "-m", "benchmarks.child", name, "--size", size, "--out", str(out)]
    cmd += ["--num-cpus", str(num_cpus), "--stack-dump-after", str(max(1.0, timeout_s - 5))]
    reason = run_logged(cmd, timeout_s, log)
    run: dict[str, Any] = {"metrics": {}, "errors": {}}
    if out.exists():
        run.update(json.loads(out.read_text(encoding="utf-8")))
    leftovers = _kill_leftovers(run.get("processes", {}))
    if leftovers:
        run["errors"]["leftovers"] = f"{leftovers} process(es) outlived the run; killed"
    if reason and "unavailable" not in run:
        if "first_result_s" in run["metrics"]:  # it did start: keep what it measured, flag it
            run["errors"]["process"] = f"{reason}; log tail: {_tail(log)}"
        else:
            run["unavailable"] = f"{reason}; log tail: {_tail(log)}"
    return run


def run_logged(cmd: list[str], timeout_s: float, log: Path) -> str | None:
    """Runs cmd from the repo root (its output to log) in a process group of its own, so a
    timeout kills all of it; why it failed, or None when it exited 0."""
    with open(log, "wb") as log_file:
        return wait_logged(start_logged(cmd, log_file), timeout_s)


def start_logged(cmd: list[str], log_file: IO[bytes]) -> subprocess.Popen[bytes]:
    """cmd started from the repo root, its output to log_file, in a session of its own."""
    return subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=_child_env(),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_logged(child: subprocess.Popen[bytes], timeout_s: float) -> str | None:
    """Why a child of start_logged failed (all of its group killed at the timeout), or
    None when it exited 0."""
    try:
        code = child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(child)
        return f"timed out after {timeout_s:.0f} s"
    return None if code == 0 else f"benchmark process exited with code {code}"


def _child_env() -> dict[str, str]:
    """The environment plus the repo on PYTHONPATH, so every runtime's workers import our tasks."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's own process group (a new session, so the group holds only its tree)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _kill_leftovers(processes: dict[str, float]) -> int:
    """SIGKILL recorded processes still alive a grace period after the child; spare reused PIDs."""
    recorded = procs.processes(int(pid) for pid in processes)
    same = [p for p in recorded if abs(_create_time(p) - processes[str(p.pid)]) <= 0.01]
    killed = 0
    for proc in procs.wait_gone(same, LEFTOVER_GRACE_S):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
            killed += 1
    return killed


def _create_time(proc: psutil.Process) -> float:
    """Start time of ``proc``, or -1 when it is already gone."""
    try:
        return proc.create_time()
    except psutil.NoSuchProcess:
        return -1.0


def _tail(log: Path) -> str:
    """The last lines of a child's output, folded into one line for a status cell's note."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-STDERR_TAIL_LINES:]) or "(empty log)"


def _log(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the table."""
    print(message, file=sys.stderr, flush=True)
