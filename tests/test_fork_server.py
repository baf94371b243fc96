"""The node's fork server (fork_server.py) with real processes: the workers it forks are the
node's children, their output and exits reach the node, nothing outlives the node, and
``RAYJUPYTER_FORK_SERVER=0`` (or a dead template) sends the node back to forking itself."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys

import psutil
import pytest
from helpers import wait_for_condition, wait_for_pids_gone

import rayjupyter as rj
from rayjupyter.core import discovery, fork_server
from rayjupyter.core.api import _state


@pytest.fixture(autouse=True)
def _always(monkeypatch):
    """Every worker through the template (by default the node forks while it is small)."""
    monkeypatch.setenv(fork_server.FORK_SERVER_ENV, "1")


@rj.remote
class Probe:
    def where(self):
        with open("/proc/self/comm") as comm:
            name = comm.read().strip()
        from rayjupyter.core.api import _client

        links = _client().transport.links.readers  # (direct links to drivers: not the node's)
        fds = sorted(fd for fd in map(int, os.listdir("/proc/self/fd")) if fd not in links)
        return os.getpid(), os.getppid(), name, fds

    def env(self, name):
        return os.environ.get(name)

    def say(self, text):
        print(text, flush=True)
        return os.getpid()

    def gc_state(self):
        return gc.get_freeze_count(), gc.get_threshold()

    def leave(self, code):
        os._exit(code)


def _node(ctx) -> psutil.Process:
    record = discovery.read_cluster_file(ctx.address_info["session"])
    assert record is not None
    return psutil.Process(int(record["pid"]))


def _templates(node: psutil.Process) -> list[psutil.Process]:
    return [p for p in node.children() if p.name() == fork_server.NAME.decode()]


def test_its_workers_are_the_nodes_children_with_the_nodes_name(cluster):
    node = _node(cluster)
    [template] = _templates(node)
    actors = [Probe.remote() for _ in range(5)]
    for pid, ppid, name, fds in rj.get([a.where.remote() for a in actors], timeout=60):
        assert ppid == node.pid  # re-parented: the node waits for it and reads its exit
        assert pid != template.pid and psutil.Process(pid).ppid() == node.pid
        assert name == node.name()  # not the template's
        assert len(fds) <= 8, fds  # stdin/out/err, its channel, its own few: none of ours
    # its intermediate processes are gone: none is left below it
    wait_for_condition(lambda: template.children() == [], timeout=10)
    assert template.num_fds() <= 6


def test_its_workers_leave_the_imports_frozen_as_the_nodes_did(cluster):
    """gc.freeze() in the template (as node_gc.py in the node): a worker's collections skip
    the imported code's objects, so its pages stay shared; thresholds are Python's."""
    frozen, thresholds = rj.get(Probe.remote().gc_state.remote(), timeout=60)
    assert frozen > 1000
    assert thresholds == gc.get_threshold()


def test_output_and_exit_of_a_worker_it_forked_reach_the_node(cluster, capfd):
    actor = Probe.remote()
    pid = rj.get(actor.say.remote("hello through the fork server"), timeout=60)
    seen = {"out": ""}

    def arrived():
        seen["out"] += capfd.readouterr().out
        return "hello through the fork server" in seen["out"]

    wait_for_condition(arrived, timeout=10)
    assert f"(Probe pid={pid}) hello through the fork server" in seen["out"]
    with pytest.raises(rj.exceptions.ActorDiedError):
        rj.get(actor.leave.remote(7), timeout=60)
    wait_for_condition(lambda: not psutil.pid_exists(pid), timeout=10)  # reaped, no zombie


def test_a_runtime_env_worker_gets_its_variables(cluster):
    actor = Probe.options(runtime_env={"env_vars": {"FORK_SERVER_PROBE": "yes"}}).remote()
    assert rj.get(actor.env.remote("FORK_SERVER_PROBE"), timeout=60) == "yes"
    assert rj.get(Probe.remote().env.remote("FORK_SERVER_PROBE"), timeout=60) is None
    assert rj.get(actor.env.remote("RAYJUPYTER_DRIVER_CHANNEL"), timeout=60) is None


def test_nothing_it_started_outlives_shutdown():
    ctx = rj.init(num_cpus=1)
    try:
        node = _node(ctx)
        actors = [Probe.remote() for _ in range(3)]
        rj.get([a.where.remote() for a in actors], timeout=60)
        tree = {node.pid} | {p.pid for p in node.children(recursive=True)}
        assert _templates(node)
    finally:
        rj.shutdown()
    wait_for_pids_gone(tree, timeout=15)


def test_the_template_dies_with_a_killed_node():
    ctx = rj.init(num_cpus=1)
    try:
        node = _node(ctx)
        [template] = _templates(node)
        rj.get(Probe.remote().where.remote(), timeout=60)
        tree = {node.pid} | {p.pid for p in node.children(recursive=True)}
        _state["cluster"].process.send_signal(signal.SIGKILL)
        wait_for_pids_gone({template.pid}, timeout=15)  # PR_SET_PDEATHSIG
        wait_for_pids_gone(tree, timeout=15)
    finally:
        rj.shutdown()


def test_a_dead_template_sends_the_node_back_to_forking_itself(cluster):
    node = _node(cluster)
    [template] = _templates(node)
    os.kill(template.pid, signal.SIGKILL)
    wait_for_pids_gone({template.pid}, timeout=15)
    actors = [Probe.remote() for _ in range(3)]
    for _, ppid, _, _ in rj.get([a.where.remote() for a in actors], timeout=60):
        assert ppid == node.pid
    assert _templates(node) == []  # reaped, not restarted


def test_the_switch_off_forks_from_the_node(monkeypatch):
    monkeypatch.setenv(fork_server.FORK_SERVER_ENV, "0")
    ctx = rj.init(num_cpus=1)
    try:
        node = _node(ctx)
        assert _templates(node) == []
        _, ppid, _, _ = rj.get(Probe.remote().where.remote(), timeout=60)
        assert ppid == node.pid
    finally:
        rj.shutdown()


def test_a_burst_of_requests_is_answered_in_order():
    """The node asks for a burst, then reads the pids; the test process stands in for the
    node (a subreaper, as the node is), with workers that only sleep."""
    script = """
import os, signal, socket, sys, time
import rayjupyter.core.worker_main as wm
from rayjupyter.core import fork_server, spawn
wm.main = lambda: time.sleep(60)
spawn.become_subreaper()
server = fork_server.ForkServer.start()
ends = [socket.socketpair() for _ in range(40)]
asked = [server.request({"N": str(i)}, b.fileno()) for i, (_, b) in enumerate(ends)]
pids = [server.answer() for _ in asked]
assert all(p > 0 for p in pids), pids
assert all(open(f"/proc/{p}/stat").read().split()[3] == str(os.getpid()) for p in pids)
for p in pids:
    os.kill(p, signal.SIGKILL)
    os.waitpid(p, 0)
server.stop()
print("ok", len(pids))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "ok 40", done.stderr


def test_the_node_turns_to_the_template_once_its_own_forks_cost_more(monkeypatch):
    for value, chosen in (("0", "off"), ("1", "always"), ("", "auto"), ("auto", "auto")):
        monkeypatch.setenv(fork_server.FORK_SERVER_ENV, value)
        assert fork_server.mode() == chosen
    server = fork_server.ForkServer(pid=-1, link=socket.socket(socket.AF_UNIX), engaged=False)
    try:
        for _ in range(100):  # a small node: 1 ms a fork
            server.note_direct_fork(0.001)
        assert not server.engaged
        server.note_direct_fork(0.010)  # one slow fork is not enough ...
        assert not server.engaged
        for _ in range(20):  # ... a heap that makes every fork slow is
            server.note_direct_fork(0.004)
        assert server.engaged
    finally:
        assert server.link is not None
        server.link.close()


def test_by_default_the_template_waits_and_workers_still_start(monkeypatch):
    monkeypatch.delenv(fork_server.FORK_SERVER_ENV)
    ctx = rj.init(num_cpus=1)
    try:
        node = _node(ctx)
        assert len(_templates(node)) == 1
        _, ppid, _, _ = rj.get(Probe.remote().where.remote(), timeout=60)
        assert ppid == node.pid
    finally:
        rj.shutdown()


def test_a_request_too_large_is_refused_so_the_node_forks_it():
    server = fork_server.ForkServer(pid=-1, link=socket.socket(socket.AF_UNIX))
    try:
        a, b = socket.socketpair()
        assert server.request({"X": "x" * fork_server.MAX_REQUEST}, b.fileno()) is None
        a.close()
        b.close()
    finally:
        assert server.link is not None
        server.link.close()
