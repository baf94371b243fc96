"""Serve benchmark: rayjupyter.serve beside Ray Serve, each in its own child process.

    python -m benchmarks.serve            # both, writes benchmarks/results/serve.{json,md}
    python -m benchmarks.serve --quick    # fewer requests (results/serve_quick.*)
    python -m benchmarks.serve --against none   # rayjupyter alone

Per backend: a no-op deployment with 1 and 2 replicas, called through a handle (one call
at a time: p50/p99 latency; many at once: requests/s) and over HTTP with httpx
(keep-alive; one at a time: p50/p99; 8 client threads: requests/s); then a batched
deployment (``@serve.batch``, a 1 ms model, up to 32 a batch) called many at once through
a handle: requests/s. Replicas take no CPU reservation (``num_cpus=0``) and
``max_ongoing_requests=100`` in both, so both route the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {
    "full": {"latency": 500, "burst": 2000, "http_latency": 300, "http_each": 150, "threads": 8},
    "quick": {"latency": 100, "burst": 300, "http_latency": 60, "http_each": 30, "threads": 8},
    "tiny": {"latency": 10, "burst": 40, "http_latency": 10, "http_each": 5, "threads": 2},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


def run_child(backend: str, size: dict[str, int]) -> dict[str, Any]:
    """Inside the child: start the runtime, run every measurement, return the metrics."""
    import httpx

    if backend == "rayjupyter":
        import rayjupyter as runtime
        from rayjupyter import serve
    else:
        import ray as runtime
        from ray import serve

    from benchmarks.serve_apps import build

    metrics: dict[str, Any] = {}
    start = time.perf_counter()
    runtime.init(num_cpus=2)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    metrics["start_s"] = time.perf_counter() - start
    apps = build(serve)
    url = f"http://127.0.0.1:{port}"
    for replicas in (1, 2):
        handle = serve.run(
            apps["NoOp"].options(num_replicas=replicas).bind(), name="noop", route_prefix="/noop"
        )
        for _ in range(50):  # warm up: routers, connections
            handle.remote().result()
        samples = []
        for _ in range(size["latency"]):
            begin = time.perf_counter()
            handle.remote().result()
            samples.append(time.perf_counter() - begin)
        metrics[f"handle_{replicas}r"] = _percentiles(samples)
        begin = time.perf_counter()
        responses = [handle.remote() for _ in range(size["burst"])]
        for response in responses:
            response.result()
        metrics[f"handle_{replicas}r"]["rps"] = size["burst"] / (time.perf_counter() - begin)

        with httpx.Client(timeout=30) as client:
            for _ in range(20):
                client.get(f"{url}/noop").raise_for_status()
            samples = []
            for _ in range(size["http_latency"]):
                begin = time.perf_counter()
                client.get(f"{url}/noop").raise_for_status()
                samples.append(time.perf_counter() - begin)
        metrics[f"http_{replicas}r"] = _percentiles(samples)
        errors: list[BaseException] = []

        def hammer(errors: list[BaseException] = errors) -> None:
            with httpx.Client(timeout=30) as client:
                for _ in range(size["http_each"]):
                    try:
                        client.get(f"{url}/noop").raise_for_status()
                    except Exception as error:
                        errors.append(error)

        threads = [threading.Thread(target=hammer) for _ in range(size["threads"])]
        begin = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        total = size["threads"] * size["http_each"]
        metrics[f"http_{replicas}r"]["rps"] = total / (time.perf_counter() - begin)
        metrics[f"http_{replicas}r"]["errors"] = len(errors)
        serve.delete("noop")

    handle = serve.run(apps["Batched"].bind(), name="batched", route_prefix="/batched")
    for _ in range(20):
        handle.predict.remote(0).result()
    begin = time.perf_counter()
    responses = [handle.predict.remote(i) for i in range(size["burst"])]
    assert [r.result() for r in responses] == list(range(size["burst"]))
    metrics["batched_1ms"] = {"rps": size["burst"] / (time.perf_counter() - begin)}
    serve.shutdown()
    runtime.shutdown()
    return metrics


ROWS = [
    ("handle, 1 replica: p50 ms", "handle_1r", "p50_ms"),
    ("handle, 1 replica: p99 ms", "handle_1r", "p99_ms"),
    ("handle, 1 replica: requests/s", "handle_1r", "rps"),
    ("handle, 2 replicas: p50 ms", "handle_2r", "p50_ms"),
    ("handle, 2 replicas: p99 ms", "handle_2r", "p99_ms"),
    ("handle, 2 replicas: requests/s", "handle_2r", "rps"),
    ("HTTP, 1 replica: p50 ms", "http_1r", "p50_ms"),
    ("HTTP, 1 replica: p99 ms", "http_1r", "p99_ms"),
    ("HTTP, 1 replica: requests/s (8 clients)", "http_1r", "rps"),
    ("HTTP, 2 replicas: p50 ms", "http_2r", "p50_ms"),
    ("HTTP, 2 replicas: p99 ms", "http_2r", "p99_ms"),
    ("HTTP, 2 replicas: requests/s (8 clients)", "http_2r", "rps"),
    ("batched 1 ms model via handle: requests/s", "batched_1ms", "rps"),
    ("serve.start incl. init: s", "start_s", None),
]


def table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    header = (
        "| measure | " + " | ".join(names) + (" | rayjupyter/ray |" if len(names) == 2 else " |")
    )
    lines = [header, "|" + "---|" * (len(names) + 1 + (len(names) == 2))]
    for label, key, field in ROWS:
        values = []
        for name in names:
            metrics = results[name].get("metrics", {})
            value = metrics.get(key) if field is None else metrics.get(key, {}).get(field)
            values.append(value)
        cells = ["n/a" if v is None else f"{v:.3g}" for v in values]
        if len(names) == 2:
            ratio = values[0] / values[1] if None not in values and values[1] else None
            cells.append("n/a" if ratio is None else f"{ratio:.2f}x")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__)
    parser.add_argument("--child", choices=["rayjupyter", "ray"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="a smoke run (the test suite's)")
    parser.add_argument("--against", default="ray", choices=["ray", "none"])
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    size_name = "tiny" if args.tiny else "quick" if args.quick else "full"
    size = SIZES[size_name]
    if args.child:  # inside a child: one backend, the metrics to --out
        assert args.out is not None
        try:
            data: dict[str, Any] = {"metrics": run_child(args.child, size)}
        except Exception as error:
            data = {"error": f"{type(error).__name__}: {error}"}
        args.out.write_text(json.dumps(data))
        return 0
    backends = ["rayjupyter"] + ([] if args.against == "none" else ["ray"])
    results: dict[str, dict[str, Any]] = {}
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for backend in backends:
        print(f"running {backend} ...", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            command = [sys.executable, "-m", "benchmarks.serve", "--child", backend]
            command += ["--out", str(out)] + ([f"--{size_name}"] if size_name != "full" else [])
            try:
                subprocess.run(command, env=env, cwd=root, timeout=args.timeout, check=False)
                results[backend] = (
                    json.loads(out.read_text())
                    if out.exists()
                    else {"error": "the child wrote no result"}
                )
            except subprocess.TimeoutExpired:
                results[backend] = {"error": f"timed out after {args.timeout} s"}
    report = table(results)
    errors = {name: r["error"] for name, r in results.items() if "error" in r}
    print(report)
    for name, error in errors.items():
        print(f"{name}: {error}")
    path = args.json or RESULTS / (
        f"serve_{size_name}.json" if size_name != "full" else "serve.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"size": size, "results": results, "table_markdown": report}
    try:
        from benchmarks.machine import machine_info

        record["machine"] = machine_info(root)
    except Exception as error:  # the record is still useful without it
        record["machine"] = f"unknown: {error}"
    path.write_text(json.dumps(record, indent=2))
    path.with_suffix(".md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
