"""Kernels and their clusters: the kernel owns its local cluster (a restart leaves nothing
behind), %ray_connect attaches and switches cleanly, fails fast on a dead address, and an
interrupt while the kernel waits cancels the cluster's work."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from conftest import shared_notebook_kernel
from helpers import wait_for_pids_gone
from kernel_helpers import Kernel, running_kernel

import rayjupyter as rj

pytestmark = pytest.mark.timeout(180)


def _cluster_pids(kernel: Kernel) -> set[int]:
    return kernel.tree() - {kernel.pid}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_kernel_restart_leaves_no_process_behind():
    kernel = Kernel()
    try:
        kernel.ok("%load_ext rayjupyter\n%ray_connect --num-cpus 2")
        old = kernel.tree()
        assert len(old) >= 3  # the kernel, its node and workers
        kernel.manager.restart_kernel(now=True)
        wait_for_pids_gone(old, timeout=10)
        kernel.pid = kernel.manager.provisioner.process.pid
        kernel.client.wait_for_ready(timeout=60)
        assert kernel.value("1 + 1") == "2"
    finally:
        kernel.shutdown()


def test_disconnect_stops_the_local_cluster_and_connect_starts_one_again():
    with running_kernel("%load_ext rayjupyter\nimport rayjupyter as rj") as kernel:
        assert "UsageError" in kernel.execute("%ray_status").stderr
        kernel.ok("%ray_connect --num-cpus 1")
        first = _cluster_pids(kernel)
        assert first
        reply = kernel.ok("%ray_disconnect")
        assert reply.stdout.startswith("Stopped the local cluster at 127.0.0.1:")
        wait_for_pids_gone(first, timeout=10)
        assert kernel.ok("%ray_disconnect").stdout == "Not connected to a cluster.\n"
        reply = kernel.execute("%ray_status")
        assert "Not connected: run %ray_connect first" in reply.stderr
        kernel.ok("%ray_connect --num-cpus 1")
        assert kernel.value("rj.cluster_resources()['CPU']") == "1.0"


def test_connect_attaches_to_an_address_and_switches_cleanly(cluster):
    with running_kernel(
        "%load_ext rayjupyter\nimport rayjupyter as rj", "%ray_connect --num-cpus 1"
    ) as kernel:
        local = _cluster_pids(kernel)
        reply = kernel.ok(f"%ray_connect {cluster.connect_address}")
        assert reply.stdout.startswith("Switched from 127.0.0.1:")
        assert f"(stopped the local cluster) to {cluster.address}." in reply.stdout
        (summary,) = reply.displays
        assert cluster.address in summary["text/plain"]
        assert "attached" in summary["text/plain"]
        wait_for_pids_gone(local, timeout=10)
        assert kernel.value("rj.cluster_resources()['CPU']") == "2.0"
        again = kernel.ok(f"%ray_connect {cluster.connect_address}")
        assert again.stdout == ""  # the same address: nothing to do
        kernel.ok("@rj.remote\ndef plus(a, b):\n    return a + b")
        assert kernel.value("rj.get(plus.remote(2, 3))") == "5"
        reply = kernel.ok("%ray_disconnect")
        assert "keeps running" in reply.stdout
    assert rj.get(rj.put("still up")) == "still up"  # the cluster this process owns


def test_unreachable_address_fails_fast_and_keeps_the_current_cluster():
    with running_kernel(
        "%load_ext rayjupyter\nimport rayjupyter as rj", "%ray_connect --num-cpus 1"
    ) as kernel:
        reply = kernel.execute(f"%ray_connect 127.0.0.1:{_free_port()}", timeout=30)
        assert reply.seconds < 10
        assert reply.error["ename"] == "ConnectError"
        assert "No rayjupyter cluster at 127.0.0.1:" in reply.error["evalue"]
        assert "rayjupyter start --head" in reply.error["evalue"]
        assert len(reply.error["traceback"]) == 1  # one line, not our stack
        assert kernel.value("rj.cluster_resources()['CPU']") == "1.0"


@pytest.fixture(scope="module")
def interrupted() -> Iterator[Kernel]:
    with shared_notebook_kernel() as kernel:
        yield kernel


def _interrupt_when_running(kernel: Kernel, code: str) -> None:
    """Run code, interrupt once its task printed 'running', expect KeyboardInterrupt soon."""
    msg_id = kernel.submit(code)

    def running(message):
        return message["msg_type"] == "stream" and "running" in message["content"]["text"]

    kernel.collect(msg_id, timeout=30, until=running)
    kernel.interrupt()
    reply = kernel.collect(msg_id, timeout=10)
    assert reply.error is not None and reply.error["ename"] == "KeyboardInterrupt"
    # the task was cancelled: both CPUs are free again, long before its sleep would end
    kernel.wait_in_kernel("rj.available_resources().get('CPU') == 2.0", timeout=10)


def test_interrupt_during_a_blocking_get_cancels_the_tasks(interrupted):
    interrupted.ok(
        "import rayjupyter as rj\n"
        "@rj.remote\n"
        "def slow():\n"
        "    import time\n"
        "    print('running', flush=True)\n"
        "    time.sleep(120)\n"
    )
    _interrupt_when_running(interrupted, "rj.get([slow.remote(), slow.remote()])")


def test_interrupt_during_remote_cancels_the_cell(interrupted):
    _interrupt_when_running(
        interrupted, "%%remote\nimport time\nprint('running', flush=True)\ntime.sleep(120)\n"
    )
    assert interrupted.value("1 + 1") == "2"  # the kernel carries on


def test_interrupt_ends_a_get_that_waits_for_cpus_held_elsewhere(interrupted):
    """A task that cannot start (an actor holds every CPU): the interrupt still ends the
    cell at once, and the queued task is cancelled."""
    interrupted.ok(
        "import rayjupyter as rj\n"
        "@rj.remote(num_cpus=2)\n"
        "class Hog:\n"
        "    def ready(self):\n"
        "        return True\n"
        "hog = Hog.remote()\n"
        "assert rj.get(hog.ready.remote(), timeout=30)\n"
        "@rj.remote\n"
        "def queued():\n"
        "    return 1\n"
    )
    msg_id = interrupted.submit(
        "print('waiting', flush=True); refs = [queued.remote() for _ in range(12)]; rj.get(refs)"
    )

    def waiting(message):
        return message["msg_type"] == "stream" and "waiting" in message["content"]["text"]

    interrupted.collect(msg_id, timeout=30, until=waiting)
    time.sleep(2.5)  # well inside the get, its progress bar shown
    interrupted.interrupt()
    reply = interrupted.collect(msg_id, timeout=10)
    assert reply.error is not None and reply.error["ename"] == "KeyboardInterrupt"
    interrupted.ok("rj.kill(hog)")
    assert (
        "TaskCancelledError"
        in interrupted.execute("rj.get(refs[0], timeout=30)", timeout=60).error["ename"]
    )


def test_interrupt_ends_a_remote_cell_that_waits_for_cpus(interrupted):
    """%%remote whose task cannot start (an actor holds every CPU): the interrupt ends it."""
    interrupted.ok(
        "import rayjupyter as rj\n"
        "@rj.remote(num_cpus=2)\n"
        "class Hog2:\n"
        "    def ready(self):\n"
        "        return True\n"
        "hog2 = Hog2.remote()\n"
        "assert rj.get(hog2.ready.remote(), timeout=30)\n"
    )
    msg_id = interrupted.submit("%%remote\nprint('never', flush=True)\n")
    time.sleep(2.5)  # the cell waits for a CPU
    interrupted.interrupt()
    reply = interrupted.collect(msg_id, timeout=10)
    assert reply.error is not None and reply.error["ename"] == "KeyboardInterrupt"
    interrupted.ok("rj.kill(hog2)")
    assert interrupted.value("1 + 1") == "2"
