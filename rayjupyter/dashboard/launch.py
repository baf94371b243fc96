"""Start a dashboard process for a cluster: ``start_dashboard(connect_address)``.

Used by ``rj.init(include_dashboard=True)``, the Jupyter server extension and the CLI.
The dashboard is a child process that serves until ``stop()``, until its parent dies (its
stdin is a pipe from us: however we end, the pipe closes), or until the cluster goes away.
The secret travels in the environment, never on the command line (``ps`` shows that).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from types import TracebackType

from rayjupyter.core.config import SECRET_ENV
from rayjupyter.core.launcher import read_first_line
from rayjupyter.dashboard.auth import dashboard_token

READY_LINE = "RAYJUPYTER_DASHBOARD_READY"
ERROR_LINE = "RAYJUPYTER_DASHBOARD_ERROR"


def url_host(host: str) -> str:
    """The host part of a URL that reaches a listening address."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class DashboardError(RuntimeError):
    """The dashboard process did not start."""


class DashboardProcess:
    """A running dashboard: where it listens, its token, and ``stop()``."""

    def __init__(
        self, process: subprocess.Popen[bytes], host: str, port: int, prefix: str, token: str
    ) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.prefix = prefix  # "" or "/a/b"
        self.token = token

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        """The dashboard's root, without the token: ``http://HOST:PORT{prefix}/``."""
        return f"http://{url_host(self.host)}:{self.port}{self.prefix}/"

    def page_url(self, page: str = "overview", *, with_token: bool = True) -> str:
        """A page's URL; with the token, a browser can open it as it is."""
        url = f"{self.url}{page}"
        return f"{url}?token={self.token}" if with_token else url

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Close its stdin (its signal to stop) and wait; kill it if it lingers."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        if self.process.stdin is None and self.process.poll() is None:
            self.process.terminate()  # detached: it ignores stdin
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def __enter__(self) -> DashboardProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running() else "stopped"
        return f"DashboardProcess(pid={self.pid}, url={self.url!r}, {state})"


def start_dashboard(
    connect_address: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    prefix: str = "",
    timeout: float = 30.0,
    detach: bool = False,
    log_path: str | None = None,
) -> DashboardProcess:
    """Start a dashboard for the cluster at ``rayjupyter://SECRET@HOST:PORT`` and wait
    until it listens. ``prefix`` serves everything under that URL path (for a proxy);
    ``detach`` lets it outlive this process (stop it with ``stop()`` or SIGTERM);
    ``log_path`` takes its stderr (else it shares ours)."""
    from rayjupyter.core.api import _parse_address
    from rayjupyter.dashboard.server import normalize_prefix

    hostport, secret = _parse_address(connect_address)
    env = dict(os.environ)
    env[SECRET_ENV] = secret
    env.setdefault("PYTHONUNBUFFERED", "1")
    prefix = normalize_prefix(prefix)
    command = [sys.executable, "-m", "rayjupyter.dashboard", "--address", hostport]
    command += ["--host", host, "--port", str(port), "--prefix", prefix or "/"]
    if detach:
        command.append("--detach")
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed below
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL if detach else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal is for the parent, not for us
        )
    finally:
        if log is not None:
            log.close()
    assert process.stdout is not None
    line = read_first_line(process.stdout.fileno(), timeout)
    process.stdout.close()
    dashboard = DashboardProcess(process, host, 0, prefix, dashboard_token(secret))
    if not line.startswith(READY_LINE):
        dashboard.stop(timeout=5.0)
        if line.startswith(ERROR_LINE):
            reason = line[len(ERROR_LINE) :].strip()
            raise DashboardError(f"The dashboard could not start: {reason}")
        raise DashboardError(
            f"The dashboard did not start within {timeout:.0f} s (exit code "
            f"{process.returncode}); its error, if any, is printed above."
        )
    dashboard.port = int(line.split()[1])
    return dashboard


def driver_dashboard() -> str:
    """This driver's dashboard URL (with its token), starting one owned by this process if
    it has none yet; ``rj.shutdown()`` stops it (``%ray_dashboard --open``)."""
    from rayjupyter.core import api

    context = api._state["context"]
    if context is None:
        raise RuntimeError("Not connected to a cluster: call rj.init() (or %ray_connect) first.")
    dashboard: DashboardProcess | None = api._state.get("dashboard")
    if dashboard is None or not dashboard.running():
        dashboard = start_dashboard(context.connect_address)
        api._state["dashboard"] = dashboard
        context.dashboard_url = dashboard.page_url()
    return str(context.dashboard_url)
