"""``python -m benchmarks.train``: rayjupyter.train beside Ray Train and plain DDP by torchrun.

Rows: the time from ``fit()`` to the first report with a loop that reports at once (no
framework) and with the LeNet loop under TorchTrainer (workers import torch and join the
process group first); the time per LeNet epoch on 2 workers (median over the epochs after
the first), against the same code under torchrun. Each measurement runs in a fresh child
process, interleaved; the table shows median (min-max) over ``--repeat`` runs and writes
JSON (default ``benchmarks/results/train.json``, the table beside it as ``.md``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import machine

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
ROWS = [
    ("first_report_s", "fit() to first report, no framework (s)"),
    ("torch_first_report_s", "fit() to first report, TorchTrainer (s)"),
    ("epoch_s", "LeNet epoch on 2 workers (s)"),
]


def run_child(name: str, epochs: int, timeout_s: float) -> dict[str, Any]:
    """One measurement in a fresh process; {'error': ...} if it fails or hangs."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.json"
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        module = ["-m", "benchmarks.train_child", name, str(epochs), str(out)]
        if name == "torchrun":
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                *module,
            ]
        else:
            command = [sys.executable, *module]
        try:
            done = subprocess.run(
                command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            return {"error": f"no result within {timeout_s:.0f} s"}
        if done.returncode != 0 or not out.exists():
            return {"error": (done.stderr or done.stdout)[-600:]}
        result: dict[str, Any] = json.loads(out.read_text())
        if "epoch_s" in result:  # the first epoch warms caches up: the median of the rest
            result["epoch_s"] = statistics.median(result["epoch_s"][1:] or result["epoch_s"])
        return result


def summarize(runs: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    values = [run[key] for run in runs if key in run]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def table(summary: dict[str, dict[str, Any]], names: list[str]) -> str:
    def cell(entry: dict[str, float] | None) -> str:
        if entry is None:
            return "-"
        return f"{entry['median']:.3f} ({entry['min']:.3f}-{entry['max']:.3f})"

    peers = [n for n in names if n != "rayjupyter"]
    head = ["measure", *names, *[f"rayjupyter/{p}" for p in peers]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label in ROWS:
        ours = summary["rayjupyter"].get(key)
        ratios = []
        for peer in peers:
            theirs = summary[peer].get(key)
            ratios.append(f"{ours['median'] / theirs['median']:.2f}" if ours and theirs else "-")
        cells = [cell(summary[name].get(key)) for name in names]
        lines.append("| " + " | ".join([label, *cells, *ratios]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__)
    parser.add_argument("--epochs", type=int, default=6, help="LeNet epochs per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per runner")
    parser.add_argument("--against", default="ray,torchrun", help="peers: ray, torchrun, none")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--json", type=Path, default=RESULTS / "train.json")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("torch") is None:
        print("benchmarks.train needs torch (pip install -e '.[train]')", file=sys.stderr)
        return 2
    peers = [p for p in args.against.split(",") if p and p != "none"]
    if "ray" in peers and importlib.util.find_spec("ray") is None:
        print("ray is not installed: Ray Train left out", file=sys.stderr)
        peers.remove("ray")
    names = ["rayjupyter", *peers]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for index in range(args.repeat):
        for name in names:  # interleaved, so the machine's drift hits all alike
            print(f"run {index + 1}/{args.repeat}: {name}", file=sys.stderr, flush=True)
            runs[name].append(run_child(name, args.epochs, args.timeout))
    summary = {name: {key: summarize(runs[name], key) for key, _ in ROWS} for name in names}
    errors = [f"- {name}: {run['error']}" for name in names for run in runs[name] if "error" in run]
    info = machine.machine_info(REPO)
    text = "\n".join(
        [f"Machine: {machine.summary_line(info)}", "", table(summary, names), "", *errors]
    )
    print(text)
    record = {
        "machine": info,
        "epochs": args.epochs,
        "repeat": args.repeat,
        "runs": runs,
        "summary": summary,
        "table_markdown": text,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1, default=str) + "\n")
    args.json.with_suffix(".md").write_text(text + "\n")
    print(f"wrote {args.json} and {args.json.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
