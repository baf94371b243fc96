"""What the running code is: its job, node, worker, task and actor (Ray's runtime context)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass
class _Process:
    """Per process: set when it connects (and, in an actor, when the actor starts)."""

    job_id: bytes = b""
    node_id: bytes = b""
    worker_id: bytes = b""
    actor_id: bytes = b""
    actor_gpu_ids: tuple[int, ...] = ()
    # the running work's scheduling strategy string (scheduling_strategies.resolve): a
    # pool worker's task or an actor's process; "" outside any group or strategy
    placement: str = ""


current = _Process()


def reset() -> None:
    """Forget the ids of a cluster this process left."""
    global current
    current = _Process()


#: per task, so concurrent calls of a threaded or async actor each see their own
current_task: contextvars.ContextVar[tuple[bytes, bytes, tuple[int, ...]] | None] = (
    contextvars.ContextVar("rayjupyter_task", default=None)
)  # (task id, job id, gpu ids)


class RuntimeContext:
    """``rj.get_runtime_context()``: ids as hex strings, like Ray's."""

    def get_job_id(self) -> str:
        task = current_task.get()
        return (task[1] if task else current.job_id).hex()

    def get_node_id(self) -> str:
        return current.node_id.hex()

    def get_worker_id(self) -> str:
        return current.worker_id.hex()

    def get_task_id(self) -> str | None:
        task = current_task.get()
        return task[0].hex() if task else None

    def get_actor_id(self) -> str | None:
        return current.actor_id.hex() if current.actor_id else None

    def get_placement_group_id(self) -> str | None:
        """The placement group this task or actor runs in (hex), None outside any group."""
        placement = current.placement
        return placement.split(":")[1] if placement.startswith("pg:") else None

    @property
    def job_id(self) -> str:
        return self.get_job_id()

    @property
    def node_id(self) -> str:
        return self.get_node_id()

    @property
    def task_id(self) -> str | None:
        return self.get_task_id()

    @property
    def actor_id(self) -> str | None:
        return self.get_actor_id()

    def __repr__(self) -> str:
        return (
            f"RuntimeContext(job_id={self.get_job_id()}, node_id={self.get_node_id()}, "
            f"task_id={self.get_task_id()}, actor_id={self.get_actor_id()})"
        )


def get_gpu_ids() -> list[int]:
    """The GPU ids given to the current task or actor (CUDA_VISIBLE_DEVICES holds the same)."""
    task = current_task.get()
    if task and task[2]:
        return list(task[2])
    return list(current.actor_gpu_ids)
