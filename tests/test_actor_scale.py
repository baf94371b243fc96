"""What each actor costs the others: an idle one sleeps, a new one inherits nothing.

Starting N actors must take time in proportion to N (issue 22): an idle actor that wakes
on a timer, or a new worker whose start-up walks what the node holds for the workers
before it, makes the thousandth actor slower to start than the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time

import psutil
import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.util import state

pytestmark = pytest.mark.usefixtures("shared_cluster")


@rj.remote
class Idle:
    def pid(self):
        return os.getpid()

    def fds(self):
        """Its descriptors, less its direct links to drivers (one per driver that called it
        while it had few calls in flight: direct_links.py)."""
        from rayjupyter.core.api import _client

        links = _client().transport.links.readers
        return sorted(int(name) for name in os.listdir("/proc/self/fd") if int(name) not in links)


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


@rj.remote(max_concurrency=4)
class Threaded:
    def __init__(self):
        self.gate = threading.Event()

    def pid(self):
        return os.getpid()

    def held(self):
        """Returns once release() is called (a call waiting while others finish)."""
        return self.gate.wait(30)

    def release(self):
        self.gate.set()
        self.gate = threading.Event()

    def put_and_drop(self):
        refs = [rj.put(index) for index in range(3)]
        return sum(rj.get(refs, timeout=30))

    def drop_later(self):
        """A ref its thread drops after the call's answer went, while the worker sleeps."""
        ref = rj.put(b"x" * 1000)
        threading.Thread(target=lambda held=[ref]: (time.sleep(0.3), held.clear())).start()
        return ref.hex()


@rj.remote
class Async:
    def __init__(self):
        self.gate = None

    async def pid(self):
        return os.getpid()

    async def held(self):
        if self.gate is None:
            self.gate = asyncio.Event()
        await asyncio.wait_for(self.gate.wait(), 30)
        return True

    async def release(self):
        if self.gate is not None:
            self.gate.set()
        self.gate = None

    async def put_and_drop(self):
        refs = [rj.put(index) for index in range(3)]
        return sum(await asyncio.gather(*refs))


def _cpu_and_wakes(proc: psutil.Process) -> tuple[float, int]:
    """CPU seconds and voluntary context switches so far, of all the process's threads."""
    times = proc.cpu_times()
    wakes = 0
    for tid in os.listdir(f"/proc/{proc.pid}/task"):
        path = f"/proc/{proc.pid}/task/{tid}/status"
        with contextlib.suppress(FileNotFoundError), open(path) as status:  # (a thread ended)
            for line in status:
                if line.startswith("voluntary_ctxt_switches:"):
                    wakes += int(line.split()[1])
    return times.user + times.system, wakes


@pytest.mark.parametrize("cls", [Threaded, Async], ids=["threaded", "async"])
def test_an_idle_threaded_or_async_actor_sleeps_until_a_call_comes(cls):
    """Its worker once woke every 50 ms (and an async one's exit watch every 250 ms)."""
    actor = cls.remote()
    proc = psutil.Process(rj.get(actor.pid.remote(), timeout=60))
    for _ in range(2):  # idle after its start, then after calls like these:
        # three wait while a fourth call, and one that drops refs on its thread, finish
        held = [actor.held.remote() for _ in range(3)]
        assert rj.get(actor.put_and_drop.remote(), timeout=60) == 3
        assert rj.get(actor.pid.remote(), timeout=60) == proc.pid
        assert rj.wait(held, timeout=0.2)[0] == []
        rj.get(actor.release.remote(), timeout=60)
        assert rj.get(held, timeout=60) == [True] * 3
        time.sleep(0.2)  # its answers and ref-count changes sent, it waits for a call
        cpu, wakes = _cpu_and_wakes(proc)
        time.sleep(1.0)
        cpu_after, wakes_after = _cpu_and_wakes(proc)
        assert cpu_after - cpu < 0.05, f"an idle {cls.__name__} actor used {cpu_after - cpu} s"
        assert wakes_after - wakes <= 3, f"an idle actor woke {wakes_after - wakes} times in 1 s"
    rj.kill(actor)


def test_a_sleeping_actor_still_sends_the_ref_changes_its_threads_make():
    """Its other threads ring the worker awake for a ref dropped while it sleeps."""
    actor = Threaded.remote()
    object_id = rj.get(actor.drop_later.remote(), timeout=60)
    assert state.list_objects(filters=[("object_id", "=", object_id)])
    wait_for_condition(
        lambda: not state.list_objects(filters=[("object_id", "=", object_id)]), timeout=5
    )
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
