"""Several nodes as separate processes on loopback: a head (started by rj.init) and nodes
that join it, each with its own worker pool and shared-memory store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest
from cluster_helpers import Nodes, alive_nodes, node_of, nodes_fixture
from helpers import wait_for_condition, wait_for_pids_gone

import rayjupyter as rj
from rayjupyter.core import api
from rayjupyter.core.exceptions import ClusterConnectionError
from rayjupyter.util import state

pytestmark = pytest.mark.timeout(120)


nodes = nodes_fixture(num_cpus=1, resources={"head": 1})


@rj.remote
def make_array(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


@rj.remote
def checksum(array: np.ndarray) -> tuple[int, str]:
    return int(array.sum()), rj.get_runtime_context().get_node_id()


def test_nodes_join_and_are_listed(nodes: Nodes) -> None:
    nodes.join(n1=1)
    nodes.join(n2=1)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
    rows = rj.nodes()
    assert {k for row in rows for k in row["Resources"]} >= {"head", "n1", "n2", "CPU"}
    assert rj.cluster_resources()["CPU"] == 3
    wait_for_condition(lambda: rj.available_resources().get("n2") == 1, timeout=5)
    summary = api._state["context"]._repr_html_()  # what %ray_connect shows
    for row in rows:
        assert f"{row['NodeManagerAddress']}:{row['NodeManagerPort']}" in summary


def test_tasks_spread_across_nodes(nodes: Nodes) -> None:
    nodes.join(n1=1)
    nodes.join(n2=1)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
    where = rj.get([node_of.remote(0.5) for _ in range(9)], timeout=60)
    assert len(set(where)) == 3, where


def test_custom_resources_pin_work_to_a_node(nodes: Nodes) -> None:
    nodes.join(n1=1)
    nodes.join(n2=1)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
    n2 = rj.get(node_of.options(resources={"n2": 1}).remote(), timeout=30)
    again = rj.get([node_of.options(resources={"n2": 0.5}).remote() for _ in range(4)], timeout=30)
    assert set(again) == {n2}
    head = rj.get(node_of.options(resources={"head": 1}).remote(), timeout=30)
    assert head == api._state["context"].address_info["node_id"] and head != n2


def test_large_array_made_on_one_node_is_read_on_another(nodes: Nodes) -> None:
    nodes.join(n1=1)
    nodes.join(n2=1)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
    n = (1 << 30) // 8  # 1 GiB of int64
    made = make_array.options(resources={"n1": 1}).remote(n)
    total, where = rj.get(checksum.options(resources={"n2": 1}).remote(made), timeout=100)
    assert total == n * (n - 1) // 2
    n1 = rj.get(node_of.options(resources={"n1": 1}).remote(), timeout=30)
    assert where != n1
    array = rj.get(made, timeout=100)  # pulled to the head's store, then read zero-copy
    assert array.shape == (n,) and array[12345] == 12345 and array[-1] == n - 1
    assert not array.flags.writeable


def test_small_values_and_errors_come_back_from_peers(nodes: Nodes) -> None:
    nodes.join(n1=1)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=10)

    @rj.remote(resources={"n1": 1})
    def fail() -> None:
        raise KeyError("on a peer")

    @rj.remote(resources={"n1": 1})
    def add(a: int, b: int) -> int:
        return a + b

    assert rj.get(add.remote(add.remote(1, 2), rj.put(10)), timeout=30) == 13
    with pytest.raises(KeyError, match="on a peer"):
        rj.get(fail.remote(), timeout=30)


def test_node_killed_mid_work_its_tasks_run_elsewhere(nodes: Nodes) -> None:
    nodes.join(n1=1)
    doomed = nodes.join(n2=1)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)

    @rj.remote(max_retries=3)
    def square(i: int) -> int:
        time.sleep(0.5)
        return i * i

    refs = [square.remote(i) for i in range(12)]
    time.sleep(0.7)  # some are running on the doomed node now
    os.kill(doomed.pid, signal.SIGKILL)
    started = time.monotonic()
    wait_for_condition(lambda: alive_nodes() == 2, timeout=10)
    assert time.monotonic() - started < 5
    assert rj.get(refs, timeout=60) == [i * i for i in range(12)]
    wait_for_pids_gone([doomed.pid], timeout=10)


def test_node_joining_mid_run_takes_work(nodes: Nodes) -> None:
    refs = [node_of.options(resources={"late": 1}).remote() for _ in range(3)]
    ready, _ = rj.wait(refs, num_returns=1, timeout=1.0)
    assert ready == []  # no node has "late" yet: the tasks wait
    nodes.join(late=1)
    where = rj.get(refs, timeout=60)
    assert len(set(where)) == 1 and where[0] != api._state["context"].address_info["node_id"]


def test_node_with_a_wrong_secret_cannot_join(nodes: Nodes) -> None:
    with pytest.raises(ClusterConnectionError, match="did not start"):
        nodes.join(n1=1, secret="not-the-secret")
    assert alive_nodes() == 1


@rj.remote(num_returns=2)
def made_where(n: int) -> tuple[str, np.ndarray]:
    return rj.get_runtime_context().get_node_id(), np.full(n, 7, dtype=np.int64)


def test_lost_value_is_rebuilt_from_lineage_and_a_lost_put_raises(nodes: Nodes) -> None:
    first = nodes.join(w=1)
    second = nodes.join(w=1)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
    by_node = {}
    for node in (first, second):
        by_node[rj.get(node_of.options(resources={"w": 1}).remote(), timeout=30)] = node

    where_ref, value_ref = made_where.options(resources={"w": 1}, max_retries=2).remote(1 << 17)
    where = rj.get(where_ref, timeout=30)  # the 1 MB value itself stays on that node
    os.kill(by_node[where].pid, signal.SIGKILL)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=10)
    value = rj.get(value_ref, timeout=60)  # made again, on the node that is left
    assert value.shape == (1 << 17,) and int(value.sum()) == 7 << 17

    @rj.remote(resources={"w": 1})
    def put_there() -> list[Any]:
        return [rj.put(np.zeros(1 << 17))]  # a put: no task to run again

    held = rj.get(put_there.remote(), timeout=30)[0]
    assert rj.get(held, timeout=30).shape == (1 << 17,)  # pulled here from that node
    held_too = rj.get(put_there.remote(), timeout=30)[0]  # not pulled: only there
    survivor = next(node for node in (first, second) if node.pid != by_node[where].pid)
    os.kill(survivor.pid, signal.SIGKILL)
    wait_for_condition(lambda: alive_nodes() == 1, timeout=10)
    with pytest.raises(rj.exceptions.ObjectLostError, match=r"rj\.put"):
        rj.get(held_too, timeout=30)
    assert rj.get(held, timeout=30).shape == (1 << 17,)  # the copy here lives on


@rj.remote
class Counter:
    """Counts calls; says which node it lives on."""

    def __init__(self, start: int) -> None:
        self.count = start

    def add(self, n: int = 1) -> tuple[int, str]:
        self.count += n
        return self.count, rj.get_runtime_context().get_node_id()


def test_actors_are_placed_on_the_nodes_that_have_their_resources(nodes: Nodes) -> None:
    nodes.join(n1=1)
    nodes.join(n2=1)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
    head_id = api._state["context"].address_info["node_id"]
    first = Counter.options(resources={"n1": 1}).remote(10)
    second = Counter.options(resources={"n2": 1}).remote(20)
    firsts = rj.get([first.add.remote() for _ in range(20)], timeout=30)
    assert [count for count, _ in firsts] == list(range(11, 31))  # in order, one process
    seconds = rj.get([second.add.remote(2) for _ in range(3)], timeout=30)
    assert [count for count, _ in seconds] == [22, 24, 26]
    where = {firsts[0][1], seconds[0][1]}
    assert len(where) == 2 and head_id not in where
    rows = {row["actor_id"]: row for row in state.list_actors()}
    assert rows[first._actor_id.hex()]["node_id"] == firsts[0][1]
    assert rows[first._actor_id.hex()]["state"] == "ALIVE"

    rj.kill(first)
    with pytest.raises(rj.exceptions.ActorDiedError, match=r"rj\.kill"):
        rj.get(first.add.remote(), timeout=30)

    @rj.remote(resources={"n1": 0.5})  # free again now
    class Broken:
        def __init__(self) -> None:
            raise ValueError("no good")

        def ping(self) -> int:
            return 1

    broken = Broken.options(max_restarts=3).remote()
    with pytest.raises(rj.exceptions.ActorDiedError, match="no good"):
        rj.get(broken.ping.remote(), timeout=30)

    assert rj.get(second.add.remote(), timeout=30)[0] == 27


def test_actor_restarts_on_another_node_when_its_node_dies(nodes: Nodes) -> None:
    by_tag = {"a": nodes.join(w=1, a=1), "b": nodes.join(w=1, b=1)}
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
    by_node = {
        rj.get(node_of.options(resources={tag: 1}).remote(), timeout=30): node
        for tag, node in by_tag.items()
    }
    counter = Counter.options(resources={"w": 1}, max_restarts=1, max_task_retries=1).remote(0)
    count, where = rj.get(counter.add.remote(), timeout=30)
    assert count == 1
    os.kill(by_node[where].pid, signal.SIGKILL)
    # restarted from its __init__ on the other node: the count starts again
    count, where_now = rj.get(counter.add.remote(5), timeout=60)
    assert (count, where_now != where) == (5, True)
    rows = {row["actor_id"]: row for row in state.list_actors()}
    assert rows[counter._actor_id.hex()]["num_restarts"] == 1
    survivor = by_node[where_now]
    os.kill(survivor.pid, signal.SIGKILL)  # no restarts left, and no node with "w"
    with pytest.raises(rj.exceptions.ActorDiedError, match="died"):
        rj.get(counter.add.remote(), timeout=60)


def test_actor_handles_work_in_tasks_on_other_nodes(nodes: Nodes) -> None:
    nodes.join(n1=1)
    nodes.join(n2=1)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
    here = Counter.remote(0)  # on the head
    there = Counter.options(resources={"n2": 1}).remote(100)  # its home is the head too

    @rj.remote(resources={"n1": 1})
    def call_both(a: Any, b: Any) -> tuple[int, int, str]:
        first = rj.get(a.add.remote(1), timeout=30)[0]
        second = rj.get(b.add.remote(1), timeout=30)[0]
        return first, second, rj.get_runtime_context().get_node_id()

    first, second, where = rj.get(call_both.remote(here, there), timeout=30)
    assert (first, second) == (1, 101)
    assert where != api._state["context"].address_info["node_id"]
    assert rj.get(here.add.remote(), timeout=30)[0] == 2  # the same actor, seen from here


@rj.remote(max_retries=3)
def square_marked(i: int, marks: str, delay: float) -> int:
    """i * i, after leaving a file that says which node began it (tests wait on these)."""
    node_id = rj.get_runtime_context().get_node_id()
    open(os.path.join(marks, f"{i}-{node_id}-{os.getpid()}"), "w").close()
    time.sleep(delay)
    return i * i


def begun_on(marks: Any, node_id: str) -> bool:
    return any(f"-{node_id}-" in path.name for path in marks.iterdir())


# how long the frozen node waits for word from the head before it registers again: as long
# as the head waits for it (it notices on its own), or longer (the head's answer tells it)
@pytest.mark.parametrize("node_timeout_s", [3.0, 60.0], ids=["own-timer", "told-dead"])
def test_node_silent_for_a_while_is_dead_then_rejoins_and_takes_work(
    nodes: Nodes, tmp_path: Any, node_timeout_s: float
) -> None:
    nodes.join(n1=1)
    frozen = nodes.join(n2=1, node_timeout_s=node_timeout_s)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
    n2 = rj.get(node_of.options(resources={"n2": 1}).remote(), timeout=30)

    refs = [square_marked.remote(i, str(tmp_path), 1.0) for i in range(9)]
    wait_for_condition(lambda: begun_on(tmp_path, n2), timeout=30)
    os.kill(frozen.pid, signal.SIGSTOP)  # like a cut link: its tasks finish, nobody hears
    try:
        stopped = time.monotonic()
        wait_for_condition(lambda: alive_nodes() == 2, timeout=10)
        assert time.monotonic() - stopped < 5
        assert rj.get(refs, timeout=60) == [i * i for i in range(9)]  # retried elsewhere
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=20)  # it registered again
    assert len(rj.nodes()) == 3  # the same node, not a second row
    assert rj.get(node_of.options(resources={"n2": 1}).remote(), timeout=30) == n2
    # its late results were dropped: nothing is counted twice, everything is free again
    totals = {"CPU": 3.0, "head": 1.0, "n1": 1.0, "n2": 1.0}
    wait_for_condition(
        lambda: {k: rj.available_resources().get(k) for k in totals} == totals, timeout=20
    )
    assert rj.get(refs, timeout=10) == [i * i for i in range(9)]


_ELSEWHERE_DRIVER = """
import json, sys
import numpy as np
import rayjupyter as rj
from rayjupyter.core import api

rj.init(address=sys.argv[1])
client = api._client()

@rj.remote
def make(n):
    return np.arange(n, dtype=np.int64)

@rj.remote
def total(array):
    return int(array.sum())

n = 8 << 20  # 64 MB: eight chunks over the connection
made = rj.get(make.remote(n), timeout=60)
mine = rj.put(np.ones(4 << 20))  # 32 MB, stored by the node
summed = rj.get(total.remote(mine), timeout=60)
back = rj.get(mine, timeout=60)
print(json.dumps({
    "remote": client.remote,
    "made_ok": bool(made[-1] == n - 1 and int(made.sum()) == n * (n - 1) // 2),
    "read_only": not made.flags.writeable,
    "summed": summed,
    "back": float(back.sum()),
}))
rj.shutdown()
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="needs root and unshare(1) to give a driver its own /dev/shm and /tmp/rayjupyter",
)
def test_a_driver_on_another_machine_reads_and_puts_large_values(nodes: Nodes) -> None:
    """The driver gets private /dev/shm and /tmp/rayjupyter (a mount namespace): as on another
    machine, it cannot map the node's shared memory, so values cross its connection."""
    address = f"rayjupyter://{nodes.head._secret}@{nodes.head.address}"
    # only the node's session folders are hidden: the checkout (and its venv) may be in /tmp
    mount = (
        "mkdir -p /tmp/rayjupyter && mount -t tmpfs tmpfs /dev/shm "
        "&& mount -t tmpfs tmpfs /tmp/rayjupyter"
    )
    script = f'{mount} && exec "$0" -c "$1" "$2"'
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            sys.executable,
            _ELSEWHERE_DRIVER,
            address,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "remote": True,
        "made_ok": True,
        "read_only": True,
        "summed": 4 << 20,
        "back": float(4 << 20),
    }


@rj.remote(max_retries=3, resources={"n1": 0.01})
def square_on_n1(i: int, marks: str, delay: float) -> int:
    """i * i on the node with n1, leaving a file per attempt named by the task and its
    worker's pid (the test kills that pid while the task sleeps)."""
    open(os.path.join(marks, f"{i}-{os.getpid()}"), "w").close()
    time.sleep(delay)
    return i * i


def test_a_worker_crash_on_a_peer_is_retried_by_the_task_s_node_once(
    nodes: Nodes, tmp_path: Any
) -> None:
    """Issue 16, 1: a task forwarded to a peer ran there with max_retries=0 and the peer's
    WorkerCrashedError came back as the final result. Now its own node counts attempts:
    each crash there costs exactly one retry (never two: the peer does not retry as well)."""
    nodes.join(num_cpus=2, n1=1)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=10)
    count, delay = 40, 0.3
    refs = [square_on_n1.remote(i, str(tmp_path), delay) for i in range(count)]
    killed: dict[int, int] = {}  # task index -> the pid killed while it ran

    def kill_one() -> bool:
        for path in sorted(tmp_path.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
            i, pid = (int(part) for part in path.name.split("-"))
            if i not in killed and pid not in killed.values():
                killed[i] = pid
                os.kill(pid, signal.SIGKILL)  # a worker of the peer, mid-task
                return True
        return False

    for kills in range(3):  # max_retries=3: no task can run out of retries
        begun = 6 * (kills + 1)  # spread the kills over the run
        wait_for_condition(lambda n=begun: len(list(tmp_path.iterdir())) > n, timeout=30)
        wait_for_condition(kill_one, timeout=10)
    assert rj.get(refs, timeout=60) == [i * i for i in range(count)]  # none failed
    attempts: dict[int, int] = {}
    for path in tmp_path.iterdir():
        i = int(path.name.split("-")[0])
        attempts[i] = attempts.get(i, 0) + 1
    # each killed task began exactly twice, every other task once: one retry per crash
    assert attempts == {i: 2 if i in killed else 1 for i in range(count)}, (attempts, killed)

    # without retries the crash is the result, as Ray raises it
    (tmp_path / "once").mkdir()
    once = square_on_n1.options(max_retries=0).remote(0, str(tmp_path / "once"), 30.0)
    wait_for_condition(lambda: any((tmp_path / "once").iterdir()), timeout=30)
    pid = int(next((tmp_path / "once").iterdir()).name.split("-")[1])
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(rj.exceptions.WorkerCrashedError, match="max_retries=0"):
        rj.get(once, timeout=30)
