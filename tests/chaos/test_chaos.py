"""The chaos suite on loopback: three nodes started with the CLI, a driver on node 2, and one
fault kind per test under a seeded schedule while a counted workload runs.

Every task appends its begin and its side effect to a ledger (chaos_workload.py); after the
run every result is checked and every side effect counted. Per fault kind the suite reports
runs, tasks, lost (must be 0 within max_retries), duplicated side effects (allowed only
where at-least-once applies: a retry after a worker's or a node's death), detection time
(fault -> the cluster shows it) and recovery time (fault -> the cluster whole again). The
table is printed at the end of the session and written to test-artifacts/chaos.json.

CI runs one short run per kind (about a minute in all); RAYJUPYTER_CHAOS_SECONDS=N repeats
runs of each kind for N seconds, RAYJUPYTER_CHAOS_SEED picks the schedule.

Disk-full spill directories are in test_chaos_spill.py (a tiny tmpfs, root only), link
cuts in test_chaos_netns.py (network namespaces, root only); README.md says what is not
covered and why.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_cluster import (
    NODE_TIMEOUT_S,
    Cluster,
    Fault,
    RunPlan,
    chaos_seconds,
    chaos_seed,
    cont_daemon,
    cont_worker,
    free_port,
    kill_daemon,
    kill_worker,
    restart,
    run_case,
    run_cli_here,
    stop_daemon,
    stop_worker,
)
from chaos_report import reporter
from conftest import _SHARED

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

# cases that find a known defect: name -> the defect (xfail, strict: they flip when fixed)
XFAIL: dict[str, str] = {}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("chaos-home")
    ips = {1: "127.0.0.1", 2: "127.0.0.1", 3: "127.0.0.1"}
    started = Cluster(home, secrets.token_hex(16), free_port(), ips, run_cli_here)
    # the daemons (and their workers) live across the module's tests: the per-test leak
    # check ignores their trees, and this fixture checks they are gone at the end
    _SHARED.roots, _SHARED.active = started.roots, True
    try:
        started.start_all()
        yield started
    finally:
        _SHARED.roots, _SHARED.active = set(), False
        started.stop()


CASES = {
    # a worker of the driver's own node dies mid-task: the task is retried there
    "worker_kill_local": (
        Fault("worker_kill_local", 2, True, kill_worker(2)),
        RunPlan(tasks=40, seconds=0.3, faults=3, observe_s=6),
    ),
    # a worker of a peer dies mid-task (the task was forwarded there): its own node retries
    # it (issue 16 defect 1: before its fix the crash was the final result); the retry
    # queues behind the peer's other pinned tasks, so it may take a few seconds
    "worker_kill_peer": (
        Fault("worker_kill_peer", 3, True, kill_worker(3)),
        RunPlan(tasks=40, seconds=0.3, faults=2, observe_s=10),
    ),
    # a worker is frozen for 1.5 s: its task is late, not lost, and not run twice
    "worker_stop": (
        Fault("worker_stop", None, False, stop_worker, 1.5, cont_worker),
        RunPlan(tasks=80, seconds=0.3, faults=2),
    ),
    # node 3's daemon is frozen past node_timeout_s: presumed dead, its work runs elsewhere
    # (at-least-once: what its workers finished meanwhile may be done again), then it rejoins
    "daemon_stop": (
        Fault("daemon_stop", None, True, stop_daemon(3), NODE_TIMEOUT_S + 2, cont_daemon(3)),
        RunPlan(tasks=100, seconds=0.3, faults=1, observe_s=25),
    ),
    # node 3's daemon is SIGKILLed (its workers die with it) and started again
    "node_kill": (
        Fault("node_kill", None, True, kill_daemon(3), 1.0, restart(3)),
        RunPlan(tasks=100, seconds=0.3, faults=1, observe_s=25),
    ),
    # the head is SIGKILLed and started again on its port; the nodes rejoin it
    "head_kill": (
        Fault("head_kill", None, True, kill_daemon(1), 1.0, restart(1)),
        RunPlan(tasks=100, seconds=0.3, faults=1, observe_s=30),
    ),
}


def _params() -> list[object]:
    return [
        pytest.param(
            name,
            marks=[pytest.mark.xfail(strict=True, raises=AssertionError, reason=XFAIL[name])]
            if name in XFAIL
            else [],
        )
        for name in CASES
    ]


@pytest.mark.parametrize("case", _params())
def test_fault(case: str, cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    fault, plan = CASES[case]
    report = reporter(request.config)
    report.seed = chaos_seed()
    row = report.fault(request.node.nodeid, fault.name, "loopback")
    rng = random.Random(f"{chaos_seed()}-{case}")
    cluster.heal()
    began = time.monotonic()
    budget = chaos_seconds()
    run = 0
    while True:
        run_case(cluster, fault, plan, row, tmp_path / f"ledger-{run}.txt", rng)
        run += 1
        cluster.heal()
        if row.lost or time.monotonic() - began >= budget:
            break
    row.seconds += time.monotonic() - began
    assert row.faults > 0, f"no fault was injected: {row.notes}"
    assert row.lost == 0, f"{row.lost} of {row.tasks} tasks lost: {row.notes}"
    if not fault.duplicates_allowed:
        assert row.duplicated == 0, f"{row.duplicated} side effects done twice: {row.notes}"
    assert row.undetected == 0, f"{row.undetected} faults never shown: {row.notes}"
    assert len(row.recover_s) == row.faults, row.notes
