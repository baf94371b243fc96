"""Which runtime_env (and GPU) workers stop: those idle too long, or one making room for
another pool's (``worker_pool``: a runtime_env's or GPU work's workers).

A decision of ``NodeState`` (``reap_env_workers``, ``env_spawns``), kept apart because it
reads the idle pools per env and the workers table at once; no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayjupyter.core.scheduler import WorkerRecord, WorkerState

if TYPE_CHECKING:
    from rayjupyter.core.node_state import NodeState

#: runtime_env workers idle this long are stopped
IDLE_S = 10.0


def reap(state: NodeState, now: float, crowded_by: str, planned: int) -> list[WorkerRecord]:
    """The env workers to stop, forgotten by the scheduler already (never given a task
    again; their exit cleans up): those idle for IDLE_S, or with ``crowded_by`` the one of
    another env idle longest, when envs already hold a pool's worth of workers
    (``planned``: env workers about to start that are not in the table yet)."""
    idle_env = state.scheduler.idle_env
    owners = state.actor_table.owners()  # a worker that created live actors stays: they die with it
    if crowded_by:
        live = planned + sum(
            1
            for w in state.workers.values()
            if w.pool and not w.actor_id and w.state is not WorkerState.DEAD
        )
        if live < state.pool_size:
            return []
        others = [
            w
            for env, pool in idle_env.items()
            if env != crowded_by
            for w in pool
            if w.client_id not in owners
        ]
        victims = sorted(others, key=lambda w: w.idle_since)[:1]
    else:
        deadline = now - IDLE_S
        victims = [
            w
            for pool in idle_env.values()
            for w in pool
            if w.idle_since < deadline and w.client_id not in owners
        ]
    for worker in victims:
        state.scheduler.forget_worker(worker)
    return victims
