"""Chaos across network namespaces: the same three CLI-started nodes, each in a namespace of
its own (runtime/netns.py: its own IP on a bridge), the driver in the host's namespace on
node 2 over the bridge, and faults only a network gives: node 3's link cut (packets vanish,
no reset) past node_timeout_s, then restored. Needs root and `ip netns`; skips elsewhere.
"""

from __future__ import annotations

import importlib.util
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from chaos_cluster import (
    NODE_TIMEOUT_S,
    Cluster,
    Fault,
    Ledger,
    RunPlan,
    _dead,
    chaos_seconds,
    chaos_seed,
    free_port,
    run_case,
)
from chaos_report import reporter
from conftest import _SHARED

_NETNS_PY = Path(__file__).resolve().parents[2] / "runtime" / "netns.py"


def _load_netns() -> ModuleType:
    """runtime/ is not a package (it is not shipped): load the launcher from its path."""
    name = "rayjupyter_runtime_netns"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _NETNS_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


netns = _load_netns()
_OK, _REASON = netns.available()
pytestmark = [
    pytest.mark.chaos,
    pytest.mark.skipif(not _OK, reason=f"network namespaces unavailable: {_REASON}"),
    pytest.mark.timeout(180),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    net = netns.Netns.up(3)

    def run_cli(i: int, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        proc = net.run(
            i,
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = proc.communicate(timeout=90)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    home = tmp_path_factory.mktemp("chaos-netns-home")
    ips = {i: net.ip(i) for i in (1, 2, 3)}
    started = Cluster(home, secrets.token_hex(16), free_port(), ips, run_cli)
    started.net = net  # type: ignore[attr-defined]
    _SHARED.roots, _SHARED.active = started.roots, True
    try:
        started.start_all()
        yield started
    finally:
        _SHARED.roots, _SHARED.active = set(), False
        try:
            for i in (1, 2, 3):
                net.restore(i)
            started.stop()
        finally:
            net.down()


def cut_link(node: int) -> Any:
    def inject(cluster: Cluster, ledger: Ledger, rng: random.Random) -> tuple[Any, ...]:
        ids = cluster.node_ids(node)
        cluster.net.cut(node)  # type: ignore[attr-defined]
        return _dead(cluster, ids), (lambda: cluster.alive(node))

    return inject


def restore_link(node: int) -> Any:
    def heal(cluster: Cluster) -> None:
        cluster.net.restore(node)  # type: ignore[attr-defined]

    return heal


def test_link_cut(cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    fault = Fault("link_cut", None, True, cut_link(3), NODE_TIMEOUT_S + 2, restore_link(3))
    plan = RunPlan(tasks=100, seconds=0.3, faults=1, observe_s=40)
    report = reporter(request.config)
    report.seed = chaos_seed()
    row = report.fault(request.node.nodeid, fault.name, "netns")
    rng = random.Random(f"{chaos_seed()}-link_cut")
    began = time.monotonic()
    run = 0
    while True:
        cluster.heal()
        run_case(cluster, fault, plan, row, tmp_path / f"ledger-{run}.txt", rng)
        run += 1
        if row.lost or time.monotonic() - began >= chaos_seconds():
            break
    row.seconds += time.monotonic() - began
    assert row.lost == 0, f"{row.lost} of {row.tasks} tasks lost: {row.notes}"
    assert row.undetected == 0, row.notes
    assert len(row.recover_s) == row.faults, row.notes
