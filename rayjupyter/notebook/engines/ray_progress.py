"""Progress bars over Ray's ObjectRefs: a ProgressSource from ``ray.wait``, Ray's state API
(task names, failures) and the cluster's resources, and the hook that gives a blocking
``ray.get`` of many refs the automatic bar (ours is fed by the runtime's ``wait_observer``;
Ray has none, so ``ray.get`` is wrapped while this kernel is connected through
``%ray_connect --ray``, or after a cell that called ``ray.init()`` itself)."""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

#: what the hook replaced, to put back on disconnect
_original_get: list[Any] = []

STATE_TIMEOUT_S = 2
REFRESH_S = 1.0  # the state API is asked at most this often (Ray reports task events each 1 s)
DOWN_RETRY_S = 30.0  # after the state API failed (no dashboard), ask again only this late
NAME_WAIT_S = 15.0  # a ref's name is looked for this long (Ray reports a task in ~1 s)
NAMES_LIMIT = 10_000  # rows of this job's tasks read to name refs (Ray's own most per call)
#: how long after a result arrives Ray's state API may still report that its task failed
SETTLE_S = 5.0
EXECUTION_ERROR = "TASK_EXECUTION_EXCEPTION"
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::\s|:?$)")


def error_name(error_type: str | None, error_message: str | None) -> str:
    """A failed task's error as the widget shows it: the Python exception's class when the
    task's code raised (the last line of Ray's traceback text), else Ray's reason
    (``WORKER_DIED``, ``TASK_CANCELLED``, ...)."""
    if error_type == EXECUTION_ERROR and error_message:
        for line in reversed(error_message.strip().splitlines()):
            match = _EXCEPTION_LINE.match(line.strip())
            if match:
                return match[1].rpartition(".")[2]
    return str(error_type or "failed")


def state_api_address() -> str | None:
    """The connected cluster's GCS address, for Ray's state API: without it the API looks
    for "the" Ray on this machine, and refuses when it finds several."""
    try:
        return str(sys.modules["ray"].get_runtime_context().gcs_address)
    except Exception:  # Ray Client, or going away: Ray's own lookup
        return None


class TaskStates:
    """Names and failures of one job's tasks from Ray's state API (served by the cluster's
    dashboard): asked at most every ``REFRESH_S``, and only while something is unknown;
    without a dashboard it answers nothing (names stay "task", failures count as done)."""

    def __init__(self, job_id: str, *, clock: Any = time.monotonic) -> None:
        self.job_id = job_id
        self.clock = clock
        self.names: dict[str, str] = {}  # task id (hex) -> name
        self.errors: dict[str, str] = {}  # task id (hex) -> error name, once failed
        self._asked: dict[str, float] = {}  # query -> when
        self._unnamed_since: dict[str, float] = {}  # task id -> first asked for its name
        self._down_until = 0.0

    @property
    def up(self) -> bool:
        return bool(self.clock() >= self._down_until)

    def _due(self, query: str) -> bool:
        now = self.clock()
        if now < self._down_until or now - self._asked.get(query, -1e18) < REFRESH_S:
            return False
        self._asked[query] = now
        return True

    def _list(self, filters: list[tuple[str, str, str]], *, detail: bool) -> list[Any]:
        try:
            from ray.util import state

            return list(
                state.list_tasks(
                    address=state_api_address(),
                    filters=[("job_id", "=", self.job_id), *filters],
                    limit=NAMES_LIMIT,
                    detail=detail,
                    timeout=STATE_TIMEOUT_S,
                    raise_on_missing_output=False,
                )
            )
        except Exception:  # no dashboard, or busy: leave it a while
            self._down_until = self.clock() + DOWN_RETRY_S
            return []

    def name(self, task_id: str) -> str | None:
        """The task's name; None while not known (a ``ray.put`` ref has no task: given up on
        after ``NAME_WAIT_S``, as is a task older than the rows read)."""
        if task_id in self.names:
            return self.names[task_id]
        first = self._unnamed_since.setdefault(task_id, self.clock())
        if self.clock() - first < NAME_WAIT_S and self._due("names"):
            for task in self._list([], detail=False):
                self.names.setdefault(str(task.task_id), str(task.name))
        return self.names.get(task_id)

    def failed(self, task_ids: Sequence[str]) -> dict[str, str]:
        """Those of task_ids whose tasks failed (as far as Ray has reported), with the error."""
        unknown = [t for t in task_ids if t not in self.errors]
        if unknown and self._due("failed"):
            for task in self._list([("state", "=", "FAILED")], detail=True):
                task_id = str(task.task_id)
                self.names.setdefault(task_id, str(task.name))
                self.errors[task_id] = error_name(task.error_type, task.error_message)
        return {t: self.errors[t] for t in task_ids if t in self.errors}


class RayProgress:
    """Which refs are ready (``ray.wait`` without fetching), their tasks' names and failures
    (Ray's state API, which reports a second or so after a result is ready: a ref counted
    done turns failed within ``settle_s``), and how many CPU slots are busy.

    refs: a mapping (object id -> ref) is read live, for a caller that adds refs while it
    blocks (a joblib call); names: names the caller knows already (joblib's batches)."""

    def __init__(
        self,
        refs: Sequence[Any] | Mapping[bytes, Any],
        names: Mapping[bytes, str] | None = None,
    ) -> None:
        self.refs: Mapping[bytes, Any] = (
            refs if isinstance(refs, Mapping) else {ref.binary(): ref for ref in refs}
        )
        self.names = names if names is not None else {}
        self._tasks: TaskStates | None = None
        self._errors: dict[bytes, str] = {}

    @property
    def _ray(self) -> Any:
        return sys.modules["ray"]

    def _states(self) -> TaskStates:
        if self._tasks is None:
            first = next(iter(self.refs.values()), None)
            job = first.job_id().hex() if first is not None else None
            self._tasks = TaskStates(job or self._ray.get_runtime_context().get_job_id())
        return self._tasks

    def _unfinished(self, object_ids: Sequence[bytes]) -> list[Any]:
        refs = self.refs
        return [refs[oid] for oid in object_ids if oid in refs]

    def add(self, refs: Sequence[Any]) -> None:
        assert isinstance(self.refs, dict)
        self.refs.update((ref.binary(), ref) for ref in refs)

    def finished(self, object_ids: Sequence[bytes]) -> dict[bytes, bool]:
        refs = self._unfinished(object_ids)
        if not refs or self.closed:
            return {}
        ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        if not ready:
            return {}
        by_task = {ref.task_id().hex(): ref.binary() for ref in ready}
        failed = self._states().failed(list(by_task))
        for task_id, error in failed.items():
            self._errors[by_task[task_id]] = error
        return {oid: task_id in failed for task_id, oid in by_task.items()}

    def error(self, object_id: bytes) -> str:
        return self._errors.get(object_id, "")

    @property
    def settle_s(self) -> float:
        return SETTLE_S if self._tasks is None or self._tasks.up else 0.0

    def running(self) -> int:
        ray = self._ray
        try:
            cpus = float(ray.cluster_resources().get("CPU", 0.0))
            free = float(ray.available_resources().get("CPU", 0.0))
        except Exception:  # disconnected while drawing: nothing runs for us any more
            return 0
        return max(0, round(cpus - free))

    def name(self, object_id: bytes) -> str:
        known = self.names.get(object_id)
        if known:
            return known
        ref = self.refs.get(object_id)
        if ref is None or self.closed:
            return "task"
        return self._states().name(ref.task_id().hex()) or "task"

    def wait(self, object_ids: Sequence[bytes], seconds: float) -> None:
        refs = self._unfinished(object_ids)
        if refs and not self.closed:
            self._ray.wait(refs, num_returns=len(refs), timeout=seconds, fetch_local=False)

    @property
    def closed(self) -> bool:
        ray = sys.modules.get("ray")
        return ray is None or not ray.is_initialized()


def install_get_hook(ray: Any, *, only_in_kernel: bool = True) -> None:
    """Wrap ``ray.get`` so a slow get of many refs shows the automatic progress bar
    (``only_in_kernel=False``: outside a kernel too, for measuring its cost)."""
    from rayjupyter.notebook.kernel import in_kernel

    if _original_get or (only_in_kernel and not in_kernel()):
        return
    original = ray.get

    @functools.wraps(original)
    def get(object_refs: Any, *args: Any, **kwargs: Any) -> Any:
        from rayjupyter.notebook.progress_display import AUTO

        if (
            not AUTO.enabled
            or not isinstance(object_refs, list)
            or len(object_refs) < AUTO.min_refs
            or not all(isinstance(ref, ray.ObjectRef) for ref in object_refs)
        ):
            return original(object_refs, *args, **kwargs)
        with AUTO.watch(RayProgress(object_refs), [ref.binary() for ref in object_refs]):
            return original(object_refs, *args, **kwargs)

    _original_get[:] = [original]
    ray.get = get


def uninstall_get_hook(ray: Any) -> None:
    if _original_get:
        ray.get = _original_get.pop()


def follow_ray_sessions(*_result: Any) -> None:
    """After each cell (IPython's post_run_cell): a ``ray.init()`` the user called gets the
    hook too, from the next cell on; after a ``ray.shutdown()`` Ray's own get is put back."""
    ray = sys.modules.get("ray")
    if ray is None:
        return
    if ray.is_initialized():
        install_get_hook(ray)
    elif _original_get:
        uninstall_get_hook(ray)
