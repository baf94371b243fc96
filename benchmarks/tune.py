"""rayjupyter.tune beside Ray Tune, the same code for both, each in its own fresh process.

    python -m benchmarks.tune                 # 200 trials x 10 reports; ASHA on 64 trials
    python -m benchmarks.tune --tiny          # seconds: 20 trials; ASHA on 8 (smoke run)
    python -m benchmarks.tune --against none  # rayjupyter alone

Rows: "trials/s" is num_samples / the seconds fit() takes for trials that report 10 times
and sleep nothing (higher is better); "ASHA wall" is the seconds fit() takes for ASHA
(max_t=16, grace_period=1, reduction_factor=2) on trials that report ``q * step`` (lower
is better; samples seeded). Both run on ``init(num_cpus=2)`` with verbose=0 and a fresh
storage directory.
Writes a table to stdout and JSON to ``benchmarks/results/tune.json`` (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_info, summary_line

REPO = Path(__file__).resolve().parent.parent
SIZES = {"full": (200, 64), "tiny": (20, 8)}


def reports_ten(config: dict[str, Any]) -> None:
    from benchmarks.tune import _tune

    for step in range(10):
        _tune().report({"score": config["x"] * step})


def climbs(config: dict[str, Any]) -> None:
    from benchmarks.tune import _tune

    for step in range(1, 17):
        _tune().report({"acc": config["q"] * step})


_BACKEND = os.environ.get("TUNE_BENCH_BACKEND", "rayjupyter")


def _tune() -> Any:
    if _BACKEND == "ray":
        from ray import tune
    else:
        from rayjupyter import tune  # type: ignore[no-redef]
    return tune


def child(backend: str, trials: int, asha_trials: int, out: Path) -> None:
    """Run both workloads on ``backend`` in this process and write the numbers to ``out``."""
    if backend == "ray":
        import ray as rj
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search import BasicVariantGenerator
    else:
        import rayjupyter as rj  # type: ignore[no-redef]
        from rayjupyter.tune.schedulers import ASHAScheduler  # type: ignore[assignment]
        from rayjupyter.tune.search import BasicVariantGenerator  # type: ignore[assignment]
    tune = _tune()
    result: dict[str, Any] = {"backend": backend}
    rj.init(num_cpus=2)
    try:
        with tempfile.TemporaryDirectory() as storage:
            start = time.perf_counter()
            grid = tune.Tuner(
                reports_ten,
                param_space={"x": tune.uniform(0, 1)},
                tune_config=tune.TuneConfig(num_samples=trials),
                run_config=tune.RunConfig(storage_path=storage, name="many", verbose=0),
            ).fit()
            seconds = time.perf_counter() - start
            assert grid.num_errors == 0 and len(grid) == trials, grid.errors
            result["trials_per_s"] = trials / seconds
            result["many_s"] = seconds
            out.write_text(json.dumps(result))  # a run killed later still reports this
            start = time.perf_counter()
            grid = tune.Tuner(
                climbs,
                param_space={"q": tune.uniform(0, 1)},
                tune_config=tune.TuneConfig(
                    metric="acc",
                    mode="max",
                    num_samples=asha_trials,
                    search_alg=BasicVariantGenerator(random_state=0),
                    scheduler=ASHAScheduler(max_t=16, grace_period=1, reduction_factor=2),
                ),
                run_config=tune.RunConfig(storage_path=storage, name="asha", verbose=0),
            ).fit()
            result["asha_s"] = time.perf_counter() - start
            result["asha_iterations"] = int(sum(r.metrics["training_iteration"] for r in grid))
    finally:
        rj.shutdown()
    out.write_text(json.dumps(result))


def run_child(backend: str, size: str, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        log = Path(tmp) / "log.txt"
        env = {**os.environ, "TUNE_BENCH_BACKEND": backend, "PYTHONPATH": str(REPO)}
        env.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        cmd = [sys.executable, "-m", "benchmarks.tune", "--child", backend, "--size", size]
        cmd += ["--out", str(out)]
        with open(log, "w") as f:
            try:
                done = subprocess.run(cmd, env=env, stdout=f, stderr=f, timeout=timeout)
            except subprocess.TimeoutExpired:
                partial = json.loads(out.read_text()) if out.exists() else {}
                return {**partial, "backend": backend, "error": f"timed out after {timeout:.0f} s"}
        if done.returncode != 0 or not out.exists():
            tail = log.read_text()[-800:]
            return {"backend": backend, "error": f"exit {done.returncode}: {tail}"}
        data: dict[str, Any] = json.loads(out.read_text())
        return data


def table(results: list[dict[str, Any]], trials: int, asha: int) -> str:
    rows = [
        (f"{trials} trials x 10 reports, trials/s (higher)", "trials_per_s"),
        (f"ASHA on {asha} trials, wall s (lower)", "asha_s"),
        (f"ASHA on {asha} trials, iterations run", "asha_iterations"),
    ]
    names = [r["backend"] for r in results]
    lines = ["| workload | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key in rows:
        cells = []
        for r in results:
            value = r.get(key)
            cells.append("error" if value is None else f"{value:.3g}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for r in results:
        if "error" in r:
            lines.append(f"\n{r['backend']}: {r['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tune", description=__doc__)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--tiny", action="store_true", help="the smoke-run size")
    parser.add_argument("--against", default="ray", help="'ray' (default) or 'none'")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per backend")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks/results/tune.json")
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else args.size
    trials, asha = SIZES[size]
    if args.child:
        child(args.child, trials, asha, args.out)
        return 0
    backends = ["rayjupyter"] + ([] if args.against == "none" else ["ray"])
    results = []
    for backend in backends:
        print(f"running {backend} ...", file=sys.stderr, flush=True)
        results.append(run_child(backend, size, args.timeout))
    info = machine_info(REPO)
    text = table(results, trials, asha)
    print(summary_line(info))
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"machine": info, "size": size, "results": results}, indent=2, default=str)
    )
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
