"""Run every workload for one backend in this fresh process and write the metrics as JSON.

The runner starts one of these per backend and repetition, so runtimes never share a process,
caches or a process tree. The result file is rewritten after each step, so a run killed by its
timeout still reports what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from benchmarks import procs, workloads
from benchmarks.backends import BACKENDS, Backend

SIZES = {"full": workloads.FULL, "quick": workloads.QUICK, "tiny": workloads.TINY}


def main(argv: list[str] | None = None) -> int:
    """Parse the runner's arguments, run the backend, always leave a result file behind."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.child", description=__doc__)
    parser.add_argument("backend", choices=sorted(BACKENDS))
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    parser.add_argument("--stack-dump-after", type=float, default=0.0, help="seconds; 0 = never")
    args = parser.parse_args(argv)
    if args.stack_dump_after > 0:  # a hang leaves every thread's stack in the log
        procs.dump_stacks_later(args.stack_dump_after)
    result = Result(args.backend, args.out)
    run_backend(BACKENDS[args.backend](), SIZES[args.size], args.num_cpus, result)
    return 0


class Result:
    """The metrics, errors and process identities of one run, saved to disk after every change."""

    def __init__(self, backend: str, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"backend": backend, "metrics": {}, "errors": {}}
        self.data["processes"] = {}  # pid -> create time
        self.data["load_avg_1m_at_start"] = os.getloadavg()[0]  # how busy the machine was
        self.save()

    def add(self, metrics: dict[str, Any]) -> None:
        """Record metrics and save."""
        self.data["metrics"].update(metrics)
        self.save()

    def error(self, step: str, exc: BaseException) -> None:
        """Record a failed step in one line (its traceback goes to the log)."""
        traceback.print_exception(exc, file=sys.stderr)
        self.data["errors"][step] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        self.save()

    def unavailable(self, reason: str) -> None:
        """Mark the backend unusable in this environment; the runner reports it and moves on."""
        self.data["unavailable"] = reason[:300]
        self.save()

    def remember_processes(self, pids: list[int]) -> None:
        """Keep each (pid, start time), so the runner can kill leftovers but never a reused PID."""
        for pid in pids:
            try:
                self.data["processes"][str(pid)] = psutil.Process(pid).create_time()
            except psutil.NoSuchProcess:
                continue
        self.save()

    def save(self) -> None:
        """Write atomically, so the runner never reads half a file."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, self.path)


def run_backend(backend: Backend, sizes: workloads.Sizes, num_cpus: int, result: Result) -> None:
    """Import, start, run each workload (one failing does not stop the rest), then shut down."""
    try:
        result.add(workloads.time_import(backend))
    except Exception as exc:  # any import failure means "not installed here", not a benchmark bug
        result.unavailable(f"import failed: {type(exc).__name__}: {exc}")
        return
    try:
        result.add(workloads.time_startup(backend, num_cpus))
    except Exception as exc:
        result.error("startup", exc)
        result.unavailable(f"start failed: {type(exc).__name__}: {exc}")
        _try_shutdown(backend, result)
        return
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("idle_memory", lambda: workloads.idle_memory(backend)),
        ("sync_latency", lambda: workloads.sync_latency(backend, sizes)),
        ("async_throughput", lambda: workloads.async_throughput(backend, sizes)),
        ("actor_creation", lambda: workloads.actor_creation(backend, sizes)),
        ("actor_sync_latency", lambda: workloads.actor_sync_latency(backend, sizes)),
        ("actor_async_throughput", lambda: workloads.actor_async_throughput(backend, sizes)),
        ("dependency_chain", lambda: workloads.dependency_chain(backend, sizes)),
        ("put_get", lambda: workloads.put_get(backend, sizes)),
        ("ref_sum", lambda: workloads.ref_sum(backend, sizes)),
        ("value_sum", lambda: workloads.value_sum(backend, sizes)),
        ("primes_speedup", lambda: workloads.primes_speedup(backend, sizes)),
    ]
    for step, run in steps:
        result.remember_processes(backend.process_tree_pids())
        try:
            result.add(run())
        except Exception as exc:
            result.error(step, exc)
    result.remember_processes(backend.process_tree_pids())
    try:
        result.add(workloads.time_shutdown(backend))
    except Exception as exc:
        result.error("shutdown", exc)


def _try_shutdown(backend: Backend, result: Result) -> None:
    """Clean up after a failed start, recording (not raising) a second failure."""
    try:
        backend.shutdown()
    except Exception as exc:
        result.error("shutdown", exc)


if __name__ == "__main__":
    sys.exit(main())
