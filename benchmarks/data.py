"""Data workloads, rayjupyter.data beside Ray Data, each backend in its own child process.

    python -m benchmarks.data                 # the issue's sizes: 4 GB, 2 GB, 1 GB, 10 M rows
    python -m benchmarks.data --quick         # a tenth of them
    python -m benchmarks.data --tiny --against none   # seconds, rayjupyter only
    python -m benchmarks.data --only map_batches --against none   # one row, one side

The same code runs for both: ``data`` is ``rayjupyter.data`` or ``ray.data``. The peak memory
is the whole process tree's PSS (driver, daemons, workers), sampled every 0.2 s while the
workload runs; the store peak is rayjupyter's shared-memory use (Ray's is not public: n/a).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import procs
from benchmarks.runner import REPO_ROOT, _tail, run_logged

ROW_FLOATS = 1024  # one tensor row: 8 KiB
SIZES = {  # map_batches bytes, parquet bytes, shuffle bytes, groupby rows
    "full": (4e9, 2e9, 1e9, 10_000_000),
    "quick": (4e8, 2e8, 1e8, 1_000_000),
    "tiny": (4e7, 2e7, 1e7, 100_000),
}


# --------------------------------------------------------------------------- the UDFs


def double(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"data": batch["data"] * 2}


def add_total(table: Any) -> Any:
    import pyarrow.compute as pc

    return table.append_column("total", pc.add(table["a"], table["b"]))


def key_value(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"k": batch["id"] % 100, "v": batch["id"] * 0.5}


# --------------------------------------------------------------------------- the child


class PeakPss:
    """The process tree's summed PSS, sampled in a thread while a workload runs."""

    def __init__(self, store: Any = None) -> None:
        self.peak = 0
        self.store_peak = 0
        self.store = store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            pids = [me.pid] + [p.pid for p in me.children(recursive=True)]
            self.peak = max(self.peak, procs.tree_memory(pids)[1])
            if self.store is not None:
                self.store_peak = max(self.store_peak, self.store())
            self._stop.wait(0.2)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _setup(backend: str, num_cpus: int) -> tuple[Any, Any, Any]:
    if backend == "rayjupyter":
        import rayjupyter as rt
        from rayjupyter.core import api, queries

        rt.init(num_cpus=num_cpus)

        def store() -> int:
            return int(queries.store_stats(api._client()).used_bytes)

        data = rt.data
    else:
        import ray as rt

        rt.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        store = None
        data = rt.data
    data.DataContext.get_current().enable_progress_bars = False
    return rt, data, store


WORKLOADS = ("map_batches", "parquet_pipeline", "random_shuffle", "groupby_mean")


def run_child(
    backend: str, size: str, num_cpus: int, out: Path, only: tuple[str, ...] = WORKLOADS
) -> None:
    result: dict[str, Any] = {"backend": backend, "metrics": {}, "errors": {}}

    def save() -> None:
        out.write_text(json.dumps(result, indent=1), encoding="utf-8")

    save()
    rt, data, store = _setup(backend, num_cpus)
    map_bytes, parquet_bytes, shuffle_bytes, groupby_rows = SIZES[size]
    work = Path(tempfile.mkdtemp(prefix="rj-data-bench-"))

    def step(name: str, fn: Any) -> None:
        try:
            with PeakPss(store) as peak:
                t0 = time.perf_counter()
                extra = fn()
                took = time.perf_counter() - t0
            result["metrics"][name] = {"s": took, "peak_pss_mb": peak.peak / 1e6, **extra}
            if store is not None:
                result["metrics"][name]["store_peak_mb"] = peak.store_peak / 1e6
        except Exception as exc:  # one failed workload does not stop the others
            result["errors"][name] = f"{type(exc).__name__}: {exc}"
        save()

    def map_batches() -> dict[str, Any]:
        rows = int(map_bytes // (ROW_FLOATS * 8))
        ds = data.range_tensor(rows, shape=(ROW_FLOATS,)).map_batches(double)
        seen = sum(len(b["data"]) for b in ds.iter_batches(batch_size=None))
        assert seen == rows, (seen, rows)
        return {"rows": rows}

    def parquet() -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        src = work / "in"
        src.mkdir()
        files = 16
        rows = int(parquet_bytes // 16 // files)  # two float64 columns
        for i in range(files):
            table = pa.table({"a": np.random.default_rng(i).random(rows), "b": np.ones(rows)})
            pq.write_table(table, src / f"f{i}.parquet", row_group_size=rows // 4 or 1)
        t0 = time.perf_counter()
        data.read_parquet(str(src)).map_batches(add_total, batch_format="pyarrow").write_parquet(
            str(work / "out")
        )
        took = time.perf_counter() - t0
        written = sum(pq.read_metadata(p).num_rows for p in (work / "out").glob("*.parquet"))
        assert written == rows * files, (written, rows * files)
        return {"rows": rows * files, "pipeline_s": took}

    def shuffle() -> dict[str, Any]:
        rows = int(shuffle_bytes // (ROW_FLOATS * 8))
        ds = data.range_tensor(rows, shape=(ROW_FLOATS,)).random_shuffle().materialize()
        assert ds.count() == rows
        return {"rows": rows}

    def groupby() -> dict[str, Any]:
        ds = data.range(groupby_rows).map_batches(key_value).groupby("k").mean("v")
        out = ds.take_all()
        assert len(out) == 100, len(out)
        return {"rows": groupby_rows}

    for name, fn in zip(WORKLOADS, (map_batches, parquet, shuffle, groupby), strict=True):
        if name in only:
            step(name, fn)
    rt.shutdown()
    save()


# --------------------------------------------------------------------------- the parent


def _run(
    backend: str, size: str, num_cpus: int, timeout_s: float, workdir: Path, only: list[str]
) -> dict:
    out = workdir / f"{backend}.json"
    log = out.with_suffix(".log")
    cmd = [sys.executable, "-m", "benchmarks.data", "--child", backend, "--size", size]
    cmd += ["--num-cpus", str(num_cpus), "--out", str(out), "--only", *only]
    reason = run_logged(cmd, timeout_s, log)
    run = json.loads(out.read_text()) if out.exists() else {"metrics": {}, "errors": {}}
    if reason:
        run["errors"]["process"] = f"{reason}; log tail: {_tail(log)}"
    return run


ROWS = (  # label, workload, metric, better
    ("map_batches {map}: rows/s", "map_batches", "rows_per_s", "higher"),
    ("map_batches {map}: peak PSS MB", "map_batches", "peak_pss_mb", "lower"),
    ("map_batches {map}: peak store MB", "map_batches", "store_peak_mb", "lower"),
    ("read_parquet->map_batches->write_parquet {pq}: s", "parquet_pipeline", "pipeline_s", "lower"),
    ("  ... peak PSS MB", "parquet_pipeline", "peak_pss_mb", "lower"),
    ("random_shuffle {shuffle}: s", "random_shuffle", "s", "lower"),
    ("  ... peak PSS MB", "random_shuffle", "peak_pss_mb", "lower"),
    ("groupby().mean() {rows}: s", "groupby_mean", "s", "lower"),
    ("  ... peak PSS MB", "groupby_mean", "peak_pss_mb", "lower"),
)


def table(results: dict[str, dict], size: str) -> str:
    m, p, s, r = SIZES[size]
    fmt = {
        "map": f"{m / 1e9:g} GB",
        "pq": f"{p / 1e9:g} GB",
        "shuffle": f"{s / 1e9:g} GB",
        "rows": f"{r:,} rows",
    }
    names = list(results)
    lines = [
        "| workload | " + " | ".join(names) + " | ratio rj/peer |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for label, workload, metric, better in ROWS:
        cells, values = [], []
        for name in names:
            got = results[name]["metrics"].get(workload, {})
            value = got.get(metric)
            if metric == "rows_per_s" and got:
                value = got["rows"] / got["s"]
            values.append(value)
            cells.append("n/a" if value is None else f"{value:,.1f}")
        ratio = ""
        if len(values) == 2 and None not in values and values[1]:
            ratio = f"{values[0] / values[1]:.2f} ({better} is better)"
        lines.append(f"| {label.format(**fmt)} | " + " | ".join(cells) + f" | {ratio} |")
    for name in names:
        for step, error in results[name]["errors"].items():
            lines.append(f"\n{name} {step}: {error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data", description=__doc__)
    parser.add_argument("--child")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--against", default="ray", help="ray or none")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS), help="workloads to run"
    )
    args = parser.parse_args(argv)
    size = "quick" if args.quick else "tiny" if args.tiny else args.size
    if args.child:
        run_child(args.child, size, args.num_cpus, args.out, tuple(args.only))
        return 0
    backends = ["rayjupyter"] + ([] if args.against == "none" else ["ray"])
    results = {}
    with tempfile.TemporaryDirectory(prefix="rj-data-bench-") as workdir:
        for backend in backends:
            print(f"running {backend} ({size})...", file=sys.stderr)
            results[backend] = _run(
                backend, size, args.num_cpus, args.timeout, Path(workdir), args.only
            )
    text = table(results, size)
    print(text)
    partial = args.against == "none" or len(args.only) < len(WORKLOADS)
    default = f"data-{size}{'-partial' if partial else ''}.json"  # the full table stays
    path = args.json or REPO_ROOT / "benchmarks" / "results" / default
    path.write_text(json.dumps({"size": size, "results": results}, indent=1), encoding="utf-8")
    path.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    sys.exit(main())
