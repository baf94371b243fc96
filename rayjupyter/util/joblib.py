"""joblib on a cluster: each of joblib's batches runs as a task.

    from rayjupyter.util.joblib import register_rayjupyter
    register_rayjupyter()
    with joblib.parallel_backend("rayjupyter"):
        search.fit(X, y)                  # scikit-learn's fits run on the cluster

Ray's names work too: ``register_ray()`` and the backend ``"ray"``.

Large arguments (numpy arrays and pandas objects over ``SHARE_THRESHOLD``, such as the X
and y that scikit-learn passes to every fit) are put in the object store once per
``Parallel`` call and reach each task as a dependency, mapped zero-copy on the worker,
instead of being pickled into every batch. Errors raise in the caller as the task's own
exception type; an error or an interrupt cancels the batches still outstanding.

This module imports joblib, so ``rayjupyter.util`` does not import it: only code that uses
the backend pays for joblib (and scikit-learn).

On Ray (this process a Ray driver, see ``engine_api``) the same backend submits to Ray:
completions arrive through each ref's future, and the notebook's progress bar follows the
batches as on our runtime (``ray.wait`` and Ray's state API, ``engines/ray_progress.py``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import queue
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, register_parallel_backend

from rayjupyter.core import api
from rayjupyter.core.object_ref import ObjectRef
from rayjupyter.core.serialization import INLINE_THRESHOLD
from rayjupyter.util import engine_api

BACKEND_NAME = "rayjupyter"
RAY_BACKEND_NAME = "ray"  # the name Ray's ray.util.joblib registers, for ported code
#: arguments larger than this (bytes) are put in the object store once per Parallel call;
#: smaller ones ride inside the batch (the same size above which any value goes to shm)
SHARE_THRESHOLD = INLINE_THRESHOLD
PUMP_S = 0.05  # how long a worker's completion thread waits per turn (workers have no IO thread)


def register_rayjupyter() -> None:
    """Make ``joblib.parallel_backend("rayjupyter")`` (and ``parallel_config``) available,
    under Ray's name ``"ray"`` too."""
    register_parallel_backend(BACKEND_NAME, RayJupyterBackend)
    register_parallel_backend(RAY_BACKEND_NAME, RayJupyterBackend)


def register_ray() -> None:
    """Ray's name for it: ``register_ray()`` then ``joblib.parallel_backend("ray")``."""
    register_rayjupyter()


# ------------------------------------------------------------------ on the worker


class _Shared(NamedTuple):
    """Stands in a shipped batch for the value of shared argument number ``position``."""

    position: int


def _run_batch(batch: Any, *shared: Any) -> Any:
    """The task: put the shared values (task dependencies, already mapped) back, then run."""
    if shared:

        def value(arg: Any) -> Any:
            return shared[arg.position] if type(arg) is _Shared else arg

        batch.items = [
            (func, tuple(value(a) for a in args), {k: value(v) for k, v in kwargs.items()})
            for func, args, kwargs in batch.items
        ]
    return batch()


@functools.lru_cache(maxsize=2)
def _base_remote(on_ray: bool = False) -> Any:
    """``_run_batch`` as a remote function: every batch shares its function id (shipped once);
    one for our runtime, one for Ray."""
    return engine_api.core().remote(_run_batch)


# ------------------------------------------------------------------ on the caller


def _call_name(func: Any) -> str:
    while isinstance(func, functools.partial):
        func = func.func
    return str(getattr(func, "__name__", None) or type(func).__name__)


def _batch_name(batch: Any) -> str:
    """The batch's function name ("_fit_and_score"): what task lists and progress bars show."""
    items = getattr(batch, "items", None)
    if not isinstance(items, list) or not items:
        return _call_name(batch)
    names = {_call_name(func) for func, _args, _kwargs in items}
    return names.pop() if len(names) == 1 else "joblib_batch"


def _shared_size(value: Any) -> int:
    """Bytes of a value worth sharing (an array or a pandas object); 0 for anything else."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if type(value).__module__.startswith("pandas.") and hasattr(value, "memory_usage"):
        try:
            usage = value.memory_usage(index=True, deep=False)
            return int(usage.sum() if hasattr(usage, "sum") else usage)
        except Exception:  # some other pandas type: ship it inside the batch
            return 0
    return 0


class _Job:
    """What ``submit`` returns to joblib: the batch's ref and joblib's completion callback."""

    __slots__ = ("callback", "ref")

    def __init__(self, ref: ObjectRef, callback: Callable[[Any], None] | None) -> None:
        self.ref = ref
        self.callback = callback


class _Call:
    """One Parallel call's state: shared arguments, outstanding batches, the completion thread.

    joblib's callbacks run here, not in the client's IO thread: a callback dispatches the
    next batch, and a submit may put a new large argument, which must not wait on the
    thread that reads the replies.
    """

    def __init__(self) -> None:
        self.on_ray = engine_api.on_ray()
        self.api = engine_api.core()
        self.client = None if self.on_ray else api._client()
        self.lock = threading.Lock()
        self.shared: dict[int, tuple[Any, ObjectRef]] = {}  # id(value) -> (value, its ref)
        self.pending: dict[bytes, _Job] = {}
        self.object_ids: list[bytes] = []  # every batch's result id, for the progress display
        self.finished: list[ObjectRef] = []  # kept while a progress display may read them
        self.keep_finished = api.wait_observer is not None and not self.on_ray
        # on Ray the display reads the refs themselves (ray.wait), and each batch's name
        self.refs: dict[bytes, Any] = {}
        self.names: dict[bytes, str] = {}
        self.keep_refs = api.wait_observer is not None and self.on_ray
        self.done: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._complete, name="rayjupyter-joblib", daemon=True)
        self.thread.start()

    def share(self, value: Any) -> ObjectRef:
        """The value's ref in the store: put on first use in this call, by identity."""
        with self.lock:
            entry = self.shared.get(id(value))
            if entry is None:
                # the value is held here until the call ends, so its id cannot be reused
                entry = self.shared[id(value)] = (value, self.api.put(value))
            return entry[1]

    def submit(
        self, batch: Any, callback: Callable[[Any], None] | None, remote: Callable[[str], Any]
    ) -> _Job:
        shipped, refs = self._substitute(batch)
        name = _batch_name(batch)
        ref = remote(name).remote(shipped, *refs)
        job = _Job(ref, callback)
        object_id = ref.binary()
        with self.lock:
            self.pending[object_id] = job
            if self.keep_refs:  # before the id: the display finds the ref of each id it sees
                self.refs[object_id] = ref
                self.names[object_id] = name
            self.object_ids.append(object_id)
        if self.client is None:  # Ray: its ref's future says when the batch is done
            ref.future().add_done_callback(lambda _future: self.done.put(job))
        else:
            self.client.when_ready(object_id, lambda _info: self.done.put(job))
        return job

    def _substitute(self, batch: Any) -> tuple[Any, list[ObjectRef]]:
        """A copy of the batch whose large arguments are placeholders, and their refs."""
        items = getattr(batch, "items", None)
        if not isinstance(items, list):
            return batch, []
        refs: list[ObjectRef] = []
        positions: dict[int, _Shared] = {}

        def placeholder(arg: Any) -> Any:
            if _shared_size(arg) <= SHARE_THRESHOLD:
                return arg
            marker = positions.get(id(arg))
            if marker is None:
                refs.append(self.share(arg))
                marker = positions[id(arg)] = _Shared(len(refs) - 1)
            return marker

        new_items = [
            (
                func,
                tuple(placeholder(a) for a in args),
                {k: placeholder(v) for k, v in kwargs.items()},
            )
            for func, args, kwargs in items
        ]
        if not refs:
            return batch, []
        shipped = copy.copy(batch)
        shipped.items = new_items
        return shipped, refs

    def _complete(self) -> None:
        """Hand finished batches to joblib, in the order they finish."""
        worker = self.client is not None and self.client.kind == "worker"
        while True:
            try:
                job = self.done.get(timeout=PUMP_S) if worker else self.done.get()
            except queue.Empty:  # a worker reads its socket only while someone waits on it
                with self.lock:
                    waiting = list(self.pending)
                if waiting and self.client is not None:
                    self.client.wait_objects(waiting, 1, PUMP_S)
                continue
            if job is None:
                return
            with self.lock:
                if self.pending.pop(job.ref.binary(), None) is None:
                    continue  # aborted: joblib wants nothing more from it
                if self.keep_finished:
                    self.finished.append(job.ref)
            if job.callback is not None:
                try:
                    job.callback(job)
                except Exception:  # joblib records batch errors itself; this is a bug there
                    traceback.print_exc()

    def cancel_pending(self) -> None:
        """Cancel every batch not yet handed to joblib (a queued one never runs)."""
        with self.lock:
            jobs = list(self.pending.values())
            self.pending.clear()
        for job in jobs:
            with contextlib.suppress(Exception):  # the cluster may be gone already
                self.api.cancel(job.ref)

    def close(self) -> None:
        """Stop the completion thread and drop the shared arguments (the store frees them)."""
        self.done.put(None)
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=10)
        with self.lock:
            self.shared.clear()
            self.pending.clear()
            self.finished.clear()
            self.object_ids.clear()
            self.refs.clear()
            self.names.clear()


class RayJupyterBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's batches as tasks on the connected cluster (a local one is started if none).

    ``n_jobs=-1`` is the cluster's CPUs (divided by ``num_cpus`` per task when given in
    ``ray_remote_args``, the task options every batch is submitted with).
    """

    supports_retrieve_callback = True
    supports_sharedmem = False
    uses_threads = False
    default_n_jobs = -1

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        ray_remote_args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **kwargs
        )
        self._remote_args = dict(ray_remote_args or {})
        self._remotes: dict[str, Any] = {}  # batch name -> the remote function it runs as
        self._call: _Call | None = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            cpus = engine_api.core().cluster_resources().get("CPU", 1.0)
            per_task = float(self._remote_args.get("num_cpus") or 1.0)
            n_jobs = max(int(cpus // per_task) + 1 + n_jobs, 1)
        return int(n_jobs)

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def start_call(self) -> None:
        self.stop_call()
        self._call = _Call()

    def stop_call(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.close()

    def terminate(self) -> None:
        self.stop_call()
        self.reset_batch_stats()

    def submit(self, func: Any, callback: Callable[[Any], None] | None = None) -> _Job:
        if self._call is None:  # joblib calls start_call first; be safe if it did not
            self._call = _Call()
        return self._call.submit(func, callback, self._remote)

    def _remote(self, name: str) -> Any:
        """The remote function for batches named ``name``, with this backend's task options."""
        remote = self._remotes.get(name)
        if remote is None:
            base = _base_remote(engine_api.on_ray())
            remote = self._remotes[name] = base.options(name=name, **self._remote_args)
        return remote

    def retrieve_result_callback(self, out: _Job) -> Any:
        """The batch's results, or its error raised as the task's own exception type."""
        return engine_api.core().get(out.ref)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """An error or an interrupt: cancel what is still queued or running."""
        if self._call is not None:
            self._call.cancel_pending()

    @contextlib.contextmanager
    def retrieval_context(self) -> Iterator[None]:
        """While joblib waits for results: the notebook's progress display, if loaded."""
        observer, call = api.wait_observer, self._call
        if observer is None or call is None:
            yield
            return
        if call.on_ray:
            from rayjupyter.notebook.engines.ray_progress import RayProgress
            from rayjupyter.notebook.progress_display import AutoProgress

            if not isinstance(observer, AutoProgress):
                yield
                return
            source = RayProgress(call.refs, call.names)  # both read live as batches come
            with observer.watch(source, call.object_ids, growing=True):
                yield
            return
        if call.client is None:
            yield
            return
        with observer(call.client, call.object_ids, 0):  # 0: ids keep coming while we wait
            yield
