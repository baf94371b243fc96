"""What the notebook needs from a cluster engine, defined once: the magics, the progress
bars and the charts talk to this, and rayjupyter's runtime and Ray each implement it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from rayjupyter.core.read_models import NodeStatus

EngineName = Literal["rayjupyter", "ray"]


@dataclass(frozen=True)
class ConnectRequest:
    """What ``%ray_connect`` was asked for, engine-neutral."""

    address: str | None  # None: a local cluster owned by this kernel
    num_cpus: float | None = None
    num_gpus: float | None = None
    object_store_memory: int | None = None
    namespace: str | None = None


@dataclass(frozen=True)
class CellTask:
    """A submitted ``%%remote`` cell: the engine's ref to its result, and its task's name."""

    ref: Any
    name: str


class ProgressSource(Protocol):
    """Feeds a progress bar: which watched results have arrived and how many tasks run."""

    def finished(self, object_ids: Sequence[bytes]) -> dict[bytes, bool]:
        """Object id -> failed? for those of object_ids whose results have arrived."""
        ...

    def running(self) -> int:
        """How many tasks the cluster runs now (an estimate is fine: the model caps it)."""
        ...

    def name(self, object_id: bytes) -> str:
        """The remote function that makes object_id ("task" when not known yet: asked again)."""
        ...

    def error(self, object_id: bytes) -> str:
        """Why a finished object's task failed ("ValueError", "WORKER_DIED"; "" if unknown)."""
        ...

    @property
    def settle_s(self) -> float:
        """How long after a result arrives this source may still learn that its task failed
        (0: ``finished`` knows at once; Ray's state API reports a second or so later)."""
        ...

    def wait(self, object_ids: Sequence[bytes], seconds: float) -> None:
        """Block up to seconds, waking early when results arrive."""
        ...

    @property
    def closed(self) -> bool: ...


class Engine(Protocol):
    """One cluster runtime behind the notebook's front door."""

    name: EngineName

    @property
    def connected(self) -> bool: ...

    def connect(self, request: ConnectRequest) -> tuple[Any, str]:
        """The connection summary to display, and a note on what changed ('' if nothing)."""
        ...

    def disconnect(self) -> str:
        """Leave the cluster (stopping one this kernel started); a line saying what happened."""
        ...

    def summary(self) -> Any:
        """The rich connection summary (HTML and text reprs)."""
        ...

    def status(self, timeout: float = 10.0) -> NodeStatus:
        """Nodes, resources in use, tasks and actors by state, as our read model."""
        ...

    def status_notes(self) -> list[str]:
        """What the status leaves out on this engine, one line each (shown under it)."""
        ...

    def dashboard_url(self) -> str | None: ...

    def submit_cell(self, function: Any, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """Run function(*args) as one task with Ray-style options; its ref."""
        ...

    def get(self, ref: Any, timeout: float | None = None) -> Any:
        """The task's value; a Ctrl-C while blocked cancels the task, then raises."""
        ...

    def is_ready(self, ref: Any) -> bool: ...

    def cancel(self, ref: Any, *, force: bool = True) -> None: ...

    def is_timeout(self, error: BaseException) -> bool:
        """Whether get raised because its timeout passed."""
        ...

    def is_cancelled(self, error: BaseException) -> bool: ...

    def task_traceback(self, error: BaseException) -> str | None:
        """The remote traceback of a task's error (None: not a task error)."""
        ...

    def set_task_traceback(self, error: BaseException, text: str) -> None:
        """Make the error show text as its remote traceback in the notebook."""
        ...

    def progress_source(self, refs: Sequence[Any]) -> ProgressSource | None:
        """A source for a progress bar over refs (None: these are not this engine's refs)."""
        ...
