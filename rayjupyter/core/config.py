"""How a node is configured and how its launcher hears from it; shared by both sides
without importing the daemon itself."""

from __future__ import annotations

from dataclasses import dataclass, field

READY_LINE = "RAYJUPYTER_NODE_READY"
SECRET_ENV = "RAYJUPYTER_SECRET"
DRIVER_CHANNEL_ENV = "RAYJUPYTER_DRIVER_CHANNEL"  # "FD:CLIENT_ID": a local cluster's driver link


@dataclass
class NodeConfig:
    """How to start a node; passed as JSON on the command line."""

    num_cpus: float
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    object_store_memory: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    session: str = ""
    spill_dir: str = ""
    sys_path: list[str] = field(default_factory=list)  # the driver's, so workers import alike
    watch_stdin: bool = True  # exit when the owning driver's pipe closes
    owner_pid: int = 0  # the driver that started this node: its death is seen on stdin
    client_timeout_s: float = 30.0  # other drivers silent this long are let go
    head_address: str = ""  # host:port of the head node to join; "" makes this node the head
    node_timeout_s: float = 3.0  # a node silent this long is dead (heartbeats every 0.5 s)
    actors_file: str = ""  # a head keeps its named detached actors here across restarts
    max_workers: int = 0  # worker processes at most (0: derived from the machine, worker_limit.py)


def session_dir(session: str) -> str:
    """Where a node keeps its Unix socket and spill files (removed when it stops)."""
    return f"/tmp/rayjupyter/{session}"


def worker_endpoint(session: str) -> str:
    """The node's Unix socket: for processes on its machine, faster than TCP on loopback."""
    return f"ipc://{session_dir(session)}/node.sock"
