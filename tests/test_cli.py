"""The ``rayjupyter`` command: start a head, join a node, status, stop, and its errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for_condition, wait_for_pids_gone

pytestmark = pytest.mark.timeout(90)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cli:
    def __init__(self, home: Path) -> None:
        self.env = dict(os.environ, RAYJUPYTER_HOME=str(home))
        self.env.pop("RAYJUPYTER_SECRET", None)
        self.home = home

    def __call__(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "rayjupyter", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def started_pids(self) -> list[int]:
        folder = self.home / "started"
        return [int(p.stem) for p in folder.glob("*.json")] if folder.exists() else []


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    runner = Cli(tmp_path / "home")
    try:
        yield runner
    finally:
        pids = runner.started_pids()
        runner("stop")
        wait_for_pids_gone(pids, timeout=15)


def test_head_node_status_and_stop(cli: Cli) -> None:
    port = free_port()
    out = cli("start", "--head", "--port", str(port), "--num-cpus", "1", "--resources", '{"h": 1}')
    assert out.returncode == 0, out.stderr
    connect = next(w for w in out.stdout.split() if w.startswith("rayjupyter://"))
    assert f"rayjupyter start --address {connect}" in out.stdout
    assert f"%ray_connect {connect}" in out.stdout
    saved = cli.home / "cluster.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())["address"] == f"127.0.0.1:{port}"

    joined = cli(
        "start", "--address", connect, "--num-cpus", "1", "--resources", '{"n1": 2}',
        "--memory", str(2**30),
    )  # fmt: skip
    assert joined.returncode == 0, joined.stderr

    status = cli("status")
    assert status.returncode == 0, status.stderr
    assert "2/2" not in status.stdout and "0/2 CPU" in status.stdout
    assert "0.00GiB/" in status.stdout  # the memory resource, in bytes as Ray shows it
    assert "n1=2" in status.stdout and "h=1" in status.stdout
    assert status.stdout.count("alive") == 2

    pids = cli.started_pids()
    assert len(pids) == 2
    stopped = cli("stop")
    assert stopped.returncode == 0 and "Stopped 2 rayjupyter process" in stopped.stdout
    wait_for_pids_gone(pids, timeout=15)
    assert not saved.exists()


def test_stop_removes_the_folder_of_a_head_that_was_killed(cli: Cli) -> None:
    """A SIGKILLed node cannot remove its session folder (a copy of the secret is in it):
    `rayjupyter stop`, which started it, does."""
    port = free_port()
    assert cli("start", "--head", "--port", str(port), "--num-cpus", "1").returncode == 0
    (pid,) = cli.started_pids()
    record = json.loads((cli.home / "started" / f"{pid}.json").read_text())
    folder = Path("/tmp/rayjupyter") / record["session"]
    assert (folder / "cluster.json").exists()
    os.kill(pid, signal.SIGKILL)
    wait_for_pids_gone([pid], timeout=15)
    stopped = cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not folder.exists()


def test_errors_are_one_line_and_name_the_fix(cli: Cli) -> None:
    port = free_port()
    assert cli("start", "--head", "--port", str(port), "--num-cpus", "1").returncode == 0

    busy = cli("start", "--head", "--port", str(port))
    assert busy.returncode == 1 and "pick another with --port" in busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1

    wrong = cli("start", "--address", f"rayjupyter://wrong@127.0.0.1:{port}", "--num-cpus", "1")
    assert wrong.returncode == 1
    assert "could not join the head" in wrong.stderr and "secret" in wrong.stderr

    no_secret = cli("status", "--address", "127.0.0.1:1")
    assert no_secret.returncode == 1 and "RAYJUPYTER_SECRET" in no_secret.stderr

    unreachable = cli("status", "--address", "rayjupyter://s@127.0.0.1:1", "--timeout", "1")
    assert unreachable.returncode == 1 and "check that the cluster is running" in unreachable.stderr

    bad = cli("start", "--head", "--resources", "[1]")
    assert bad.returncode == 1 and "JSON object" in bad.stderr

    neither = cli("start")
    assert neither.returncode == 1 and "--head" in neither.stderr


def test_head_with_a_dashboard(cli: Cli) -> None:
    port, dashboard_port = free_port(), free_port()
    out = cli(
        "start", "--head", "--port", str(port), "--num-cpus", "1",
        "--dashboard-port", str(dashboard_port),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    url = next(w for w in out.stdout.split() if w.startswith("http://"))
    assert f":{dashboard_port}/" in url and "token=" in url
    token = url.split("token=")[1]
    request = urllib.request.Request(
        f"http://127.0.0.1:{dashboard_port}/api/v0/nodes",
        headers={"Authorization": f"token {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
        assert json.loads(answer.read())
    pids = cli.started_pids()
    assert len(pids) == 2  # the head and its dashboard
    assert "Stopped 2 rayjupyter process" in cli("stop").stdout
    wait_for_pids_gone(pids, timeout=15)


def test_head_restarted_finds_its_named_detached_actor(cli: Cli) -> None:
    import rayjupyter as rj
    from rayjupyter.util import state

    port = free_port()
    out = cli("start", "--head", "--port", str(port), "--num-cpus", "1", "--resources", '{"h": 1}')
    assert out.returncode == 0, out.stderr
    connect = next(w for w in out.stdout.split() if w.startswith("rayjupyter://"))
    (head_pid,) = cli.started_pids()
    joined = cli("start", "--address", connect, "--num-cpus", "1", "--resources", '{"n1": 1}')
    assert joined.returncode == 0, joined.stderr

    @rj.remote(resources={"n1": 1})
    def on_the_node() -> str:
        return rj.get_runtime_context().get_node_id()

    @rj.remote(resources={"h": 1})
    class Keeper:
        def __init__(self, start: int) -> None:
            self.value = start

        def bump(self) -> int:
            self.value += 1
            return self.value

    rj.init(address=connect, namespace="app")
    try:
        keeper = Keeper.options(name="keeper", lifetime="detached").remote(100)
        assert rj.get(keeper.bump.remote(), timeout=30) == 101
        node_id = rj.get(on_the_node.remote(), timeout=30)
        saved = cli.home / f"head-{port}.actors"
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    finally:
        rj.shutdown()
    os.kill(head_pid, signal.SIGKILL)
    wait_for_pids_gone([head_pid], timeout=15)

    again = cli(
        "start", "--head", "--port", str(port), "--num-cpus", "1", "--resources", '{"h": 1}'
    )
    assert again.returncode == 0, again.stderr
    assert connect in again.stdout  # the same secret: what joined before can join again
    rj.init(address=connect, namespace="app")
    try:
        # the node that had joined joins the new head by itself, with the same id
        wait_for_condition(lambda: sum(1 for n in rj.nodes() if n["Alive"]) == 2, timeout=20)
        assert rj.get(on_the_node.remote(), timeout=30) == node_id
        found = rj.get_actor("keeper")
        assert rj.get(found.bump.remote(), timeout=30) == 101  # made again from its __init__
        rows = [r for r in state.list_actors() if r["name"] == "keeper"]
        assert [(r["state"], r["num_restarts"], r["is_detached"]) for r in rows] == [
            ("ALIVE", 1, True)
        ]
        rj.kill(found)
    finally:
        rj.shutdown()
