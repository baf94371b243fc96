"""The queries a client asks its node (client -> node), defined once here, framed by ``protocol``.

One message per question; the node answers each with ``Reply(request_id, value)``, the
value being a read model of ``read_models.py`` (or an exception, raised by the asker).
``client.request(Kind, *args)`` fills in the request id; ``queries.py`` reads the answers
with their types. The node routes them by type (``node_queries.ANSWERS``).

Kept apart from ``protocol.py`` only for size: ``protocol.CLIENT_TO_NODE`` lists them, so
they share its kinds, its version and its framing.
"""

from typing import Any, NamedTuple  # (no __future__ annotations: see protocol.py)


class GetStatus(NamedTuple):
    """A snapshot of the cluster for status displays: ``read_models.NodeStatus``."""

    request_id: int


class ListState(NamedTuple):
    """Rows for the state API: a list of ``read_models`` rows of ``kind``."""

    request_id: int
    kind: str  # read_models.StateKind: tasks, actors, objects, nodes or jobs
    filters: tuple[tuple[str, str, Any], ...]  # (key, "=" or "!=", value), as in Ray
    limit: int  # at most this many rows: the most recent tasks, the first of the others


class GetClusterResources(NamedTuple):
    """Everything the live nodes have: ``dict[str, float]``."""

    request_id: int


class GetAvailableResources(NamedTuple):
    """What is free now (fully used resources left out, as in Ray): ``dict[str, float]``."""

    request_id: int


class ListNodes(NamedTuple):
    """Every node the head knows: a list of ``read_models.NodeRow``."""

    request_id: int


class GetStoreStats(NamedTuple):
    """This node's object store: ``read_models.StoreStats``."""

    request_id: int


class Ping(NamedTuple):
    """Answered with None after everything the client sent before it was handled."""

    request_id: int


class GetTaskSummary(NamedTuple):
    """Task counts per name, then per state (``TaskStateName``): ``dict[str, dict[str, int]]``."""

    request_id: int


class GetWorkerLogs(NamedTuple):
    """Workers' recent output: a list of ``read_models.WorkerLogLines``."""

    request_id: int
    pid: int | None  # one worker, or None for every worker the node remembers
    lines: int  # the last this many lines of each


class GetActor(NamedTuple):
    """A named actor's handle info: (actor id, class name, method table), or ValueError."""

    request_id: int
    name: str
    namespace: str | None  # None: the asking driver's namespace


class ListNamedActors(NamedTuple):
    """Live named actors: a list of ``read_models.NamedActor``."""

    request_id: int
    all_namespaces: bool  # False: only the asking driver's namespace


#: every query message, answered with Reply
QUERIES = (
    GetStatus,
    ListState,
    GetClusterResources,
    GetAvailableResources,
    ListNodes,
    GetStoreStats,
    Ping,
    GetTaskSummary,
    GetWorkerLogs,
    GetActor,
    ListNamedActors,
)


class CreatePlacementGroup(NamedTuple):
    """``rj.util.placement_group(...)``: the head adds the group; answered with ``Reply``."""

    request_id: int
    group_id: bytes
    bundles: tuple[dict[str, float], ...]
    strategy: str  # PACK, SPREAD, STRICT_PACK or STRICT_SPREAD
    name: str
    lifetime: str | None  # None or "detached"
    job: bytes = b""  # the creating job, filled in by the first node (relayed to the head)
    namespace: str = ""


class RemovePlacementGroup(NamedTuple):
    """``rj.util.remove_placement_group(pg)``: answered with ``Reply`` (None)."""

    request_id: int
    group_id: bytes


class QueryPlacementGroups(NamedTuple):
    """The group table (Ray's ``placement_group_table`` rows): one group by id or by name,
    or all of them (both empty); answered with ``Reply``."""

    request_id: int
    group_id: bytes
    name: str
    namespace: str = ""
