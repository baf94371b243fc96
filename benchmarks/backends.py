"""One small adapter per runtime, all with the same methods, so every backend is timed alike.

Libraries are imported in ``load()``, never at module import, so the runner can list the backends
(and print their notes) without paying for, or depending on, any of them.
"""

from __future__ import annotations

import abc
import importlib
import multiprocessing
import multiprocessing.pool
import os
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import psutil

from benchmarks import tasks

# Long enough that one warm-up task per CPU overlaps the others, so each lands on its own worker.
WARM_TASK_SECONDS = 0.2


class Backend(abc.ABC):
    """The operations every workload needs; a subclass maps each onto its runtime's own API."""

    name = ""
    in_stdlib = False  # nothing to import: the import row shows n/a instead of a meaningless ~0 s
    supports_actors = True  # False: the actor rows show n/a
    note = ""  # how this backend's operations are done, printed under the results table

    def __init__(self) -> None:
        self.num_cpus = 0

    @abc.abstractmethod
    def load(self) -> None:
        """Import the library; timed apart from start: a process pays it once, not per cluster."""

    @abc.abstractmethod
    def start(self, num_cpus: int) -> None:
        """Start a local cluster or pool with ``num_cpus`` workers and connect to it."""

    @abc.abstractmethod
    def noop_sync(self) -> None:
        """Run one no-op task and wait for its result: the synchronous round trip."""

    @abc.abstractmethod
    def run_concurrently(self, seconds: float, count: int) -> list[int]:
        """Run ``count`` sleep tasks at once and return their worker PIDs (wakes every worker)."""

    @abc.abstractmethod
    def submit_many(self, n: int) -> Any:
        """Submit ``n`` no-op tasks without waiting and return whatever ``get_all`` needs."""

    @abc.abstractmethod
    def get_all(self, handles: Any) -> list[Any]:
        """Wait for every task that ``submit_many`` submitted and return their results."""

    @abc.abstractmethod
    def put(self, arr: np.ndarray) -> Any:
        """Store ``arr`` where tasks could use it and return a handle to it."""

    @abc.abstractmethod
    def get(self, handle: Any) -> np.ndarray:
        """Fetch the array behind ``handle`` into this process, as cheaply as the runtime allows."""

    def free(self, handle: Any) -> None:  # noqa: B027 - optional hook: most runtimes free by refcount
        """Release what reference counting does not (the caller drops its references after this)."""

    @abc.abstractmethod
    def sum_ref(self, handle: Any) -> float:
        """Sum, in a task, the array behind a ``put`` handle, passed by reference; its result."""

    @abc.abstractmethod
    def sum_value(self, arr: np.ndarray) -> float:
        """Sum, in a task, ``arr`` passed by value: the runtime ships it however it ships args."""

    @abc.abstractmethod
    def chain(self, length: int) -> Any:
        """Run ``length`` ``add_one`` tasks, each fed the previous one's result; the last result."""

    @abc.abstractmethod
    def map_tasks(self, fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
        """Submit ``fn(*a)`` for every ``a`` at once, then wait for all: a parallel map."""

    def create_actors(self, n: int) -> list[Any]:
        """Start ``n`` ``tasks.Counter`` actors and return handles to call them through."""
        raise NotImplementedError(f"{self.name} has no actors; check supports_actors first")

    def actor_call(self, actor: Any) -> Any:
        """Call ``incr`` on ``actor`` and wait for its result: the actor's round trip."""
        raise NotImplementedError(f"{self.name} has no actors; check supports_actors first")

    def actor_submit(self, actor: Any) -> Any:
        """Call ``incr`` on ``actor`` without waiting; return what ``actor_get_all`` needs."""
        raise NotImplementedError(f"{self.name} has no actors; check supports_actors first")

    def actor_get_all(self, handles: list[Any]) -> list[Any]:
        """Wait for the calls ``actor_submit`` made and return their results."""
        raise NotImplementedError(f"{self.name} has no actors; check supports_actors first")

    def kill_actor(self, actor: Any) -> None:
        """End ``actor`` now, so its process or thread is not left for the next workload."""
        raise NotImplementedError(f"{self.name} has no actors; check supports_actors first")

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop the cluster or pool that ``start`` made."""

    def process_tree_pids(self) -> list[int]:
        """This driver and every process under it: what the machine pays for this runtime."""
        me = psutil.Process()
        return [me.pid, *(child.pid for child in me.children(recursive=True))]

    def warm_workers(self) -> int:
        """Make every worker live (some start lazily); return how many distinct workers ran."""
        return len(set(self.run_concurrently(WARM_TASK_SECONDS, self.num_cpus)))


class RayApiBackend(Backend):
    """A runtime with Ray's core API (init, remote, get, put, shutdown): Ray and rayjupyter."""

    module_name = ""

    def __init__(self) -> None:
        super().__init__()
        self._api: Any = None
        self._noop: Any = None
        self._sleep_pid: Any = None
        self._counter: Any = None
        self._remote_fns: dict[Callable[..., Any], Any] = {}

    def load(self) -> None:
        """Import the module that provides the Ray API."""
        self._api = importlib.import_module(self.module_name)

    def start(self, num_cpus: int) -> None:
        """Start a local cluster the way a user would: ``init(num_cpus=...)`` and ``@remote``."""
        self.num_cpus = num_cpus
        self._api.init(num_cpus=num_cpus)
        self._noop = self._task(tasks.noop)
        self._sleep_pid = self._task(tasks.sleep_pid)
        self._counter = self._api.remote(tasks.Counter)

    def _task(self, fn: Callable[..., Any]) -> Any:
        """``remote(fn)``, made once per function, as a user would at module level."""
        if fn not in self._remote_fns:
            self._remote_fns[fn] = self._api.remote(fn)
        return self._remote_fns[fn]

    def noop_sync(self) -> None:
        """``get(f.remote())``."""
        self._api.get(self._noop.remote())

    def run_concurrently(self, seconds: float, count: int) -> list[int]:
        """Submit ``count`` sleep tasks, then get them all."""
        return list(self._api.get([self._sleep_pid.remote(seconds) for _ in range(count)]))

    def submit_many(self, n: int) -> Any:
        """``[f.remote() for _ in range(n)]``."""
        return [self._noop.remote() for _ in range(n)]

    def get_all(self, handles: Any) -> list[Any]:
        """``get(refs)`` in one call."""
        return list(self._api.get(handles))

    def put(self, arr: np.ndarray) -> Any:
        """``put(arr)``: one copy into the shared-memory object store."""
        return self._api.put(arr)

    def get(self, handle: Any) -> np.ndarray:
        """``get(ref)``: zero-copy when the store maps the object read-only into this process."""
        result: np.ndarray = self._api.get(handle)
        return result

    def sum_ref(self, handle: Any) -> float:
        """``get(array_sum.remote(ref))``: the worker reads the object where the store holds it."""
        return float(self._api.get(self._task(tasks.array_sum).remote(handle)))

    def sum_value(self, arr: np.ndarray) -> float:
        """``get(array_sum.remote(arr))``: a large argument goes through the object store."""
        return float(self._api.get(self._task(tasks.array_sum).remote(arr)))

    def chain(self, length: int) -> Any:
        """``ref = add_one.remote(ref)`` ``length`` times, then ``get`` the last ref."""
        add_one = self._task(tasks.add_one)
        value: Any = 0
        for _ in range(length):
            value = add_one.remote(value)
        return self._api.get(value)

    def map_tasks(self, fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
        """``get([f.remote(*a) for a in args])``."""
        remote_fn = self._task(fn)
        return list(self._api.get([remote_fn.remote(*a) for a in args]))

    def create_actors(self, n: int) -> list[Any]:
        """``[Counter.remote() for _ in range(n)]``: returns at once, the actors start behind."""
        return [self._counter.remote() for _ in range(n)]

    def actor_call(self, actor: Any) -> Any:
        """``get(actor.incr.remote())``."""
        return self._api.get(actor.incr.remote())

    def actor_submit(self, actor: Any) -> Any:
        """``actor.incr.remote()``."""
        return actor.incr.remote()

    def actor_get_all(self, handles: list[Any]) -> list[Any]:
        """``get(refs)`` in one call."""
        return list(self._api.get(handles))

    def kill_actor(self, actor: Any) -> None:
        """``kill(actor)``."""
        self._api.kill(actor)

    def shutdown(self) -> None:
        """``shutdown()``."""
        self._api.shutdown()


class RayJupyterBackend(RayApiBackend):
    """rayjupyter through its Ray-compatible API: the runtime under test."""

    name = "rayjupyter"
    module_name = "rayjupyter"
    note = (
        "rayjupyter: rj.init(num_cpus=2); put/get = rj.put/rj.get; actors = @rj.remote class, "
        "Counter.remote(), a.incr.remote(), rj.kill(a); chain and ref sum pass ObjectRefs."
    )


class RayBackend(RayApiBackend):
    """Ray itself, with ``ray.init(num_cpus=...)`` defaults."""

    name = "ray"
    module_name = "ray"
    note = (
        "ray: ray.init(num_cpus=2) with its defaults; put/get = ray.put/ray.get; actors and "
        "refs as for rayjupyter (ray.remote class, ray.kill)."
    )


class DaskBackend(Backend):
    """Dask distributed on a LocalCluster of single-threaded processes: the closest to a pool."""

    name = "dask"
    note = (
        "dask: LocalCluster(n_workers=2, threads_per_worker=1, processes=True); tasks = "
        "client.submit(pure=False) + gather; put = client.scatter(hash=False) (one copy to a "
        "worker over TCP), get = future.result() (a copy back); chain and ref sum pass "
        "futures to submit; actors = client.submit(Counter, actor=True), a.incr().result(), "
        "killed by client.cancel(future); dask runs an actor's methods on its worker's actor "
        "thread and does not promise call order."
    )

    def __init__(self) -> None:
        super().__init__()
        self._distributed: Any = None
        self._cluster: Any = None
        self._client: Any = None

    def load(self) -> None:
        """Import dask.distributed."""
        self._distributed = importlib.import_module("distributed")

    def start(self, num_cpus: int) -> None:
        """Start a LocalCluster of processes and connect a Client to it."""
        self.num_cpus = num_cpus
        self._cluster = self._distributed.LocalCluster(
            n_workers=num_cpus, threads_per_worker=1, processes=True
        )
        self._client = self._distributed.Client(self._cluster)

    def noop_sync(self) -> None:
        """``submit(f, pure=False).result()``; pure=False, or identical calls are deduplicated."""
        self._client.submit(tasks.noop, pure=False).result()

    def run_concurrently(self, seconds: float, count: int) -> list[int]:
        """Submit ``count`` sleep tasks, then gather them."""
        futures = [self._client.submit(tasks.sleep_pid, seconds, pure=False) for _ in range(count)]
        return list(self._client.gather(futures))

    def submit_many(self, n: int) -> Any:
        """``[submit(f, pure=False) for _ in range(n)]``."""
        return [self._client.submit(tasks.noop, pure=False) for _ in range(n)]

    def get_all(self, handles: Any) -> list[Any]:
        """``gather(futures)`` in one call."""
        return list(self._client.gather(handles))

    def put(self, arr: np.ndarray) -> Any:
        """``scatter(arr, hash=False)``: hashing would add a pass over 1 GB and dedupe repeats."""
        return self._client.scatter(arr, hash=False)

    def get(self, handle: Any) -> np.ndarray:
        """``future.result()``: the array travels back from the worker."""
        result: np.ndarray = handle.result()
        return result

    def sum_ref(self, handle: Any) -> float:
        """``submit(array_sum, future)``: runs where the scattered array lives, no transfer."""
        return float(self._client.submit(tasks.array_sum, handle, pure=False).result())

    def sum_value(self, arr: np.ndarray) -> float:
        """``submit(array_sum, arr)``: the array is pickled into the task sent to a worker."""
        return float(self._client.submit(tasks.array_sum, arr, pure=False).result())

    def chain(self, length: int) -> Any:
        """``future = submit(add_one, future)`` ``length`` times, then ``result()`` of the last."""
        value: Any = 0
        for _ in range(length):
            value = self._client.submit(tasks.add_one, value, pure=False)
        return value.result()

    def map_tasks(self, fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
        """``gather([submit(f, *a, pure=False) for a in args])``."""
        return list(self._client.gather([self._client.submit(fn, *a, pure=False) for a in args]))

    def create_actors(self, n: int) -> list[Any]:
        """``submit(Counter, actor=True)`` each, then ``result()``: dask needs the proxy to call."""
        futures = [self._client.submit(tasks.Counter, actor=True, pure=False) for _ in range(n)]
        return [(future, future.result()) for future in futures]

    def actor_call(self, actor: Any) -> Any:
        """``proxy.incr().result()``."""
        return actor[1].incr().result()

    def actor_submit(self, actor: Any) -> Any:
        """``proxy.incr()``: an ActorFuture."""
        return actor[1].incr()

    def actor_get_all(self, handles: list[Any]) -> list[Any]:
        """``[f.result() for f in actor_futures]`` (gather does not take actor futures)."""
        return [handle.result() for handle in handles]

    def kill_actor(self, actor: Any) -> None:
        """``client.cancel(future)``: the scheduler forgets the actor and its worker drops it."""
        self._client.cancel([actor[0]])

    def shutdown(self) -> None:
        """Close the client, then the cluster."""
        self._client.close()
        self._cluster.close()


class MultiprocessingBackend(Backend):
    """A plain ``multiprocessing.Pool``: the floor a local runtime is measured against."""

    name = "mp"
    in_stdlib = True
    supports_actors = False
    note = (
        "mp: multiprocessing.Pool(2), apply for sync, apply_async for async; it has no object "
        "store, so put = copy into a new multiprocessing.shared_memory segment and get = copy "
        "out of it (not zero-copy); ref sum = a task that attaches to that segment by name; "
        "chain = sequential pool.apply calls, each result fed back through the driver; no "
        "actors (n/a)."
    )

    def __init__(self) -> None:
        super().__init__()
        self._pool: multiprocessing.pool.Pool | None = None

    def load(self) -> None:
        """Nothing to import beyond the standard library."""

    @property
    def pool(self) -> multiprocessing.pool.Pool:
        """The running pool; a clear error if a workload runs before ``start``."""
        if self._pool is None:
            raise RuntimeError("the multiprocessing pool is not started; call start() first")
        return self._pool

    def start(self, num_cpus: int) -> None:
        """``Pool(num_cpus)`` with the platform's default start method."""
        self.num_cpus = num_cpus
        self._pool = multiprocessing.Pool(num_cpus)

    def noop_sync(self) -> None:
        """``pool.apply(f)``."""
        self.pool.apply(tasks.noop)

    def run_concurrently(self, seconds: float, count: int) -> list[int]:
        """``apply_async`` ``count`` sleep tasks, then get them."""
        results = [self.pool.apply_async(tasks.sleep_pid, (seconds,)) for _ in range(count)]
        return [r.get() for r in results]

    def submit_many(self, n: int) -> Any:
        """``[pool.apply_async(f) for _ in range(n)]``."""
        return [self.pool.apply_async(tasks.noop) for _ in range(n)]

    def get_all(self, handles: Any) -> list[Any]:
        """``[r.get() for r in results]``."""
        return [r.get() for r in handles]

    def put(self, arr: np.ndarray) -> Any:
        """Copy ``arr`` into a fresh shared-memory segment another process could attach to."""
        segment = shared_memory.SharedMemory(create=True, size=max(arr.nbytes, 1))
        view: np.ndarray = np.ndarray(arr.shape, dtype=arr.dtype, buffer=segment.buf)
        view[...] = arr
        del view  # a live view would stop the segment from closing
        return segment, arr.shape, arr.dtype

    def get(self, handle: Any) -> np.ndarray:
        """Copy the array out of its segment, so the result outlives the segment."""
        segment, shape, dtype = handle
        view: np.ndarray = np.ndarray(shape, dtype=dtype, buffer=segment.buf)
        result: np.ndarray = view.copy()
        del view
        return result

    def free(self, handle: Any) -> None:
        """Close and unlink the segment: shared memory is not reference counted across processes."""
        segment = handle[0]
        segment.close()
        segment.unlink()

    def sum_ref(self, handle: Any) -> float:
        """``apply(shared_array_sum, (name, shape, dtype))``: the worker maps the segment."""
        segment, shape, dtype = handle
        args = (segment.name, tuple(shape), np.dtype(dtype).str)
        return float(self.pool.apply(tasks.shared_array_sum, args))

    def sum_value(self, arr: np.ndarray) -> float:
        """``pool.apply(array_sum, (arr,))``: pickled through the pool's pipe."""
        return float(self.pool.apply(tasks.array_sum, (arr,)))

    def chain(self, length: int) -> Any:
        """``value = pool.apply(add_one, (value,))`` ``length`` times: no refs, via the driver."""
        value = 0
        for _ in range(length):
            value = self.pool.apply(tasks.add_one, (value,))
        return value

    def map_tasks(self, fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
        """``[r.get() for r in [apply_async(f, a) for a in args]]``."""
        results = [self.pool.apply_async(fn, a) for a in args]
        return [r.get() for r in results]

    def shutdown(self) -> None:
        """``pool.close(); pool.join()``: a graceful stop, like the other backends' shutdown."""
        self.pool.close()
        self.pool.join()
        self._pool = None


BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in (RayJupyterBackend, RayBackend, DaskBackend, MultiprocessingBackend)
}
PEERS = ("ray", "dask", "mp")
# What must import for a peer to run.
PEER_MODULES = {"ray": "ray", "dask": "distributed", "mp": "multiprocessing"}


def helper_pids() -> set[int]:
    """PIDs of helpers that live as long as the process, not the runtime (mp's resource tracker)."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    pid = getattr(tracker, "_pid", None)
    return {pid} if isinstance(pid, int) and pid != os.getpid() else set()
