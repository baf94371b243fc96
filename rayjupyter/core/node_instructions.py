"""What ``NodeState`` tells its shell to do: the instructions, each a plain tuple.

An instruction's first item is one of the opcodes below, the rest what the shell needs to
carry it out (``node_tasks.NodeTasks.execute``). Ints, so the shell's dispatch is a cheap
comparison. Kept apart from ``node_state.py`` (which re-exports them) so that the modules
its decisions are split into (``env_workers``) return instructions without importing it.
"""

from __future__ import annotations

from typing import Any

# Instructions: (opcode, ...). Ints, so the shell's dispatch is a cheap comparison.
EXECUTE = 1  # (EXECUTE, task, worker): send the task; if worker.prefetched is task it waits there
# (REVOKE, task, worker, answers_block): take back a task sent ahead and unpin what it
# pinned; task None: nothing taken back, the message only answers a WorkerBlocked (the
# worker waits for that answer before it starts a task it got earlier)
REVOKE = 2
SPAWN = 3  # (SPAWN, env, count): start count pool workers in runtime_env env ("" plain)
KILL = 4  # (KILL, worker): SIGKILL the worker's process
INTERRUPT = 5  # (INTERRUPT, task, worker): ask the task to stop (CancelCall, then SIGINT)
CANCEL_CALL = 6  # (CANCEL_CALL, task, worker): an actor call: only CancelCall, no signal
CANCEL_FORWARDED = 7  # (CANCEL_FORWARDED, task, force): the task runs on a peer: tell it
FAILED = 8  # (FAILED, task, error_blob): the task failed: its returns become the error
FINISHED = 9  # (FINISHED, task): the task succeeded: the shell stores its results
STARTED = 10  # (STARTED, task, worker): publish that the task started (one sent ahead)
UNPIN = 11  # (UNPIN, task): the task left its worker: drop the pins on its arguments
ACTOR_PROCESS_DIED = 12  # (ACTOR_PROCESS_DIED, worker, cause): restart or end its actor
DROP_ACTOR_CALL = 13  # (DROP_ACTOR_CALL, task): a queued actor call was cancelled
START_ACTOR = 14  # (START_ACTOR, worker): an actor's process connected: send the class
WARN = 15  # (WARN, text): tell the drivers (stderr): work waits for a worker process
# (ATTEMPT_LOST, task, error, pid, cause): a task a peer node forwarded here lost its
# attempt (worker pid died of cause, or it raised error): tell that node, which retries
ATTEMPT_LOST = 16
FORWARD = 20  # (FORWARD, task, peer): run the task on that peer (NodeInfo)
# (LEASE, worker, owner, demand, func_id, granted): tell a driver it may send tasks of that
# demand to that worker itself (granted), or that it must give the worker back (worker_leases)
LEASE = 21

OPCODE_NAMES = {
    value: name
    for name, value in globals().items()
    if isinstance(value, int) and name.isupper() and not name.startswith("_")
}

Instruction = tuple[Any, ...]
NONE: list[Instruction] = []  # returned (never mutated) when an event needs nothing done
