"""Worker leases (worker_leases.py): the node's decisions, driven with no process at all.

A worker whose task was answered to its driver directly stays lent to that driver when
nothing else waits; the driver's tasks then reach it without the node, which hears of them
afterwards (notices), keeps their books, and takes the worker back when work waits.
"""

from __future__ import annotations

import pytest
from test_scheduler import Shell, error_of, make_task, node, ops

from rayjupyter.core import node_state as ns
from rayjupyter.core import worker_leases
from rayjupyter.core.exceptions import WorkerCrashedError
from rayjupyter.core.node_instructions import LEASE
from rayjupyter.core.scheduler import TaskRecord, TaskState, WorkerRecord, WorkerState


def leased(shell: Shell, **task_options: object) -> tuple[WorkerRecord, TaskRecord]:
    """Run one task answered directly: its worker is lent to the driver."""
    task = shell.submit(make_task("first", **task_options))  # type: ignore[arg-type]
    shell.schedule()
    worker = shell.state.workers[task.worker or b""]
    out = shell.run(shell.state.task_finished(worker, task, None, False, answered=True))
    assert ops(out) == ["LEASE", "FINISHED"], ops(out)
    assert out[0][1:] == (worker, b"driver", {"CPU": 1.0}, b"func", True)
    return worker, task


def direct(shell: Shell, worker: WorkerRecord, ended: bool = False, **options: object):
    """The driver's notice of a task it sent the leased worker itself."""
    task = make_task("direct", **options)  # type: ignore[arg-type]
    task.sent_to = worker.client_id
    shell.state.submit(task)
    return task, shell.run(shell.state.leases.notice(task, ended))


def test_a_directly_answered_task_leaves_its_worker_lent_holding_the_cpu() -> None:
    shell = node(cpus=2, workers=2)
    worker, _ = leased(shell)
    assert worker.state is WorkerState.BUSY and worker.task is not None
    assert worker not in shell.state.scheduler.idle
    assert shell.state.resources.available["CPU"] == 1.0
    assert shell.state.leases.by_owner == {b"driver": worker.client_id}


@pytest.mark.parametrize(
    "options",
    [{"env": "e1"}, {"strategy": "S"}, {"max_calls": 3}, {"parent": b"p"}],
    ids=["runtime_env", "strategy", "max_calls", "nested"],
)
def test_no_lease_for_work_that_needs_its_own_placement(options: dict[str, object]) -> None:
    shell = node(cpus=2, workers=2)
    task = shell.submit(make_task("t", **options))  # type: ignore[arg-type]
    shell.schedule(known_envs=("e1",))
    shell.connect_all()
    shell.schedule(known_envs=("e1",))
    worker = shell.state.workers[task.worker or b""]
    out = shell.run(shell.state.task_finished(worker, task, None, False, answered=True))
    assert "LEASE" not in ops(out) and worker.task is None


def test_no_lease_when_answered_by_the_node_or_work_waits_or_one_is_held() -> None:
    shell = node(cpus=3, workers=3)
    task = shell.submit(make_task())
    shell.schedule()
    worker = shell.state.workers[task.worker or b""]
    assert ops(shell.finish(worker)) == ["FINISHED"]  # (answered=False)
    leased(shell)
    second = shell.submit(make_task())
    shell.schedule()
    other = shell.state.workers[second.worker or b""]
    out = shell.run(shell.state.task_finished(other, second, None, False, answered=True))
    assert ops(out) == ["FINISHED"], "one lease per driver"
    assert other.state is WorkerState.IDLE


def test_a_direct_task_is_booked_on_the_leased_worker_and_holds_nothing_more() -> None:
    shell = node(cpus=2, workers=2)
    worker, _ = leased(shell)
    task, out = direct(shell, worker)
    assert ops(out) == ["STARTED"] and task.state is TaskState.RUNNING
    assert task.worker == worker.client_id
    assert shell.state.resources.available["CPU"] == 1.0
    ended = shell.run(shell.state.leases.finished(task, None, False))
    assert ops(ended) == ["FINISHED"] and task.task_id not in shell.state.tasks
    assert worker.state is WorkerState.BUSY, "still lent"
    # an end that came before the notice (the worker's channel read first)
    early, out = direct(shell, worker, ended=True)
    assert ops(out) == ["STARTED"]
    assert ops(shell.run(shell.state.leases.finished(early, None, False))) == ["FINISHED"]


def test_a_returned_lease_frees_the_worker_once_its_direct_tasks_end() -> None:
    shell = node(cpus=2, workers=2)
    worker, _ = leased(shell)
    task, _ = direct(shell, worker)
    assert shell.run(shell.state.leases.returned(b"driver", worker.client_id)) == []
    assert worker.state is WorkerState.BUSY and not shell.state.leases.by_owner
    shell.run(shell.state.leases.finished(task, None, False))
    assert worker.state is WorkerState.IDLE and worker in shell.state.scheduler.idle
    assert shell.state.resources.available["CPU"] == 2.0
    assert not shell.state.leases.leases
    # a return from someone else, or twice, changes nothing
    worker, _ = leased(shell)
    assert shell.run(shell.state.leases.returned(b"intruder", worker.client_id)) == []
    assert worker.state is WorkerState.BUSY
    shell.run(shell.state.leases.owner_gone(b"driver"))
    assert worker.state is WorkerState.IDLE and shell.state.resources.available["CPU"] == 2.0


def test_revoke_asks_each_driver_once() -> None:
    shell = node(cpus=2, workers=2)
    worker, _ = leased(shell)
    out = shell.run(shell.state.leases.revoke_all())
    assert out == [(LEASE, worker, b"driver", {"CPU": 1.0}, b"", False)]
    assert shell.run(shell.state.leases.revoke_all()) == []


def test_a_leased_worker_gets_nothing_sent_ahead() -> None:
    shell = node(cpus=2, workers=2)
    worker, _ = leased(shell)
    before = len(shell.log)
    for i in range(6):
        shell.submit(make_task(f"t{i}"))
    shell.schedule()
    assert worker.prefetched is None
    assert all(i[2] is not worker for i in shell.log[before:] if i[0] == ns.EXECUTE)


def test_a_dead_leased_worker_retries_or_fails_its_direct_tasks() -> None:
    shell = node(cpus=2, workers=2)
    worker, _ = leased(shell)
    retried, _ = direct(shell, worker, max_retries=1)
    failed, _ = direct(shell, worker)
    out = shell.die(worker)
    assert "FAILED" in ops(out) and "SPAWN" in ops(out)
    assert [i[1] for i in out if i[0] == ns.FAILED] == [failed], "not the lease's placeholder"
    assert isinstance(error_of(shell.ended[failed.task_id][1]), WorkerCrashedError)
    assert retried.state is TaskState.READY and list(shell.state.ready) == [retried]
    assert not retried.sent_to and retried.worker is None
    assert shell.state.resources.available["CPU"] == 2.0
    assert not shell.state.leases.leases and not shell.state.leases.by_owner
    # its retry runs by the node, like any task
    shell.connect_all()
    shell.schedule()
    assert retried.state is TaskState.RUNNING and retried.worker != worker.client_id


def test_a_notice_naming_a_worker_gone_is_a_lost_attempt() -> None:
    shell = node(cpus=2, workers=2)
    worker, _ = leased(shell)
    shell.die(worker)
    _task, out = direct(shell, worker, max_retries=0)
    assert ops(out) == ["FAILED"] and isinstance(error_of(out[0][2]), WorkerCrashedError)
    again, out = direct(shell, worker, max_retries=2)
    assert out == [] and again.state is TaskState.READY and not again.sent_to
    # but an end that came before the death keeps its value
    kept, out = direct(shell, worker, ended=True)
    assert out == []
    assert ops(shell.run(shell.state.leases.finished(kept, None, False))) == ["FINISHED"]


def test_a_retryable_error_queues_the_direct_task_for_the_node() -> None:
    shell = node(cpus=2, workers=2)
    worker, _ = leased(shell)
    task, _ = direct(shell, worker, max_retries=1)
    assert shell.run(shell.state.leases.finished(task, b"boom", True)) == []
    assert task.state is TaskState.READY and not task.sent_to and task.worker is None
    out = shell.run(shell.state.leases.finished(direct(shell, worker)[0], b"boom", True))
    assert ops(out) == ["FAILED"] and out[0][2] == b"boom"


def test_cancel_interrupts_a_direct_task_on_its_worker() -> None:
    shell = node(cpus=2, workers=2)
    worker, _ = leased(shell)
    task, _ = direct(shell, worker)
    out = shell.run(shell.state.cancel(task, force=False, recursive=False, forwarded=()))
    assert out == [(ns.INTERRUPT, task, worker)] and task.state is TaskState.CANCELLED
    out = shell.run(shell.state.leases.finished(task, b"KeyboardInterrupt", False))
    assert ops(out) == ["FAILED"]
    assert "cancelled" in str(error_of(shell.ended[task.task_id][1]))


def test_a_leased_worker_blocked_in_get_lends_its_cpu_like_any_task() -> None:
    shell = node(cpus=1, workers=1)
    worker, _ = leased(shell)
    direct(shell, worker)
    assert shell.run(shell.state.worker_blocked(worker)) == [(ns.REVOKE, None, worker, True)]
    assert worker.state is WorkerState.BLOCKED
    assert shell.state.resources.available["CPU"] == 1.0
    shell.state.worker_unblocked(worker)
    assert worker.state is WorkerState.BUSY and shell.state.resources.available["CPU"] == 0.0


def test_leases_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(worker_leases.LEASES_ENV, "0")
    shell = node(cpus=2, workers=2)
    task = shell.submit(make_task())
    shell.schedule()
    worker = shell.state.workers[task.worker or b""]
    out = shell.run(shell.state.task_finished(worker, task, None, False, answered=True))
    assert ops(out) == ["FINISHED"]
    monkeypatch.setenv(worker_leases.LEASES_ENV, "many")
    with pytest.raises(ValueError, match="RAYJUPYTER_WORKER_LEASES must be an integer"):
        worker_leases.leases_max()
