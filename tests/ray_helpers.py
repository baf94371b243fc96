"""Real Ray clusters for tests, stopped by the PIDs they started: ``ray_cluster``, two nodes
without a dashboard (the notebook on Ray), and ``start_ray_head``/``running_ray_head``, one
head with its dashboard (the server extension and the browser against Ray).

``ray stop`` is never used: it stops every Ray process on the machine by name, other
people's too. ``--block`` keeps each node's processes under the ``ray start`` process we
spawned, so the fixture owns exactly that tree (workers included: the raylet starts them).

Ray binds to the machine's address even when told 127.0.0.1 (it resolves loopback to the
node IP for multi-node use), so the two-node cluster is reachable on the host's address;
the dashboard head runs as a single-machine cluster on loopback. Token authentication is on,
with a fresh token per cluster: in the environment of the test process for the two-node
cluster (and so of the kernels it starts), in a file of the head's own temp dir for the
dashboard head; never written under ~/.ray.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from conftest import _SHARED
from helpers import wait_for_condition, wait_for_pids_gone

RAY_BIN = Path(sys.executable).with_name("ray")
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
OBJECT_STORE_BYTES = 200_000_000
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
_ADDRESS_LINE = re.compile(r"ray start --address='([^']+)'")


def _poll(predicate: Any, timeout: float, what: str) -> None:
    """Poll until predicate is true; its exceptions end the wait at once (unlike
    wait_for_condition, which counts them as "not yet")."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.2)


def ray_importable() -> bool:
    """Ray with its dashboard (``ray[default]``), found without importing it (slow)."""
    try:
        return (
            importlib.util.find_spec("ray") is not None
            and importlib.util.find_spec("ray.dashboard") is not None
            and importlib.util.find_spec("aiohttp") is not None
            and RAY_BIN.exists()
        )
    except ImportError:
        return False


RAY_MISSING = (
    "ray[default] is not installed (ray, its dashboard, its CLI): pip install ray[default]"
)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def _port_flags() -> list[str]:
    """Every port a node opens, chosen free: Ray's defaults collide with other Rays here."""
    flags = []
    for flag in (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
    ):
        flags += [flag, str(free_port())]
    return flags


@dataclass
class RayCluster:
    """Where the cluster is and which processes are ours."""

    address: str  # host:port of the head's GCS, as Ray reports it
    client_address: str  # ray://host:port of its Ray Client server
    temp_dir: Path
    starters: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def pids(self) -> set[int]:
        """Every process of the cluster now: the ``ray start`` processes and their trees."""
        found: set[int] = set()
        for starter in self.starters:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(starter.pid)
                found.add(starter.pid)
                found.update(child.pid for child in root.children(recursive=True))
        return found


def _node_command(extra: list[str], num_cpus: int) -> list[str]:
    return [
        str(RAY_BIN),
        "start",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        str(num_cpus),
        "--object-store-memory",
        str(OBJECT_STORE_BYTES),
        "--disable-usage-stats",
        *_port_flags(),
        *extra,
    ]


def _wait_for_nodes(
    address: str,
    count: int,
    env: dict[str, str],
    timeout: float,
    starter: subprocess.Popen[bytes] | None = None,
) -> None:
    """Ask Ray itself (in a child process, so this one never imports ray) for live nodes;
    give up early if the node's ``ray start`` exits."""
    code = (
        "import ray, sys, time\n"
        f"ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)\n"
        f"deadline = time.monotonic() + {timeout}\n"
        f"while sum(n['Alive'] for n in ray.nodes()) < {count}:\n"
        "    if time.monotonic() > deadline: sys.exit('nodes did not join')\n"
        "    time.sleep(0.2)\n"
    )
    waiter = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:

        def joined() -> bool:
            if starter is not None and starter.poll() is not None:
                raise RuntimeError(f"ray start exited with {starter.returncode}")
            code = waiter.poll()
            if code not in (None, 0):
                raise RuntimeError(f"waiting for {count} nodes failed ({code})")
            return code == 0

        _poll(joined, timeout + 30, f"{count} Ray nodes")
    finally:
        if waiter.poll() is None:
            waiter.kill()
        waiter.wait(timeout=10)


#: Ray gives a node 30 s to register (its own constant); on a loaded machine a start can
#: miss it, so a node that failed to start is stopped (its PIDs) and started afresh
START_ATTEMPTS = 3


def _start_node(
    command: Any, log: Path, env: dict[str, str], ready: Any, what: str
) -> subprocess.Popen[bytes]:
    """Start a node with ``ray start --block``; retried when Ray's own start-up times out."""
    failures = []
    for _attempt in range(START_ATTEMPTS):
        starter = subprocess.Popen(
            command(), stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env
        )
        attempt = RayCluster("", "", log.parent, [starter])
        try:
            ready(starter)
            return starter
        except (AssertionError, RuntimeError, subprocess.SubprocessError) as exc:
            failures.append(f"{type(exc).__name__}: {str(exc)[-2000:]}")
            stop(attempt)
    raise RuntimeError(f"{what} did not start in {START_ATTEMPTS} tries:\n" + "\n".join(failures))


@contextlib.contextmanager
def ray_cluster(
    tmp: Path, *, head_cpus: int = 2, worker_cpus: int = 1, dashboard: bool = False
) -> Iterator[RayCluster]:
    """A 2-node Ray cluster; every process it started is gone when this exits.

    dashboard: the head runs Ray's dashboard (on loopback, a free port), which serves Ray's
    state API (task names and states for the progress bars, task and actor counts)."""
    tmp.mkdir(parents=True, exist_ok=True)
    saved = {name: os.environ.get(name) for name in AUTH_ENV}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env = dict(os.environ)
    # workers import the rayjupyter under test (%%remote's runner, the util helpers)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    ports = {"gcs": 0, "client": 0}
    head_log = tmp / "head.log"

    def head_command() -> list[str]:
        ports.update(gcs=free_port(), client=free_port())
        extra = [
            "--head",
            "--port",
            str(ports["gcs"]),
            "--ray-client-server-port",
            str(ports["client"]),
            *(
                [
                    "--include-dashboard=true",
                    "--dashboard-host",
                    "127.0.0.1",
                    "--dashboard-port",
                    str(free_port()),
                ]
                if dashboard
                else ["--include-dashboard=false"]
            ),
            "--temp-dir",
            str(tmp),
        ]
        return _node_command(extra, head_cpus)

    def head_ready(head: subprocess.Popen[bytes]) -> None:
        def announced() -> bool:
            if head.poll() is not None:
                raise RuntimeError(f"ray start --head exited:\n{head_log.read_text()[-3000:]}")
            return bool(_ADDRESS_LINE.search(head_log.read_text(errors="replace")))

        _poll(announced, START_TIMEOUT_S, "the Ray head announcing its address")

    cluster = RayCluster("", "", tmp, [])
    try:
        head = _start_node(head_command, head_log, env, head_ready, "the Ray head")
        cluster.starters.append(head)
        match = _ADDRESS_LINE.search(head_log.read_text(errors="replace"))
        assert match is not None
        cluster.address = match[1]
        host = cluster.address.rpartition(":")[0]
        cluster.client_address = f"ray://{host}:{ports['client']}"
        # a session directory of its own: two nodes on one machine sharing one would each
        # tail the other's worker logs, and drivers would print every line twice
        (tmp / "node2").mkdir(exist_ok=True)

        def worker_command() -> list[str]:
            extra = ["--address", cluster.address, "--temp-dir", str(tmp / "node2")]
            return _node_command(extra, worker_cpus)

        def worker_ready(worker: subprocess.Popen[bytes]) -> None:
            _wait_for_nodes(cluster.address, 2, env, START_TIMEOUT_S, worker)

        worker = _start_node(worker_command, tmp / "worker.log", env, worker_ready, "node 2")
        cluster.starters.append(worker)
        yield cluster
    finally:
        stop(cluster)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def stop(cluster: RayCluster) -> None:
    """SIGTERM each ``ray start`` (it stops its node), then kill what is left, by PID."""
    pids = cluster.pids()
    for starter in reversed(cluster.starters):  # the second node first, then the head
        with contextlib.suppress(ProcessLookupError):
            starter.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for starter in cluster.starters:
        with contextlib.suppress(subprocess.TimeoutExpired):
            starter.wait(timeout=max(0.1, deadline - time.monotonic()))
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    _gone, alive = psutil.wait_procs(procs, timeout=max(0.1, deadline - time.monotonic()))
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    for starter in cluster.starters:
        with contextlib.suppress(subprocess.TimeoutExpired):
            starter.wait(timeout=5)
    left = [pid for pid in pids if psutil.pid_exists(pid) and _running(pid)]
    assert not left, f"Ray processes still running after stop: {left}"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ------------------------------------------------------------------ one head with its dashboard

HEAD_START_TIMEOUT_S = 90.0  # 5-7 s on an idle machine; a loaded 2-core one is much slower
HEAD_STOP_TIMEOUT_S = 30.0


@dataclass
class RayHead:
    """A running Ray head: where its dashboard is, and its token."""

    process: subprocess.Popen[bytes]
    gcs_port: int
    dashboard_port: int
    client_port: int
    temp_dir: Path
    token_path: Path
    log: Path
    # the ray start process and its descendants, as Process objects: psutil refuses to
    # signal one whose PID was reused by an unrelated process
    procs: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    def env(self) -> dict[str, str]:
        """Environment for a process that talks to this cluster with its token."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def get(self, path: str, timeout: float = 10.0) -> bytes:
        request = urllib.request.Request(
            self.dashboard_url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bytes(response.read())

    def post(self, path: str, body: bytes, timeout: float = 30.0) -> bytes:
        request = urllib.request.Request(
            self.dashboard_url + path,
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bytes(response.read())

    def record_tree(self) -> set[int]:
        """Add the current process tree of ``ray start`` (workers come and go) to procs."""
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.process.pid)
            for proc in [root, *root.children(recursive=True)]:
                self.procs.setdefault(proc.pid, proc)
        return set(self.procs)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def start_ray_head(
    num_cpus: int = 2, object_store_memory: int = 200_000_000, *, loopback: bool = True
) -> RayHead:
    """Start a Ray head on free ports with a private temp dir and token; wait for its dashboard.

    loopback: the node's address is 127.0.0.1 (Ray Client listens there too). Ray turns a
    loopback --node-ip-address into the machine's IP unless it runs as a single-machine
    cluster (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), which refuses joining nodes: a test that
    joins a second node passes loopback=False.
    """
    gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics = free_ports(7)
    # a short path: Ray's Unix socket paths live under it
    temp_dir = Path(tempfile.mkdtemp(prefix="rjray-", dir="/tmp"))
    token_path = temp_dir / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    log = temp_dir / "ray-start.log"
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
    )
    if loopback:
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    command = [
        str(RAY_BIN),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--include-dashboard=true",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--num-cpus={num_cpus}",
        f"--object-store-memory={object_store_memory}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    head = RayHead(process, gcs, dashboard, client, temp_dir, token_path, log)
    head.record_tree()
    try:
        wait_for_condition(
            lambda: _dashboard_ready(head),
            timeout=HEAD_START_TIMEOUT_S,
            interval=0.5,
            message=f"Ray's dashboard on port {dashboard}",
        )
    except BaseException:
        log_text = head.log_tail()
        stop_ray_head(head)
        raise AssertionError(f"ray start --head did not come up:\n{log_text}") from None
    head.record_tree()
    return head


def _dashboard_ready(head: RayHead) -> bool:
    head.record_tree()
    if head.process.poll() is not None:
        raise AssertionError(f"ray start exited ({head.process.returncode}):\n{head.log_tail()}")
    try:
        # the node table answers once the raylet has registered with the GCS, the node
        # summary once the node's agent has reported (every few seconds)
        if b'"ALIVE"' not in head.get("/api/v0/nodes", timeout=3):
            return False
        if b'"mem"' not in head.get("/nodes?view=summary", timeout=3):
            return False
        with socket.create_connection(("127.0.0.1", head.client_port), timeout=3):
            return True  # Ray Client's server listens
    except OSError:
        return False


def stop_ray_head(head: RayHead) -> None:
    """SIGTERM ``ray start --block`` (it stops its children), then kill what is left of the
    recorded tree; assert every PID is gone."""
    tree = head.record_tree()
    if head.process.poll() is None:
        head.process.send_signal(signal.SIGTERM)
        try:
            head.process.wait(HEAD_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            head.process.kill()
            head.process.wait(10)
    deadline = time.monotonic() + HEAD_STOP_TIMEOUT_S
    while time.monotonic() < deadline and _alive(head):
        time.sleep(0.2)
    for proc in _alive(head):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    wait_for_pids_gone(tree, timeout=15)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


def _alive(head: RayHead) -> list[psutil.Process]:
    alive = []
    for proc in head.procs.values():
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


@contextlib.contextmanager
def running_ray_head() -> Iterator[RayHead]:
    """A dashboard head for a test module: its tree outlives single tests on purpose (left
    out of their leak check), and is gone when this exits."""
    head = start_ray_head()
    _SHARED.roots.add(head.process.pid)
    try:
        yield head
    finally:
        _SHARED.roots.discard(head.process.pid)
        stop_ray_head(head)
