"""The JSON the server extension sends and accepts, as TypedDicts.

These are the one definition of the REST API's shapes: ``python -m
rayjupyter.server.typescript`` turns them into ``labextension/src/models.ts`` and a test
fails when the committed file differs. Numbers are raw (bytes, counts, unix seconds), never
preformatted. A field's trailing comment becomes its doc comment in TypeScript.
"""

from __future__ import annotations

from typing import Literal, TypedDict

#: how the server knows a cluster: started from the panel, by a kernel of this server, by
#: another process on this machine (a script, another Jupyter, ``rj.init``), or added by address
ClusterOrigin = Literal["panel", "kernel", "process", "remote"]

#: what DELETE clusters/<id> does: stop a cluster this server started, forget a remote one,
#: or nothing (its owner stops it; stop_note says how)
StopAction = Literal["stop", "forget", "none"]

#: the runtime a cluster runs: rayjupyter's own, or Ray (read through Ray's dashboard HTTP API)
ClusterEngine = Literal["rayjupyter", "ray"]

#: how a kernel's cluster was found: the kernel started it, or is connected to it
KernelMatch = Literal["owner", "connected"]


class ClusterNode(TypedDict):
    """One node of a cluster, as the head's node table has it."""

    node_id: str  # hex
    address: str  # host:port of the node daemon (Ray: the node's IP)
    alive: bool
    resources: dict[str, float]  # total resources of the node: CPU, GPU, custom ones
    started: float  # unix seconds


class ClusterStatus(TypedDict):
    """A live snapshot of a cluster, read from its head."""

    nodes: list[ClusterNode]
    nodes_alive: int
    cpu_total: float  # CPU slots of the live nodes
    cpu_used: float  # CPU slots held by running tasks and actors
    gpu_total: float
    gpu_used: float
    cpu_percent: float  # machine CPU use of the head's machine (Ray: mean of live nodes), 0..100
    memory_used: float  # bytes in use on the head's machine (Ray: sum over live nodes)
    memory_total: float  # bytes of memory of the head's machine (Ray: sum over live nodes)
    store_used: int  # bytes of the object store in shared memory
    store_capacity: int  # bytes the object store may use
    tasks: dict[str, int]  # live tasks by state (Ray's: PENDING_ARGS_AVAIL, ..., RUNNING)
    tasks_running: int
    tasks_pending: int  # waiting for their arguments or for a worker
    actors: dict[str, int]  # actors by state
    workers: int  # pooled worker processes
    drivers: int  # connected drivers (kernels, scripts)
    time: float  # unix seconds when the head answered


class ClusterInfo(TypedDict):
    """A cluster this Jupyter server knows, with its status when it could be read."""

    id: str  # the cluster's session name; used in URLs
    engine: ClusterEngine
    address: str  # host:port (Ray: the dashboard's http://HOST:PORT)
    connect_address: str | None  # rayjupyter://SECRET@HOST:PORT or ray://HOST:PORT; null: no code
    origin: ClusterOrigin
    local: bool  # runs on this machine
    owner_pid: int  # the process that started it and whose exit stops it; 0 if none
    kernel_id: str | None  # the kernel of this server that started it, if one did
    started: float | None  # unix seconds; null when unknown (remote clusters)
    stop_action: StopAction
    stop_note: str  # what DELETE does, or why it is refused and how to stop it
    dashboard_url: str  # the proxied dashboard's root, an absolute path on this server
    status: ClusterStatus | None  # null when the cluster did not answer
    error: str | None  # why status is null


class DashboardPage(TypedDict):
    """A page of the dashboard, at ``dashboard_url + path``."""

    path: str
    title: str


class ClusterList(TypedDict):
    """GET clusters: every cluster this server knows, and the pages of their dashboards."""

    clusters: list[ClusterInfo]
    dashboard_pages: list[DashboardPage]  # pages of rayjupyter's dashboard
    ray_dashboard_pages: list[DashboardPage]  # pages of Ray's dashboard (its own routes)


class StartClusterRequest(TypedDict, total=False):
    """POST clusters with num_cpus: start a local cluster owned by this server."""

    num_cpus: float  # CPUs of the new cluster; default: this machine's CPU count


class _AddClusterAddress(TypedDict):
    address: str  # rayjupyter://SECRET@HOST:PORT; Ray: ray://HOST:10001 or http://HOST:8265


class AddClusterRequest(_AddClusterAddress, total=False):
    """POST clusters with address: remember a running cluster by its address, one of ours
    (rayjupyter://SECRET@HOST:PORT) or Ray's (ray://HOST:10001, or http://HOST:8265)."""

    ray_client_address: str  # ray://HOST:PORT: a Ray Client server not on HOST:10001


class KernelCluster(TypedDict):
    """GET kernels/<id>/cluster: the cluster a kernel uses, for the status bar."""

    kernel_id: str
    pid: int | None  # the kernel's process; null when it is not a local process
    cluster: ClusterInfo | None  # null when the kernel uses no cluster
    match: KernelMatch | None  # how the cluster was found


class StopReply(TypedDict):
    """DELETE clusters/<id>: what was done."""

    message: str


class ErrorReply(TypedDict):
    """Every error body (any 4xx/5xx): one line that names the fix; never a traceback."""

    message: str
    reason: str | None  # the HTTP reason phrase
