"""Fate sharing, as in Ray: what a worker submitted ends when the worker dies.

Its tasks still waiting, queued or running (here or on a peer) are cancelled with force
(a running one's worker is killed), and the actors it created are killed for good, unless
detached. Without this, a child task or actor of a task or actor that died kept its
resources until it ended by itself, which for a blocked child is never.

I/O-free: the node's worker part turns a dead worker into these requests and hands them to
its own handlers, the ones ``rj.cancel`` and ``rj.kill`` reach.
"""

from __future__ import annotations

from rayjupyter.core import protocol as P
from rayjupyter.core.actor_state import ActorState
from rayjupyter.core.node_state import NodeState
from rayjupyter.core.scheduler import TaskState

#: states of a task that has not ended: it can still be cancelled
_UNFINISHED = (TaskState.WAITING, TaskState.READY, TaskState.RUNNING)


def orphaned(state: NodeState, owner: bytes) -> list[P.CancelTask | P.KillActor]:
    """The cancels and kills that end what ``owner`` (a dead worker's client id) left."""
    out: list[P.CancelTask | P.KillActor] = [
        P.CancelTask(task.return_ids[0], True, True)
        for task in state.tasks.values()
        if task.owner == owner
        and not task.actor_id  # calls to other actors are theirs to finish
        and task.return_ids
        and task.state in _UNFINISHED
    ]
    out += [
        P.KillActor(actor.actor_id, True)
        for actor in state.actor_table.actors.values()
        if actor.creation.owner == owner
        and not actor.detached
        and actor.state is not ActorState.DEAD
    ]
    return out
