"""A driver sends tasks to a worker its node lent it (worker_leases.py, task_leases.py), on
real processes: values, the node's books, prints, errors, cancel, nested tasks, the worker
taken back when work waits, and a worker that dies in the middle of a task."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.core.driver import _client
from rayjupyter.exceptions import RayTaskError, TaskCancelledError, WorkerCrashedError
from rayjupyter.util.state import list_tasks

pytestmark = pytest.mark.timeout(120)


def lease_sent() -> int:
    return _client().task_leases.sent


def hold_lease() -> None:
    """Run tasks until the node has lent us a worker."""

    def held() -> bool:
        rj.get(add_one.remote(0), timeout=30)
        return _client().task_leases.lease is not None

    wait_for_condition(held, timeout=30)


@rj.remote
def add_one(value: int) -> int:
    return value + 1


@rj.remote
def pid_of() -> int:
    return os.getpid()


@rj.remote
def shout(word: str) -> int:
    print(f"shouting {word}")
    return len(word)


@rj.remote
def fail(message: str) -> None:
    raise ValueError(message)


@rj.remote(max_retries=1)
def die_first_time(marker: str) -> int:
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    return os.getpid()


@rj.remote
def die_always() -> None:
    os._exit(1)


@rj.remote
def wait_for_file(path: str) -> int:
    Path(path + ".pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return 1


@rj.remote
def parent() -> int:
    return rj.get(add_one.remote(41), timeout=60)


def test_sync_tasks_go_on_the_lease_and_the_node_keeps_the_books(cluster):
    hold_lease()
    before = lease_sent()
    refs = []
    for i in range(30):
        ref = add_one.remote(i)
        assert rj.get(ref, timeout=30) == i + 1
        refs.append(ref)
    assert lease_sent() - before >= 25
    ids = {ref.task_id().hex() for ref in refs}

    def all_finished() -> bool:
        rows = list_tasks(filters=[("name", "=", "add_one")], limit=1000)
        return ids <= {row.task_id for row in rows if row.state == "FINISHED"}

    wait_for_condition(all_finished, timeout=30)
    # a lease left alone goes back: the CPUs show free, and the worker takes any work
    assert rj.available_resources()["CPU"] == 2.0
    wait_for_condition(lambda: _client().task_leases.lease is None, timeout=10)


def test_a_lent_worker_is_taken_back_when_other_work_waits():
    rj.init(num_cpus=1)
    try:
        hold_lease()
        # another shape waits for the one CPU the lease holds: the node asks for it back
        assert rj.get(add_one.options(num_cpus=0.5).remote(1), timeout=30) == 2
        hold_lease()
        counter = Counter.remote()  # an actor that needs the CPU too
        assert rj.get(counter.bump.remote(), timeout=30) == 1
    finally:
        rj.shutdown()


def test_a_placement_group_takes_the_lent_worker_back_at_once(monkeypatch):
    """A bundle reserved here may take the CPU a lent worker holds (a lease counts as
    free): the node asks for the worker back then, not when the driver leaves it idle."""
    from rayjupyter.core import task_leases
    from rayjupyter.util.placement_group import placement_group, remove_placement_group

    monkeypatch.setattr(task_leases, "IDLE_S", 600.0)  # no idle return in this test
    rj.init(num_cpus=1)
    try:
        hold_lease()
        group = placement_group([{"CPU": 1}])  # (not waited on: a wait queues a task)
        wait_for_condition(lambda: _client().task_leases.lease is None, timeout=30)
        assert group.wait(timeout_seconds=30)
        assert rj.available_resources().get("CPU", 0.0) == 0.0  # not overcommitted
        remove_placement_group(group)
    finally:
        rj.shutdown()


@rj.remote(num_cpus=1)
class Counter:
    def __init__(self) -> None:
        self.count = 0

    def bump(self) -> int:
        self.count += 1
        return self.count


def test_prints_carry_the_task_name_and_come_before_the_result(cluster, capfd):
    hold_lease()
    for i in range(10):
        assert rj.get(shout.options(name=f"shout_{i}").remote("x" * i), timeout=30) == i
        out = capfd.readouterr().out
        assert f"(shout_{i} pid=" in out and f"shouting {'x' * i}" in out, out
    sent = lease_sent()
    assert rj.get(add_one.remote(1), timeout=30) == 2
    assert lease_sent() == sent + 1


def test_errors_come_back_with_their_type(cluster):
    hold_lease()
    for i in range(5):
        with pytest.raises(RayTaskError) as info:
            rj.get(fail.remote(f"no {i}"), timeout=30)
        assert isinstance(info.value, ValueError) and f"no {i}" in str(info.value)


def test_a_worker_that_dies_mid_task_is_retried_or_fails(cluster, tmp_path):
    hold_lease()
    sent = lease_sent()
    pid = rj.get(die_first_time.remote(str(tmp_path / "marker")), timeout=60)
    assert lease_sent() == sent + 1, "it went on the lease"
    assert pid != int((tmp_path / "marker").read_text())  # the retry ran elsewhere
    hold_lease()
    sent = lease_sent()
    with pytest.raises(WorkerCrashedError):
        rj.get(die_always.remote(), timeout=60)
    assert lease_sent() == sent + 1
    assert rj.get(add_one.remote(2), timeout=30) == 3


def test_a_worker_killed_mid_task_before_the_node_heard_of_it(cluster, tmp_path):
    hold_lease()
    sent = lease_sent()
    path = str(tmp_path / "go")
    ref = wait_for_file.options(max_retries=0).remote(path)
    assert lease_sent() == sent + 1
    wait_for_condition(lambda: os.path.exists(path + ".pid"), timeout=30)
    os.kill(int(Path(path + ".pid").read_text()), signal.SIGKILL)  # (a worker of ours)
    with pytest.raises(WorkerCrashedError):
        rj.get(ref, timeout=60)


def test_cancel_reaches_a_task_on_the_lease(cluster, tmp_path):
    hold_lease()
    sent = lease_sent()
    path = str(tmp_path / "never")
    ref = wait_for_file.remote(path)
    assert lease_sent() == sent + 1
    wait_for_condition(lambda: os.path.exists(path + ".pid"), timeout=30)
    rj.cancel(ref)
    with pytest.raises(TaskCancelledError):
        rj.get(ref, timeout=60)
    assert rj.get(add_one.remote(3), timeout=30) == 4


def test_a_task_on_the_lease_waits_for_its_child():
    rj.init(num_cpus=1)  # the child needs the CPU the waiting parent lends
    try:
        hold_lease()
        sent = lease_sent()
        assert rj.get(parent.remote(), timeout=60) == 42
        assert lease_sent() == sent + 1
    finally:
        rj.shutdown()


def test_a_new_function_goes_on_the_lease_with_its_definition(cluster):
    hold_lease()
    sent = lease_sent()
    first = rj.get(pid_of.remote(), timeout=30)
    assert lease_sent() == sent + 1
    assert rj.get(pid_of.remote(), timeout=30) == first  # the same lent worker


def test_leases_off_keeps_every_task_on_the_node(monkeypatch):
    monkeypatch.setenv("RAYJUPYTER_WORKER_LEASES", "0")
    rj.init(num_cpus=2)
    try:
        for i in range(20):
            assert rj.get(add_one.remote(i), timeout=30) == i + 1
        assert lease_sent() == 0 and _client().task_leases.lease is None
    finally:
        rj.shutdown()


def test_task_markers_name_the_output_that_follows_them():
    from rayjupyter.core.node_workers import WorkerPipes, _read_markers
    from rayjupyter.core.worker_output import TASK_MARKER

    pipes = WorkerPipes(pid=1, pidfd=-1)
    data = b"before\n" + TASK_MARKER + b"second\nmine\npartial" + TASK_MARKER + b"third\n"
    assert _read_markers(pipes, 1, data) == b"before\nmine\npartial\n"
    assert pipes.names == {1: "third"}
    assert _read_markers(pipes, 2, TASK_MARKER + b"only\n") == b""
    assert pipes.names == {1: "third", 2: "only"}


def test_two_drivers_and_threads_share_one_cpu_through_leases():
    """Each driver's lease is taken back when the other's tasks wait: both finish."""
    import subprocess
    import textwrap
    import threading

    context = rj.init(num_cpus=1)
    try:
        script = textwrap.dedent(
            f"""
            import rayjupyter as rj
            rj.init(address={context.connect_address!r})

            @rj.remote
            def add_one(value):
                return value + 1

            assert all(rj.get(add_one.remote(i), timeout=60) == i + 1 for i in range(300))
            print("done", flush=True)
            """
        )
        other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            failures: list[BaseException] = []

            def loop(offset: int) -> None:
                try:
                    for i in range(150):
                        assert rj.get(add_one.remote(offset + i), timeout=60) == offset + i + 1
                except BaseException as exc:
                    failures.append(exc)

            threads = [threading.Thread(target=loop, args=(k * 1000,)) for k in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=100)
            assert not failures, failures
            assert other.communicate(timeout=60)[0].strip() == "done"
        finally:
            if other.poll() is None:
                other.kill()
                other.wait(timeout=10)
        hold_lease()  # alone again, the driver gets its lease back
        sent = lease_sent()
        assert rj.get(add_one.remote(1), timeout=30) == 2
        assert lease_sent() == sent + 1
    finally:
        rj.shutdown()
