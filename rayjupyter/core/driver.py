"""This process as a driver: ``init`` (which cluster, with which arguments), what it
returns (``ClusterContext``, Ray's context), ``shutdown`` and the exit that lets
fire-and-forget tasks' prints arrive first; the one process-wide connection they manage.

``rayjupyter.core.api`` re-exports every name here: it is the public face.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from rayjupyter.core import hooks, queries, runtime_context, worker_limit
from rayjupyter.core import runtime_env as runtime_env_module
from rayjupyter.core.client import Client
from rayjupyter.core.config import (
    ADDRESS_ENVS,
    JOB_RUNTIME_ENV_VAR,
    NODE_PROCESS_XOPTION,
    SECRET_ENV,
    NodeConfig,
    session_dir,
    worker_endpoint,
)
from rayjupyter.core.config import ADDRESS_SCHEME as ADDRESS_SCHEME  # (api re-exports it)
from rayjupyter.core.object_ref import reference_counter
from rayjupyter.core.runtime_env import RuntimeEnv

if TYPE_CHECKING:
    from rayjupyter.core.launcher import LocalCluster
    from rayjupyter.core.read_models import NodeStatus  # (the node's answer: not built here)

# This module is in every node and worker too (the API imports it), which never start or
# attach to a cluster: what only a driver's init uses (connect, init_options, launcher, and
# with them pathlib and subprocess) and only a notebook's repr (cluster_repr, html) is
# imported where used. A driver loads init's modules here, with the API, so that init does
# not wait for them; a node (started with ``-X rayjupyter_node``) and the workers it forks
# skip them: ~5 ms of the node's start that no process of the cluster needs.
if NODE_PROCESS_XOPTION not in sys._xoptions:
    from rayjupyter.core import connect, init_options, launcher  # noqa: F401

ADDRESS_ENV = ADDRESS_ENVS[0]

_lock = threading.RLock()
_state: dict[str, Any] = {"client": None, "cluster": None, "context": None, "dashboard": None}
atexit.register(lambda: _at_exit())  # (a lambda: tests may replace _at_exit)


class ClusterContext(Mapping[str, Any]):
    """What ``init`` returns: where the cluster is, and how another process can attach.

    As Ray's ``RayContext``: ``ctx.address_info``, ``ctx["address"]`` (a read-only mapping
    over ``address_info``), ``ctx.dashboard_url``, ``ctx.disconnect()``, and a context
    manager that shuts down on exit.
    """

    def __init__(self, address: str, secret: str, node_id: bytes, session: str, local: bool):
        host = address.rpartition(":")[0].strip("[]")
        self.address_info: dict[str, Any] = {
            "address": address,
            "gcs_address": address,  # Ray's name for the head's address
            "node_ip_address": host,
            "raylet_ip_address": host,
            "node_id": node_id.hex(),
            "session": session,
            "session_dir": session_dir(session) if local else None,
            "webui_url": None,
        }
        self.local = local
        self._secret = secret
        self.python_version = ".".join(map(str, sys.version_info[:3]))
        self.ray_version = _package_version()

    @property
    def dashboard_url(self) -> str | None:
        return self.address_info["webui_url"]  # type: ignore[no-any-return]

    @dashboard_url.setter
    def dashboard_url(self, url: str | None) -> None:
        self.address_info["webui_url"] = url

    def __getitem__(self, key: str) -> Any:
        return self.address_info[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.address_info)

    def __len__(self) -> int:
        return len(self.address_info)

    __hash__ = object.__hash__  # a live connection, not a value

    def __eq__(self, other: object) -> bool:
        return self is other

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
        from rayjupyter.core import cluster_repr

        return cluster_repr.summary_html(
            self.address, self.local, self._live_status(), self.dashboard_url
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """The same summary as text, for IPython in a terminal."""
        from rayjupyter.core import cluster_repr

        printer.text(
            cluster_repr.summary_text(
                self.address, self.local, self._live_status(), self.dashboard_url
            )
        )


def _package_version() -> str:
    from rayjupyter import __version__

    return __version__


def _parse_address(address: str) -> tuple[str, str]:
    """(host:port, secret) from "rayjupyter://SECRET@HOST:PORT" or "HOST:PORT" + env secret."""
    if address.startswith(ADDRESS_SCHEME):
        secret, _, hostport = address[len(ADDRESS_SCHEME) :].rpartition("@")
    elif "://" in address:  # ray://HOST:10001 (Ray Client), http://... (a dashboard)
        raise ValueError(
            f"Cannot connect to {address!r}: give the cluster's HOST:PORT (what `rayjupyter "
            f"start --head` printed), or rayjupyter://SECRET@HOST:PORT; there is no Ray "
            f"Client (ray://) server here."
        )
    else:
        from rayjupyter.core import connect

        hostport, secret = address, connect.find_secret(address)
    if not secret:
        raise ValueError(
            f"No secret for the cluster at {address!r}: pass the address that init() printed "
            f"(rayjupyter://SECRET@HOST:PORT) or set {SECRET_ENV}; a cluster on this machine "
            f"(started here, or added in the Jupyter panel) needs none."
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
    labels: dict[str, str] | None = None,
    object_store_memory: int | None = None,
    local_mode: bool = False,
    ignore_reinit_error: bool = False,
    include_dashboard: bool | None = None,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int | None = None,
    job_config: Any = None,
    configure_logging: bool = True,
    logging_level: int | str = "info",
    logging_format: str | None = None,
    logging_config: Any = None,
    log_to_driver: bool | None = None,
    namespace: str | None = None,
    runtime_env: dict[str, Any] | None = None,
    enable_resource_isolation: bool = False,
    system_reserved_cpu: float | None = None,
    system_reserved_memory: int | None = None,
    **kwargs: Any,
) -> ClusterContext:
    """Attach to a cluster, or start a local one owned by this process, as Ray's ``init``.

    The address: ``address=`` (``rayjupyter://SECRET@HOST:PORT``, or ``HOST:PORT`` whose
    secret this user's files on this machine know), else for ``None``/``"auto"``
    ``RAYJUPYTER_ADDRESS`` or ``RAY_ADDRESS``, else a head started here with ``rayjupyter
    start --head``; with none, ``None`` starts a local cluster (``"auto"`` raises
    ConnectionError, ``"local"`` always starts one). Every argument of Ray's ``init`` is
    taken: honoured, or refused with the reason (``init_options.REFUSED``).
    ``include_dashboard=True`` starts a web dashboard owned by this process (on
    ``dashboard_host``, loopback by default, and ``dashboard_port``, any free one by
    default); its URL, with its token, is ``context.dashboard_url``.
    """
    for name, value in (
        ("labels", labels),
        ("logging_config", logging_config),
        ("enable_resource_isolation", enable_resource_isolation),
        ("system_reserved_cpu", system_reserved_cpu),
        ("system_reserved_memory", system_reserved_memory),
    ):
        kwargs.setdefault(name, value)
    from rayjupyter.core import connect, init_options

    with _lock:
        if _state["client"] is not None:
            if ignore_reinit_error:
                return _state["context"]  # type: ignore[no-any-return]
            raise RuntimeError(
                "Maybe you called rj.init twice by accident? This process is already connected; "
                "call rj.shutdown() first, or pass ignore_reinit_error=True."
            )
        target = connect.resolve(address)
        init_options.check_extra(kwargs, attaching=target is not None)
        job = init_options.job_settings(job_config)
        if local_mode:
            init_options.warn_local_mode()
        if configure_logging:
            init_options.configure_logging(logging_level, logging_format)
        namespace = namespace or job.namespace
        env = runtime_env if runtime_env is not None else job.runtime_env
        resolved = None
        if env is not None:
            # checked and packed before anything starts: a bad env costs no cluster
            spec = runtime_env_module.validate("runtime_env", env)
            resolved = runtime_env_module.resolve(spec or {})
        dashboard = {
            "include_dashboard": include_dashboard,
            "dashboard_host": dashboard_host,
            "dashboard_port": dashboard_port,
        }
        memory = kwargs.get("_memory")  # Ray's: the node's "memory" resource, in bytes
        if target is not None:
            if (
                num_cpus is not None
                or num_gpus is not None
                or resources
                or object_store_memory
                or memory
            ):
                raise ValueError(
                    "When connecting to an existing cluster, num_cpus, num_gpus, resources, "
                    "object_store_memory and _memory must not be given: they are set where it "
                    "was started."
                )
            hostport, secret = _parse_address(target)
            client = Client(hostport, secret, kind="driver", namespace=_namespace(namespace))
            context = ClusterContext(hostport, secret, client.node_id, client.session, False)
        else:
            client, cluster = _start_local(
                num_cpus, num_gpus, resources, object_store_memory, namespace, memory
            )
            _state["cluster"] = cluster
            context = ClusterContext(
                cluster.address, cluster.secret, client.node_id, client.session, True
            )
        if log_to_driver is False:
            client.log_to_driver = False  # workers' prints stay in the node's recent logs
        _state.update(client=client, context=context)
        _set_job_env(client, resolved)
        _maybe_start_dashboard(context, dashboard)
        return context


def _start_local(
    num_cpus: float | None,
    num_gpus: float | None,
    resources: dict[str, float] | None,
    object_store_memory: int | None,
    namespace: str | None = None,
    memory: int | None = None,
) -> tuple[Client, LocalCluster]:
    """A local cluster owned by this process (it dies with it), and our connection to it."""
    from rayjupyter.core.launcher import LocalCluster

    config = NodeConfig(
        num_cpus=float(num_cpus if num_cpus is not None else (os.cpu_count() or 1)),
        num_gpus=float(num_gpus or 0),
        resources=dict(resources or {}),
        object_store_memory=int(object_store_memory or 0),  # 0: the node sizes it
        memory=int(memory or 0),
        sys_path=[p or os.getcwd() for p in sys.path],
        owner_pid=os.getpid(),
        client_timeout_s=float(os.environ.get("RAYJUPYTER_CLIENT_TIMEOUT_S", "30")),
        max_workers=worker_limit.from_env(),
    )
    worker_limit.check(config.max_workers, config.num_cpus)
    for key, option in (("CPU", "num_cpus"), ("GPU", "num_gpus"), ("memory", "_memory")):
        if key in config.resources:
            raise ValueError(f"Use {option} instead of resources={{{key!r}: ...}}.")
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
    return client, cluster


def _set_job_env(client: Client, resolved: tuple[RuntimeEnv, dict[str, bytes]] | None) -> None:
    """init(runtime_env=...): upload it now; every task and actor of this job runs in it.
    Without one, a driver started by a submitted job takes the job's (registered already)."""
    if resolved is None:
        wire = os.environ.get(JOB_RUNTIME_ENV_VAR)
        if wire:
            import json

            client.runtime_env = RuntimeEnv.from_wire(json.loads(wire))
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


def _namespace(namespace: str | None) -> str:
    """As in Ray, a driver without a namespace gets an anonymous one of its own."""
    return namespace if namespace else f"anonymous-{os.urandom(6).hex()}"


#: how long a script's exit waits for its job's unfinished tasks, so what they print
#: reaches the terminal first (as in Ray): ``RAYJUPYTER_EXIT_WAIT_S``
EXIT_WAIT_ENV = "RAYJUPYTER_EXIT_WAIT_S"
EXIT_WAIT_S = 3.0


def _at_exit() -> None:
    """The interpreter is ending (a script's last line): let this driver's fire-and-forget
    tasks end and their prints arrive (a bounded wait), then shut down as Ray does."""
    client: Client | None = _state["client"]
    if client is None or client.kind != "driver" or client.pid != os.getpid():
        return  # (a forked child ending must not touch its parent's connection)
    # a kernel that ends was shut down or restarted on purpose: it waits for no task
    bound = 0.0 if "ipykernel" in sys.modules else float(os.environ.get(EXIT_WAIT_ENV, EXIT_WAIT_S))
    with contextlib.suppress(Exception):  # a dead cluster has nothing more to say
        _deliver_last_output(client, bound)
    shutdown(_exiting_interpreter=True)


def _deliver_last_output(client: Client, bound: float) -> None:
    """Wait up to ``bound`` seconds while tasks of this job have not ended, then once more
    for the node: a task's prints travel ahead of its end, and the node's answer comes
    after everything it forwarded before, so on return they are all printed here."""
    job = client.client_id.hex()
    unfinished = (("job_id", "=", job), ("state", "!=", "FINISHED"), ("state", "!=", "FAILED"))
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        left = deadline - time.monotonic()
        if not queries.list_state(client, "tasks", unfinished, limit=1, timeout=max(left, 0.1)):
            break
        time.sleep(min(0.02, max(left, 0)))
    queries.ping(client, timeout=1.0)


def shutdown(_exiting_interpreter: bool = False) -> None:
    """Disconnect; a local cluster this process started stops with it.

    What the job's tasks printed and the node has read arrives first. (Ray's argument
    ``_exiting_interpreter`` is taken: an exiting interpreter shuts down the same way.)
    """
    client_now: Client | None = _state["client"]
    if client_now is not None and client_now.kind == "driver":
        with contextlib.suppress(Exception):
            queries.ping(client_now, timeout=0.5)
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
