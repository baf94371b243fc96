"""``rayjupyter start | stop | status``: run a cluster across machines from a shell.

``start --head`` starts a head node in the background and prints the lines that join a
node and connect a notebook; ``start --address`` joins a node to it; ``stop`` stops what
was started on this machine; ``status`` prints nodes, resources and use, like ``ray status``.
Every failure is one line on stderr that names the fix, and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rayjupyter.cli.output import CliError
from rayjupyter.core import addresses, auth, discovery, worker_limit
from rayjupyter.core.config import NODE_PROCESS_XOPTION, READY_LINE, SECRET_ENV, NodeConfig
from rayjupyter.core.read_models import NodeStatus

DEFAULT_PORT = 6380
START_TIMEOUT_S = 30.0
ADDRESS_SCHEME = addresses.ADDRESS_SCHEME


state_dir = addresses.state_dir
cluster_file = addresses.cluster_file
_read_cluster_file = addresses.read_cluster_file


def _write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def split_address(address: str) -> tuple[str, str]:
    """(host:port, secret) from ``rayjupyter://SECRET@HOST:PORT``, ``HOST:PORT`` + env or file."""
    try:
        return addresses.split(address)
    except addresses.AddressError as exc:
        raise CliError(str(exc)) from None


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as zmq binds: connections of a stopped head in TIME_WAIT do not hold the port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CliError(
                f"cannot listen on {host}:{port} ({exc.strerror}): pick another with --port, "
                f"or run `rayjupyter stop` if an old cluster still holds it"
            ) from None


def _resources(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    try:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError
        return {str(k): float(v) for k, v in value.items()}
    except (ValueError, TypeError):
        raise CliError(f"--resources must be a JSON object of numbers, got {text!r}") from None


def _node_config(args: argparse.Namespace, head_address: str) -> NodeConfig:
    resources = _resources(args.resources)
    for key, flag in (("CPU", "--num-cpus"), ("GPU", "--num-gpus"), ("memory", "--memory")):
        if key in resources:
            raise CliError(f"use {flag} instead of {key} in --resources")
    num_cpus = float(args.num_cpus if args.num_cpus is not None else (os.cpu_count() or 1))
    try:
        max_workers = worker_limit.from_env() if args.max_workers is None else args.max_workers
        worker_limit.check(max_workers, num_cpus)
    except ValueError as error:
        raise CliError(str(error)) from None
    return NodeConfig(
        num_cpus=num_cpus,
        num_gpus=float(args.num_gpus or 0),
        resources=resources,
        object_store_memory=int(args.object_store_memory or 0),  # 0: the node sizes it
        memory=int(args.memory or 0),
        host=args.node_ip,
        port=args.port if args.head else 0,
        sys_path=[p or os.getcwd() for p in sys.path],
        watch_stdin=False,  # a background node lives until `rayjupyter stop`
        head_address=head_address,
        # a head started again on the same port finds its named detached actors
        actors_file=str(state_dir() / f"head-{args.port}.actors") if args.head else "",
        max_workers=max_workers,
    )


def _launch(config: NodeConfig, secret: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """Start a node daemon; (process, port, session) once it is ready (joined, for a node)."""
    node = ("-X", NODE_PROCESS_XOPTION, "-m", "rayjupyter.core.node")  # (config.py)
    argv = [sys.executable, *node, json.dumps(asdict(config))]
    env = dict(os.environ, **{SECRET_ENV: secret, "PYTHONUNBUFFERED": "1"})
    logs = state_dir() / "logs"
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_path = logs / f"node-{int(time.time())}-{os.getpid()}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith(READY_LINE):
                _, port, session = line.split()
                return process, port, session
        if process.poll() is not None:
            last = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
            raise CliError(f"the node did not start: {last[0].strip()} (full log: {log_path})")
        time.sleep(0.05)
    process.kill()
    raise CliError(f"the node did not start within {START_TIMEOUT_S:.0f} s (log: {log_path})")


def _record_started(pid: int, session: str, role: str, address: str) -> None:
    _write_private(
        state_dir() / "started" / f"{pid}.json",
        {"pid": pid, "session": session, "role": role, "address": address},
    )


def cmd_start(args: argparse.Namespace) -> int:
    if args.head == bool(args.address):
        raise CliError("give either --head (start a cluster) or --address HOST:PORT (join one)")
    if args.head:
        return _start_head(args)
    head_address, secret = split_address(args.address)
    config = _node_config(args, head_address)
    process, port, session = _launch(config, secret)
    _record_started(process.pid, session, "node", f"{args.node_ip}:{port}")
    print(f"Node started (pid {process.pid}) and joined the head at {head_address}.", flush=True)
    return _block(process, []) if args.block else 0


def _block(process: subprocess.Popen[bytes], others: list[int]) -> int:
    """Stay in the foreground (a container's main process) until the node ends or we are
    told to stop (SIGTERM, SIGINT); then stop it and what was started with it."""

    def stop(*_: object) -> None:
        for pid in [process.pid, *others]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = process.wait()
    stop()
    return code


def _start_head(args: argparse.Namespace) -> int:
    _check_port_free(args.node_ip, args.port)
    address = f"{args.node_ip}:{args.port}"
    saved = _read_cluster_file()
    # a head started again where one ran keeps its secret: its nodes and drivers reconnect
    earlier = str(saved["secret"]) if saved and saved.get("address") == address else ""
    secret = os.environ.get(SECRET_ENV) or earlier or auth.new_secret()
    config = _node_config(args, "")
    if not args.block:
        _write_private(cluster_file(), {"address": address, "secret": secret})
    process, _, session = _launch(config, secret)
    pid = process.pid
    _record_started(pid, session, "head", address)
    connect = f"{ADDRESS_SCHEME}{secret}@{address}"
    print(f"Head node started (pid {pid}) at {address}; secret kept in {cluster_file()} (0600).")
    dashboard_pids = []
    if args.dashboard_port is not None:
        from rayjupyter.dashboard.launch import DashboardError, start_dashboard

        try:
            dashboard = start_dashboard(
                connect,
                host=args.node_ip,
                port=args.dashboard_port,
                detach=True,
                log_path=str(state_dir() / "logs" / f"dashboard-{session}.log"),
            )
        except DashboardError as exc:
            raise CliError(f"the head runs, but its dashboard did not start: {exc}") from None
        _record_started(dashboard.pid, session, "dashboard", dashboard.url)
        dashboard_pids.append(dashboard.pid)
        print(f"Dashboard: {dashboard.page_url('overview')}")
    print()
    print("To join another machine to this cluster:")
    print(f"    rayjupyter start --address {connect}")
    print("To connect a notebook or a script:")
    print(f"    %ray_connect {connect}")
    print(f"    rj.init(address={connect!r})")
    print("To see the cluster, and to stop what was started on this machine:")
    print("    rayjupyter status")
    print("    rayjupyter stop", flush=True)
    return _block(process, dashboard_pids) if args.block else 0


def _is_our_node(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # not a recycled pid now running something else
    return b"rayjupyter.core.node" in cmdline or b"rayjupyter.dashboard" in cmdline


def cmd_stop(args: argparse.Namespace) -> int:
    folder = state_dir() / "started"
    records = sorted(folder.glob("*.json")) if folder.exists() else []
    # joined nodes first, so they do not see their head die and report it
    loaded = [json.loads(path.read_text()) | {"path": path} for path in records]
    loaded.sort(key=lambda r: {"dashboard": 0, "node": 1}.get(r["role"], 2))
    stopped = 0
    for record in loaded:
        pid = int(record["pid"])
        if _is_our_node(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + args.timeout
            while _is_our_node(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _is_our_node(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            stopped += 1
        if record["role"] != "dashboard" and not _is_our_node(pid) and record.get("session"):
            # a node killed (now, or earlier by someone else) left its folder and its secret
            discovery.remove_session(str(record["session"]))
        record["path"].unlink(missing_ok=True)
    saved = _read_cluster_file()
    if saved is not None and not any(r["role"] == "head" for r in loaded) and stopped == 0:
        pass  # a head started elsewhere: its file stays for `status` and joining
    elif any(r["role"] == "head" for r in loaded):
        cluster_file().unlink(missing_ok=True)
    print(f"Stopped {stopped} rayjupyter process(es)." if stopped else "Nothing to stop here.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from rayjupyter.core import queries
    from rayjupyter.core.client import Client
    from rayjupyter.core.exceptions import ClusterConnectionError

    address = args.address
    if not address:
        saved = _read_cluster_file()
        if saved is None:
            raise CliError("no cluster started here: give --address HOST:PORT")
        address = str(saved["address"])
    hostport, secret = split_address(address)
    try:
        client = Client(hostport, secret, kind="observer", timeout=args.timeout, io_thread=False)
    except ClusterConnectionError as exc:
        raise CliError(str(exc)) from None
    try:
        status = queries.status(client, timeout=args.timeout)
    finally:
        client.close()
    print(render_status(hostport, status))
    return 0


def render_status(address: str, status: NodeStatus) -> str:
    """A ``ray status``-like text: nodes, then resources used of total, then tasks."""
    lines = [f"Cluster at {address}", "", "Nodes:"]
    for row in status.nodes:
        state = "alive" if row.Alive else "DEAD"
        custom = {
            k: v for k, v in row.Resources.items() if k not in ("object_store_memory", "memory")
        }
        lines.append(f"  {row.NodeID[:12]}  {row.address:<22} {state:<6} {_format(custom)}")
    lines += ["", "Resources (used / total):"]
    total = status.total
    available = _available_everywhere(status)
    for key in sorted(total):
        if key == "object_store_memory":
            continue
        used = total[key] - available.get(key, total[key])
        if key == "memory":  # bytes, as Ray's status shows it
            lines.append(f"  {used / 2**30:.2f}GiB/{total[key] / 2**30:.2f}GiB memory")
            continue
        lines.append(f"  {used:g}/{total[key]:g} {key}")
    store = status.store
    if store.capacity:
        used_gb = store.used_bytes / 1e9
        cap_gb = store.capacity / 1e9
        lines.append(f"  {used_gb:.2f}/{cap_gb:.2f} GB object store (this node)")
    if store.note:  # not simply in /dev/shm (store_placement): where, and why
        lines.append(f"  object store: {store.note}")
    tasks = status.tasks
    lines += ["", "Tasks: " + (", ".join(f"{n} {s}" for s, n in sorted(tasks.items())) or "none")]
    return "\n".join(lines)


def _available_everywhere(status: NodeStatus) -> dict[str, float]:
    """Free resources summed over the live nodes' rows (each as of its last heartbeat)."""
    available: dict[str, float] = {}
    for row in status.alive_nodes:
        for key, value in row.Available.items():
            available[key] = available.get(key, 0.0) + value
    return available


def _format(resources: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items()))


def add_commands(commands: Any) -> None:
    """start, stop and status."""

    start = commands.add_parser("start", help="start a head node, or join a node to one")
    start.add_argument("--head", action="store_true", help="start a new cluster's head here")
    start.add_argument("--address", help="join the head at HOST:PORT or rayjupyter://SECRET@...")
    start.add_argument("--port", type=int, default=DEFAULT_PORT, help="the head's port")
    start.add_argument(
        "--node-ip",
        "--node-ip-address",  # Ray's name
        dest="node_ip",
        default="127.0.0.1",
        help="the address peers reach us at",
    )
    start.add_argument("--num-cpus", type=float, help="CPUs to offer (default: all)")
    start.add_argument("--num-gpus", type=float, help="GPUs to offer")
    start.add_argument("--resources", help="custom resources as JSON: '{\"accel\": 1}'")
    start.add_argument("--object-store-memory", type=int, help="bytes of shared memory")
    start.add_argument(
        "--memory",
        type=int,
        help="bytes of the memory resource that tasks' memory= reserve (default: the "
        "machine's available memory less the object store, as Ray)",
    )
    start.add_argument(
        "--max-workers",
        type=int,
        help="worker processes at most (default: $RAYJUPYTER_MAX_WORKERS, else from the machine)",
    )
    start.add_argument("--dashboard-port", type=int, help="serve the dashboard on this port")
    start.add_argument("--block", action="store_true", help="stay in the foreground")
    start.set_defaults(run=cmd_start)

    stop = commands.add_parser("stop", help="stop the nodes started on this machine")
    stop.add_argument("--timeout", type=float, default=10.0, help="seconds before SIGKILL")
    stop.set_defaults(run=cmd_stop)

    status = commands.add_parser("status", help="nodes, resources and tasks of a cluster")
    status.add_argument("--address", help="HOST:PORT (default: the cluster started here)")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for it")
    status.set_defaults(run=cmd_status)
