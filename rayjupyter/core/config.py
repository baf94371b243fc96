"""How a node is configured and how its launcher hears from it; shared by both sides
without importing the daemon itself."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

READY_LINE = "RAYJUPYTER_NODE_READY"
#: ``python -X rayjupyter_node -m rayjupyter.core.node``: this process is a node (and the
#: workers it forks), known before the package's ``__init__`` runs, so that it skips what only
#: a driver uses (``driver.py``)
NODE_PROCESS_XOPTION = "rayjupyter_node"
SECRET_ENV = "RAYJUPYTER_SECRET"
#: a cluster's address with its secret, ``rayjupyter://SECRET@HOST:PORT``, and the variables
#: that name one (``connect.py`` reads them; here so that a worker need not import it)
ADDRESS_SCHEME = "rayjupyter://"
ADDRESS_ENVS = ("RAYJUPYTER_ADDRESS", "RAY_ADDRESS")
DRIVER_CHANNEL_ENV = "RAYJUPYTER_DRIVER_CHANNEL"  # "FD:CLIENT_ID": a local cluster's driver link
#: in a submitted job's entrypoint: its runtime_env (JSON of ``RuntimeEnv.to_wire``), which
#: ``rj.init`` there makes the env of every task and actor of the job, as in Ray (here, not
#: in jobs.py: every driver's init reads it, and jobs.py costs a millisecond to import)
JOB_RUNTIME_ENV_VAR = "RAYJUPYTER_JOB_RUNTIME_ENV"
#: the most jobs the head remembers (``jobs.py``); here, so that a node reads whether it is set
#: without importing jobs.py
MAX_JOBS_ENV = "RAYJUPYTER_MAX_JOBS"


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
    # bytes of the "memory" resource that tasks' and actors' memory= reserve (Ray's init
    # _memory); 0: the machine's available memory less the object store, as Ray derives it
    memory: int = 0


def node_totals(config: NodeConfig) -> dict[str, float]:
    """What a node offers to tasks and actors: CPU, GPU, memory (bytes) and custom ones."""
    memory = config.memory
    if memory <= 0:
        memory = max(available_memory() - config.object_store_memory, 0)
    totals = {"CPU": float(config.num_cpus), "GPU": float(config.num_gpus)}
    totals["memory"] = float(memory)
    totals.update({k: float(v) for k, v in config.resources.items()})
    return totals


def available_memory() -> int:
    """The machine's available memory in bytes (MemAvailable, as psutil reports it), read
    without importing psutil: a node reads it as it starts, and psutil costs ~8 ms there."""
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil  # not Linux

    return int(psutil.virtual_memory().available)


def session_dir(session: str) -> str:
    """Where a node keeps its Unix socket and spill files (removed when it stops)."""
    return f"/tmp/rayjupyter/{session}"


def worker_endpoint(session: str) -> str:
    """The node's Unix socket: for processes on its machine, faster than TCP on loopback."""
    return f"ipc://{session_dir(session)}/node.sock"


# ---------------------------------------------------------------------- bounds

KIB = 1 << 10
MIB = 1 << 20


class Bound(NamedTuple):  # (immutable: a frozen dataclass costs the node ~8x more)
    """One limit on a queue or table of the node: its setting, default, and what reaching
    it does (every queue and table is bounded, and reaching a bound says so)."""

    env: str  # the variable that sets it (read by the node when it starts, unless said)
    default: int
    bounds: str  # what it limits
    reached: str  # what happens when it is reached


#: every bound in one place (core/README.md, "Bounds", lists them for users)
BOUNDS: dict[str, Bound] = {
    "task_events": Bound(
        "RAYJUPYTER_TASK_EVENTS_MAX",
        100_000,
        "task records the node keeps for the state API, the timeline and summaries",
        "the task that ended first is forgotten (none ended: the oldest open one), in O(1); "
        "list_tasks shows no older ones, and the drivers hear it once if an open one goes",
    ),
    "tasks_per_client": Bound(
        "RAYJUPYTER_MAX_TASKS_PER_DRIVER",
        1_000_000,
        "tasks one driver (or worker, or peer node) has on the node and not yet ended: "
        "waiting, queued or running (about 1.5 KB of node memory each)",
        "the next task fails at once (get raises TaskUnschedulableError naming the setting)",
    ),
    "frame_bytes": Bound(
        "RAYJUPYTER_MAX_ZMQ_FRAME_BYTES",
        64 * KIB,
        "one zmq frame arriving at the node's sockets (ZMQ_MAXMSGSIZE), before "
        "authentication above all: the handshake's frames are a few hundred bytes",
        "libzmq closes that connection; our clients and peers split larger messages into "
        "frames of this size (one multipart message), so only a stranger reaches it",
    ),
    "unauthenticated": Bound(
        "RAYJUPYTER_MAX_UNAUTHENTICATED",
        64,
        "connections to the local channel (channel.sock) that have not proved the secret; "
        "each may send at most the proof's 69 bytes, for at most 5 s",
        "a new connection is closed at once (logged in the node's refusal log)",
    ),
    "log_backlog_bytes": Bound(
        "RAYJUPYTER_LOG_BACKLOG_BYTES",
        16 * MIB,
        "bytes the node still owes a slow local driver when workers' output arrives for it",
        "that output is dropped for that driver (others still get it); when it has caught "
        "up it hears how many lines it missed and the setting's name",
    ),
    "function_bytes": Bound(
        "RAYJUPYTER_MAX_FUNCTION_BYTES",
        100_000_000,  # Ray's limit too (its FUNCTION_SIZE_ERROR_THRESHOLD)
        "the pickled definition of one remote function or actor class, with all it captures "
        "from its enclosing scope; checked by the driver (its environment) at the first "
        ".remote(), before anything is shipped",
        "that .remote() raises ValueError naming the size and the setting: put a large value "
        "with rj.put and pass the ref as an argument instead of capturing it",
    ),
}


def bound(name: str) -> int:
    """The value of a bound: its environment variable if set (a positive integer), else
    its default. A bad value is a one-line error naming the variable."""
    spec = BOUNDS[name]
    raw = os.environ.get(spec.env, "")
    if not raw:
        return spec.default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(
            f"{spec.env}={raw!r}: expected a positive integer (default {spec.default})"
        )
    return value


def check_definition_size(blob: bytes, what: str) -> None:
    """Refuse a remote function's or actor class's pickled definition past the bound
    (BOUNDS "function_bytes"), as Ray does, before it is shipped; ``what`` names it
    ("remote function NAME" or "actor NAME")."""
    limit = bound("function_bytes")
    if len(blob) > limit:
        raise ValueError(
            f"The {what} is too large ({len(blob) / MIB:.1f} MiB pickled > "
            f"{limit / MIB:.1f} MiB, {BOUNDS['function_bytes'].env}): it captures a large value "
            f"from its enclosing scope; pass it as an argument (rj.put it once, pass the ref)."
        )
