"""Across nodes, rayjupyter beside Ray: task latency to a peer node and values pulled between
two nodes on this machine, each backend in a fresh process of its own.

    python -m benchmarks.multinode                    # 100 MB and 1 GB, best of 3, 8 GB stores
    python -m benchmarks.multinode --sizes-mb 100 --repeat 2 --against none

A head (the driver's local cluster) and one node that joins it, on this machine, each with
one CPU and its own shared-memory store of ``--store-gb`` (8: about the default here, 30% of
RAM; rayjupyter reuses freed files of up to a quarter of the store, so a 3 GB store leaves
each 1 GB pull to fault in fresh tmpfs pages; Ray gets the same store size): rayjupyter's
``LocalCluster`` joined to ``rj.init``'s head, Ray's ``ray.cluster_utils.Cluster`` with one
added node. A value is made by a task on the peer node (and used there once, so it
exists), then the timed ``get`` on the driver pulls it into the head's store and maps it:
GB/s is the value's bytes over that get's seconds (best of ``--repeat``; all in the JSON).

Columns: "rayjupyter" links peers on one machine over the node's Unix socket (the default,
no encryption on a link that never leaves the kernel); "rayjupyter, CurveZMQ" forces TCP
with CurveZMQ, as between machines (``RAYJUPYTER_PEER_CURVE_ON_LOOPBACK=1``): the
difference is what encryption costs. Ray sends over gRPC without TLS by default.
Writes a table to stdout and JSON to ``benchmarks/results/multinode.json`` (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STORE_BYTES = int(os.environ.get("MULTINODE_STORE_GB", "8")) << 30  # each node's store
BACKENDS = {  # column -> (backend, extra environment)
    "rayjupyter": ("rayjupyter", {}),
    "rayjupyter, CurveZMQ": ("rayjupyter", {"RAYJUPYTER_PEER_CURVE_ON_LOOPBACK": "1"}),
    "ray": ("ray", {}),
}


def _functions(rj: Any) -> tuple[Any, Any, Any]:
    import numpy as np

    @rj.remote
    def noop() -> None:
        return None

    @rj.remote
    def make(nbytes: int) -> Any:
        return np.ones(nbytes // 8, dtype=np.float64)

    @rj.remote
    def total(array: Any) -> float:
        return float(array.sum())

    return noop, make, total


def latency_us(rj: Any, noop: Any, resources: dict[str, float], calls: int) -> dict[str, float]:
    """Median and p99 of a synchronous no-op task pinned by ``resources``, in us."""
    pinned = noop.options(resources=resources)
    for _ in range(20):
        rj.get(pinned.remote())
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        rj.get(pinned.remote())
        times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    return {"median": statistics.median(times), "p99": times[max(int(len(times) * 0.99) - 1, 0)]}


def transfer(rj: Any, make: Any, total: Any, nbytes: int, repeat: int) -> list[float]:
    """Seconds to pull an ``nbytes`` value made on the peer into the head's store."""
    seconds = []
    for _ in range(repeat):
        ref = make.options(resources={"peer": 1}).remote(nbytes)
        # a task on the peer that needs the value: done when it exists there
        rj.get(total.options(resources={"peer": 1}).remote(ref), timeout=300)
        start = time.perf_counter()
        array = rj.get(ref, timeout=300)  # pulled to the head's node, then mapped
        seconds.append(time.perf_counter() - start)
        assert array.shape == (nbytes // 8,)
        del array, ref
        time.sleep(0.5)  # the freed 1 GB leave both stores before the next round
    return seconds


def _start(backend: str) -> tuple[Any, Any]:
    """The driver's module (rj or ray) on a head and one peer node; and how to stop them."""
    if backend == "ray":
        import ray
        from ray.cluster_utils import Cluster

        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "resources": {"here": 1},
                "object_store_memory": STORE_BYTES,
            },
        )
        cluster.add_node(num_cpus=1, resources={"peer": 1}, object_store_memory=STORE_BYTES)
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()

        def stop_ray() -> None:
            ray.shutdown()
            cluster.shutdown()

        return ray, stop_ray

    import rayjupyter as rj
    from rayjupyter.core.config import NodeConfig
    from rayjupyter.core.launcher import LocalCluster

    head = rj.init(num_cpus=1, resources={"here": 1}, object_store_memory=STORE_BYTES)
    config = NodeConfig(
        num_cpus=1,
        resources={"peer": 1},
        head_address=head.address,
        object_store_memory=STORE_BYTES,
        sys_path=list(sys.path),
        owner_pid=os.getpid(),
    )
    peer = LocalCluster(config, secret=head._secret)
    while sum(1 for n in rj.nodes() if n["Alive"]) < 2:
        time.sleep(0.05)

    def stop_rj() -> None:
        peer.stop()
        rj.shutdown()

    return rj, stop_rj


def child(backend: str, sizes_mb: list[int], repeat: int, calls: int, out: Path) -> None:
    """One backend's figures, written to ``out`` as JSON."""
    rj, stop = _start(backend)
    result: dict[str, Any] = {"backend": backend, "transfers": {}}
    try:
        noop, make, total = _functions(rj)
        result["same_node_sync_us"] = latency_us(rj, noop, {"here": 1}, calls)
        result["cross_node_sync_us"] = latency_us(rj, noop, {"peer": 1}, calls)
        for size in sizes_mb:
            nbytes = size << 20
            seconds = transfer(rj, make, total, nbytes, repeat)
            best = min(seconds)
            result["transfers"][str(size)] = {
                "bytes": nbytes,
                "seconds": seconds,
                "best_gb_s": nbytes / best / 1e9,
            }
            out.write_text(json.dumps(result))  # (what was measured, if a later size fails)
    finally:
        stop()
    out.write_text(json.dumps(result))


def run_child(column: str, args: argparse.Namespace) -> dict[str, Any]:
    backend, extra = BACKENDS[column]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        log = Path(tmp) / "log.txt"
        env = {**os.environ, **extra, "PYTHONPATH": str(REPO)}
        env["MULTINODE_STORE_GB"] = str(args.store_gb)
        cmd = [sys.executable, "-m", "benchmarks.multinode", "--child", backend]
        cmd += ["--sizes-mb", ",".join(map(str, args.sizes)), "--repeat", str(args.repeat)]
        cmd += ["--calls", str(args.calls), "--out", str(out)]
        with open(log, "w") as f:
            try:
                done = subprocess.run(cmd, env=env, stdout=f, stderr=f, timeout=args.timeout)
                error = "" if done.returncode == 0 else f"exit {done.returncode}"
            except subprocess.TimeoutExpired:
                error = f"timed out after {args.timeout:.0f} s"
        data: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
        if error:
            data["error"] = f"{error}: {log.read_text()[-800:]}"
        data["column"] = column
        return data


def table(results: list[dict[str, Any]], sizes: list[int], repeat: int) -> str:
    names = [r["column"] for r in results]
    lines = ["| workload | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    def latency(key: str) -> list[str]:
        cells = []
        for r in results:
            value = r.get(key)
            cells.append("-" if not value else f"{value['median']:,.0f} / {value['p99']:,.0f} us")
        return cells

    lines.append(
        "| sync task, same node (median / p99) | " + " | ".join(latency("same_node_sync_us")) + " |"
    )
    lines.append(
        "| sync task, on the peer node (median / p99) | "
        + " | ".join(latency("cross_node_sync_us"))
        + " |"
    )
    for size in sizes:
        cells = []
        for r in results:
            t = r.get("transfers", {}).get(str(size))
            cells.append(
                "-" if t is None else f"{t['best_gb_s']:.2f} GB/s ({min(t['seconds']):.2f} s)"
            )
        label = f"pull {size} MB between nodes, GB/s (best of {repeat}, higher)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for r in results:
        if "error" in r:
            lines.append(f"\n{r['column']}: {r['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-mb", default="100,1024")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--against", default="ray", help="'ray' (default) or 'none'")
    parser.add_argument("--no-curve", action="store_true", help="skip the CurveZMQ column")
    parser.add_argument(
        "--store-gb",
        type=int,
        default=8,
        help="each node's store (rayjupyter pools freed files of up to a quarter of it)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per backend, seconds")
    parser.add_argument("--json", default="benchmarks/results/multinode.json")
    parser.add_argument("--child", choices=["rayjupyter", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes_mb.split(",") if s]
    if args.child:
        child(args.child, args.sizes, args.repeat, args.calls, Path(args.out))
        return 0

    from benchmarks.machine import machine_info, summary_line

    columns = ["rayjupyter"] + ([] if args.no_curve else ["rayjupyter, CurveZMQ"])
    columns += [] if args.against == "none" else ["ray"]
    results = [run_child(column, args) for column in columns]
    info = machine_info(REPO)
    print(summary_line(info))
    print(table(results, args.sizes, args.repeat))
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": info, "results": results}, f, indent=1)
    print(f"\nwritten: {args.json}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
