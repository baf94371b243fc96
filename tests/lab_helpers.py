"""A real ``jupyter lab`` on a free loopback port, isolated from the user's settings, with
this checkout's server extension and built lab extension; and a headless Debian chromium.

Every wait is bounded and the server is stopped by its PID (then its process tree is
killed if anything outlives it), so a failing test leaves nothing running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
from helpers import wait_for_condition, wait_for_pids_gone

REPO = Path(__file__).resolve().parent.parent
LABEXTENSION = REPO / "rayjupyter" / "labextension"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def labextension_built() -> bool:
    return (LABEXTENSION / "package.json").exists() and (LABEXTENSION / "static").is_dir()


@dataclass
class LabServer:
    """A running jupyter lab: where it is and how to reach it."""

    process: subprocess.Popen[bytes]
    port: int
    base_url: str
    token: str
    root: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_url}"

    def page(self, path: str) -> str:
        """A lab URL with the token (the server then sets its login cookie)."""
        sep = "&" if "?" in path else "?"
        return f"{self.url}{path}{sep}token={self.token}"

    def api(self, path: str, method: str = "GET", body: object = None) -> object:
        """Call the server's REST API with the token (what the test checks against)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def log_tail(self, lines: int = 60) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def start_lab(
    tmp: Path, base_url: str = "/rj-lab/", extra_env: dict[str, str] | None = None
) -> LabServer:
    """Start jupyter lab with isolated config, runtime, settings and workspaces dirs
    (extra_env: more environment for the server, e.g. a Ray cluster's token path)."""
    config, runtime, settings, workspaces, root, labext = (
        tmp / name for name in ("config", "runtime", "settings", "workspaces", "work", "labext")
    )
    for folder in (config, runtime, settings, workspaces, root, labext):
        folder.mkdir(parents=True, exist_ok=True)
    # the built extension of this checkout, under the name JupyterLab looks for
    (labext / "rayjupyter").symlink_to(LABEXTENSION, target_is_directory=True)
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"rayjupyter": True}}})
    )
    notification = settings / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    port = free_port()
    token = os.urandom(16).hex()
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(config),
        JUPYTER_RUNTIME_DIR=str(runtime),
        PYTHONPATH=os.pathsep.join(
            [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        ),
        BOKEH_RESOURCES="inline",
    )
    env.update(extra_env or {})
    log = tmp / "jupyter-lab.log"
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--allow-root",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.base_url={base_url}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={workspaces}",
        f"--LabApp.extra_labextensions_path={labext}",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    server = LabServer(process, port, base_url, token, root, log)
    try:
        wait_for_condition(
            lambda: _answers(server),
            timeout=START_TIMEOUT_S,
            interval=0.25,
            message=f"jupyter lab to answer on port {port}",
        )
    except BaseException:
        stop_lab(server)
        raise AssertionError(f"jupyter lab did not start:\n{server.log_tail()}") from None
    return server


def _answers(server: LabServer) -> bool:
    if server.process.poll() is not None:
        raise AssertionError(f"jupyter lab exited:\n{server.log_tail()}")
    request = urllib.request.Request(
        f"{server.url}api/status", headers={"Authorization": f"token {server.token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def stop_lab(server: LabServer) -> None:
    """SIGTERM (it stops its kernels and what its extension started), then kill what is left."""
    tree = {server.process.pid}
    with contextlib.suppress(psutil.Error):
        tree.update(p.pid for p in psutil.Process(server.process.pid).children(recursive=True))
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [pid for pid in tree if psutil.pid_exists(pid) and not _zombie(pid)]
        if not alive:
            return
        time.sleep(0.1)
    for pid in tree:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    wait_for_pids_gone(tree, timeout=10)


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True
