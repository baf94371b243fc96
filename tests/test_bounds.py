"""Every queue and table of the node has a bound, and reaching one says so (config.BOUNDS).

Admission stays O(1) however many task events are open (a scan of them on every submit
wedged a node with a driver's 100,000 queued tasks); a driver past its task bound gets an
error naming the setting; strangers cannot make the node hold large frames before they
authenticate, on the zmq sockets or the local channel; a slow driver's output backlog is
bounded.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from helpers import wait_for_condition

from rayjupyter.core import local_channel
from rayjupyter.core.config import BOUNDS, bound
from rayjupyter.core.task_events import TaskEventLog

MIB = 1 << 20


# ---------------------------------------------------------------------- no process


class _NoScans(OrderedDict):  # type: ignore[type-arg]
    """An event table that fails any walk over it: admission must not walk it."""

    def _refuse(self, *args: Any) -> Any:
        raise AssertionError("the task event table was walked on the submit path")

    items = values = keys = __iter__ = _refuse


def test_task_event_admission_never_walks_the_table() -> None:
    log = TaskEventLog(limit=1000)
    log.events = _NoScans()
    warnings: list[str] = []
    log.warn = warnings.append
    for i in range(5000):  # all open: each submit past the limit forgets the oldest one
        log.submitted(i.to_bytes(8, "big"), "f", b"job", b"", waiting=False)
    assert len(log.events) == 1000
    assert log.open_forgotten == 4000
    assert len(warnings) == 1 and BOUNDS["task_events"].env in warnings[0]


def test_task_events_forget_the_first_ended_then_the_oldest_open() -> None:
    log = TaskEventLog(limit=4)
    ids = [bytes([i]) * 8 for i in range(8)]
    for task_id in ids[:4]:
        log.submitted(task_id, "f", b"job", b"", waiting=False)
    log.ended(ids[2], failed=False)
    log.ended(ids[1], failed=True)
    log.submitted(ids[4], "f", b"job", b"", waiting=False)  # ids[2] ended first: it goes
    assert ids[2] not in log.events and ids[1] in log.events
    log.submitted(ids[5], "f", b"job", b"", waiting=False)  # then ids[1]
    assert ids[1] not in log.events
    log.submitted(ids[6], "f", b"job", b"", waiting=False)  # none ended: the oldest open
    assert list(log.events) == [ids[3], ids[4], ids[5], ids[6]]
    log.ended(ids[4], failed=False)
    log.submitted(ids[4], "f", b"job", b"", waiting=False)  # submitted again: open again
    log.submitted(ids[7], "f", b"job", b"", waiting=False)
    assert ids[4] in log.events and ids[3] not in log.events


def test_the_state_machine_counts_each_submitters_tasks_until_they_are_forgotten() -> None:
    from rayjupyter.core.node_state import NodeState
    from rayjupyter.core.scheduler import ResourcePool, TaskRecord
    from rayjupyter.core.worker_limit import WorkerLimit

    state = NodeState(ResourcePool({"CPU": 2.0}), pool_size=2, limit=WorkerLimit(64))

    def task(n: int, owner: bytes) -> TaskRecord:
        task_id = n.to_bytes(8, "big")
        return TaskRecord(task_id, owner, "f", b"f", b"", (), (), (task_id + b"r",), {}, 0, False)

    first = [task(i, b"a") for i in range(3)]
    for record in first:
        state.submit(record)
    state.submit(task(10, b"b"))
    assert state.owned == {b"a": 3, b"b": 1}
    assert not state.over_limit(first[-1], 3) and state.over_limit(first[-1], 2)
    state.fail(first[0])
    assert state.forget(first[0]) and not state.forget(first[0])  # twice: counted once
    assert state.owned == {b"a": 2, b"b": 1}
    for record in first[1:]:
        state.fail(record)
        state.forget(record)
    assert state.owned == {b"b": 1}  # a submitter with none left leaves the table


def test_a_bad_bound_setting_is_a_one_line_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = BOUNDS["tasks_per_client"].env
    monkeypatch.setenv(env, "lots")
    with pytest.raises(ValueError, match=env):
        bound("tasks_per_client")
    monkeypatch.setenv(env, "2_000")
    assert bound("tasks_per_client") == 2000
    monkeypatch.delenv(env)
    assert bound("tasks_per_client") == BOUNDS["tasks_per_client"].default


def test_every_bound_is_documented_in_the_engine_readme() -> None:
    readme = os.path.join(os.path.dirname(__file__), "..", "rayjupyter", "core", "README.md")
    with open(readme) as text:
        content = text.read()
    for spec in BOUNDS.values():
        assert spec.env in content, f"{spec.env} is not in core/README.md"


# ---------------------------------------------------------------------- a real node


@pytest.fixture
def bounded_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A local cluster started with small bounds (the node reads them from its env)."""
    import rayjupyter as rj

    monkeypatch.setenv(BOUNDS["tasks_per_client"].env, "40")
    monkeypatch.setenv(BOUNDS["unauthenticated"].env, "4")
    ctx = rj.init(num_cpus=2)
    try:
        yield ctx
    finally:
        rj.shutdown()


def _node_process() -> psutil.Process:
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if any("rayjupyter.core.node" in part for part in child.cmdline()):
                return child
    raise AssertionError("no node process under this test")


def _node_memory(node: psutil.Process) -> int:
    """The node's own resident memory (its workers are not what a stranger fills)."""
    return int(node.memory_info().rss)


def _send_until_closed(sock: socket.socket, total: int) -> int:
    """Write junk until the peer closes (or ``total`` bytes went); how many bytes went."""
    chunk = b"\xab" * (256 * 1024)
    sent = 0
    sock.settimeout(10.0)
    with contextlib.suppress(OSError):  # EPIPE or ECONNRESET: the node closed it
        while sent < total:
            sent += sock.send(chunk)
    return sent


def _closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_a_driver_past_its_task_bound_gets_an_error_naming_the_setting(
    bounded_cluster: Any,
) -> None:
    import rayjupyter as rj
    from rayjupyter.core.exceptions import TaskUnschedulableError

    @rj.remote
    def gate() -> int:
        time.sleep(1.5)
        return 1

    @rj.remote
    def after(value: int) -> int:
        return value + 1

    held = gate.remote()
    refs = [after.remote(held) for _ in range(60)]  # all wait on the gate: none ends yet
    results: list[Any] = []
    for ref in refs:
        try:
            results.append(rj.get(ref, timeout=60))
        except TaskUnschedulableError as exc:
            results.append(exc)
    refused = [r for r in results if isinstance(r, Exception)]
    assert results[:39] == [2] * 39  # the gate is the 40th task of this driver
    assert len(refused) == 21
    assert BOUNDS["tasks_per_client"].env in str(refused[0])
    assert rj.get(after.remote(1), timeout=30) == 2  # below the bound again: accepted


def _zmtp_greeting(mechanism: bytes) -> bytes:
    """ZMTP 3.0's 64-byte greeting, as a client would send it."""
    return (
        b"\xff"
        + b"\x00" * 8
        + b"\x7f"
        + b"\x03\x00"
        + mechanism.ljust(20, b"\x00")
        + b"\x00"
        + b"\x00" * 31
    )


def test_frames_before_the_handshake_are_bounded_on_tcp(bounded_cluster: Any) -> None:
    """A stranger declares a 400 MB handshake frame and streams it: the node reads none of
    it (ZMQ_MAXMSGSIZE) and closes the connection; its memory does not grow."""
    import rayjupyter as rj

    node = _node_process()
    host, port = bounded_cluster.address.rsplit(":", 1)
    before = _node_memory(node)
    conns = []
    for _ in range(4):
        sock = socket.create_connection((host, int(port)), timeout=10)
        # a command frame (flags 0x06: command, long size) of 400 MB, then its "bytes"
        sock.sendall(_zmtp_greeting(b"CURVE") + b"\x06" + struct.pack(">Q", 400 * MIB))
        conns.append(sock)
    sent = [_send_until_closed(sock, 48 * MIB) for sock in conns]
    assert all(_closed_by_peer(sock) for sock in conns)
    for sock in conns:
        sock.close()
    grown = _node_memory(node) - before
    assert grown < 16 * MIB, f"the node grew by {grown / MIB:.0f} MiB (strangers sent {sent})"
    assert all(n < 48 * MIB for n in sent), f"a connection stayed open for {sent} bytes"
    assert rj.cluster_resources()["CPU"] == 2.0  # the node still serves its driver
    assert rj.get(rj.put(41), timeout=30) == 41


def test_frames_before_the_proof_are_bounded_on_the_local_channel(
    bounded_cluster: Any,
) -> None:
    """The local channel reads only the proof's bytes from a stranger and closes it; past
    the bound on unproven connections, a new one is closed at once; a real driver still
    attaches afterwards."""

    node = _node_process()
    path = local_channel.socket_path(bounded_cluster.address_info["session"])
    before = _node_memory(node)
    junk = []
    for _ in range(2):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        junk.append(sock)
    sent = [_send_until_closed(sock, 48 * MIB) for sock in junk]
    assert all(_closed_by_peer(sock) for sock in junk)
    grown = _node_memory(node) - before
    assert grown < 16 * MIB, f"the node grew by {grown / MIB:.0f} MiB (strangers sent {sent})"
    idle = []
    for _ in range(4):  # the bound (4 here): silent, unproven connections the node keeps
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        idle.append(sock)
    # accepted in order: the first four are kept (unproven), the fifth is past the bound
    extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    extra.connect(path)
    assert _closed_by_peer(extra, timeout=3), "a connection past the bound was kept"
    for sock in [*junk, *idle, extra]:
        sock.close()
    address = bounded_cluster.connect_address
    script = f"import rayjupyter as rj; rj.init(address={address!r}); print(rj.get(rj.put(5)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "5"


def test_a_client_over_zmq_sends_frames_past_the_frame_bound_in_parts(
    bounded_cluster: Any,
) -> None:
    """A legitimate client's large frame (a 1 MiB query here, a large put or submit batch
    in real use) reaches the node in parts under ZMQ_MAXMSGSIZE, over the node's ipc and
    tcp sockets alike, and the node answers it."""
    from rayjupyter.core import queries
    from rayjupyter.core.client import Client
    from rayjupyter.core.config import worker_endpoint

    secret = bounded_cluster._secret
    session = bounded_cluster.address_info["session"]
    # ipc://: a zmq link even on this machine (tcp from here would take the local channel)
    client = Client(worker_endpoint(session), secret, kind="observer", io_thread=False)
    try:
        value = "x" * MIB
        assert queries.list_state(client, "tasks", (("name", "=", value),), timeout=20) == []
        assert queries.status(client, timeout=20).total["CPU"] == 2.0
    finally:
        client.close()


_SLOW_DRIVER = """
import sys, threading
import rayjupyter as rj

noted = threading.Event()

class Watch:
    def __init__(self, stream):
        self.stream = stream
    def write(self, text):
        if "lines of worker output were dropped" in text:
            noted.set()
        return self.stream.write(text)
    def flush(self):
        self.stream.flush()

sys.stderr = Watch(sys.stderr)
rj.init(address=sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
print("VERDICT:" + ("noted" if noted.wait(30) else "missed"), flush=True)
rj.shutdown()
"""


def test_a_stopped_driver_misses_output_past_its_backlog_and_hears_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Workers print 16 MB while one attached driver is stopped (SIGSTOP): the node keeps
    at most the backlog bound for it, and once it runs again it hears how many lines it
    missed, naming the setting; the other driver got every line."""
    import signal

    import rayjupyter as rj

    monkeypatch.setenv(BOUNDS["log_backlog_bytes"].env, str(256 * 1024))
    ctx = rj.init(num_cpus=1)
    slow = subprocess.Popen(
        [sys.executable, "-c", _SLOW_DRIVER, ctx.connect_address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert slow.stdout is not None and slow.stdin is not None
        assert slow.stdout.readline().strip() == "ready"

        @rj.remote
        def spam(lines: int) -> int:
            for i in range(lines):
                print(f"line {i:08d} " + "x" * 90)
            return lines

        os.kill(slow.pid, signal.SIGSTOP)
        try:
            assert rj.get(spam.remote(160_000), timeout=60) == 160_000
        finally:
            os.kill(slow.pid, signal.SIGCONT)
        node = _node_process()
        assert node.memory_info().rss < 400 * MIB  # not the 16 MB per stopped driver, kept
        assert rj.get(spam.remote(1), timeout=30) == 1  # output the driver has room for
        slow.stdin.write("\n")
        slow.stdin.flush()
        said = slow.stdout.read()  # its workers' output and its verdict, interleaved
        assert slow.wait(30) == 0
        assert "VERDICT:noted" in said
        assert said.count("\n") < 160_000  # it missed lines
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait(10)
        rj.shutdown()


def test_full_collections_wait_for_small_tables() -> None:
    """The node never pauses for a full collection while it holds a heavy load (one over
    150,000 queued tasks took 1.5 s); once its tables are small it runs them, spaced."""
    import gc

    from rayjupyter.core.node_gc import FULL_EVERY_S, NEVER, SMALL_TABLES, GarbagePolicy

    size = [SMALL_TABLES + 1]
    policy = GarbagePolicy(lambda: size[0])
    saved = gc.get_threshold()
    try:
        policy.start()
        assert gc.get_threshold()[2] == NEVER  # no automatic full collection
        policy.tick(1000.0)
        assert policy.full_runs == 0  # loaded: none
        size[0] = 10
        policy.tick(1000.0)
        assert policy.full_runs == 1
        policy.tick(1001.0)
        assert policy.full_runs == 1  # spaced
        policy.tick(1000.0 + FULL_EVERY_S + 1 + policy.last_duration * 200)
        assert policy.full_runs == 2
    finally:
        gc.set_threshold(*saved)
        gc.unfreeze()


_HOLDER = """
import os, sys
import rayjupyter as rj
rj.init(address=sys.argv[1])
refs = [rj.put(i) for i in range(50_000)]
rj.get(refs[-1])
print("held", flush=True)
os._exit(0)  # gone with every ref still held
"""


def test_a_gone_drivers_many_holds_are_all_let_go(cluster: Any) -> None:
    """A driver that leaves holding 50,000 refs: the node drops them over a few loop turns
    (RELEASE_PER_TURN a turn, so it keeps answering) and every one is freed."""
    import rayjupyter as rj
    from rayjupyter.core import api, queries

    run = subprocess.run(
        [sys.executable, "-c", _HOLDER, cluster.connect_address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.stdout.strip() == "held", run.stderr[-2000:]
    client = api._client()

    def objects_left() -> int:
        return len(queries.list_state(client, "objects", limit=100_000, timeout=20))

    wait_for_condition(lambda: objects_left() == 0, timeout=60, interval=0.1)
    assert rj.get(rj.put(7), timeout=30) == 7
