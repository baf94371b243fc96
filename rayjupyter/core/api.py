"""The Ray core API for tasks and objects: init, shutdown, remote, get, put, wait and the
cluster queries, over one process-wide connection."""

from __future__ import annotations

import inspect
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, overload

from rayjupyter.core import cluster_repr, hooks, queries, runtime_context, worker_limit
from rayjupyter.core import protocol as P
from rayjupyter.core import runtime_env as runtime_env_module
from rayjupyter.core.actor import ActorClass
from rayjupyter.core.client import Client
from rayjupyter.core.config import SECRET_ENV, NodeConfig, worker_endpoint
from rayjupyter.core.exceptions import GetTimeoutError
from rayjupyter.core.generators import ObjectRefGenerator
from rayjupyter.core.launcher import LocalCluster, default_object_store_memory
from rayjupyter.core.object_ref import ObjectRef, reference_counter
from rayjupyter.core.read_models import NodeStatus, TaskRow, as_dict
from rayjupyter.core.remote_function import RemoteFunction, put_serialized
from rayjupyter.core.runtime_env import RuntimeEnv
from rayjupyter.core.serialization import serialize

ADDRESS_ENV = "RAYJUPYTER_ADDRESS"
ADDRESS_SCHEME = "rayjupyter://"

_lock = threading.RLock()
_state: dict[str, Any] = {"client": None, "cluster": None, "context": None, "dashboard": None}


class ClusterContext:
    """What ``init`` returns: where the cluster is, and how another process can attach.

    Usable as a context manager that shuts down on exit, like Ray's ``RayContext``.
    """

    def __init__(self, address: str, secret: str, node_id: bytes, session: str, local: bool):
        self.address_info = {
            "address": address,
            "node_id": node_id.hex(),
            "session": session,
            "webui_url": "",  # Ray's key: the dashboard's URL once one is started
        }
        self.local = local
        self._secret = secret
        self.dashboard_url: str | None = None

    @property
    def address(self) -> str:
        return str(self.address_info["address"])

    @property
    def connect_address(self) -> str:
        """An address with the secret in it: ``rj.init(address=...)`` in another process."""
        return f"{ADDRESS_SCHEME}{self._secret}@{self.address}"

    def disconnect(self) -> None:
        shutdown()

    def __enter__(self) -> ClusterContext:
        return self

    def __exit__(self, *exc: object) -> None:
        shutdown()

    def __repr__(self) -> str:
        kind = "local cluster" if self.local else "cluster"
        return f"ClusterContext({kind} at {self.address})"

    def _live_status(self) -> NodeStatus | None:
        """The node's status snapshot for the reprs; None once this context is disconnected."""
        client: Client | None = _state["client"]
        if client is None or _state["context"] is not self:
            return None
        try:
            return queries.status(client, timeout=5.0)
        except Exception:  # a repr must not raise: show the card without live figures
            return None

    def _repr_html_(self) -> str:
        """The summary card a notebook shows (JupyterLab-themed HTML)."""
        return cluster_repr.summary_html(
            self.address, self.local, self._live_status(), self.dashboard_url
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """The same summary as text, for IPython in a terminal."""
        printer.text(
            cluster_repr.summary_text(
                self.address, self.local, self._live_status(), self.dashboard_url
            )
        )


def _parse_address(address: str) -> tuple[str, str]:
    """(host:port, secret) from "rayjupyter://SECRET@HOST:PORT" or "HOST:PORT" + env secret."""
    if address.startswith(ADDRESS_SCHEME):
        secret, _, hostport = address[len(ADDRESS_SCHEME) :].rpartition("@")
    else:
        hostport, secret = address, os.environ.get(SECRET_ENV, "")
    if not secret:
        raise ValueError(
            f"No secret for the cluster at {address!r}: pass the address that init() printed "
            f"(rayjupyter://SECRET@HOST:PORT) or set {SECRET_ENV}."
        )
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Bad cluster address {address!r}: expected HOST:PORT")
    return hostport, secret


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    ignore_reinit_error: bool = False,
    namespace: str | None = None,
    **kwargs: Any,
) -> ClusterContext:
    """Start a local cluster owned by this process, or attach to one at ``address``.

    ``include_dashboard=True`` also starts a web dashboard owned by this process (on
    ``dashboard_host``, loopback by default, and ``dashboard_port``, any free one by
    default); its URL, with its token, is ``context.dashboard_url``.
    """
    accepted = {"log_to_driver", "include_dashboard", "dashboard_host", "dashboard_port"}
    unknown = set(kwargs) - accepted - {"runtime_env"}
    if unknown:
        raise TypeError(f"init() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    with _lock:
        if _state["client"] is not None:
            if ignore_reinit_error:
                return _state["context"]  # type: ignore[no-any-return]
            raise RuntimeError(
                "Maybe you called rj.init twice by accident? This process is already connected; "
                "call rj.shutdown() first, or pass ignore_reinit_error=True."
            )
        if kwargs.get("runtime_env") is not None:
            # checked and packed before anything starts: a bad env costs no cluster
            spec = runtime_env_module.validate("runtime_env", kwargs["runtime_env"])
            kwargs["runtime_env"] = runtime_env_module.resolve(spec or {})
        address = address or os.environ.get(ADDRESS_ENV) or None
        if address not in (None, "local"):
            assert address is not None
            if num_cpus is not None or num_gpus is not None or resources or object_store_memory:
                raise ValueError(
                    "When connecting to an existing cluster, num_cpus, num_gpus, resources and "
                    "object_store_memory must not be given: they are set where it was started."
                )
            hostport, secret = _parse_address(address)
            client = Client(hostport, secret, kind="driver", namespace=_namespace(namespace))
            context = ClusterContext(hostport, secret, client.node_id, client.session, False)
            _state.update(client=client, cluster=None, context=context)
            _set_job_env(client, kwargs.get("runtime_env"))
            _maybe_start_dashboard(context, kwargs)
            return context
        config = NodeConfig(
            num_cpus=float(num_cpus if num_cpus is not None else (os.cpu_count() or 1)),
            num_gpus=float(num_gpus or 0),
            resources=dict(resources or {}),
            object_store_memory=int(object_store_memory or default_object_store_memory()),
            sys_path=[p or os.getcwd() for p in sys.path],
            owner_pid=os.getpid(),
            client_timeout_s=float(os.environ.get("RAYJUPYTER_CLIENT_TIMEOUT_S", "30")),
            max_workers=worker_limit.from_env(),
        )
        worker_limit.check(config.max_workers, config.num_cpus)
        for key in ("CPU", "GPU"):
            if key in config.resources:
                raise ValueError(f"Use num_cpus/num_gpus instead of resources={{{key!r}: ...}}.")
        cluster = LocalCluster(config)
        try:
            client = Client(
                worker_endpoint(cluster.session),
                cluster.secret,
                kind="driver",
                client_id=cluster.driver_client_id,
                liveness=cluster.exit_reason,
                namespace=_namespace(namespace),
                channel_fd=cluster.take_driver_channel(),
            )
        except BaseException:
            cluster.stop()
            raise
        context = ClusterContext(
            cluster.address, cluster.secret, client.node_id, client.session, True
        )
        _state.update(client=client, cluster=cluster, context=context)
        _set_job_env(client, kwargs.get("runtime_env"))
        _maybe_start_dashboard(context, kwargs)
        return context


def _set_job_env(client: Client, resolved: tuple[RuntimeEnv, dict[str, bytes]] | None) -> None:
    """init(runtime_env=...): upload it now; every task and actor of this job runs in it."""
    if resolved is None:
        return
    env, packages = resolved
    try:
        runtime_env_module.register(client, env, packages)
    except BaseException:
        shutdown()
        raise
    client.runtime_env = None if env.empty else env


def _maybe_start_dashboard(context: ClusterContext, kwargs: dict[str, Any]) -> None:
    """``include_dashboard=True``: a dashboard process owned by this driver (off by default,
    unlike Ray: a cluster nobody looks at pays nothing), started through ``hooks``: core
    never imports the dashboard."""
    if not kwargs.get("include_dashboard"):
        return
    try:
        dashboard = hooks.start_dashboard(
            context.connect_address,
            host=str(kwargs.get("dashboard_host") or "127.0.0.1"),
            port=int(kwargs.get("dashboard_port") or 0),
        )
    except BaseException:
        shutdown()
        raise
    _state["dashboard"] = dashboard
    context.dashboard_url = dashboard.page_url()
    context.address_info["webui_url"] = context.dashboard_url


def _namespace(namespace: str | None) -> str:
    """As in Ray, a driver without a namespace gets an anonymous one of its own."""
    return namespace if namespace else f"anonymous-{os.urandom(6).hex()}"


def shutdown() -> None:
    """Disconnect; a local cluster this process started stops with it."""
    with _lock:
        client: Client | None = _state["client"]
        cluster: LocalCluster | None = _state["cluster"]
        dashboard = _state.get("dashboard")
        _state.update(client=None, cluster=None, context=None, dashboard=None)
        if dashboard is not None:
            dashboard.stop()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.stop()
        reference_counter.reset()
        runtime_context.reset()
        runtime_env_module.clear_cache()


def is_initialized() -> bool:
    return _state["client"] is not None


def _client() -> Client:
    """The process's connection; like Ray, the first use without init starts a local cluster."""
    client: Client | None = _state["client"]
    if client is None:
        with _lock:
            if _state["client"] is None:
                init()
            client = _state["client"]
    assert client is not None
    return client


def _set_worker_client(client: Client) -> None:
    """A worker's connection, so tasks can call the API (nested tasks, get, put)."""
    _state.update(client=client, cluster=None, context=None)


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
        pending = [oid for oid in object_ids if oid not in client.objects]
        client.send([P.CancelTask(oid, False, True) for oid in pending])
        raise


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be None or >= 0, got {timeout!r}")


def get(object_refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """The values behind refs, waiting for them; a task's error is raised here."""
    _check_timeout(timeout)
    single = isinstance(object_refs, ObjectRef)
    if isinstance(object_refs, ObjectRefGenerator):
        raise TypeError(
            "rj.get() does not take an ObjectRefGenerator (as in Ray): iterate it, or get "
            "gen.completed() to wait for the task to end."
        )
    refs = [object_refs] if single else object_refs
    if not isinstance(refs, list | tuple) or not all(isinstance(r, ObjectRef) for r in refs):
        raise ValueError(
            f"'object_refs' must either be an ObjectRef or a list of ObjectRefs, "
            f"got {type(object_refs).__name__}."
        )
    client = _client()
    object_ids = [ref.binary() for ref in refs]  # type: ignore[union-attr]
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
