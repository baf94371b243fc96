"""What a node owes its machine under attack and after faults: every refused connection
reported (bounded), a burst of local connections queued rather than refused, no session
folder (with the secret) left by a killed node, no process left by a task that detached
one, and a clear error for an object id that is no object id."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import zmq
from helpers import wait_for_condition, wait_for_pids_gone

import rayjupyter as rj
from rayjupyter.core import auth, discovery, ids, local_channel
from rayjupyter.core.api import _parse_address
from rayjupyter.core.config import session_dir


def node_pid(ctx: rj.ClusterContext) -> int:
    record = discovery.read_cluster_file(ctx.address_info["session"])
    assert record is not None
    return int(record["pid"])


# ---------------------------------------------------------------- refused connections


def test_refused_connections_are_each_logged_with_their_peer_and_floods_summarized(capfd):
    refused_line = re.compile(r"refused a connection on (.+?) from (.+?): (.+)$")
    lines: list[str] = []

    def read() -> list[str]:
        lines.extend(capfd.readouterr().err.splitlines())
        return lines

    ctx = rj.init(num_cpus=1)
    try:
        hostport, _ = _parse_address(ctx.connect_address)
        path = local_channel.socket_path(ctx.address_info["session"])
        # 30 local connections with a wrong proof of the secret
        for _ in range(30):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(path)
                sock.sendall(b"x" * local_channel.AUTH_SIZE)
                assert sock.recv(1) == b""  # the node closed it
        # then clients over TCP with the wrong secret (CurveZMQ keys of another cluster)
        context = zmq.Context()
        sockets = []
        try:
            for _ in range(3):
                sock = context.socket(zmq.DEALER)
                sock.linger = 0
                auth.secure_client(sock, "not-the-secret", f"tcp://{hostport}")
                sock.connect(f"tcp://{hostport}")
                sockets.append(sock)
            time.sleep(0.5)  # let them try (they retry: each try is a refusal)
        finally:
            for sock in sockets:
                sock.close(0)
            context.term()
    finally:
        rj.shutdown()  # the node's last words: the summary of what it did not show
    read()
    shown = [m for m in map(refused_line.search, lines) if m]
    assert len(shown) == 20, lines  # one window: the first 20 shown...
    me = f"pid {os.getpid()} uid {os.getuid()}"
    assert all(m.group(2) == me and m.group(3) == "wrong or missing secret" for m in shown)
    assert shown[0].group(1) == path
    (summary,) = [line for line in lines if "suppressed" in line]  # ...the rest counted
    suppressed = int(re.search(r"suppressed (\d+) more", summary).group(1))  # type: ignore[union-attr]
    assert suppressed >= 30 + 3 - 20
    assert f"{me} (10)" in summary and "127.0.0.1 (" in summary, summary


def test_refusal_log_shows_a_burst_per_window_and_sums_the_rest():
    now = [0.0]
    out: list[str] = []
    log = auth.RefusalLog(shown=2, window_s=60, write=out.append, clock=lambda: now[0])
    for peer in ["a", "b", "c", "c", "d"]:
        log.refused("tcp", peer, "wrong or missing secret")
    assert [line.split(" from ")[1] for line in out[:2]] == [
        "a: wrong or missing secret",
        "b: wrong or missing secret",
    ]
    assert len(out) == 3  # two refusals and the note that further ones are counted
    now[0] = 61.0
    log.tick()  # the window ends: one line for the three not shown, most frequent first
    assert out[-1].endswith(
        "suppressed 3 more refused connection(s) (at most 2 lines per 60 s); from c (2), d (1)"
    )
    log.refused("tcp", "e", "wrong or missing secret")  # a new window shows again
    assert out[-1].endswith("from e: wrong or missing secret")
    log.flush()
    assert len(out) == 5 and log.total == 6


# ---------------------------------------------------------------- a burst of local drivers


def test_a_burst_of_300_local_connections_is_queued_not_refused(cluster):
    hostport, secret = _parse_address(cluster.connect_address)
    pid = node_pid(cluster)
    fds: list[int | None] = []
    os.kill(pid, signal.SIGSTOP)  # the node's loop is busy: nothing is accepted meanwhile
    try:
        fds = [local_channel.connect(hostport, secret, ids.new_client_id()) for _ in range(300)]
    finally:
        os.kill(pid, signal.SIGCONT)
        connected = [fd for fd in fds if fd is not None]
    try:
        assert len(connected) == 300, f"{300 - len(connected)} of 300 connections refused"

        def all_open() -> bool:  # the node accepted each and kept it (its proof was right)
            for fd in connected:
                with socket.socket(fileno=os.dup(fd)) as sock:
                    sock.setblocking(False)
                    try:
                        if sock.recv(1, socket.MSG_PEEK) == b"":
                            return False
                    except BlockingIOError:
                        pass
            return True

        assert rj.get(rj.put(1), timeout=30) == 1  # the node has run its loop since...
        assert all_open()  # ...and kept every connection
    finally:
        for fd in connected:
            os.close(fd)
    assert rj.get(rj.put(2), timeout=30) == 2  # and serves on once they are gone


# ---------------------------------------------------------------- a killed node's session


_HOLDER = """
import sys, numpy as np, rayjupyter as rj
from rayjupyter.core import discovery
ctx = rj.init(num_cpus=1)
ref = rj.put(np.zeros(4 << 20, dtype=np.uint8))  # in shared memory: a file in /dev/shm
session = ctx.address_info["session"]
print(session, discovery.read_cluster_file(session)["pid"], flush=True)
sys.stdin.read()
"""


def shm_files(session: str) -> list[str]:
    return glob.glob(f"/dev/shm/rj-{session}-*")


def test_a_killed_nodes_folder_and_memory_are_removed_by_its_driver_or_the_next_node():
    # its driver is alive: rj.shutdown() removes what the node could not
    ctx = rj.init(num_cpus=1)
    try:
        session, pid = ctx.address_info["session"], node_pid(ctx)
        os.kill(pid, signal.SIGKILL)
        wait_for_pids_gone([pid])
        assert os.path.exists(discovery.cluster_file(session))  # with the secret in it
    finally:
        rj.shutdown()
    assert not os.path.exists(session_dir(session))

    # node and driver both killed: nobody is left to clean, so the next node does
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    try:
        assert holder.stdout is not None
        session, pid_text = holder.stdout.readline().decode().split()
        pid = int(pid_text)
        os.kill(pid, signal.SIGKILL)
        holder.kill()
        holder.wait(10)
        wait_for_pids_gone([pid])
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
    secret_copy = discovery.cluster_file(session)
    assert os.path.exists(secret_copy) and shm_files(session)
    assert session not in {c["session"] for c in discovery.list_local_clusters()}
    with rj.init(num_cpus=1) as ctx:
        assert not os.path.exists(session_dir(session)), "a dead node's folder is left"
        assert not shm_files(session), "a dead node's shared memory is left"
        assert os.path.exists(discovery.cluster_file(ctx.address_info["session"]))


# ---------------------------------------------------------------- processes tasks detach


@rj.remote
def detach_a_sleeper() -> int:
    """Start a process the way daemons do (the shell forks it, then exits: it is orphaned
    in a session of its own) and return its pid."""
    out = subprocess.run(
        ["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,
    )
    return int(out.stdout.strip())


def test_a_process_a_task_detached_does_not_outlive_shutdown():
    ctx = rj.init(num_cpus=1)
    pid = 0
    try:
        node = node_pid(ctx)
        pid = rj.get(detach_a_sleeper.remote(), timeout=60)
        proc = psutil.Process(pid)
        assert proc.ppid() == node  # adopted by the node, not by init
        assert proc.status() != psutil.STATUS_ZOMBIE
        rj.shutdown()
        wait_for_pids_gone([pid], timeout=15)
    finally:
        if rj.is_initialized():
            rj.shutdown()
        if pid and psutil.pid_exists(pid):  # the defect: kill it so the machine stays clean
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_the_node_reaps_the_detached_processes_that_exit(cluster):
    node = psutil.Process(node_pid(cluster))
    pid = rj.get(detach_a_sleeper.remote(), timeout=60)
    assert psutil.Process(pid).ppid() == node.pid
    os.kill(pid, signal.SIGTERM)
    # an adopted child that exits is reaped (no zombie piles up under the node)
    wait_for_condition(lambda: not psutil.pid_exists(pid), timeout=10)
    assert all(c.status() != psutil.STATUS_ZOMBIE for c in node.children())


# ---------------------------------------------------------------- object ids


def test_an_objectref_of_bytes_that_are_no_object_id_is_refused_at_once(cluster):
    for made_up, error, words in [
        (b"random", ValueError, "an object id is 20 bytes, got 6"),
        (os.urandom(20), ValueError, "was not made by any task or put"),
        (bytes(20), ValueError, "was not made by any task or put"),
        ("00" * 20, TypeError, "bytes.fromhex"),
    ]:
        with pytest.raises(error, match="Not an object id") as info:
            rj.ObjectRef(made_up)
        assert words in str(info.value) and "ref.binary()" in str(info.value)
    ref = rj.put("kept")
    again = rj.ObjectRef(ref.binary())  # the bytes of a live ref make a ref to it
    assert rj.get(again, timeout=30) == "kept"
    # a well-formed id nobody made here: not "lost", but not known to this cluster
    stranger = rj.ObjectRef(os.urandom(8) + (1).to_bytes(8, "big") + bytes(4))
    with pytest.raises(rj.exceptions.ObjectLostError, match="not known to this cluster"):
        rj.get(stranger, timeout=30)
