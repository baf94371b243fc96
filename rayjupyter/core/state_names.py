"""The names of the states and kinds the read models carry, in Ray's vocabulary.

Apart from ``read_models.py`` (which re-exports them) so that the engine's modules that name
a state (task events, the status counts) need not build the read models' dataclasses at
import: those cost a few milliseconds of every node's start, and only queries use them.
"""

from __future__ import annotations

from typing import Literal

#: Ray's names for the states a task goes through (those this engine reaches): waiting for
#: its arguments, waiting for a worker (also when sent ahead to a busy one), running, done.
TaskStateName = Literal[
    "PENDING_ARGS_AVAIL",
    "PENDING_NODE_ASSIGNMENT",
    "RUNNING",
    "FINISHED",
    "FAILED",
]
PENDING_ARGS_AVAIL: TaskStateName = "PENDING_ARGS_AVAIL"
PENDING_NODE_ASSIGNMENT: TaskStateName = "PENDING_NODE_ASSIGNMENT"
RUNNING: TaskStateName = "RUNNING"
FINISHED: TaskStateName = "FINISHED"
FAILED: TaskStateName = "FAILED"
#: live states that are not running yet, in the order a task goes through them
PENDING_STATES: tuple[TaskStateName, ...] = (PENDING_ARGS_AVAIL, PENDING_NODE_ASSIGNMENT)
#: every state, in the order a task goes through them (displays sort by it)
TASK_STATES: tuple[TaskStateName, ...] = (*PENDING_STATES, RUNNING, FINISHED, FAILED)

#: Ray's names for an actor's states
ActorStateName = Literal["PENDING_CREATION", "RESTARTING", "ALIVE", "DEAD"]

#: the kinds of rows ``ListState`` answers with
StateKind = Literal["tasks", "actors", "objects", "nodes", "jobs", "workers"]
STATE_KINDS: tuple[StateKind, ...] = ("tasks", "actors", "objects", "nodes", "jobs", "workers")

#: Ray's job states (``JobStatus``): a submitted job waits for its process, runs, then ends
#: stopped (``stop_job``), succeeded (exit code 0) or failed
JobStatusName = Literal["PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"]
#: a job submitted through the Jobs API, or a driver that connected by itself
JobTypeName = Literal["SUBMISSION", "DRIVER"]
