"""The ``rayjupyter`` command run as a user runs it, with a home folder of its own, and a
head started through it that a whole test module shares."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from helpers import wait_for_pids_gone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cli:
    def __init__(self, home: Path) -> None:
        self.env = dict(os.environ, RAYJUPYTER_HOME=str(home))
        self.env.pop("RAYJUPYTER_SECRET", None)
        self.env.pop("RAYJUPYTER_ADDRESS", None)
        self.env.pop("RAY_ADDRESS", None)
        self.home = home

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "rayjupyter", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def started_pids(self) -> list[int]:
        folder = self.home / "started"
        return [int(p.stem) for p in folder.glob("*.json")] if folder.exists() else []


@dataclass
class Head:
    cli: Cli
    connect: str  # rayjupyter://SECRET@HOST:PORT
    pid: int
    stdout: str  # what `start --head` printed (the dashboard's URL, when it has one)


@contextmanager
def started_head(home: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[Head]:
    """A head started with `rayjupyter start --head` (1 CPU), stopped and checked gone;
    ``env``: variables the head is started with."""
    cli = Cli(home)
    out = cli("start", "--head", "--port", str(free_port()), "--num-cpus", "1", *extra, env=env)
    assert out.returncode == 0, out.stderr
    connect = next(w for w in out.stdout.split() if w.startswith("rayjupyter://"))
    pids = cli.started_pids()  # the head (and its dashboard, if asked for)
    head = next(p for p in pids if "rayjupyter.core.node" in Path(f"/proc/{p}/cmdline").read_text())
    try:
        yield Head(cli, connect, head, out.stdout)
    finally:
        cli("stop")
        wait_for_pids_gone(pids, timeout=15)
