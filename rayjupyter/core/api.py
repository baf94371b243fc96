"""The Ray core API for tasks and objects: init, shutdown, remote, get, put, wait and the
cluster queries, over one process-wide connection (``driver.py`` owns its life)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, overload

from rayjupyter.core import driver, queries, runtime_context
from rayjupyter.core import protocol as P
from rayjupyter.core.actor import ActorClass
from rayjupyter.core.client import Client
from rayjupyter.core.driver import ClusterContext, init, is_initialized, shutdown
from rayjupyter.core.exceptions import GetTimeoutError
from rayjupyter.core.generators import ObjectRefGenerator
from rayjupyter.core.object_ref import ObjectRef
from rayjupyter.core.remote_function import RemoteFunction, put_serialized
from rayjupyter.core.serialization import serialize

# the connection's life, kept in driver.py, reached here too (api._state, api._client, ...)
ADDRESS_ENV = driver.ADDRESS_ENV
ADDRESS_SCHEME = driver.ADDRESS_SCHEME
EXIT_WAIT_ENV = driver.EXIT_WAIT_ENV
_state = driver._state
_lock = driver._lock
_client = driver._client
_parse_address = driver._parse_address
_set_worker_client = driver._set_worker_client


# ------------------------------------------------------------------ remote


@overload
def remote(function_or_class: Callable[..., Any], /) -> Any: ...
@overload
def remote(**options: Any) -> Callable[[Callable[..., Any]], Any]: ...
def remote(*args: Any, **options: Any) -> Any:
    """Turn a function into a remote function: ``@rj.remote`` or ``@rj.remote(num_cpus=2)``."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args or not options:  # ``@rj.remote()``, as Ray, is refused
        raise TypeError(
            "The @rj.remote decorator must be applied either with no arguments and no "
            "parentheses, for example '@rj.remote', or with options, for example "
            "'@rj.remote(num_returns=2, resources={\"CustomResource\": 1})'."
        )
    return lambda target: _make_remote(target, options)


def _make_remote(target: Any, options: dict[str, Any]) -> RemoteFunction | ActorClass:
    if inspect.isclass(target):
        return ActorClass(target, options)
    if not callable(target):
        raise TypeError(f"@rj.remote expects a function, got {type(target).__name__}")
    return RemoteFunction(target, options)


# ------------------------------------------------------------------ objects


def put(value: Any) -> ObjectRef:
    """Store a value in the cluster's object store once; pass the ref to many tasks."""
    if isinstance(value, ObjectRef):
        raise TypeError(
            "Calling 'put' on an ObjectRef is not allowed. If you really want to do this, "
            "wrap it in a list: rj.put([ref])."
        )
    client = _client()
    return put_serialized(client, serialize(value, what="the value passed to put()"))


#: called around every blocking get/wait with (client, object ids, how many must be ready);
#: returns a context manager. The notebook side sets it to show a progress bar. A caller
#: that keeps appending to the id list while it blocks (the joblib backend) passes 0.
wait_observer: Callable[[Client, list[bytes], int], AbstractContextManager[Any]] | None = None


@contextmanager
def _waiting(client: Client, object_ids: list[bytes], needed: int) -> Iterator[None]:
    """Show progress while blocked, and on Ctrl-C (a kernel interrupt) cancel what we wait on.

    Interrupting a notebook that waits on a cluster should stop the cluster's work too, not
    leave it running unseen (a long-standing complaint about Ray and Dask in notebooks).
    """
    observer = wait_observer(client, object_ids, needed) if wait_observer else nullcontext()
    try:
        with observer:
            yield
    except KeyboardInterrupt:
        _cancel_waited(client, object_ids)
        raise


def _cancel_waited(client: Client, object_ids: list[bytes]) -> None:
    """Ctrl-C in a wait: cancel the tasks making what has not come yet."""
    # only a driver's interrupt is a person stopping the work: in a worker it is rj.cancel
    # of the waiting task itself, which (as in Ray) leaves what that task waits on running
    if client.kind == "driver":
        pending = [oid for oid in object_ids if oid not in client.objects]
        client.send([P.CancelTask(oid, False, True) for oid in pending])


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be None or >= 0, got {timeout!r}")


def get(object_refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """The values behind refs, waiting for them; a task's error is raised here."""
    _check_timeout(timeout)
    single = isinstance(object_refs, ObjectRef)
    if single:  # (the common case: nothing else to check)
        object_ids = [object_refs.binary()]  # type: ignore[union-attr]
    else:
        if isinstance(object_refs, ObjectRefGenerator):
            raise TypeError(
                "rj.get() does not take an ObjectRefGenerator (as in Ray): iterate it, or get "
                "gen.completed() to wait for the task to end."
            )
        if not isinstance(object_refs, list | tuple) or not all(
            isinstance(r, ObjectRef) for r in object_refs
        ):
            raise ValueError(
                f"'object_refs' must either be an ObjectRef or a list of ObjectRefs, "
                f"got {type(object_refs).__name__}."
            )
        object_ids = [ref.binary() for ref in object_refs]
    client = _client()
    if wait_observer is None:  # (as _waiting does, without a generator per get)
        try:
            infos = client.get_infos(object_ids, timeout)
        except KeyboardInterrupt:
            _cancel_waited(client, object_ids)
            raise
    else:
        with _waiting(client, object_ids, len(object_ids)):
            infos = client.get_infos(object_ids, timeout)
    values = [client.materialize(info, timeout) for info in infos]
    return values[0] if single else values


def wait(
    object_refs: Sequence[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Split refs into (ready, not_ready), both in input order, once num_returns are ready."""
    if isinstance(object_refs, ObjectRef) or not isinstance(object_refs, list | tuple):
        raise TypeError(
            f"wait() expected a list of ObjectRef, got {type(object_refs).__name__}; "
            f"wrap a single ref in a list."
        )
    if any(isinstance(r, ObjectRefGenerator) for r in object_refs):
        return _wait_with_generators(object_refs, num_returns, timeout)
    if not all(isinstance(r, ObjectRef) for r in object_refs):
        raise TypeError("wait() expected a list of ObjectRef; some items are not ObjectRefs.")
    if len(set(object_refs)) != len(object_refs):
        raise ValueError("Wait requires a list of unique object refs.")
    if not object_refs:  # nothing to wait for: Ray answers ([], [])
        return [], []
    if num_returns <= 0 or num_returns > len(object_refs):
        raise ValueError(
            f"num_returns must be between 1 and the number of refs ({len(object_refs)}), "
            f"got {num_returns}."
        )
    _check_timeout(timeout)
    client = _client()
    object_ids = [ref.binary() for ref in object_refs]
    with _waiting(client, object_ids, num_returns):
        client.wait_objects(object_ids, num_returns, timeout)
    ready: list[ObjectRef] = []
    not_ready: list[ObjectRef] = []
    for ref in object_refs:
        if len(ready) < num_returns and ref.binary() in client.objects:
            ready.append(ref)
        else:
            not_ready.append(ref)
    return ready, not_ready


def _wait_with_generators(
    items: Sequence[Any], num_returns: int, timeout: float | None
) -> tuple[list[Any], list[Any]]:
    """wait() over refs and streaming generators: a generator is ready when ``next`` on it
    would not block (its next item is here, or it has ended), as in Ray."""
    if not all(isinstance(r, ObjectRef | ObjectRefGenerator) for r in items):
        raise TypeError("wait() expected ObjectRefs and ObjectRefGenerators only.")
    if len({id(r) if isinstance(r, ObjectRefGenerator) else r for r in items}) != len(items):
        raise ValueError("Wait requires a list of unique object refs.")
    if num_returns <= 0 or num_returns > len(items):
        raise ValueError(
            f"num_returns must be between 1 and the number of refs ({len(items)}), "
            f"got {num_returns}."
        )
    _check_timeout(timeout)
    client = _client()
    objects = client.objects

    def is_ready(item: Any) -> bool:
        if isinstance(item, ObjectRefGenerator):
            return item._ready()
        return item.binary() in objects

    watched: list[bytes] = []
    for item in items:
        watched.extend(
            item._watch_ids() if isinstance(item, ObjectRefGenerator) else [item.binary()]
        )
    with _waiting(client, watched, 0):
        client.wait_until(lambda: sum(map(is_ready, items)) >= num_returns, watched, timeout)
    ready: list[Any] = []
    not_ready: list[Any] = []
    for item in items:
        if len(ready) < num_returns and is_ready(item):
            ready.append(item)
        else:
            not_ready.append(item)
    return ready, not_ready


def cancel(
    object_ref: ObjectRef | ObjectRefGenerator, *, force: bool = False, recursive: bool = True
) -> None:
    """Cancel the task behind a ref: a queued one never runs; a running one gets
    KeyboardInterrupt (``force=True`` kills its worker); ``get`` then raises
    TaskCancelledError. ``recursive`` cancels the tasks it submitted too. A streaming
    generator stops; its next item is then the TaskCancelledError."""
    if isinstance(object_ref, ObjectRefGenerator):
        object_ref = object_ref._completed
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"rj.cancel() expects an ObjectRef, got {type(object_ref).__name__}")
    _client().send([P.CancelTask(object_ref.binary(), force, recursive)])


def get_runtime_context() -> runtime_context.RuntimeContext:
    """Ids of the current job, node, worker, task and actor."""
    client = _client()
    if not runtime_context.current.node_id:  # a driver: its own ids
        runtime_context.current.node_id = client.node_id
        runtime_context.current.worker_id = client.client_id
    if not runtime_context.current.job_id and client.kind == "driver":
        runtime_context.current.job_id = client.client_id
    return runtime_context.RuntimeContext()


def timeline(filename: str | None = None) -> list[dict[str, Any]] | None:
    """A Chrome trace (chrome://tracing, Perfetto) of the tasks the head remembers.

    Written to ``filename`` as JSON when given; returned as a list of events otherwise.
    """
    import json

    from rayjupyter.core.read_models import TaskRow
    from rayjupyter.core.task_events import chrome_trace

    rows = queries.list_state(_client(), "tasks", limit=10**9)
    events = chrome_trace([row for row in rows if isinstance(row, TaskRow)])
    if filename is None:
        return events
    with open(filename, "w") as out:
        json.dump(events, out)
    return None


# ------------------------------------------------------------------ cluster


def cluster_resources() -> dict[str, float]:
    """Everything the live nodes have."""
    return queries.cluster_resources(_client())


def available_resources() -> dict[str, float]:
    """What is free right now; fully used resources are left out, as in Ray."""
    return queries.available_resources(_client())


def nodes() -> list[dict[str, Any]]:
    """One row per node, shaped like ``ray.nodes()``."""
    from rayjupyter.core.read_models import as_dict  # (its dataclasses: imported when asked)

    return [as_dict(row) for row in queries.nodes(_client())]


__all__ = [
    "ClusterContext",
    "GetTimeoutError",
    "available_resources",
    "cancel",
    "cluster_resources",
    "get",
    "get_runtime_context",
    "init",
    "is_initialized",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "timeline",
    "wait",
]
