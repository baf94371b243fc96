"""How cost grows: time and whole-tree memory (PSS) as tasks, actors, objects, nodes and
nesting grow, rayjupyter beside Ray, every row in a fresh child process with a timeout.

    python -m benchmarks.scale                    # full sizes (15-20 minutes on 2 cores)
    python -m benchmarks.scale --quick            # 1k/10k tasks, 20/100 actors, 1/2/4 nodes
    python -m benchmarks.scale --tiny --against none   # seconds, rayjupyter only (the tests)
    python -m benchmarks.scale --only tasks --tasks 10000,100000,1000000 --ray-tasks 10000

Each row is ``python -m benchmarks.scale_child BACKEND WORKLOAD SIZE``; this process samples
the PSS of the child (the driver) and of everything under it (the cluster) for the peaks,
kills the row at its timeout ("timeout after N s") and reports a row that dies ("died: ...").
Before a row, its memory and time are estimated from the row one size smaller (or a prior
guess for the first size): one that would not fit in this machine's available memory, or
its timeout, is "not run: ..." instead of a crashed machine. Writes ``results/scale*.json``
and ``.md``, and the plots (``benchmarks.scale_plot``) beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks import machine, procs
from benchmarks.runner import REPO_ROOT, _kill_leftovers, _tail, start_logged, wait_logged

MB = 1e6
WORKLOADS = ("tasks", "actors", "objects", "fanout", "tree")
SIZES: dict[str, dict[str, list[int]]] = {  # workload -> sizes (tree: depths; fanout: nodes)
    "full": {
        "tasks": [10_000, 100_000, 1_000_000],
        "actors": [100, 1_000, 3_000],
        "objects": [100_000],
        "fanout": [1, 4, 16],
        "tree": [6, 8, 10],
    },
    "quick": {
        "tasks": [1_000, 10_000],
        "actors": [20, 100],
        "objects": [10_000],
        "fanout": [1, 2, 4],
        "tree": [5, 7],
    },
    "tiny": {
        "tasks": [200, 1_000],
        "actors": [3, 6],
        "objects": [500],
        "fanout": [1, 2],
        "tree": [3, 4],
    },
}
# Ray's full run would pass 20 minutes with a million tasks (--ray-tasks adds it back).
RAY_FULL = {"tasks": [10_000, 100_000]}
FANOUT_TASKS = {"full": 10_000, "quick": 2_000, "tiny": 200}
IDLE_WINDOW_S = {"full": 5.0, "quick": 2.0, "tiny": 1.0}
TIMEOUT_S = {"full": 600.0, "quick": 180.0, "tiny": 120.0}
# Before a workload's first size has run: idle tree MB and MB per unit, generous guesses
# from the quick run (a Ray actor is a worker process of ~87 MB PSS, a rayjupyter one a
# fork of ~6 MB; a nested task holds a blocked worker while its children run).
PRIOR_MB = {
    ("rayjupyter", "tasks"): (200, 0.004),
    ("rayjupyter", "actors"): (200, 8),
    ("rayjupyter", "objects"): (200, 0.004),
    ("rayjupyter", "fanout"): (100, 100),
    ("rayjupyter", "tree"): (200, 8),
    ("ray", "tasks"): (800, 0.02),
    ("ray", "actors"): (800, 90),
    ("ray", "objects"): (800, 0.01),
    ("ray", "fanout"): (300, 250),
    ("ray", "tree"): (800, 40),
}
MEMORY_SHARE = 0.7  # of the machine's available memory, at most, for one row


def units(workload: str, size: int) -> int:
    """What grows: tasks, actors, objects, nodes, or the tree's tasks (2^depth - 1)."""
    return 2**size - 1 if workload == "tree" else size


# --------------------------------------------------------------------------- one row


class Sampler:
    """Samples the PSS of a child (the driver) and of its descendants (the cluster) in a
    thread, keeping the peaks and every process's identity (to kill leftovers by)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = {"driver_mb": 0.0, "node_mb": 0.0, "total_mb": 0.0, "processes": 0}
        self.seen: dict[str, float] = {}  # pid -> create time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                root = psutil.Process(self.pid)
                rest = root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for proc in [root, *rest]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    self.seen.setdefault(str(proc.pid), proc.create_time())
            driver = procs.tree_memory([self.pid])[1] / MB
            _, node_bytes, count = procs.tree_memory([p.pid for p in rest])
            node = node_bytes / MB
            peak = self.peak
            peak["driver_mb"] = max(peak["driver_mb"], driver)
            peak["node_mb"] = max(peak["node_mb"], node)
            peak["total_mb"] = max(peak["total_mb"], driver + node)
            peak["processes"] = max(peak["processes"], count + 1)
            # a big tree takes long to read: sample less often, so the reading stays light
            self._stop.wait(max(0.25, 3 * (time.perf_counter() - t0)))


def run_row(
    backend: str, workload: str, size: int, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """One fresh child for one row, sampled from here; a timeout or death is recorded."""
    out = workdir / f"{backend}-{workload}-{size}.json"
    log = out.with_suffix(".log")
    cmd = [sys.executable, "-m", "benchmarks.scale_child", backend, workload, str(size)]
    cmd += ["--out", str(out), "--num-cpus", str(args.num_cpus)]
    cmd += ["--fanout-tasks", str(args.fanout_tasks), "--idle-window", str(args.idle_window)]
    cmd += ["--stack-dump-after", str(max(1.0, args.timeout - 5))]
    row: dict[str, Any] = {"backend": backend, "workload": workload, "size": size}
    t0 = time.perf_counter()
    reason, sampler = _run_sampled(cmd, args.timeout, log)
    row["wall_s"] = time.perf_counter() - t0
    got = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    row["metrics"] = got.get("metrics", {})
    row["peak"] = dict(sampler.peak)
    leftovers = _kill_leftovers(sampler.seen)
    if reason and reason.startswith("timed out"):
        row["status"] = f"timeout after {args.timeout:.0f} s (in {got.get('phase', 'start')})"
    elif reason:
        why = got.get("error") or _tail(log)
        row["status"] = f"died: {why} ({reason})"
    elif row["metrics"].get("wrong_results"):
        row["status"] = f"died: {row['metrics']['wrong_results']} wrong results"
    else:
        row["status"] = "ok"
    if reason:
        row["log_tail"] = _tail(log)
    if leftovers:
        row["leftovers_killed"] = leftovers
    return row


def _run_sampled(cmd: list[str], timeout_s: float, log: Path) -> tuple[str | None, Sampler]:
    """As ``runner.run_logged`` (its own session, killed whole at the timeout), sampled."""
    with open(log, "wb") as log_file:
        child = start_logged(cmd, log_file)
        with Sampler(child.pid) as sampler:
            return wait_logged(child, timeout_s), sampler


# --------------------------------------------------------------------------- guards


def not_run_reason(
    backend: str,
    workload: str,
    size: int,
    before: list[dict[str, Any]],
    timeout_s: float,
    memory_share: float = MEMORY_SHARE,
) -> str | None:
    """Why a row should not be started: it would not fit in memory, or in its timeout, going
    by the same workload's largest size already run (or the prior guess)."""
    done = [r for r in before if r["status"] == "ok" and r.get("peak", {}).get("total_mb")]
    n = units(workload, size)
    if done:
        last = done[-1]
        scale = n / units(workload, last["size"])
        metrics = last["metrics"]
        idle = metrics.get("idle_driver_mb", 0) + metrics.get("idle_node_mb", 0)
        if workload == "fanout":
            idle = 0.0  # every node is part of the growth
        peak = max(last["peak"]["total_mb"], metrics.get("held_mb", 0))
        need_mb = idle + (peak - idle) * scale
        work_s = metrics.get("s", 0.0)  # the part that grows; start and settle do not
        need_s = last["wall_s"] - work_s + work_s * scale
    else:
        base, per = PRIOR_MB[(backend, workload)]
        need_mb, need_s = base + per * n, 0.0
    available = psutil.virtual_memory().available / MB
    if need_mb > memory_share * available:
        return f"not run: would need ~{need_mb / 1e3:,.1f} GB, {available / 1e3:,.1f} GB available"
    if need_s > timeout_s:
        return f"not run: would take ~{need_s:,.0f} s, over the {timeout_s:.0f} s timeout"
    return None


def over_worker_limit(actors: int, num_cpus: int) -> str | None:
    """rayjupyter's node runs at most so many worker processes (worker_limit.py: from the
    machine's memory at 32 MiB each, or RAYJUPYTER_MAX_WORKERS); each actor is one, and
    actors past the limit wait for a process to free up: the row could only time out."""
    import os

    from rayjupyter.core import worker_limit

    limit = worker_limit.from_env() or worker_limit.machine_max_workers()
    if actors + num_cpus <= limit:
        return None
    return (
        f"not run: {actors:,} actors and {num_cpus} task workers are over the node's worker "
        f"limit of {limit:,} processes ({worker_limit.MAX_WORKERS_ENV} raises it"
        f"{'' if os.environ.get(worker_limit.MAX_WORKERS_ENV) else '; unset here'})"
    )


def run_suite(args: argparse.Namespace, sizes: dict[str, dict[str, list[int]]]) -> list[dict]:
    """Every row, rayjupyter then Ray for each size, so both see the machine alike."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rj-scale-") as tmp:
        for workload in args.only:
            order = sorted({s for b in args.backends for s in sizes[b][workload]})
            for size in order:
                for backend in args.backends:
                    if size not in sizes[backend][workload]:
                        continue
                    before = [
                        r for r in rows if r["backend"] == backend and r["workload"] == workload
                    ]
                    reason = not_run_reason(
                        backend, workload, size, before, args.timeout, args.memory_share
                    )
                    if reason is None and backend == "rayjupyter" and workload == "actors":
                        reason = over_worker_limit(size, args.num_cpus)
                    if reason is None and any(r["status"] != "ok" for r in before):
                        reason = "not run: a smaller size did not finish"
                    if reason:
                        row = {"backend": backend, "workload": workload, "size": size}
                        row.update(status=reason, metrics={}, peak={})
                    else:
                        row = run_row(backend, workload, size, args, Path(tmp))
                    rows.append(row)
                    _log(f"{workload} {size:,} {backend}: {row['status']} ({_took(row)})")
    return rows


def _took(row: dict[str, Any]) -> str:
    return f"{row['wall_s']:.1f} s" if "wall_s" in row else "skipped"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- command line


def _sizes_arg(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, dict[str, list[int]]]]:
    """The options, and the sizes each backend runs."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="1k/10k tasks, 20/100 actors, ...")
    group.add_argument("--tiny", action="store_true", help="seconds: the test suite's run")
    parser.add_argument("--against", default="ray", choices=("ray", "none"))
    parser.add_argument(
        "--only", default=",".join(WORKLOADS), help="some of " + ",".join(WORKLOADS)
    )
    for workload, what in (
        ("tasks", "queued no-op tasks"),
        ("actors", "actors"),
        ("objects", "small objects"),
        ("fanout", "nodes for the fan-out"),
        ("tree", "tree depths"),
    ):
        flag = (
            "nodes" if workload == "fanout" else "tree-depths" if workload == "tree" else workload
        )
        parser.add_argument(f"--{flag}", type=_sizes_arg, help=f"{what}, comma-separated")
        parser.add_argument(f"--ray-{flag}", type=_sizes_arg, help=f"Ray's {what} (default: ours)")
    parser.add_argument("--fanout-tasks", type=int, help="tasks in the fan-out (full: 10,000)")
    parser.add_argument("--idle-window", type=float, help="seconds the head's idle CPU is read")
    parser.add_argument("--timeout", type=float, help="seconds one row may take")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument(
        "--memory-share",
        type=float,
        default=MEMORY_SHARE,
        help="the most of the available memory one row may be expected to take (0.7)",
    )
    parser.add_argument("--json", type=Path, help="default: results/scale[-quick|-tiny].json")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    args.size = "quick" if args.quick else "tiny" if args.tiny else "full"
    args.only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = set(args.only) - set(WORKLOADS)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    args.backends = ["rayjupyter"] + ([] if args.against == "none" else ["ray"])
    args.fanout_tasks = args.fanout_tasks or FANOUT_TASKS[args.size]
    args.idle_window = args.idle_window or IDLE_WINDOW_S[args.size]
    args.timeout = args.timeout or TIMEOUT_S[args.size]
    ours = dict(SIZES[args.size])
    theirs = {**ours, **(RAY_FULL if args.size == "full" else {})}
    for workload in WORKLOADS:
        attr = {"fanout": "nodes", "tree": "tree_depths"}.get(workload, workload)
        if getattr(args, attr):
            ours[workload] = theirs[workload] = getattr(args, attr)
        if getattr(args, f"ray_{attr}"):
            theirs[workload] = getattr(args, f"ray_{attr}")
    return args, {"rayjupyter": ours, "ray": theirs}


def main(argv: list[str] | None = None) -> int:
    from benchmarks import scale_report

    args, sizes = parse(argv)
    info = machine.machine_info(REPO_ROOT)
    _log(f"scale suite ({args.size}): {', '.join(args.backends)}; {', '.join(args.only)}")
    rows = run_suite(args, sizes)
    record = {
        "machine": info,
        "config": {
            "size": args.size,
            "sizes": {b: sizes[b] for b in args.backends},
            "workloads": args.only,
            "num_cpus": args.num_cpus,
            "fanout_tasks": args.fanout_tasks,
            "idle_window_s": args.idle_window,
            "timeout_s": args.timeout,
            "memory_share": args.memory_share,
        },
        "rows": rows,
    }
    text = scale_report.report(record)
    record["report_markdown"] = text
    print(f"Machine: {machine.summary_line(info)}\n\n{text}")
    suffix = "" if args.size == "full" else f"-{args.size}"
    out = args.json or REPO_ROOT / "benchmarks" / "results" / f"scale{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    _log(f"wrote {out} and {out.with_suffix('.md')}")
    if not args.no_plot:
        from benchmarks import scale_plot

        for path in scale_plot.plot(out):
            _log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
