"""The invariants of a node's tasks, workers and resources (``NodeState.validate``).

Kept apart from the state machine: they read every table at once, and the tests and the
node (``Node.validate``, on demand) call them after steps, never on the hot path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayjupyter.core.placement_groups import gpu_amount
from rayjupyter.core.scheduler import OCCUPYING, TaskState, WorkerState

if TYPE_CHECKING:
    from rayjupyter.core.node_state import NodeState


def validate(state: NodeState, held_elsewhere: dict[str, float]) -> None:
    """Raise AssertionError naming the first broken invariant: queued tasks are READY and
    queued once, each busy worker holds exactly one task that names it, what is sent ahead
    is RUNNING on a busy worker, and the resources (GPU ids too) add up to what the tasks,
    the actors and ``held_elsewhere`` hold."""
    resources = state.resources
    held: dict[str, float] = dict(held_elsewhere)
    queued = set()
    stale = 0
    for queued_task in state.ready:
        task = queued_task
        if task.state is TaskState.FAILED and state.stale:
            stale += 1  # failed while queued: dropped when popped (see state.stale)
            continue
        assert task.state is TaskState.READY, f"queued task {task.name} is {task.state.name}"
        assert task.worker is None, f"queued task {task.name} names worker {task.worker!r}"
        assert id(task) not in queued, f"task {task.name} is queued twice"
        queued.add(id(task))
    assert stale <= state.stale, f"{stale} failed tasks queued, {state.stale} counted"
    idle_ids = set()
    for pool in (state.scheduler.idle, *state.scheduler.idle_env.values()):
        for worker in pool:
            assert worker.state is WorkerState.IDLE, f"pid {worker.pid} in an idle pool"
            assert worker.client_id in state.workers, f"pid {worker.pid} idle but unknown"
            assert worker.client_id not in idle_ids, f"pid {worker.pid} idle twice"
            idle_ids.add(worker.client_id)
    for worker in state.workers.values():
        kind = worker.state
        running = worker.task
        assert kind is not WorkerState.DEAD, f"dead worker pid {worker.pid} still listed"
        if kind in (WorkerState.BUSY, WorkerState.BLOCKED):
            assert running is not None, f"busy worker pid {worker.pid} has no task"
            task = running
            assert task.worker == worker.client_id, (
                f"task {task.name} on pid {worker.pid} names {task.worker!r}"
            )
            assert task.state in OCCUPYING, f"task {task.name} on a worker is {task.state.name}"
            assert id(task) not in queued, f"task {task.name} both queued and running"
            for key, value in task.demand.items():
                held[key] = held.get(key, 0.0) + value
            for key, value in worker.lent.items():
                held[key] = held.get(key, 0.0) - value
            if kind is WorkerState.BUSY:  # only what a removed bundle had stays lent
                assert all(k not in resources.total for k in worker.lent), (
                    f"busy worker pid {worker.pid} lends {worker.lent}"
                )
            for parent, lent in worker.suspended:  # waiting beneath a child lent to them
                assert parent.worker == worker.client_id and parent.state in OCCUPYING, (
                    f"{parent.name} suspended on pid {worker.pid} is {parent.state.name}"
                )
                assert id(parent) not in queued, f"{parent.name} suspended and queued"
                for key, value in parent.demand.items():
                    held[key] = held.get(key, 0.0) + value - lent.get(key, 0.0)
        else:
            assert running is None, f"{kind.name} worker pid {worker.pid} holds a task"
            assert not worker.suspended, f"{kind.name} pid {worker.pid} has suspended tasks"
            assert not worker.lent, f"{kind.name} worker pid {worker.pid} lends"
        assert worker.prefetched is not None or not worker.ahead, (
            f"pid {worker.pid} has tasks sent ahead after none"
        )
        for following in (worker.prefetched, *worker.ahead):
            if following is None:
                continue
            assert kind is WorkerState.BUSY, f"{kind.name} pid {worker.pid} has a task sent ahead"
            assert following is not running, f"pid {worker.pid} prefetched its own task"
            assert following.state is TaskState.RUNNING, (
                f"prefetched {following.name} is {following.state.name}"
            )
            assert following.worker == worker.client_id, f"{following.name} sent ahead elsewhere"
            assert id(following) not in queued, f"{following.name} prefetched and queued"
    gpu_shares = 0.0  # GPU ids in use, by what holds them
    for demand, gpu_ids in state.actor_slots.values():
        for key, value in demand.items():
            held[key] = held.get(key, 0.0) + value
        gpu_shares += _gpu_share(demand, gpu_ids)
    for worker in state.workers.values():
        if worker.task is not None:
            gpu_shares += _gpu_share(worker.task.demand, worker.task.gpu_ids)
    redirect = resources.redirect
    if redirect:  # a removed group's names: its running work gives them back elsewhere
        for key in [k for k in held if k not in resources.total and k in redirect]:
            value = held.pop(key)
            if redirect[key]:
                held[redirect[key]] = held.get(redirect[key], 0.0) + value
    for key, total in resources.total.items():
        expected = total - held.get(key, 0.0)
        got = resources.available.get(key, 0.0)
        assert abs(got - expected) < 1e-6, (
            f"{key}: available {got} but total {total} less held {held.get(key, 0.0)}"
        )
    for key, value in resources.available.items():
        if key not in resources.total:
            assert abs(value + held.get(key, 0.0)) < 1e-6, f"{key} is not a resource here"
    in_use = sum(1.0 - f for f in resources.gpu_free)
    assert abs(in_use - gpu_shares) < 1e-6, (
        f"GPU ids in use {in_use} but tasks and actors hold {gpu_shares}"
    )


def _gpu_share(demand: dict[str, float], gpu_ids: tuple[int, ...]) -> float:
    """How much of the GPU ids' capacity a holder took (a fraction shares one id)."""
    amount = gpu_amount(demand)
    return amount * len(gpu_ids) if amount < 1 else float(len(gpu_ids))
