"""One row of the scale suite: one backend, one workload, one size, in this fresh process.

``python -m benchmarks.scale_child BACKEND WORKLOAD SIZE --out PATH``, started by
``benchmarks.scale``, which samples this process tree's PSS from outside (the peaks) and
kills it at its timeout. Here the quiet points are measured: the tree's PSS at idle
(after every worker has run once), at the top of the workload where it holds still (all
actors answering, all objects put) and after the work is dropped (settled back). The
result file is rewritten after every step, so a killed row still reports what it reached.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks import procs, tasks

MB = 1e6
STORE_BYTES = 200 * 1024 * 1024  # each node's object store in the multi-node rows
SETTLE_S = 15.0  # how long memory may take to come back to idle after a workload


class Row:
    """The metrics of this row, saved after every change."""

    def __init__(self, path: Path, backend: str, workload: str, size: int) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "backend": backend,
            "workload": workload,
            "size": size,
            "metrics": {},
            "phase": "start",
        }
        self.save()

    def add(self, **metrics: Any) -> None:
        self.data["metrics"].update(metrics)
        self.save()

    def phase(self, name: str) -> None:
        """Where the row is: a timeout's report names the step it hung in."""
        self.data["phase"] = name
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------- memory


def tree_pids() -> list[int]:
    """This driver and every process under it (Ray's and rayjupyter's daemons are its children)."""
    me = psutil.Process()
    return [me.pid, *(child.pid for child in me.children(recursive=True))]


def tree_pss_mb() -> tuple[float, float, int]:
    """PSS of this driver and of the rest of the tree (the cluster), in MB; processes counted."""
    pids = tree_pids()
    driver = procs.tree_memory(pids[:1])[1]
    _, rest, count = procs.tree_memory(pids[1:])
    return driver / MB, rest / MB, count + 1


def settle(idle_total_mb: float, limit_s: float = SETTLE_S) -> tuple[float, float, int]:
    """Sample until the tree's PSS is back near idle or holds still; the last sample."""
    deadline = time.monotonic() + limit_s
    last = tree_pss_mb()
    while time.monotonic() < deadline:
        if last[0] + last[1] <= idle_total_mb * 1.02 + 2:
            break
        time.sleep(0.5)
        now = tree_pss_mb()
        steady = abs((now[0] + now[1]) - (last[0] + last[1])) <= 0.005 * (last[0] + last[1])
        last = now
        if steady:
            break
    return last


def record_idle(row: Row) -> float:
    """The tree's PSS at idle, as metrics; returns the total in MB."""
    driver, node, count = tree_pss_mb()
    row.add(idle_driver_mb=driver, idle_node_mb=node, idle_processes=count)
    return driver + node


def record_after(row: Row, idle_mb: float) -> None:
    """Drop what the workload left, let it settle, and record how far from idle it came back."""
    gc.collect()
    row.phase("settle")
    driver, node, count = settle(idle_mb)
    row.add(
        after_driver_mb=driver,
        after_node_mb=node,
        after_processes=count,
        after_over_idle_mb=driver + node - idle_mb,
    )


# --------------------------------------------------------------------------- backends


def start(backend: str, num_cpus: int) -> Any:
    """``init(num_cpus=...)`` as a user would (Ray without its dashboard); the API module."""
    api = importlib.import_module(backend)
    if backend == "ray":  # "local": a new cluster, never one another program left running
        api.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    else:
        api.init(num_cpus=num_cpus)
    return api


def warm(api: Any, num_cpus: int) -> None:
    """One sleep task per CPU at once, so every worker exists before idle is measured."""
    sleep_pid = api.remote(tasks.sleep_pid)
    api.get([sleep_pid.remote(0.3) for _ in range(num_cpus)], timeout=120)


class Nodes:
    """``count`` nodes on this machine, one CPU each, the first the head; this driver joins."""

    def __init__(self, backend: str, count: int) -> None:
        self.backend = backend
        self.api = importlib.import_module(backend)
        if backend == "ray":
            from ray.cluster_utils import Cluster

            self._ray = Cluster()
            for i in range(count):  # the head without its dashboard, as the other rows
                extra = {"include_dashboard": False} if i == 0 else {}
                self._ray.add_node(num_cpus=1, object_store_memory=STORE_BYTES, **extra)
            self.api.init(address=self._ray.address, log_to_driver=False)
            self._ray.wait_for_nodes()
        else:
            from rayjupyter.core.api import ADDRESS_SCHEME
            from rayjupyter.core.config import NodeConfig
            from rayjupyter.core.launcher import LocalCluster

            def config(head: str) -> NodeConfig:
                return NodeConfig(
                    num_cpus=1,
                    object_store_memory=STORE_BYTES,
                    sys_path=list(sys.path),
                    owner_pid=os.getpid(),
                    head_address=head,
                )

            self._head = LocalCluster(config(""))
            self._rest = [
                LocalCluster(config(self._head.address), secret=self._head.secret)
                for _ in range(count - 1)
            ]
            self.api.init(address=f"{ADDRESS_SCHEME}{self._head.secret}@{self._head.address}")
            deadline = time.monotonic() + 120
            while sum(1 for n in self.api.nodes() if n["Alive"]) < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{count} nodes did not all join in 120 s")
                time.sleep(0.1)

    def head_pids(self) -> list[int]:
        """The head's own daemons, not its workers: rayjupyter's node process; Ray's GCS,
        head raylet and the helpers it starts on the head."""
        if self.backend == "ray":
            pids = []
            for infos in self._ray.head_node.all_processes.values():
                pids += [info.process.pid for info in infos]
            return pids
        return [self._head.pid]

    def stop(self) -> None:
        self.api.shutdown()
        if self.backend == "ray":
            self._ray.shutdown()
        else:
            for node in [*self._rest, self._head]:
                node.stop()


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds the processes have used so far."""
    total = 0.0
    for proc in procs.processes(pids):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


# --------------------------------------------------------------------------- workloads


def queued_tasks(api: Any, n: int, row: Row, num_cpus: int) -> None:
    """Submit ``n`` no-op tasks keeping every ref (the node queues them), then get them all."""
    warm(api, num_cpus)
    idle = record_idle(row)
    noop = api.remote(tasks.noop)
    row.phase("submit")
    t0 = time.perf_counter()
    refs = [noop.remote() for _ in range(n)]
    submitted = time.perf_counter()
    driver, node, _ = tree_pss_mb()  # what the queue holds (some have run already)
    measuring = time.perf_counter() - submitted
    row.add(submit_s=submitted - t0, held_mb=driver + node)
    row.phase("get")
    values = api.get(refs, timeout=None)
    took = time.perf_counter() - t0 - measuring
    wrong = sum(1 for v in values if v is not None)
    row.add(s=took, per_s=n / took, wrong_results=wrong)
    del refs, values
    record_after(row, idle)


def actors(api: Any, n: int, row: Row, num_cpus: int) -> None:
    """Create ``n`` Counter actors, one call on each; time until all answered; PSS per actor."""
    warm(api, num_cpus)
    idle = record_idle(row)
    counter = api.remote(tasks.Counter)
    row.phase("create")
    t0 = time.perf_counter()
    handles = [counter.remote() for _ in range(n)]
    answers = api.get([h.incr.remote() for h in handles], timeout=None)
    took = time.perf_counter() - t0
    row.add(s=took, per_s=n / took, wrong_results=sum(1 for a in answers if a != 1))
    row.phase("measure")
    driver, node, count = tree_pss_mb()
    held = driver + node
    row.add(held_mb=held, held_processes=count, per_actor_mb=(held - idle) / n)
    row.phase("kill")
    for handle in handles:
        api.kill(handle)
    del handles, answers
    record_after(row, idle)


def objects(api: Any, n: int, row: Row, num_cpus: int) -> None:
    """Put ``n`` small (100-byte) objects, get them all back, free them: memory back to idle?"""
    warm(api, num_cpus)
    idle = record_idle(row)
    row.phase("put")
    t0 = time.perf_counter()
    refs = [api.put(i.to_bytes(4, "little") * 25) for i in range(n)]
    put_s = time.perf_counter() - t0
    row.phase("get")
    t1 = time.perf_counter()
    values = api.get(refs, timeout=None)
    get_s = time.perf_counter() - t1
    wrong = sum(1 for i, v in enumerate(values) if v != i.to_bytes(4, "little") * 25)
    del values
    row.add(s=put_s + get_s, put_s=put_s, get_s=get_s, per_s=n / put_s, wrong_results=wrong)
    driver, node, _ = tree_pss_mb()
    row.add(held_mb=driver + node, per_object_bytes=(driver + node - idle) * MB / n)
    row.phase("free")
    del refs
    record_after(row, idle)


def fanout(backend: str, nodes: int, tasks_n: int, row: Row, idle_window_s: float) -> None:
    """``tasks_n`` no-op tasks at once over ``nodes`` one-CPU nodes; the head's CPU and PSS
    over an idle window and under the fan-out."""
    row.phase("start nodes")
    t0 = time.perf_counter()
    cluster = Nodes(backend, nodes)
    row.add(start_nodes_s=time.perf_counter() - t0)
    try:
        api = cluster.api
        where = api.remote(tasks.sleep_pid)
        api.get([where.remote(0.05) for _ in range(nodes * 2)], timeout=120)  # warm a little
        idle = record_idle(row)
        head = cluster.head_pids()
        row.phase("idle window")
        cpu0, w0 = cpu_seconds(head), time.perf_counter()
        time.sleep(idle_window_s)
        row.add(
            head_idle_cpu_pct=100 * (cpu_seconds(head) - cpu0) / (time.perf_counter() - w0),
            head_idle_mb=procs.tree_memory(head)[1] / MB,
        )
        row.phase("fan-out")
        cpu0, t0 = cpu_seconds(head), time.perf_counter()
        pids = api.get([where.remote(0) for _ in range(tasks_n)], timeout=None)
        took = time.perf_counter() - t0
        head_cpu_s = cpu_seconds(head) - cpu0
        head_mb = procs.tree_memory(head)[1] / MB
        row.add(
            s=took,
            per_s=tasks_n / took,
            head_load_cpu_pct=100 * head_cpu_s / took,
            head_cpu_ms_per_task=1000 * head_cpu_s / tasks_n,
            head_load_mb=head_mb,
            workers_used=len(set(pids)),
            nodes_used=len({_parent(pid) for pid in set(pids)} - {None}),
        )
        del pids
        record_after(row, idle)
    finally:
        row.phase("stop nodes")
        cluster.stop()


def _parent(pid: int) -> int | None:
    """The node (rayjupyter) or raylet (Ray) a worker runs under."""
    try:
        return psutil.Process(pid).ppid()
    except psutil.NoSuchProcess:
        return None


def tree(api: Any, depth: int, row: Row, num_cpus: int) -> None:
    """A binary tree of nested tasks ``depth`` levels deep, each waiting on its two children."""
    warm(api, num_cpus)
    idle = record_idle(row)
    row.phase("tree")
    t0 = time.perf_counter()
    total = api.get(api.remote(tasks.tree).remote(api.__name__, depth), timeout=None)
    took = time.perf_counter() - t0
    expected = 2**depth - 1
    row.add(s=took, per_s=expected / took, wrong_results=int(total != expected), tasks=total)
    record_after(row, idle)


def run(args: argparse.Namespace, row: Row) -> None:
    """Start the backend (the multi-node row starts its own nodes), run the workload, stop."""
    if args.workload == "fanout":
        fanout(args.backend, args.size, args.fanout_tasks, row, args.idle_window)
        row.phase("done")
        return
    row.phase("init")
    t0 = time.perf_counter()
    api = start(args.backend, args.num_cpus)
    row.add(init_s=time.perf_counter() - t0)
    work = {"tasks": queued_tasks, "actors": actors, "objects": objects, "tree": tree}
    try:
        work[args.workload](api, args.size, row, args.num_cpus)
    finally:
        row.phase("shutdown")
        api.shutdown()
    row.phase("done")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_child", description=__doc__)
    parser.add_argument("backend", choices=("rayjupyter", "ray"))
    parser.add_argument("workload", choices=("tasks", "actors", "objects", "fanout", "tree"))
    parser.add_argument("size", type=int, help="tasks, actors, objects, nodes or tree depth")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--fanout-tasks", type=int, default=10_000)
    parser.add_argument("--idle-window", type=float, default=5.0, help="seconds")
    parser.add_argument("--stack-dump-after", type=float, default=0.0, help="seconds; 0: never")
    args = parser.parse_args(argv)
    if args.stack_dump_after > 0:  # a hang leaves every thread's stack in the log
        procs.dump_stacks_later(args.stack_dump_after)
    row = Row(args.out, args.backend, args.workload, args.size)
    try:
        run(args, row)
    except BaseException as exc:
        row.data["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        row.save()
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
