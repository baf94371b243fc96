"""What each actor costs the others: an idle one sleeps, a new one inherits nothing.

Starting N actors must take time in proportion to N (issue 22): an idle actor that wakes
on a timer, or a new worker whose start-up walks what the node holds for the workers
before it, makes the thousandth actor slower to start than the first.
"""

from __future__ import annotations

import os
import time

import psutil
import pytest

import rayjupyter as rj

pytestmark = pytest.mark.usefixtures("shared_cluster")


@rj.remote
class Idle:
    def pid(self):
        return os.getpid()

    def fds(self):
        return sorted(int(name) for name in os.listdir("/proc/self/fd"))


def test_an_idle_actor_sleeps_until_a_call_comes():
    actor = Idle.remote()
    proc = psutil.Process(rj.get(actor.pid.remote(), timeout=60))
    time.sleep(0.2)  # its answer sent, it waits for the next call
    before = proc.num_ctx_switches().voluntary
    time.sleep(1.0)
    woke = proc.num_ctx_switches().voluntary - before
    assert woke <= 3, f"an idle actor woke {woke} times in a second"
    assert rj.get(actor.pid.remote(), timeout=60) == proc.pid  # and a call still wakes it
    rj.kill(actor)


def test_a_new_worker_keeps_none_of_the_node_descriptors_for_other_workers():
    first = Idle.remote()
    first_fds = rj.get(first.fds.remote(), timeout=60)
    others = [Idle.remote() for _ in range(8)]
    rj.get([actor.pid.remote() for actor in others], timeout=120)
    last = Idle.remote()
    last_fds = rj.get(last.fds.remote(), timeout=60)
    # each worker has its own stdio, channel and zmq's descriptors: the same count for all
    assert len(last_fds) == len(first_fds), (first_fds, last_fds)
    for actor in [first, *others, last]:
        rj.kill(actor)


def test_an_actors_worker_runs_one_thread():
    """No zmq I/O or reaper thread in a worker: its link is the node's socket pair."""
    actor = Idle.remote()
    pid = rj.get(actor.pid.remote(), timeout=60)
    assert os.listdir(f"/proc/{pid}/task") == [str(pid)]
    rj.kill(actor)


def _node() -> psutil.Process:
    found = []
    for proc in psutil.Process().children():
        try:
            if "rayjupyter.core.node" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:  # a zombie child an earlier test left: not the node
            continue
    [node] = found
    return node


def test_the_nodes_mappings_do_not_grow_with_its_workers():
    """Every fork copies the node's mappings: one per worker made starting N cost N^2."""
    node = _node()
    before = len(node.memory_maps(grouped=False))
    actors = [Idle.remote() for _ in range(12)]
    rj.get([actor.pid.remote() for actor in actors], timeout=120)
    grown = len(node.memory_maps(grouped=False)) - before
    assert grown < 6, f"the node's mappings grew by {grown} for 12 workers"
    for actor in actors:
        rj.kill(actor)
