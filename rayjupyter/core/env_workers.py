"""Which runtime_env (and GPU) workers start, and which stop: those idle too long, or one
making room for another pool's (``worker_pool``: a runtime_env's or GPU work's workers).

Decisions of ``NodeState`` (``env_spawns``, ``reap_env_workers``), kept apart because they
read the idle pools per env and the workers table at once; no I/O.
"""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING

from rayjupyter.core import worker_pool
from rayjupyter.core.node_instructions import NONE, SPAWN, Instruction
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


def spawns(state: NodeState, known_envs: Container[str], now: float) -> list[Instruction]:
    """Workers for runtime_envs whose tasks fit now but have no idle worker of theirs;
    when envs hold a pool's worth of workers, the one idle longest of another env goes."""
    wanted = state.scheduler.env_unplaced
    if not wanted:
        return NONE
    starting: dict[str, int] = {}
    for worker in state.workers.values():
        if worker.pool and not worker.actor_id and worker.state is WorkerState.STARTING:
            starting[worker.pool] = starting.get(worker.pool, 0) + 1
    out: list[Instruction] = []
    planned = 0  # env workers this call starts (the shell adds them to the table)
    for env, count in wanted.items():
        if not worker_pool.env_known(env, known_envs):
            continue  # admission failed its tasks already
        missing = count - starting.get(env, 0)
        for started in range(missing):
            out += state.reap_env_workers(now, crowded_by=env, planned=planned)
            if not state.limit.room(len(state.workers) + planned):
                return out + state.limit_reached(missing - started, "tasks", planned)
            out.append((SPAWN, env, 1))
            planned += 1
    return out
