"""A real Ray head (``ray start --head --block``) on free ports, with its own temp dir and its
own auth token, stopped by the PIDs it started.

``ray stop`` is never used: it stops every Ray process of the user on the machine (it
matches process names), which would hit other engineers' clusters. Instead the fixture
keeps the ``ray start --block`` process, whose children are Ray's processes (gcs_server,
raylet, dashboard, client server, agents, workers), SIGTERMs it (it then stops its
children), and kills whatever of the recorded tree outlives that.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from helpers import wait_for_condition, wait_for_pids_gone

RAY = Path(sys.executable).parent / "ray"  # the venv's `ray` CLI
START_TIMEOUT_S = 90.0  # 5-7 s on an idle machine; a loaded 2-core one is much slower
STOP_TIMEOUT_S = 30.0


def ray_importable() -> bool:
    """Ray with its dashboard (``ray[default]``), found without importing it (slow)."""
    try:
        return (
            importlib.util.find_spec("ray") is not None
            and importlib.util.find_spec("ray.dashboard") is not None
            and importlib.util.find_spec("aiohttp") is not None
            and RAY.exists()
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
        str(RAY),
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
            timeout=START_TIMEOUT_S,
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
            head.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            head.process.kill()
            head.process.wait(10)
    deadline = time.monotonic() + STOP_TIMEOUT_S
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
