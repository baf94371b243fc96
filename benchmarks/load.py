"""The load test: many queued tasks from several drivers at once, while a separate client
keeps asking the node for its status.

    python -m benchmarks.load                       # full size: 1,000,000 tasks from one
                                                    # driver and 100,000 from each of 4 others
    python -m benchmarks.load --one 50000 --each 10000 --json /tmp/load.json

One local cluster (``rj.init``) in this process; every driver is a process of its own that
attaches by address, submits its tasks as fast as it can (keeping every ref, so the node
queues them) and then gets them all, checking each result. Meanwhile this process asks
the node for ``GetStatus`` over a connection of its own (an observer client) every
``--status-every`` seconds, and samples the PSS of the node's process tree. It prints a
table (peak PSS, longest status answer, tasks/s) and writes the figures as JSON.

The test suite runs it at reduced sizes (``tests/test_load.py``); its only timing check is
liveness: every status answer comes within a generous bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from benchmarks.procs import tree_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class LoadResult:
    """What one run measured."""

    drivers: list[int]  # tasks per driver
    tasks: int = 0  # all drivers together
    wall_s: float = 0.0  # from the drivers' start to the last one's end
    tasks_per_s: float = 0.0
    status_answers: int = 0
    status_max_s: float = 0.0  # the longest wait for a status answer
    status_p99_s: float = 0.0
    status_failures: list[str] = field(default_factory=list)
    peak_pss_bytes: int = 0  # the node and its workers, summed
    peak_rss_bytes: int = 0
    idle_pss_bytes: int = 0  # before the drivers start
    peak_queued: int = 0  # most tasks the node held at once (status: every state but done)
    driver_reports: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- one driver


def run_driver(address: str, count: int, leave: bool = False) -> dict[str, Any]:
    """Attach, submit ``count`` no-op tasks keeping every ref, then get them all; with
    ``leave``, exit at once instead (the node is left with the queue)."""
    import rayjupyter as rj
    from benchmarks.tasks import noop

    rj.init(address=address)
    try:
        remote_noop = rj.remote(noop)
        start = time.monotonic()
        refs = [remote_noop.remote() for _ in range(count)]
        submitted = time.monotonic()
        if leave:
            report = {"tasks": count, "submit_s": submitted - start, "total_s": 0.0}
            print(json.dumps({**report, "wrong_results": 0}), flush=True)
            os._exit(0)  # gone without a word, its tasks queued: the node lets them go
        values = rj.get(refs, timeout=3600)
        done = time.monotonic()
        wrong = sum(1 for value in values if value is not None)
        return {
            "tasks": count,
            "submit_s": submitted - start,
            "total_s": done - start,
            "wrong_results": wrong,
        }
    finally:
        rj.shutdown()


# ---------------------------------------------------------------------- watching the node


class Watcher:
    """Asks the node for its status over a connection of its own and samples its memory."""

    def __init__(self, hostport: str, secret: str, node_pids: list[int], every_s: float):
        from rayjupyter.core.client import Client

        self.client = Client(hostport, secret, kind="observer", timeout=10.0, io_thread=False)
        self.node_pids = node_pids
        self.every_s = every_s
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.peak_pss = 0
        self.peak_rss = 0
        self.peak_queued = 0
        self.held = -1  # tasks the node held at its last answer
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._ask, daemon=True),
            threading.Thread(target=self._sample, daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self.client.close()

    def _ask(self) -> None:
        from rayjupyter.core import queries

        while not self._stop.is_set():
            start = time.monotonic()
            try:
                status = queries.status(self.client, timeout=30.0)
            except Exception as exc:  # recorded: the run reports it and fails
                self.failures.append(f"{type(exc).__name__}: {exc}")
                self.latencies.append(time.monotonic() - start)
            else:
                self.latencies.append(time.monotonic() - start)
                self.held = sum(n for state, n in status.tasks.items())
                self.peak_queued = max(self.peak_queued, self.held)
            self._stop.wait(self.every_s)

    def wait_drained(self, timeout: float) -> None:
        """Until the node holds no task (the drivers left theirs behind)."""
        deadline = time.monotonic() + timeout
        while (self.held != 0 or not self.latencies) and time.monotonic() < deadline:
            time.sleep(0.2)

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss, pss, _ = tree_memory(node_tree(self.node_pids[0]))
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self._stop.wait(0.5)


def node_tree(node_pid: int) -> list[int]:
    """The node and every process under it (its workers)."""
    try:
        node = psutil.Process(node_pid)
        return [node_pid] + [child.pid for child in node.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


# ---------------------------------------------------------------------- the run


def run(
    one: int, each: int, drivers: int, every_s: float, num_cpus: int, leave: bool = False
) -> LoadResult:
    """One cluster, one driver with ``one`` tasks and ``drivers`` more with ``each``;
    ``leave``: the drivers exit once they have submitted, and the run lasts until the node
    has no task left."""
    import rayjupyter as rj

    counts = [one] + [each] * drivers
    counts = [count for count in counts if count > 0]
    result = LoadResult(drivers=counts, tasks=sum(counts))
    ctx = rj.init(num_cpus=num_cpus)
    try:
        node_pid = _node_pid()
        hostport, secret = ctx.address, ctx._secret
        result.idle_pss_bytes = tree_memory(node_tree(node_pid))[1]
        watcher = Watcher(hostport, secret, [node_pid], every_s)
        watcher.start()
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        start = time.monotonic()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.load", "--driver", str(count)]
                + (["--leave"] if leave else []),
                env={**env, "RJ_LOAD_ADDRESS": ctx.connect_address},
                stdout=subprocess.PIPE,
                text=True,
            )
            for count in counts
        ]
        for proc in procs:
            out, _ = proc.communicate()
            if proc.returncode != 0:
                result.errors.append(f"driver exited {proc.returncode}: {out[-2000:]}")
                continue
            report = json.loads(out.strip().splitlines()[-1])
            result.driver_reports.append(report)
            if report["wrong_results"]:
                result.errors.append(f"{report['wrong_results']} wrong results")
        if leave:
            watcher.wait_drained(timeout=3600)
        result.wall_s = time.monotonic() - start
        watcher.stop()
    finally:
        rj.shutdown()
    result.tasks_per_s = result.tasks / result.wall_s if result.wall_s else 0.0
    latencies = sorted(watcher.latencies)
    result.status_answers = len(latencies)
    if latencies:
        result.status_max_s = latencies[-1]
        result.status_p99_s = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    result.status_failures = watcher.failures
    result.peak_pss_bytes = watcher.peak_pss
    result.peak_rss_bytes = watcher.peak_rss
    result.peak_queued = watcher.peak_queued
    return result


def _node_pid() -> int:
    """The local cluster's node: this process's child that runs ``rayjupyter.core.node``."""
    for child in psutil.Process().children():
        try:
            if any("rayjupyter.core.node" in part for part in child.cmdline()):
                return child.pid
        except psutil.NoSuchProcess:
            continue
    raise RuntimeError("no node process under this one")


def table(result: LoadResult) -> str:
    mib = 1 << 20
    rows = [
        ("drivers (tasks each)", ", ".join(f"{n:,}" for n in result.drivers)),
        ("tasks", f"{result.tasks:,}"),
        ("wall time", f"{result.wall_s:.1f} s"),
        ("tasks/s (all drivers)", f"{result.tasks_per_s:,.0f}"),
        ("peak tasks held by the node", f"{result.peak_queued:,}"),
        ("node tree PSS idle", f"{result.idle_pss_bytes / mib:,.0f} MiB"),
        ("node tree PSS peak", f"{result.peak_pss_bytes / mib:,.0f} MiB"),
        ("node tree RSS peak", f"{result.peak_rss_bytes / mib:,.0f} MiB"),
        ("status answers", f"{result.status_answers:,}"),
        ("longest status answer", f"{result.status_max_s * 1000:,.0f} ms"),
        ("p99 status answer", f"{result.status_p99_s * 1000:,.0f} ms"),
        ("status failures", str(len(result.status_failures))),
        ("errors", str(len(result.errors))),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    parser.add_argument("--one", type=int, default=1_000_000, help="tasks of the big driver")
    parser.add_argument("--each", type=int, default=100_000, help="tasks of each other driver")
    parser.add_argument("--drivers", type=int, default=4, help="how many other drivers")
    parser.add_argument("--status-every", type=float, default=0.2, help="seconds between asks")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--json", default="benchmarks/results/load.json", help="where to write")
    parser.add_argument("--leave", action="store_true", help="drivers exit once submitted (no get)")
    parser.add_argument("--driver", type=int, help=argparse.SUPPRESS)  # a driver's own run
    args = parser.parse_args(argv)
    if args.driver is not None:
        report = run_driver(os.environ["RJ_LOAD_ADDRESS"], args.driver, args.leave)
        print(json.dumps(report), flush=True)
        return 0
    result = run(args.one, args.each, args.drivers, args.status_every, args.num_cpus, args.leave)
    print(table(result))
    for line in result.errors + result.status_failures:
        print("  " + line, file=sys.stderr)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as out:
            json.dump(asdict(result), out, indent=1)
    return 1 if result.errors or result.status_failures else 0


if __name__ == "__main__":
    sys.exit(main())
