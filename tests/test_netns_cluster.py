"""The multi-node cluster tests across network namespaces: a real multi-host cluster on one machine.

A head and two nodes, each started with ``rayjupyter start ... --block`` inside a namespace of
its own (its own IP on a bridge, built by runtime/netns.py), and this test process as the
driver, attached over the bridge. Beyond what tests/test_multinode.py covers on loopback, a
node's link is cut (it is shown dead and its tasks run elsewhere) and restored (it registers
again and takes work). Needs root and `ip netns`; skips with the reason elsewhere.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from helpers import wait_for_condition, wait_for_pids_gone

import rayjupyter as rj
from rayjupyter.core.config import SECRET_ENV, session_dir

_REPO = Path(__file__).resolve().parents[1]
_NETNS_PY = _REPO / "runtime" / "netns.py"
PORT = 6380  # each namespace has its own ports: the default one is free in every one
START_TIMEOUT_S = 45.0


def _load_netns() -> ModuleType:
    """runtime/ is not a package (it is not shipped): load the launcher from its path."""
    name = "rayjupyter_runtime_netns"
    if name in sys.modules:  # tests/test_runtime_netns.py loaded it already
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
    pytest.mark.skipif(not _OK, reason=f"network namespaces unavailable: {_REASON}"),
    pytest.mark.timeout(90),
]


class Hosts:
    """A head in namespace 1 and nodes in namespaces 2 and 3, each a CLI process (``--block``)
    whose node daemon is its child; the driver is this process, attached over the bridge."""

    def __init__(self, net: Any, home: Path) -> None:
        self.net = net
        self.home = home
        self.secret = secrets.token_hex(16)
        self.cli: dict[int, subprocess.Popen[str]] = {}
        self.daemon: dict[int, int] = {}  # namespace -> the node daemon's pid
        self.seen: set[int] = set()  # every pid we started or saw inside a namespace
        self.env = dict(
            os.environ,
            RAYJUPYTER_HOME=str(home),
            PYTHONPATH=os.pathsep.join([str(_REPO), str(_REPO / "tests")]),  # workers import us
            PYTHONUNBUFFERED="1",
            **{SECRET_ENV: self.secret},
        )

    @property
    def head_address(self) -> str:
        return f"{self.net.ip(1)}:{PORT}"

    def start(self, i: int) -> None:
        """`rayjupyter start` in namespace i (1: the head), pinned work via resource h<i>."""
        where = ["--head", "--port", str(PORT)] if i == 1 else ["--address", self.head_address]
        argv = [
            *(sys.executable, "-m", "rayjupyter", "start", *where),
            *("--node-ip", self.net.ip(i), "--num-cpus", "1", "--block"),
            *("--resources", f'{{"h{i}": 1}}', "--object-store-memory", str(2 << 30)),
        ]
        proc = self.net.run(
            i,
            argv,
            env=self.env,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.cli[i] = proc
        self.seen.add(proc.pid)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
        line = proc.stdout.readline() if ready else ""
        found = re.search(r"\(pid (\d+)\)", line)
        if found is None:
            logs = "".join(p.read_text() for p in sorted(self.home.glob("logs/*.log")))
            raise AssertionError(f"namespace {i}: `rayjupyter start` said {line!r}; logs:\n{logs}")
        self.daemon[i] = int(found.group(1))
        self.seen.add(self.daemon[i])

    def node_id(self, i: int) -> str:
        """The node id of the node in namespace i, as rj.nodes() lists it."""
        return str(next(row["NodeID"] for row in rj.nodes() if self._row_is(row, i)))

    def alive(self, i: int) -> bool:
        return any(row["Alive"] for row in rj.nodes() if self._row_is(row, i))

    def _row_is(self, row: dict[str, Any], i: int) -> bool:
        return bool(row["NodeManagerAddress"] == self.net.ip(i))

    def stop(self) -> None:
        """Stop every CLI (each stops its node), clean what killed nodes left, remove the net."""
        try:
            for i in (3, 2, 1):  # joined nodes first, as `rayjupyter stop` does
                self.seen.update(self.net.pids(i))
                if i in self.cli and self.cli[i].poll() is None:
                    self.cli[i].terminate()  # each stops its node: all at once, then wait
            for proc in self.cli.values():
                self.net.kill(proc, graceful=True, timeout=15.0)
            wait_for_pids_gone(self.seen, timeout=15.0)
        finally:
            self.net.down()
            for record in self.home.glob("started/*.json"):  # a SIGKILLed daemon's files
                session = re.search(r'"session": "([0-9a-f]+)"', record.read_text())
                if session:
                    shutil.rmtree(session_dir(session.group(1)), ignore_errors=True)
                    for path in glob.glob(f"/dev/shm/rj-{session.group(1)}-*"):
                        os.unlink(path)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    net = netns.Netns.up(3)
    home = tmp_path / "home"
    home.mkdir()
    started = Hosts(net, home)
    try:
        for i in (1, 2, 3):
            started.start(i)
        rj.init(address=f"rayjupyter://{started.secret}@{started.head_address}")
        wait_for_condition(lambda: sum(row["Alive"] for row in rj.nodes()) == 3, timeout=15)
        yield started
    finally:
        rj.shutdown()
        started.stop()


@rj.remote
def node_of(delay: float = 0.0) -> tuple[str, str]:
    """Where it ran: the node's id and the network namespace of the worker."""
    time.sleep(delay)
    return rj.get_runtime_context().get_node_id(), os.readlink("/proc/self/ns/net")


@rj.remote
def make_array(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


@rj.remote
def checksum(array: np.ndarray) -> tuple[int, str]:
    return int(array.sum()), rj.get_runtime_context().get_node_id()


@rj.remote(max_retries=3)
def square_marked(i: int, marks: str, delay: float) -> int:
    """i * i, after leaving a file that says which node began it (the test waits on these)."""
    node_id = rj.get_runtime_context().get_node_id()
    open(os.path.join(marks, f"{i}-{node_id}-{os.getpid()}"), "w").close()
    time.sleep(delay)
    return i * i


def begun_on(marks: Path, node_id: str) -> bool:
    return any(f"-{node_id}-" in path.name for path in marks.iterdir())


def test_nodes_in_namespaces_are_listed_and_tasks_spread_across_them(hosts: Hosts) -> None:
    rows = rj.nodes()
    assert sorted(row["NodeManagerAddress"] for row in rows) == [hosts.net.ip(i) for i in (1, 2, 3)]
    assert rj.cluster_resources()["CPU"] == 3
    where = rj.get([node_of.remote(0.5) for _ in range(9)], timeout=60)
    assert {node for node, _ in where} == {hosts.node_id(i) for i in (1, 2, 3)}, where
    assert len({space for _, space in where}) == 3  # three network namespaces, three hosts


def test_custom_resources_pin_work_to_a_host(hosts: Hosts) -> None:
    for i in (1, 2, 3):
        pinned = [node_of.options(resources={f"h{i}": 0.5}).remote() for _ in range(3)]
        assert {node for node, _ in rj.get(pinned, timeout=30)} == {hosts.node_id(i)}


def test_large_array_made_on_one_host_is_summed_on_another(hosts: Hosts) -> None:
    n = (256 << 20) // 8  # 256 MiB of int64: across the bridge twice, kept short for CI
    made = make_array.options(resources={"h2": 1}).remote(n)
    total, where = rj.get(checksum.options(resources={"h3": 1}).remote(made), timeout=60)
    assert total == n * (n - 1) // 2
    assert where == hosts.node_id(3)
    array = rj.get(made, timeout=60)  # pulled from host 2 to the head, read zero-copy here
    assert array.shape == (n,) and array.dtype == np.int64
    assert np.array_equal(array, np.arange(n, dtype=np.int64))


def test_host_killed_mid_work_its_tasks_run_elsewhere(hosts: Hosts, tmp_path: Path) -> None:
    doomed = hosts.node_id(3)
    refs = [square_marked.remote(i, str(tmp_path), 0.5) for i in range(12)]
    wait_for_condition(lambda: begun_on(tmp_path, doomed), timeout=30)
    os.kill(hosts.daemon[3], signal.SIGKILL)
    killed = time.monotonic()
    wait_for_condition(lambda: not hosts.alive(3), timeout=10)
    assert time.monotonic() - killed < 5
    assert rj.get(refs, timeout=60) == [i * i for i in range(12)]
    assert hosts.cli[3].wait(timeout=10) != 0  # `start --block` ends with its node, and says so
    wait_for_pids_gone([hosts.daemon[3]], timeout=10)


def test_cut_link_host_is_dead_then_restored_rejoins_and_takes_work(
    hosts: Hosts, tmp_path: Path
) -> None:
    cut_off = hosts.node_id(3)
    refs = [square_marked.remote(i, str(tmp_path), 1.0) for i in range(9)]
    wait_for_condition(lambda: begun_on(tmp_path, cut_off), timeout=30)
    hosts.net.cut(3)
    try:
        cut = time.monotonic()
        wait_for_condition(lambda: not hosts.alive(3), timeout=10)
        assert time.monotonic() - cut < 5
        assert rj.get(refs, timeout=60) == [i * i for i in range(9)]  # retried elsewhere
        assert hosts.cli[3].poll() is None  # cut off, not dead: it waits to rejoin
    finally:
        hosts.net.restore(3)
    wait_for_condition(lambda: hosts.alive(3), timeout=30)  # it registered again
    assert len(rj.nodes()) == 3 and hosts.node_id(3) == cut_off  # the same node, one row
    again = [node_of.options(resources={"h3": 1}).remote() for _ in range(3)]
    assert {node for node, _ in rj.get(again, timeout=30)} == {cut_off}
    # what ran there before the cut was settled once: nothing counted twice, all free again
    totals = {"CPU": 3.0, "h1": 1.0, "h2": 1.0, "h3": 1.0}
    wait_for_condition(
        lambda: {k: rj.available_resources().get(k) for k in totals} == totals, timeout=20
    )
    assert rj.get(refs, timeout=10) == [i * i for i in range(9)]
