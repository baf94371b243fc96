"""Every message between processes, defined once, and the framing that carries them.

A zmq frame carries a pickled *list* of messages, so that a burst (a thousand submits, a
hundred ref-count changes) costs one send. Messages are NamedTuples: they pickle by class
reference and construct fast, which matters on the task hot path. Nothing here is
unpickled before the connection has authenticated (see ``auth.py``).

Sockets: a worker, and the driver that started a local cluster, have a socket pair to
the node (``channel.py``; the same batches, length-framed). Every other client has two
DEALER sockets to its node, ``tx`` (any thread sends, under a lock) and ``rx`` (read by the
client's IO thread). Their zmq routing ids are ``client_id + b"t"`` and ``client_id +
b"r"``, so the node knows both from the first frame and never needs a second handshake.
"""

# No ``from __future__ import annotations`` in the protocol modules: NamedTuple makes each
# string annotation a ForwardRef, compiled, which doubles the cost of creating these classes
# (~3 ms of every node's start). Their annotations are evaluated at import instead.
import pickle
from typing import Any, NamedTuple

from rayjupyter.core import protocol_jobs, protocol_queries

PROTOCOL_VERSION = 10  # 5: jobs, 6: ExitActor, 7: PendingObjects, 8: UnmapKept (new kinds
# shift later indices), 9: bulk links between peers on one machine (peer_bulk.py),
# 10: direct links between a local driver and a worker (DirectLink; ExecuteTask.reply_to,
# TaskFinished.direct, SubmitTask.sent_to: a node of 9 would push every result a second time,
# run a call the driver sent its actor itself twice, and a worker of 9 would never answer)

#: how a finished value travels: (object_id, inline payload or None, size, is_error)
ObjectInfo = tuple[bytes, "bytes | None", int, bool]


# ---------------------------------------------------------------- client -> node


class Hello(NamedTuple):
    """First message on a client's rx socket; the node answers with ``Welcome``."""

    kind: str  # "driver", "worker", "observer" (dashboards) or "node" (a peer node)
    pid: int  # the client's process id, for log prefixes and crash reports
    version: int  # PROTOCOL_VERSION of the client
    namespace: str  # a driver's namespace for named actors ("" for workers)
    node_id: bytes = b""  # a peer node's id, so the node can drop it when it dies


class SubmitTask(NamedTuple):
    """A task call: ``f.remote(*args)``. Implies the submitter holds every return id."""

    task_id: bytes
    func_id: bytes  # stable per RemoteFunction; the node caches the blob under it
    func_blob: bytes | None  # cloudpickled function, sent once per connection
    name: str  # the task's display name (function name or options(name=))
    args_blob: bytes  # serialized (args, kwargs) with top-level refs replaced by markers
    deps: tuple[bytes, ...]  # object ids of the top-level ref arguments, in marker order
    nested: tuple[bytes, ...]  # object ids of refs inside containers, held for the task
    return_ids: tuple[bytes, ...]  # one per num_returns
    resources: dict[str, float]  # the demand: {"CPU": 1.0, ...}
    max_retries: int  # retries after a worker crash (-1: forever)
    retry_exceptions: bool | bytes  # True/False, or a pickled list of exception types
    actor_id: bytes  # b"" for a task; else the actor whose ``method`` to call
    method: str
    runtime_env: str = ""  # digest of a registered env (RegisterRuntimeEnv); "" for none
    generator: str = ""  # "streaming" or "dynamic" for a generator task (generators.py)
    backpressure: int = -1  # streaming: items the producer may run ahead (-1: no bound)
    strategy: str = ""  # scheduling strategy string (scheduling_strategies.resolve)
    max_calls: int = 0  # runs of the function a worker makes before it exits (0: no limit)
    # an actor call the submitter also sent to this worker of the actor on its direct link
    # (direct_calls.py): the node keeps the books but does not send it a second time
    sent_to: bytes = b""


class CreateActor(NamedTuple):
    """``Cls.remote(*args)``: start a process for an actor and run its ``__init__``."""

    actor_id: bytes
    class_blob: bytes  # the cloudpickled class
    class_name: str
    args_blob: bytes  # like SubmitTask's
    deps: tuple[bytes, ...]
    nested: tuple[bytes, ...]
    place_demand: dict[str, float]  # needed free to place it (1 CPU by default)
    run_demand: dict[str, float]  # held while it lives (0 CPU by default)
    options: dict[str, Any]  # name, namespace, lifetime, max_restarts, max_task_retries, ...
    request_id: int  # non-zero: answer with Reply (named actors: taken names, get_if_exists)


class ActorGone(NamedTuple):
    """From the node that hosts another node's actor: its process ended. The actor's home
    node decides whether it restarts (maybe elsewhere); sent before the calls in flight
    fail there, so that the home can retry them instead."""

    actor_id: bytes
    reason: str
    restartable: bool  # False after __init__ raised or exit_actor()


class AttemptLost(NamedTuple):
    """From the node that runs another node's task: this attempt is lost in a way the
    task's retries cover (its worker died, or it raised what ``retry_exceptions`` names).
    Its returns were not set there; the task's own node (which counts attempts, so a
    retry is counted once) retries or fails it (``NodeState.peer_attempt_lost``)."""

    task_id: bytes
    error: bytes  # the task's exception (pid 0); b"" when its worker died
    pid: int  # the worker that died (0: the task raised)
    cause: str  # how it died (a signal, an exit code)


class ActorHomes(NamedTuple):
    """From a peer node: the actors whose handles a task it sends us carries, and the
    node each lives on (its home), so calls made here go there."""

    homes: tuple[tuple[bytes, str], ...]  # (actor id, home node address)


class KillActor(NamedTuple):
    """``rj.kill(handle)``: stop the actor's process now."""

    actor_id: bytes
    no_restart: bool


class ActorStarted(NamedTuple):
    """An actor worker ran ``__init__``; ``error`` is a serialized error if it raised."""

    actor_id: bytes
    error: bytes | None
    label: str = ""  # the instance's own __repr__, if its class defines one (log prefix)


class ActorExiting(NamedTuple):
    """The actor called ``exit_actor()``: its process ends on purpose, no restart."""

    actor_id: bytes


class CancelTask(NamedTuple):
    """``rj.cancel(ref)``: stop the task that makes ``object_id``."""

    object_id: bytes
    force: bool  # kill the worker instead of raising KeyboardInterrupt in it
    recursive: bool  # cancel the tasks it submitted too


class PutObject(NamedTuple):
    """A value from ``rj.put``; implies the putter holds it."""

    object_id: bytes
    inline: bytes | None  # the serialized value, or None if written to shared memory
    size: int
    contained: tuple[bytes, ...]  # refs inside the value, held while it lives


class RefOps(NamedTuple):
    """Ordered reference-count changes: (True, id) on a local 0->1, (False, id) on 1->0."""

    ops: tuple[tuple[bool, bytes], ...]


class PinOps(NamedTuple):
    """Ordered pin changes: a process mapped (True) or released (False) a shared object."""

    ops: tuple[tuple[bool, bytes], ...]


class Subscribe(NamedTuple):
    """Ask for ``ObjectReady`` of objects this client did not submit (or lost track of)."""

    object_ids: tuple[bytes, ...]
    restore: bool  # the shared-memory file was gone: bring it back from the spill dir


class TaskFinished(NamedTuple):
    """A worker ran a task: its results, or the error for every return id."""

    task_id: bytes
    results: tuple[tuple[bytes, bytes | None, int, tuple[bytes, ...]], ...]
    # (object_id, inline or None, size, contained refs) per return value
    error: bytes | None  # a serialized RayTaskError when the task raised
    retryable: bool  # the error matches retry_exceptions
    # the results go to ExecuteTask.reply_to on its direct link too, right after this
    # message: the node does not push them to their owner (direct_links.py)
    direct: bool = False
    by_link: bool = False  # the task came on a direct link (ExecuteTask.by_link)
    # it printed nothing through Python's streams: the node need not read its pipes first
    quiet: bool = False


class WorkerBlocked(NamedTuple):
    """A worker waits in get/wait: the node may lend its CPU to other tasks."""

    blocked: bool
    # a get: the objects it cannot go on without (at most WAITING_FOR_MAX; else none): at
    # the worker limit the task making one of them may run inside the wait (nested_lending)
    waiting_for: tuple[bytes, ...] = ()


class Heartbeat(NamedTuple):
    """A driver with nothing to say is still alive (drivers that go silent are let go)."""


class Disconnect(NamedTuple):
    """A driver leaves (``shutdown``): release everything it holds now."""


class ProvideObjects(NamedTuple):
    """From a peer node, before it forwards a task here: the values the task will use.

    Each is (object_id, inline payload or None, size, is_error, holder): a value kept in
    shared memory is pulled from ``holder`` (host:port of the node that has it) when needed.
    The sending node holds each object here until it releases it with ``RefOps``.
    """

    objects: tuple[tuple[bytes, bytes | None, int, bool, str], ...]
    #: other peers that hold some of these values too, (object_id, their host:ports): a
    #: pull asks them at once (they hold it for the sender, which holds it for us)
    more_holders: tuple[tuple[bytes, tuple[str, ...]], ...] = ()


class PendingObjects(NamedTuple):
    """From a peer node, with a task it forwards here: objects the task's refs name that are
    not made yet; ``holder`` (host:port of that peer) sends ``ProvideObjects`` of each when
    it is, and until then a get here waits. Each is held here for the peer, as provided."""

    holder: str
    object_ids: tuple[bytes, ...]


class PullObject(NamedTuple):
    """A peer node asks for part of a value in this node's store (answered with ObjectChunk)."""

    object_id: bytes
    offset: int
    length: int


class RegisterNode(NamedTuple):
    """A node joining the cluster tells the head what it has (sent to the head only)."""

    node_id: bytes
    address: str  # host:port where peers and drivers reach the node
    resources: dict[str, float]
    session: str


class NodeHeartbeat(NamedTuple):
    """Every half second from each node to the head: it lives, and what it has free now."""

    node_id: bytes
    available: dict[str, float]
    queued: int  # tasks waiting for resources there


class UploadPackage(NamedTuple):
    """A runtime_env package (a working_dir or py_module as a zip), before the
    ``RegisterRuntimeEnv`` that names it; sent to a node once (or when it says it lacks it)."""

    digest: str  # sha256 of ``blob``: the node checks it and caches the package under it
    blob: bytes


class RegisterRuntimeEnv(NamedTuple):
    """Declare an env that tasks (``SubmitTask.runtime_env``) and actors (option
    ``runtime_env``) name by digest. Answered with ``Reply``: the package digests the node
    lacks (upload them, then register again), () once registered, or the setup error."""

    request_id: int  # 0 (from a peer node): no answer
    env: str  # digest of the env (``runtime_env.RuntimeEnv.digest``)
    working_dir: str  # package digest, "" for none: the workers' cwd, first on sys.path
    py_modules: tuple[str, ...]  # package digests, each extracted dir on sys.path
    env_vars: dict[str, str]  # set in the workers' environment


class StopCluster(NamedTuple):
    """The owning driver shuts its local cluster down."""


class GeneratorItem(NamedTuple):
    """A streaming generator task yielded item ``index`` (its id: ``streams.item_id``)."""

    task_id: bytes
    item_index: int  # 0 for the first value yielded
    result: tuple[bytes, bytes | None, int, tuple[bytes, ...]]  # as in TaskFinished.results


class GeneratorConsumed(NamedTuple):
    """The owner of a streaming generator has taken ``count`` items with ``next``.

    From a node that forwarded the task (it relays its owner's takes), ``seen`` > 0 says it
    has the first ``seen`` items already (a retry of the task starts there)."""

    task_id: bytes
    taken: int
    seen: int = 0


# ---------------------------------------------------------------- client -> node: queries
# defined in protocol_queries (kept apart for size), framed here, reachable as P.<name>;
# each is answered with ``Reply(request_id, value)``

GetStatus = protocol_queries.GetStatus
ListState = protocol_queries.ListState
GetClusterResources = protocol_queries.GetClusterResources
GetAvailableResources = protocol_queries.GetAvailableResources
ListNodes = protocol_queries.ListNodes
GetStoreStats = protocol_queries.GetStoreStats
Ping = protocol_queries.Ping
GetTaskSummary = protocol_queries.GetTaskSummary
GetWorkerLogs = protocol_queries.GetWorkerLogs
GetActor = protocol_queries.GetActor
ListNamedActors = protocol_queries.ListNamedActors
CreatePlacementGroup = protocol_queries.CreatePlacementGroup
RemovePlacementGroup = protocol_queries.RemovePlacementGroup
QueryPlacementGroups = protocol_queries.QueryPlacementGroups
QUERIES = protocol_queries.QUERIES


# ---------------------------------------------------------------- client -> head: Jobs API
# defined in protocol_jobs (kept apart for size), framed here, reachable as P.<name>

SubmitJob = protocol_jobs.SubmitJob
GetJobInfo = protocol_jobs.GetJobInfo
ListJobs = protocol_jobs.ListJobs
StopJob = protocol_jobs.StopJob
DeleteJob = protocol_jobs.DeleteJob
GetJobLogs = protocol_jobs.GetJobLogs
JOB_MESSAGES = protocol_jobs.JOB_MESSAGES


# ---------------------------------------------------------------- node -> client


class Welcome(NamedTuple):
    """Answer to ``Hello``: what the client needs to know about its node."""

    node_id: bytes
    session: str  # names object files: <object_files.store_dir>/rj-<session>-<object id>
    store_capacity: int  # object_store_memory in bytes
    error: str  # non-empty when the client is refused (version mismatch)


class ObjectsReady(NamedTuple):
    """Values or locations of finished objects, pushed to owners and subscribers."""

    objects: tuple[ObjectInfo, ...]


class UnmapKept(NamedTuple):
    """To a worker that maps these objects: drop the mappings you keep for later tasks
    (``ValueReader.keep_mapped``). They were freed (their memory goes once no value uses
    it), or the store is over its capacity and needs to spill them (a mapped object is not
    spilled)."""

    object_ids: tuple[bytes, ...]


class ExecuteTask(NamedTuple):
    """Run a task on this worker."""

    task_id: bytes
    func_id: bytes
    func_blob: bytes | None  # present the first time this worker sees func_id
    name: str
    args_blob: bytes
    deps: tuple[ObjectInfo, ...]  # values of the top-level ref arguments, in marker order
    return_ids: tuple[bytes, ...]
    retry_exceptions: bool | bytes
    attempt: int  # 0 for the first try
    actor_id: bytes  # b"" for a task; else call ``method`` of the actor this worker hosts
    method: str
    job_id: bytes  # the driver the work belongs to (runtime context)
    gpu_ids: tuple[int, ...]  # GPUs assigned to this task (CUDA_VISIBLE_DEVICES)
    generator: str = ""  # "streaming" or "dynamic": the function is a generator
    backpressure: int = -1  # streaming: the first credit (items it may make before any ack)
    strategy: str = ""  # its scheduling strategy string: the running code's placement group
    # what the task holds, when not the default of one CPU (the runtime context's answer)
    resources: tuple[tuple[str, float], ...] | None = None
    # the driver to answer directly on our link to it (direct_links.py); b"": the node only
    reply_to: bytes = b""
    # sent by its caller on our link (direct_calls.py, task_leases.py): the node may hear of
    # it after its end, and an answer it gives needs the caller's notice
    by_link: bool = False


class StartActor(NamedTuple):
    """Become the process of an actor: build its instance from the class and arguments."""

    actor_id: bytes
    class_blob: bytes
    class_name: str
    args_blob: bytes
    deps: tuple[ObjectInfo, ...]
    max_concurrency: int  # 1 for a plain actor
    job_id: bytes
    gpu_ids: tuple[int, ...]
    strategy: str = ""  # the actor's scheduling strategy string (its placement group)
    resources: tuple[tuple[str, float], ...] = ()  # what its process holds while it runs
    name: str = ""  # "" for an unnamed actor
    namespace: str = ""
    restarts: int = 0  # >0: a restart after its process died (was_current_actor_reconstructed)
    concurrency_groups: tuple[tuple[str, int], ...] = ()  # named groups and their sizes


class RevokeTask(NamedTuple):
    """Do not start this prefetched task: the node gives it to another worker.

    The node also answers every ``WorkerBlocked(True)`` with one (``answers_block``; task_id
    b"" when it took nothing back): a worker starts no task it received before that answer
    until the answer is in, so it never starts a task the node has just given away.
    """

    task_id: bytes
    answers_block: bool = False


class CancelCall(NamedTuple):
    """Cancel a running call of this worker's async actor (its coroutine gets CancelledError)."""

    task_id: bytes


class ExitActor(NamedTuple):
    """An actor's handles all went: its worker ends it by itself (``__ray_shutdown__``,
    atexit handlers; killed if still there after a grace). Also from an actor's home node
    to the peer hosting it, which then asks its worker the same once its calls are done."""

    actor_id: bytes


#: what a worker's loop takes next from its node
WorkerOrder = ExecuteTask | StartActor | CancelCall | ExitActor


class LogLines(NamedTuple):
    """Output of workers, already prefixed with ``(task_name pid=N)``."""

    stream: int  # 1 stdout, 2 stderr
    text: str


class ObjectChunk(NamedTuple):
    """Answer to PullObject: ``data`` holds bytes [offset, offset + len(data)) of the value."""

    object_id: bytes
    offset: int
    total: int  # the value's full size
    data: bytes | memoryview  # (a view: of the sender's mapping, of the frame received)
    error: str  # non-empty when this node cannot serve the value (then data is empty)


class ContainedObjects(NamedTuple):
    """To a peer node, just before the ``ObjectsReady`` of ``object_id``: the refs inside
    that value, each held here for the peer (as in ``ProvideObjects``) until it lets go."""

    object_id: bytes
    objects: tuple[tuple[bytes, bytes | None, int, bool, str], ...]


class ClusterView(NamedTuple):
    """The head's node table, sent to every node after each heartbeat.

    Rows: (node_id, address, alive, total resources, available resources, queued tasks).
    """

    nodes: tuple[tuple[bytes, str, bool, dict[str, float], dict[str, float], int], ...]
    # the placement-group bundles the receiving node is to hold: (group id, index, resources)
    bundles: tuple[tuple[bytes, int, dict[str, float]], ...] = ()
    removed: tuple[bytes, ...] = ()  # groups removed lately: their work here fails


class Reply(NamedTuple):
    """Answer to a query (``QUERIES``) or to a message that carried a request id."""

    request_id: int
    value: Any


class GeneratorCredit(NamedTuple):
    """To the worker running a streaming generator: it may have made ``allowed`` items in
    all (-1: no bound), and the node already has the first ``seen`` (a retry skips them)."""

    task_id: bytes
    allowed: int
    seen: int


class Lease(NamedTuple):
    """To a driver: it may send tasks of ``demand`` to ``worker`` itself, on their direct
    link (granted), or it must give that worker back (worker_leases.py, task_leases.py)."""

    worker: bytes
    demand: tuple[tuple[str, float], ...]
    func_id: bytes  # a function the worker has already (granted)
    granted: bool


class ReturnLease(NamedTuple):
    """From a driver: it sends no more tasks to that worker itself (its notices of the ones
    it sent came before this)."""

    worker: bytes


class DirectLink(NamedTuple):
    """A link to a peer on this machine opens (its descriptor came with this frame, by
    SCM_RIGHTS) or closes: to a driver, from a worker that answers it directly; to that
    worker, the driver it answers (direct_links.py)."""

    peer: bytes  # the client id at the other end
    opened: bool  # False: the peer is gone, close our end (no descriptor comes)
    actor_id: bytes = b""  # (to a driver) the actor that worker hosts: calls may go on it


# ---------------------------------------------------------------- framing

CLIENT_TO_NODE = (
    Hello,
    SubmitTask,
    CreateActor,
    KillActor,
    ActorStarted,
    ActorExiting,
    CancelTask,
    PutObject,
    RefOps,
    PinOps,
    Subscribe,
    TaskFinished,
    WorkerBlocked,
    StopCluster,
    Heartbeat,
    Disconnect,
    ProvideObjects,
    PullObject,
    RegisterNode,
    NodeHeartbeat,
    ActorHomes,
    UploadPackage,
    RegisterRuntimeEnv,
    GeneratorItem,
    GeneratorConsumed,
    *QUERIES,
    CreatePlacementGroup,
    RemovePlacementGroup,
    QueryPlacementGroups,
    *JOB_MESSAGES,
    ExitActor,  # (also node -> an actor's worker)
    PendingObjects,
    ReturnLease,
)
NODE_TO_CLIENT = (
    Welcome,
    ObjectsReady,
    ExecuteTask,
    StartActor,
    RevokeTask,
    CancelCall,
    LogLines,
    Reply,
    ObjectChunk,
    ClusterView,
    ContainedObjects,
    ActorGone,
    GeneratorCredit,
    AttemptLost,
    UnmapKept,
    DirectLink,
    Lease,
)
ALL_MESSAGES = CLIENT_TO_NODE + NODE_TO_CLIENT


_KIND_OF = {kind: index for index, kind in enumerate(ALL_MESSAGES)}


def dumps(messages: list[Any]) -> bytes:
    """One frame for a batch of messages, each as a plain tuple led by its kind's index.

    Plain tuples pickle about four times faster than NamedTuples (which pickle through a
    Python-level ``__getnewargs__`` and a class lookup), and this runs for every message.
    """
    kind_of = _KIND_OF
    return pickle.dumps([(kind_of[type(m)], *m) for m in messages], protocol=5)


def loads(frame: bytes) -> list[Any]:
    """Decode a frame from an authenticated peer; anything but a list of messages is refused."""
    rows = pickle.loads(frame)
    if not isinstance(rows, list):
        raise ValueError(f"malformed frame: expected a list of messages, got {type(rows)}")
    kinds = ALL_MESSAGES
    return [kinds[row[0]](*row[1:]) for row in rows]
