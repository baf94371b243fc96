"""Cross-node figures: task latency to a peer node and a 1 GB transfer between nodes.

Run: ``python -m benchmarks.multinode [--size-mb 1024] [--calls 500] [--json PATH]``.
A head (this driver's local cluster) and one node that joins it, both on this machine
over TCP on loopback (CurveZMQ), each with its own worker and shared-memory store, so the
transfer is a real pull: 8 MB chunks over a socket into the other store.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

import rayjupyter as rj
from rayjupyter.core.config import NodeConfig
from rayjupyter.core.launcher import LocalCluster


@rj.remote
def noop() -> None:
    return None


@rj.remote
def make(nbytes: int) -> np.ndarray:
    return np.ones(nbytes // 8, dtype=np.float64)


@rj.remote
def total(array: np.ndarray) -> float:
    return float(array.sum())


def latency_us(resources: dict[str, float], calls: int) -> tuple[float, float]:
    """Median and p99 of a synchronous no-op task pinned by ``resources``, in us."""
    pinned = noop.options(resources=resources)
    for _ in range(50):
        rj.get(pinned.remote())
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        rj.get(pinned.remote())
        times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def transfer(nbytes: int, repeat: int) -> list[float]:
    """Seconds to pull an ``nbytes`` value made on the peer into the head's store."""
    seconds = []
    for _ in range(repeat):
        ref = make.options(resources={"peer": 1}).remote(nbytes)
        # a task on the peer that needs the value: done when it exists there
        rj.get(total.options(resources={"peer": 1}).remote(ref), timeout=300)
        start = time.perf_counter()
        array = rj.get(ref, timeout=300)  # pulled to this node, then mapped zero-copy
        seconds.append(time.perf_counter() - start)
        assert array.shape == (nbytes // 8,)
        del array, ref
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/results/multinode.json")
    args = parser.parse_args(argv)

    head = rj.init(num_cpus=1, resources={"here": 1}, object_store_memory=3 << 30)
    config = NodeConfig(
        num_cpus=1,
        resources={"peer": 1},
        head_address=head.address,
        object_store_memory=3 << 30,
        sys_path=list(sys.path),
        owner_pid=os.getpid(),
    )
    peer = LocalCluster(config, secret=head._secret)
    try:
        while sum(1 for n in rj.nodes() if n["Alive"]) < 2:
            time.sleep(0.05)
        same = latency_us({"here": 1}, args.calls)
        cross = latency_us({"peer": 1}, args.calls)
        nbytes = args.size_mb << 20
        seconds = transfer(nbytes, args.repeat)
    finally:
        peer.stop()
        rj.shutdown()

    best = min(seconds)
    rows: list[tuple[str, str]] = [
        ("sync task, same node (median / p99)", f"{same[0]:,.0f} / {same[1]:,.0f} us"),
        ("sync task, on the peer node (median / p99)", f"{cross[0]:,.0f} / {cross[1]:,.0f} us"),
        (
            f"pull {args.size_mb} MB between nodes (best of {args.repeat})",
            f"{nbytes / best / 1e9:.2f} GB/s ({best:.2f} s; all: "
            + ", ".join(f"{s:.2f}" for s in seconds)
            + ")",
        ),
    ]
    print("| workload | rayjupyter |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    result: dict[str, Any] = {
        "same_node_sync_us": {"median": same[0], "p99": same[1]},
        "cross_node_sync_us": {"median": cross[0], "p99": cross[1]},
        "transfer": {"bytes": nbytes, "seconds": seconds, "best_gb_s": nbytes / best / 1e9},
        "machine": {"cpus": os.cpu_count()},
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
