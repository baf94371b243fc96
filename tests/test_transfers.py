"""Values pulled between nodes: the plan of one pull (who is asked for which chunk), and real
pulls between node processes on this machine: intact, from two holders at once, and when a
holder dies mid-pull (finished from another holder, or a clear ObjectLostError, never a hang).
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil
import pytest
from cluster_helpers import Nodes, alive_nodes, nodes_fixture, started_nodes
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.core import api, local_channel
from rayjupyter.core.node_links import PEER_CURVE_ENV, peer_endpoint
from rayjupyter.core.object_files import shm_path
from rayjupyter.core.peer_bulk import PEER_BULK_ENV
from rayjupyter.core.pull_plan import PullPlan
from rayjupyter.exceptions import ObjectLostError

MB = 1 << 20
SIZE = 200 * MB  # as a 1 GB value crosses, in fewer seconds


# ------------------------------------------------------------------ the plan, no processes


def serve_all(plan: PullPlan, order: list[str] | None = None) -> list[tuple[str, int, int]]:
    """Answer every request (holders in ``order`` first) until the plan is done."""
    pending = plan.requests()
    answered = []
    while pending:
        if order:
            pending.sort(key=lambda ask: order.index(ask[0]))
        holder, offset, length = pending.pop(0)
        wanted, more = plan.arrived(holder, offset, length)
        assert wanted
        answered.append((holder, offset, length))
        pending.extend(more)
    return answered


def covered(answered: list[tuple[str, int, int]], size: int) -> None:
    """Each byte of the value came exactly once."""
    spans = sorted((offset, length) for _, offset, length in answered)
    end = 0
    for offset, length in spans:
        assert offset == end
        end += length
    assert end == size


def test_a_pull_asks_every_holder_and_covers_each_byte_once() -> None:
    plan = PullPlan(10 * MB + 5, ["a:1", "b:2", "a:1", ""], chunk=MB, window=2)
    assert plan.holders == ["a:1", "b:2"]
    first = plan.requests()
    assert [h for h, _, _ in first] == ["a:1", "a:1", "b:2", "b:2"]  # each one's window
    answered = []
    pending = first
    while pending:
        holder, offset, length = pending.pop(0)
        wanted, more = plan.arrived(holder, offset, length)
        assert wanted
        answered.append((holder, offset, length))
        pending.extend(more)
    assert plan.done and not plan.failed
    covered(answered, 10 * MB + 5)
    assert plan.served["a:1"] > 0 and plan.served["b:2"] > 0
    assert plan.requests() == []


def test_a_holder_that_answers_sooner_serves_more() -> None:
    plan = PullPlan(64 * MB, ["slow:1", "fast:2"], chunk=MB, window=2)
    answered = serve_all(plan, order=["fast:2", "slow:1"])
    covered(answered, 64 * MB)
    assert plan.served["fast:2"] > plan.served["slow:1"] == 2 * MB


def test_a_failed_holder_s_chunks_go_to_the_others() -> None:
    plan = PullPlan(8 * MB, ["a:1", "b:2"], chunk=MB, window=2)
    asks = plan.requests()
    lost = [ask for ask in asks if ask[0] == "a:1"]
    again = plan.holder_failed("a:1")
    assert len(lost) == 2
    assert again == []  # b's window is full: a's chunks wait for room there
    rest = [ask for ask in asks if ask[0] == "b:2"]
    answered = []
    while rest:
        holder, offset, length = rest.pop(0)
        assert holder == "b:2"
        wanted, more = plan.arrived(holder, offset, length)
        assert wanted
        answered.append((holder, offset, length))
        rest.extend(more)
    covered(answered, 8 * MB)
    assert plan.done
    # a late answer from the holder given up on is not written
    assert plan.arrived("a:1", 0, MB) == (False, [])


def test_a_pull_fails_only_when_no_holder_is_left() -> None:
    plan = PullPlan(4 * MB, ["a:1", "b:2"], chunk=MB, window=4)
    plan.requests()
    plan.holder_failed("a:1")
    assert not plan.failed
    assert plan.holder_failed("b:2") == []
    assert plan.failed and not plan.done
    assert plan.holder_failed("b:2") == []  # (once is enough)


def test_a_repeat_or_a_wrong_length_is_not_taken() -> None:
    plan = PullPlan(2 * MB, ["a:1"], chunk=MB, window=4)
    plan.requests()
    assert plan.arrived("a:1", 0, MB - 1) == (False, [])
    assert plan.arrived("a:1", 0, MB)[0]
    assert plan.arrived("a:1", 0, MB) == (False, [])
    assert plan.arrived("c:3", MB, MB) == (False, [])
    assert plan.received == MB and not plan.done


def test_a_peer_in_another_network_namespace_or_gone_is_reached_over_tcp() -> None:
    assert peer_endpoint("192.0.2.1:1") == "tcp://192.0.2.1:1"  # no node of ours there


# ------------------------------------------------------------------ real pulls


nodes = nodes_fixture(num_cpus=1, resources={"head": 1})


@rj.remote
def make(nbytes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, nbytes, dtype=np.uint8)


@rj.remote
def digest(array: np.ndarray) -> str:
    return hashlib.sha256(array).hexdigest()


def expected_digest(seed: int) -> str:
    array = np.random.default_rng(seed).integers(0, 255, SIZE, dtype=np.uint8)
    return hashlib.sha256(array).hexdigest()


def head_session() -> str:
    return str(api._state["context"].address_info["session"])


def channel_connections(pid: int, session: str) -> int:
    """Connections a node accepted on its channel socket (local drivers, peers' bulk links)."""
    path = local_channel.socket_path(session)
    return sum(c.laddr == path for c in psutil.Process(pid).net_connections(kind="unix"))


@pytest.mark.timeout(180)
def test_a_value_is_pulled_intact_from_a_peer(nodes: Nodes) -> None:
    n1 = nodes.join(n1=1)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=20)
    assert peer_endpoint(n1.address).startswith("ipc://")  # on this machine: its socket
    made = make.options(resources={"n1": 1}).remote(SIZE, 1)
    made_there = rj.get(digest.options(resources={"n1": 1}).remote(made), timeout=60)
    before = channel_connections(n1.pid, n1.session)
    array = rj.get(made, timeout=60)  # pulled into the head's store
    assert hashlib.sha256(array).hexdigest() == made_there == expected_digest(1)
    # its chunks came over the holder's channel socket (peer_bulk.py), not zmq
    assert channel_connections(n1.pid, n1.session) == before + 1


@pytest.mark.timeout(180)
def test_a_value_is_pulled_intact_over_zmq_when_bulk_links_are_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PEER_BULK_ENV, "0")  # (inherited by every node started here)
    with started_nodes(num_cpus=1, resources={"head": 1}) as started:
        n1 = started.join(n1=1)
        wait_for_condition(lambda: alive_nodes() == 2, timeout=20)
        made = make.options(resources={"n1": 1}).remote(SIZE, 6)
        before = channel_connections(n1.pid, n1.session)
        array = rj.get(made, timeout=60)
        assert hashlib.sha256(array).hexdigest() == expected_digest(6)
        assert channel_connections(n1.pid, n1.session) == before


@pytest.mark.timeout(180)
def test_a_value_two_nodes_hold_is_pulled_from_both_intact(nodes: Nodes) -> None:
    nodes.join(n1=1)
    nodes.join(n2=1)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=20)
    made = make.options(resources={"n1": 1}).remote(SIZE, 2)
    rj.get(made, timeout=60)  # the head has a copy now, and n1 keeps its own
    # the head provides it to n2 naming both: n2 pulls from the head and from n1 at once
    got = rj.get(digest.options(resources={"n2": 1}).remote(made), timeout=60)
    assert got == expected_digest(2)


@pytest.fixture
def curve_nodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Nodes]:
    """Nodes that link over TCP with CurveZMQ even on this machine, as between machines."""
    monkeypatch.setenv(PEER_CURVE_ENV, "1")  # (inherited by every node started here)
    with started_nodes(num_cpus=1, resources={"head": 1}) as started:
        yield started


@pytest.mark.timeout(180)
def test_a_value_crosses_intact_over_curvezmq_as_between_machines(curve_nodes: Nodes) -> None:
    n1 = curve_nodes.join(n1=1)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=20)
    assert peer_endpoint(n1.address).startswith("tcp://")
    made = make.options(resources={"n1": 1}).remote(SIZE, 5)
    array = rj.get(made, timeout=60)
    assert hashlib.sha256(array).hexdigest() == expected_digest(5)


def kill_once_pulling(session: str, object_id: bytes, pid: int) -> threading.Thread:
    """Kill pid as soon as the pull's file appears in the store of session (or after 30 s)."""
    path = shm_path(session, object_id)

    def watch() -> None:
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.0005)
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def outcome(fetch: Any) -> str:
    try:
        value = fetch()
    except ObjectLostError as exc:
        assert "died" in str(exc) or "lost" in str(exc)
        return "lost"
    return value if isinstance(value, str) else hashlib.sha256(value).hexdigest()


@pytest.mark.timeout(180)
def test_a_holder_killed_mid_pull_fails_the_get_clearly(nodes: Nodes) -> None:
    doomed = nodes.join(n1=1)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=20)
    # no retries: its task could only run again on the node that dies
    made = make.options(resources={"n1": 1}, max_retries=0).remote(SIZE, 3)
    rj.get(digest.options(resources={"n1": 1}).remote(made), timeout=60)  # made, not pulled
    watcher = kill_once_pulling(head_session(), made.binary(), doomed.pid)
    got = outcome(lambda: rj.get(made, timeout=90))
    watcher.join(timeout=30)
    assert got in ("lost", expected_digest(3))


@pytest.mark.timeout(180)
def test_one_of_two_holders_killed_mid_pull_the_other_finishes_it(nodes: Nodes) -> None:
    doomed = nodes.join(n1=1)
    n2 = nodes.join(n2=1)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=20)
    made = make.options(resources={"n1": 1}).remote(SIZE, 4)
    rj.get(made, timeout=60)  # held by the head and by n1
    watcher = kill_once_pulling(n2.session, made.binary(), doomed.pid)
    got = outcome(lambda: rj.get(digest.options(resources={"n2": 1}).remote(made), timeout=90))
    watcher.join(timeout=30)
    assert got == expected_digest(4)  # the head still holds it: n2 finishes from there
