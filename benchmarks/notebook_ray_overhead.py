"""The notebook displays' overhead on a Ray driver: a sync task round trip (``ray.get`` of
one ``f.remote()`` at a time) plain, then with rayjupyter's ``ray.get`` hook installed, a
progress tracker polling a watched list of refs and the resource charts sampling the
cluster (each on the displays' own ticker thread, as in a notebook), interleaved in one
process and one run so drift hits both alike.

    python -m benchmarks.notebook_ray_overhead [--calls 1000] [--rounds 5]

Starts a local Ray (2 CPUs, 200 MB store) and stops it. Prints one JSON object: medians
and p99 per configuration and the overhead ratio. Timings move with the machine's load:
compare only figures from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any


def _round_trips(ray: Any, fn: Any, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        ray.get(fn.remote())
        out.append(time.perf_counter() - start)
    return out


def _attach_displays(ray: Any, fn: Any) -> list[Any]:
    """What a notebook runs beside the work: the hook, a progress tracker, the charts."""
    from rayjupyter.notebook.chart_data import sample
    from rayjupyter.notebook.engines import engine, ray_progress
    from rayjupyter.notebook.progress_display import REFRESH_S, Tracker
    from rayjupyter.notebook.ticker import TICKER

    ray_progress.install_get_hook(ray, only_in_kernel=False)
    watched = [fn.remote() for _ in range(50)]
    tracker = Tracker(ray_progress.RayProgress(watched), [ref.binary() for ref in watched])
    ray_engine = engine("ray")

    def progress() -> bool:
        tracker.poll()
        return True

    def charts() -> bool:
        sample(ray_engine.status(timeout=2.0))
        return True

    return [TICKER.every(REFRESH_S, progress), TICKER.every(1.0, charts)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    ray.init(num_cpus=2, object_store_memory=200_000_000, include_dashboard=False)
    try:
        from rayjupyter.notebook.engines import ray_progress

        @ray.remote
        def noop() -> None:
            return None

        _round_trips(ray, noop, 100)  # warm up the workers
        plain: list[float] = []
        displayed: list[float] = []
        for _ in range(args.rounds):
            plain += _round_trips(ray, noop, args.calls)
            jobs = _attach_displays(ray, noop)
            try:
                displayed += _round_trips(ray, noop, args.calls)
            finally:
                for job in jobs:
                    job.cancel()
                ray_progress.uninstall_get_hook(ray)

        def stats(values: list[float]) -> dict[str, float]:
            ordered = sorted(values)
            return {
                "median_us": statistics.median(ordered) * 1e6,
                "p99_us": ordered[int(len(ordered) * 0.99) - 1] * 1e6,
            }

        result = {
            "calls": args.calls * args.rounds,
            "plain": stats(plain),
            "with_displays": stats(displayed),
            "load_average": os.getloadavg(),
        }
        result["overhead_median"] = (
            result["with_displays"]["median_us"] / result["plain"]["median_us"] - 1.0
        )
        print(json.dumps(result, indent=1))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
