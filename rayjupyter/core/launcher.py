"""Starting and stopping a local cluster owned by this process.

The node daemon is a child in its own session (so Ctrl-C in a terminal reaches only the
driver) whose stdin is a pipe from us: however this process ends, even by SIGKILL, the
kernel closes the pipe and the node shuts its workers down and exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import asdict

from rayjupyter.core import auth, channel, discovery, ids
from rayjupyter.core.config import (
    DRIVER_CHANNEL_ENV,
    NODE_PROCESS_XOPTION,
    READY_LINE,
    SECRET_ENV,
    NodeConfig,
)
from rayjupyter.core.exceptions import ClusterConnectionError

START_TIMEOUT_S = 60.0


def default_object_store_memory() -> int:
    """The store a node here gets when none is asked for (object_store_memory=0): 30% of
    RAM, as in Ray, fitted to /dev/shm as store_placement decides."""
    from rayjupyter.core.store_placement import measure

    return measure("default", 0).capacity


class LocalCluster:
    """A node daemon (with the head's state) running as our child."""

    def __init__(
        self, config: NodeConfig, timeout: float = START_TIMEOUT_S, secret: str | None = None
    ) -> None:
        self.secret = secret or auth.new_secret()
        env = dict(os.environ)
        env[SECRET_ENV] = self.secret
        env.setdefault("PYTHONUNBUFFERED", "1")
        # our link to the node is a socket pair it inherits (channel.py): faster than zmq
        self.driver_client_id = ids.new_client_id()
        self._driver_end, node_end = channel.pair()
        env[DRIVER_CHANNEL_ENV] = f"{node_end.fileno()}:{self.driver_client_id.hex()}"
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    *("-X", NODE_PROCESS_XOPTION, "-m", "rayjupyter.core.node"),
                    json.dumps(asdict(config)),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                start_new_session=True,
                pass_fds=(node_end.fileno(),),
            )
        finally:
            node_end.close()
        self.session = ""
        assert self.process.stdout is not None
        line = read_first_line(self.process.stdout.fileno(), timeout)
        self.process.stdout.close()
        if not line.startswith(READY_LINE):
            code = self.process.poll()
            self.stop()
            raise ClusterConnectionError(
                f"The local cluster did not start (node exit code {code}); its error is printed "
                f"above. Check that rayjupyter is installed in {sys.executable}."
            )
        _, port, self.session = line.split()
        self.address = f"{config.host}:{port}"

    def take_driver_channel(self) -> int:
        """The descriptor of our end of the driver's channel, for the Client to own."""
        return self._driver_end.detach()

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_reason(self) -> str | None:
        """Why the node is gone, or None while it runs."""
        code = self.process.poll()
        if code is None:
            return None
        return (
            f"The local cluster's node process exited (code {code}); its error, if any, is "
            f"printed above. Call rj.shutdown() and rj.init() to start a new one."
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Close the node's stdin (its signal to stop) and wait for it; kill it if it lingers."""
        if self._driver_end.fileno() != -1:  # never handed to a Client
            self._driver_end.close()
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        if self.session:  # a node that was killed could not clean up after itself
            discovery.remove_session(self.session)


def read_first_line(fd: int, timeout: float) -> str:
    """A child's first stdout line (the ready line), or "" if it exits or stays silent too long."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        poll = select.poll()  # not select(): a busy driver's descriptors may pass 1024
        poll.register(fd, select.POLLIN)
        if not poll.poll(remaining * 1000):
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").split("\n", 1)[0]
