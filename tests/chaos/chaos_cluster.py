"""A three-node cluster started with the CLI, the faults the suite injects into it, and a run
of a counted workload under a seeded fault schedule.

Only public surfaces: ``rayjupyter start`` / ``rayjupyter stop`` in a home of the test's own
(``RAYJUPYTER_HOME``), the daemons' PIDs as the CLI prints them, the workers' PIDs as the
tasks write them in their ledger, ``rj.nodes()`` for what the cluster sees, and signals.

Node 1 is the head, node 2 the driver's node (the driver attaches there, so killing the
head does not take the driver's own connection), node 3 the other peer. Each node offers a
resource ``h<i>`` so work can be pinned to it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos_report import FaultRow
from chaos_workload import Ledger, step
from helpers import descendants, is_alive, wait_for_condition, wait_for_pids_gone

import rayjupyter as rj
from rayjupyter.core.config import SECRET_ENV, session_dir

REPO = Path(__file__).resolve().parents[2]
NODE_TIMEOUT_S = 3.0  # NodeConfig's default: a node silent this long is dead
CPUS_PER_NODE = 2
PIN = 0.01  # of h<i>: pins a task without limiting how many run at once


def chaos_seconds() -> float:
    """Extra seconds per fault kind asked for by RAYJUPYTER_CHAOS_SECONDS (0: the CI run)."""
    try:
        return max(0.0, float(os.environ.get("RAYJUPYTER_CHAOS_SECONDS", "0")))
    except ValueError:
        return 0.0


def chaos_seed() -> int:
    return int(os.environ.get("RAYJUPYTER_CHAOS_SEED", "16"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class NodeProc:
    """A node daemon started by `rayjupyter start`: its index and PID."""

    index: int
    pid: int


@dataclass
class Cluster:
    """Three nodes on loopback, each started with the CLI (no --block: daemons in the
    background, stopped with `rayjupyter stop`), and this process as the driver on node 2.

    ``run_cli`` starts a CLI command; the namespace variant (test_chaos_netns.py) passes one
    that runs it inside a namespace.
    """

    home: Path
    secret: str
    port: int
    ips: dict[int, str]
    run_cli: Callable[[int, list[str], dict[str, str]], subprocess.CompletedProcess[str]]
    nodes: dict[int, NodeProc] = field(default_factory=dict)
    roots: set[int] = field(default_factory=set)  # every daemon PID: the leak check's roots
    seen: set[int] = field(default_factory=set)
    driver_address: str = ""
    stopped_worker: int = 0  # the worker a worker_stop fault froze (its heal thaws it)

    @property
    def env(self) -> dict[str, str]:
        paths = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "chaos")]
        return dict(
            os.environ,
            RAYJUPYTER_HOME=str(self.home),
            PYTHONPATH=os.pathsep.join(paths),
            PYTHONUNBUFFERED="1",
            **{SECRET_ENV: self.secret},
        )

    def head_address(self) -> str:
        return f"{self.ips[1]}:{self.port}"

    def start(self, i: int) -> NodeProc:
        """`rayjupyter start` node i (1: the head, on its fixed port); waits until it is up."""
        where = (
            ["--head", "--port", str(self.port)] if i == 1 else ["--address", self.head_address()]
        )
        argv = [
            *(sys.executable, "-m", "rayjupyter", "start", *where),
            *("--node-ip", self.ips[i], "--num-cpus", str(CPUS_PER_NODE)),
            *("--resources", json.dumps({f"h{i}": 1}), "--object-store-memory", str(256 << 20)),
        ]
        done = self.run_cli(i, argv, self.env)
        found = re.search(r"\(pid (\d+)\)", done.stdout)
        if done.returncode != 0 or found is None:
            raise AssertionError(f"node {i}: `rayjupyter start` said {done.stdout}{done.stderr}")
        node = NodeProc(i, int(found.group(1)))
        self.nodes[i] = node
        self.roots.add(node.pid)
        self.seen.add(node.pid)
        return node

    def start_all(self) -> None:
        for i in (1, 2, 3):
            self.start(i)
        self.driver_address = f"{self.ips[2]}:{self._port_of(2)}"
        rj.init(address=f"rayjupyter://{self.secret}@{self.driver_address}")
        wait_for_condition(lambda: self.alive_count() == 3, timeout=30)

    def _port_of(self, i: int) -> int:
        """The port node i listens on, from the CLI's record of what it started."""
        for record in self.home.glob("started/*.json"):
            data = json.loads(record.read_text())
            if int(data["pid"]) == self.nodes[i].pid:
                return int(str(data["address"]).rpartition(":")[2])
        raise AssertionError(f"no record of node {i} in {self.home}/started")

    # -- what the cluster sees

    def rows(self) -> list[dict[str, Any]]:
        return rj.nodes()

    def alive(self, i: int) -> bool:
        return any(row["Alive"] and f"h{i}" in row["Resources"] for row in self.rows())

    def alive_count(self) -> int:
        return sum(1 for i in (1, 2, 3) if self.alive(i))

    def node_ids(self, i: int) -> set[str]:
        return {str(row["NodeID"]) for row in self.rows() if f"h{i}" in row["Resources"]}

    def worker_pids(self, i: int) -> set[int]:
        """Node i's worker processes now (its daemon's descendants)."""
        return descendants([self.nodes[i].pid]) - {self.nodes[i].pid}

    # -- keeping it whole between cases

    def heal(self) -> None:
        """Every node running and alive again (a case may leave one killed or stopped)."""
        for i, node in list(self.nodes.items()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGCONT)
            for pid in self.worker_pids(i):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        for i in (1, 2, 3):
            if not is_alive(self.nodes[i].pid):
                self.start(i)
        wait_for_condition(lambda: self.alive_count() == 3, timeout=30)

    def stop(self) -> None:
        """`rayjupyter stop`, then what SIGKILLed daemons could not clean themselves."""
        with contextlib.suppress(Exception):
            rj.shutdown()
        for node in self.nodes.values():  # a stopped daemon cannot hear SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGCONT)
        self.seen |= descendants(self.roots)
        subprocess.run(
            [sys.executable, "-m", "rayjupyter", "stop"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        wait_for_pids_gone(self.seen, timeout=20)
        for log in self.home.glob("logs/*.log"):  # the sessions of every daemon started here
            for session in re.findall(r"RAYJUPYTER_NODE_READY \d+ ([0-9a-f]+)", log.read_text()):
                shutil.rmtree(session_dir(session), ignore_errors=True)
                for path in glob.glob(f"/dev/shm/rj-{session}-*"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.home.glob("logs/*.log")))


def run_cli_here(i: int, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL
    )


# ----------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """One kind of fault: how to inject it into a running workload, and how it is measured.

    ``inject`` returns (detected, recovered): two predicates polled after the fault; a
    predicate of None means "not applicable" (a stopped worker is not expected to be seen).
    ``duplicates_allowed``: Ray's at-least-once semantics allow a side effect done twice
    here (a retry after a worker's or a node's death, or after a node was presumed dead).
    """

    name: str
    pin: int | None  # the node the workload is pinned to (None: anywhere)
    duplicates_allowed: bool
    inject: Callable[[Cluster, Ledger, random.Random], tuple[Callable[[], bool] | None, ...]]
    heal_after_s: float = 0.0  # seconds after the fault before its heal (SIGCONT, restart)
    heal: Callable[[Cluster], None] | None = None


class NothingToFault(Exception):
    """No workload task ran where the fault was to strike (the run ended early): skipped."""


def _running_worker(cluster: Cluster, ledger: Ledger, node: int, rng: random.Random) -> int:
    """A worker of node `node` that is in the middle of a workload task (from the ledger)."""
    ids = cluster.node_ids(node)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pids = cluster.worker_pids(node)
        running = [e for e in ledger.read().running() if e.node in ids and e.pid in pids]
        if running:
            return rng.choice(running).pid
        time.sleep(0.02)
    raise NothingToFault(f"no workload task was running on node {node} to fault")


def _dead(cluster: Cluster, ids: set[str]) -> Callable[[], bool]:
    """True once the node table shows every one of these node ids dead (or gone)."""
    return lambda: not any(r["Alive"] and str(r["NodeID"]) in ids for r in cluster.rows())


def kill_worker(node: int) -> Callable[..., tuple[Callable[[], bool] | None, ...]]:
    def inject(
        cluster: Cluster, ledger: Ledger, rng: random.Random
    ) -> tuple[Callable[[], bool] | None, ...]:
        pid = _running_worker(cluster, ledger, node, rng)
        index = next(e.index for e in ledger.running() if e.pid == pid)
        os.kill(pid, signal.SIGKILL)

        def retried() -> bool:  # the task began again in another process
            return any(
                e.kind == "B" and e.index == index and e.pid != pid for e in ledger.read().lines
            )

        def done() -> bool:
            return ledger.read().ends().get(index, 0) > 0

        return retried, done

    return inject


def stop_worker(cluster: Cluster, ledger: Ledger, rng: random.Random) -> tuple[Any, ...]:
    pid = _running_worker(cluster, ledger, rng.choice([1, 2, 3]), rng)
    index = next(e.index for e in ledger.running() if e.pid == pid)
    os.kill(pid, signal.SIGSTOP)
    cluster.stopped_worker = pid
    return None, lambda: ledger.read().ends().get(index, 0) > 0


def cont_worker(cluster: Cluster) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(cluster.stopped_worker, signal.SIGCONT)


def stop_daemon(node: int) -> Callable[..., tuple[Any, ...]]:
    def inject(cluster: Cluster, ledger: Ledger, rng: random.Random) -> tuple[Any, ...]:
        ids = cluster.node_ids(node)
        wait_for_condition(lambda: any(e.node in ids for e in ledger.read().running()), 10)
        os.kill(cluster.nodes[node].pid, signal.SIGSTOP)
        return _dead(cluster, ids), (lambda: cluster.alive(node))

    return inject


def cont_daemon(node: int) -> Callable[[Cluster], None]:
    def heal(cluster: Cluster) -> None:
        os.kill(cluster.nodes[node].pid, signal.SIGCONT)

    return heal


def kill_daemon(node: int) -> Callable[..., tuple[Any, ...]]:
    def inject(cluster: Cluster, ledger: Ledger, rng: random.Random) -> tuple[Any, ...]:
        ids = cluster.node_ids(node)
        if node != 1:  # the head's tasks are whatever spilled there: do not wait for one
            wait_for_condition(lambda: any(e.node in ids for e in ledger.read().running()), 10)
        os.kill(cluster.nodes[node].pid, signal.SIGKILL)
        return _dead(cluster, ids), (lambda: cluster.alive_count() == 3)

    return inject


def restart(node: int) -> Callable[[Cluster], None]:
    def heal(cluster: Cluster) -> None:
        wait_for_pids_gone([cluster.nodes[node].pid], timeout=10)
        cluster.start(node)

    return heal


# ----------------------------------------------------------------------------- a run


@dataclass
class RunPlan:
    """One run: tasks of `seconds` each, faults at seeded offsets into the workload."""

    tasks: int
    seconds: float
    faults: int
    first_fault_s: float = 0.5
    fault_gap_s: tuple[float, float] = (0.3, 1.0)
    observe_s: float = 15.0  # how long to wait for detection and recovery of one fault
    get_timeout_s: float = 60.0


def run_case(
    cluster: Cluster,
    fault: Fault,
    plan: RunPlan,
    row: FaultRow,
    ledger_path: Path,
    rng: random.Random,
) -> None:
    """Submit the workload, inject `plan.faults` faults of one kind, then check every result
    and count every side effect into `row`."""
    ledger = Ledger(str(ledger_path))
    opts: dict[str, Any] = {}
    if fault.pin is not None:
        opts["resources"] = {f"h{fault.pin}": PIN}
    refs = [
        step.options(**opts).remote(i, str(ledger_path), plan.seconds) for i in range(plan.tasks)
    ]
    time.sleep(plan.first_fault_s)
    for _ in range(plan.faults):
        start = time.monotonic()
        try:
            detected, recovered = fault.inject(cluster, ledger, rng)
        except NothingToFault as exc:
            row.notes.append(str(exc))
            break
        row.faults += 1
        healed = fault.heal is None
        detect_at = recover_at = None
        while time.monotonic() - start < plan.observe_s:
            now = time.monotonic()
            if detect_at is None and detected is not None and detected():
                detect_at = now
            if not healed and now - start >= fault.heal_after_s:
                assert fault.heal is not None
                fault.heal(cluster)
                healed = True
            if healed and recover_at is None and recovered is not None and recovered():
                recover_at = time.monotonic()
            if (detect_at is not None or detected is None) and recover_at is not None:
                break
            time.sleep(0.05)
        if not healed:
            assert fault.heal is not None
            fault.heal(cluster)
        if detected is not None:
            if detect_at is None:
                row.undetected += 1
            else:
                row.detect_s.append(detect_at - start)
        if recover_at is not None:
            row.recover_s.append(recover_at - start)
        else:
            row.notes.append(f"no recovery within {plan.observe_s} s of a fault")
        time.sleep(rng.uniform(*plan.fault_gap_s))
    deadline = time.monotonic() + plan.get_timeout_s
    errors: dict[str, int] = {}
    for i, ref in enumerate(refs):
        try:
            value = rj.get(ref, timeout=max(0.1, deadline - time.monotonic()))
        except Exception as exc:  # counted: a lost task
            name = type(exc).__name__
            errors[name] = errors.get(name, 0) + 1
            if errors[name] == 1:
                row.notes.append(f"task {i}: {name}: {str(exc).splitlines()[0][:200]}")
            row.lost += 1
            continue
        if value == i * i:
            row.ok += 1
        else:
            row.lost += 1
            row.notes.append(f"task {i}: wrong result {value!r}")
    ends = ledger.read().ends()
    row.duplicated += sum(n - 1 for n in ends.values() if n > 1)
    row.tasks += plan.tasks
    row.runs += 1
    row.duplicates_allowed = fault.duplicates_allowed
    if errors:
        row.notes.append(f"errors at get: {errors}")
