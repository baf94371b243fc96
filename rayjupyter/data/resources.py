"""The resource manager: which operator may start its next task, as a pure decision.

Back-pressure is bounded by object-store use: the bytes of blocks made and not yet consumed
(queued between operators or waiting for the consumer) plus the expected output of the
tasks running now. An operator may start a task only while that total stays under the
budget (``DataContext.execution_options.resource_limits.object_store_memory``, half of the
cluster's store by default) and a CPU slot is free. Among the ready operators the one whose
output queue is smallest goes first, downstream on ties, so the pipeline drains before it
fills. If nothing runs at all one task may always start, so a budget smaller than one block
slows a pipeline and never deadlocks it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpUsage:
    """One operator's state as the manager sees it."""

    ready: bool  # it has input to dispatch (and an idle actor, for actor pools)
    running: int  # tasks in flight
    max_running: int  # 0: no cap of its own (tasks); actors x in-flight per actor otherwise
    uses_cpu_slot: bool  # tasks take a CPU slot; actor-pool calls run in their own actors
    queued_bytes: int  # bytes of its outputs not yet consumed downstream
    est_task_output_bytes: int  # expected output of one more task (an average so far)


@dataclass(frozen=True)
class Limits:
    cpu_slots: int
    store_budget: int


def in_use(usages: list[OpUsage]) -> int:
    """Bytes the pipeline holds now or will hold when its running tasks finish."""
    return sum(u.queued_bytes + u.running * u.est_task_output_bytes for u in usages)


def choose_op(usages: list[OpUsage], limits: Limits) -> int | None:
    """The index of the operator to start a task for now, or None to wait."""
    total_running = sum(u.running for u in usages)
    cpu_running = sum(u.running for u in usages if u.uses_cpu_slot)
    used = in_use(usages)
    best: tuple[int, int] | None = None
    for index, usage in enumerate(usages):
        if not usage.ready:
            continue
        if usage.max_running and usage.running >= usage.max_running:
            continue
        if usage.uses_cpu_slot and cpu_running >= limits.cpu_slots:
            continue
        if total_running and used + usage.est_task_output_bytes > limits.store_budget:
            continue
        key = (usage.queued_bytes, -index)
        if best is None or key < (best[0], -best[1]):
            best = (usage.queued_bytes, index)
    return None if best is None else best[1]


def actor_pool_target(
    current: int, min_size: int, max_size: int, busy: int, queued_inputs: int
) -> int:
    """How many actors an autoscaling pool should have: grow by one while every actor is
    busy and input waits, up to max_size; never below min_size (pools do not shrink while
    a dataset runs, so the callable classes are made once)."""
    target = max(current, min_size)
    if busy >= target and queued_inputs > 0 and target < max_size:
        target += 1
    return target
