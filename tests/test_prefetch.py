"""Tasks sent ahead to busy workers (prefetch.py), without processes: how deep, in which
order they run, and what happens to them when their worker blocks, dies, or one of them is
cancelled. The shell is test_scheduler's."""

from __future__ import annotations

from test_scheduler import make_task, node, ops

from rayjupyter.core import node_state as ns
from rayjupyter.core import prefetch
from rayjupyter.core.scheduler import TaskState, WorkerState


def short_shell(cpus: int = 1, tasks: int = 12):
    shell = node(cpus=cpus, workers=cpus)
    shell.state.prefetching.ran(b"func", 0.0001)  # (make_task's function ran short here)
    queued = [shell.submit(make_task(f"t{i}", max_retries=1)) for i in range(tasks)]
    shell.schedule()
    shell.state.validate()
    return shell, queued


def test_a_short_function_has_several_tasks_sent_ahead_in_order() -> None:
    shell, tasks = short_shell()
    worker = shell.state.workers[tasks[0].worker or b""]
    assert worker.task is tasks[0] and worker.prefetched is tasks[1]
    assert worker.ahead == tasks[2 : prefetch.PREFETCH_DEPTH]
    assert list(shell.state.ready) == tasks[prefetch.PREFETCH_DEPTH :]
    # each end starts the next one sent, in order, and the node tops the worker up
    done = shell.finish(worker)
    assert done[0] == (ns.STARTED, tasks[1], worker)
    for expected in tasks[2:]:
        shell.schedule()
        shell.state.validate()
        shell.finish(worker)
        if worker.task is None:  # (one queued task left: it goes to the idle worker)
            shell.schedule()
        assert worker.task is expected
    assert worker.prefetched is None and not worker.ahead


def test_a_function_that_ran_long_gets_one_task_ahead() -> None:
    shell = node(cpus=1, workers=1)
    shell.state.prefetching.ran(b"func", 0.0001)
    shell.state.prefetching.ran(b"func", 0.5)  # its last run was long
    tasks = [shell.submit(make_task(f"t{i}")) for i in range(5)]
    shell.schedule()
    worker = shell.state.workers[tasks[0].worker or b""]
    assert worker.prefetched is tasks[1] and not worker.ahead
    assert len(shell.state.ready) == 3


def test_the_short_functions_are_bounded() -> None:
    part = node().state.prefetching
    for n in range(prefetch.SHORT_FUNCTIONS_MAX + 5):
        part.ran(n.to_bytes(4, "big"), 0.0)
    assert len(part.short) <= prefetch.SHORT_FUNCTIONS_MAX


def test_a_blocked_worker_gives_back_everything_sent_ahead_and_answers_once() -> None:
    shell, tasks = short_shell()
    worker = shell.state.workers[tasks[0].worker or b""]
    sent = [worker.prefetched, *worker.ahead]
    out = shell.run(shell.state.worker_blocked(worker))
    assert ops(out) == ["REVOKE"] * len(sent)
    assert [i[3] for i in out] == [False] * (len(sent) - 1) + [True]  # the last answers
    assert out[-1][1] is tasks[1]
    assert list(shell.state.ready) == tasks[1:]  # first again, in their order
    assert worker.prefetched is None and not worker.ahead
    assert all(t.state is TaskState.READY for t in tasks[1:])
    assert worker.state is WorkerState.BLOCKED
    shell.state.validate()


def test_cancelling_a_task_sent_ahead_takes_back_that_one_alone() -> None:
    shell, tasks = short_shell()
    worker = shell.state.workers[tasks[0].worker or b""]
    victim = worker.ahead[0]
    after = worker.ahead[1:]
    out = shell.run(shell.state.cancel(victim, force=False, recursive=False, forwarded=()))
    assert out[0] == (ns.REVOKE, victim, worker, False) and ops(out)[1:] == ["FAILED"]
    assert victim.state is TaskState.FAILED
    assert worker.prefetched is tasks[1] and worker.ahead == after  # (they may have started)
    shell.state.validate()
    first = worker.prefetched
    out = shell.run(shell.state.cancel(first, force=False, recursive=False, forwarded=()))
    assert out[0] == (ns.REVOKE, first, worker, False)
    assert worker.prefetched is after[0] and worker.ahead == after[1:]
    shell.state.validate()


def test_a_dead_worker_counts_only_its_next_task_as_an_attempt() -> None:
    shell, tasks = short_shell()
    worker = shell.state.workers[tasks[0].worker or b""]
    shell.die(worker, respawn=False)
    assert list(shell.state.ready) == tasks  # all first again, in order
    assert tasks[0].attempt == tasks[1].attempt == 1  # these may have started
    assert all(t.attempt == 0 for t in tasks[2:])  # these cannot have
    assert all(t.state is TaskState.READY and t.worker is None for t in tasks)
    shell.state.validate()
