"""Ray's state API (``ray.util.state``): what the cluster is doing, as rows.

Rows are the read models of ``rayjupyter.core.read_models`` with Ray's field names; as in
Ray, ``row.state``, ``row["state"]``, ``row.get("state")`` and ``row.asdict()`` all work.

Every call takes Ray's arguments:

- ``address``: the cluster to ask (``rayjupyter://SECRET@HOST:PORT``, ``HOST:PORT``,
  ``"auto"``); None asks the cluster this process is connected to (``rj.init``), or else
  the one found as ``rj.init()`` would find it, without connecting this process to it;
- ``filters``: ``(key, "=" | "!=", value)`` tuples; values compare as strings, keys must be
  columns of the row (the error lists them);
- ``limit``: at most this many rows (the most recent tasks, the first of the others);
- ``timeout``: seconds to wait for the answer;
- ``detail``: accepted for Ray's signature; every field is filled either way (the rows are
  small, so the detailed columns cost nothing to send);
- ``raise_on_missing_output``: accepted; the node answers whole, never partly.
"""

from __future__ import annotations

import fnmatch
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

from rayjupyter.core import addresses, queries
from rayjupyter.core import protocol as P
from rayjupyter.core.client import Client
from rayjupyter.core.read_models import (
    ActorRow,
    JobRow,
    NodeRow,
    ObjectRow,
    PlacementGroupRow,
    Row,
    TaskRow,
    WorkerRow,
    matches,
)

Filters = list[tuple[str, str, Any]] | None
DEFAULT_LIMIT = 100  # as in Ray
DEFAULT_RPC_TIMEOUT = 30  # as in Ray
DEFAULT_LOG_LIMIT = 1000
ROW_TYPES: dict[str, type[Row]] = {
    "tasks": TaskRow,
    "actors": ActorRow,
    "objects": ObjectRow,
    "nodes": NodeRow,
    "jobs": JobRow,
    "workers": WorkerRow,
    "placement_groups": PlacementGroupRow,
}


class RayStateApiException(Exception):
    """Ray's error for a state query that could not be answered."""


class StateConnectionError(RayStateApiException, ConnectionError):
    """The cluster could not be reached: Ray's error, and a ConnectionError too."""


def columns(row_type: type[Row]) -> list[str]:
    """The names a filter or a table may use: the fields, then Ray's alias properties."""
    names = [f.name for f in fields(row_type)]  # type: ignore[arg-type]
    names += [n for n, v in vars(row_type).items() if isinstance(v, property) and n not in names]
    return names


@contextmanager
def _connection(address: str | None, timeout: float) -> Iterator[Client]:
    """The process's own connection when it has one and no address is given; else a
    short-lived observer connection to the cluster at ``address``."""
    from rayjupyter.core import api

    if address is None and api.is_initialized():
        yield api._client()
        return
    try:
        client = addresses.observer(address, timeout=min(float(timeout), 10.0))
    except (addresses.AddressError, ConnectionError) as exc:
        raise StateConnectionError(f"Failed to connect to the cluster: {exc}") from None
    try:
        yield client
    finally:
        client.close()


def _check_filters(kind: str, filters: Filters) -> tuple[tuple[str, str, Any], ...]:
    checked = []
    known = columns(ROW_TYPES[kind])
    for item in filters or ():
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise ValueError(f"a filter is (key, '=' or '!=', value), got {item!r}")
        key, op, value = item
        if op not in ("=", "!="):
            raise ValueError(f"filter {key!r}: operator {op!r} is not supported; use '=' or '!='")
        if key not in known:
            raise ValueError(
                f"Given filter column {key!r} is not supported for {kind}; use one of: "
                + ", ".join(known)
            )
        checked.append((str(key), str(op), value))
    return tuple(checked)


def _list(
    kind: str,
    address: str | None,
    filters: Filters,
    limit: int,
    timeout: float,
) -> list[Any]:
    wanted = _check_filters(kind, filters)
    if not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative int, got {limit!r}")
    with _connection(address, timeout) as client:
        if kind == "placement_groups":
            rows: list[Any] = [r for r in _placement_groups(client, timeout) if matches(r, wanted)]
            return rows[:limit]
        # Ray's alias columns are properties: filter on them here, the node knows fields
        fields_of = {f.name for f in fields(ROW_TYPES[kind])}  # type: ignore[arg-type]
        remote = tuple(f for f in wanted if f[0] in fields_of)
        local = tuple(f for f in wanted if f[0] not in fields_of)
        asked = limit if not local else 10**9
        found = queries.list_state(client, kind, remote, asked, timeout=float(timeout))
        rows = [row for row in found if matches(row, local)]
    return rows[-limit:] if kind == "tasks" else rows[:limit]


def _placement_groups(client: Client, timeout: float) -> list[PlacementGroupRow]:
    table = client.request(P.QueryPlacementGroups, b"", "", timeout=float(timeout)) or {}
    rows = []
    for row in table.values():
        bundles = [
            {
                "bundle_index": index,
                "node_id": row["bundles_to_node_id"].get(index),
                "unit_resources": resources,
            }
            for index, resources in sorted(row["bundles"].items())
        ]
        rows.append(
            PlacementGroupRow(
                placement_group_id=row["placement_group_id"],
                name=row["name"],
                creator_job_id=str(row.get("creator_job_id") or ""),
                state=row["state"],
                strategy=row["strategy"],
                is_detached=bool(row["is_detached"]),
                bundles=bundles,
            )
        )
    return rows


# ------------------------------------------------------------------ list_*


def list_tasks(
    address: str | None = None,
    filters: Filters = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> list[TaskRow]:
    """Recent tasks and actor calls: name, state, job, worker, start and end times."""
    return _list("tasks", address, filters, limit, timeout)


def list_actors(
    address: str | None = None,
    filters: Filters = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> list[ActorRow]:
    return _list("actors", address, filters, limit, timeout)


def list_objects(
    address: str | None = None,
    filters: Filters = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> list[ObjectRow]:
    return _list("objects", address, filters, limit, timeout)


def list_nodes(
    address: str | None = None,
    filters: Filters = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> list[NodeRow]:
    """Nodes, with ``ray.nodes()``'s fields and the state API's (node_id, state, ...)."""
    return _list("nodes", address, filters, limit, timeout)


def list_jobs(
    address: str | None = None,
    filters: Filters = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> list[JobRow]:
    """Submitted jobs (Jobs API) and drivers, in Ray's ``JobDetails`` fields."""
    return _list("jobs", address, filters, limit, timeout)


def list_workers(
    address: str | None = None,
    filters: Filters = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> list[WorkerRow]:
    """The node's worker processes and its drivers."""
    return _list("workers", address, filters, limit, timeout)


def list_placement_groups(
    address: str | None = None,
    filters: Filters = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> list[PlacementGroupRow]:
    """Placement groups (removed ones too, for a while): id, name, state, strategy, whether
    detached, and each bundle's resources and node."""
    return _list("placement_groups", address, filters, limit, timeout)


# ------------------------------------------------------------------ get_*


def _get(kind: str, key: str, value: str, address: str | None, timeout: int) -> Any:
    if not isinstance(value, str) or not value:
        raise ValueError(f"give the id to look up as a hex string, got {value!r}")
    rows = _list(kind, address, [(key, "=", value)], 10**9, timeout)
    return rows[-1] if rows else None


def get_task(
    id: str, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT, _explain: bool = False
) -> TaskRow | None:
    """The task (its latest attempt), or None if the head does not remember it."""
    return _get("tasks", "task_id", id, address, timeout)  # type: ignore[no-any-return]


def get_actor(
    id: str, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT, _explain: bool = False
) -> ActorRow | None:
    return _get("actors", "actor_id", id, address, timeout)  # type: ignore[no-any-return]


def get_node(
    id: str, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT, _explain: bool = False
) -> NodeRow | None:
    return _get("nodes", "NodeID", id, address, timeout)  # type: ignore[no-any-return]


def get_objects(
    id: str, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT, _explain: bool = False
) -> list[ObjectRow]:
    """The object's rows (Ray answers a list: one per process holding a reference; the node
    keeps one per object)."""
    row = _get("objects", "object_id", id, address, timeout)
    return [row] if row is not None else []


def get_worker(
    id: str, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT, _explain: bool = False
) -> WorkerRow | None:
    return _get("workers", "worker_id", id, address, timeout)  # type: ignore[no-any-return]


def get_job(
    id: str, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT, _explain: bool = False
) -> JobRow | None:
    """A job by its submission id or its job id."""
    for key in ("submission_id", "job_id"):
        row = _get("jobs", key, id, address, timeout)
        if row is not None:
            return row  # type: ignore[no-any-return]
    return None


def get_placement_group(
    id: str, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT, _explain: bool = False
) -> PlacementGroupRow | None:
    return _get(  # type: ignore[no-any-return]
        "placement_groups", "placement_group_id", id, address, timeout
    )


# ------------------------------------------------------------------ summaries


def summarize_tasks(
    address: str | None = None,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> dict[str, Any]:
    """Ray's shape: ``{"cluster": {"summary": {name: {"func_or_class_name", "type",
    "state_counts"}}, "total_tasks", "total_actor_tasks", "total_actor_scheduled",
    "summary_by": "func_name"}}``, over the tasks the head remembers."""
    tasks = _list("tasks", address, None, 10**9, timeout)
    actors = _list("actors", address, None, 10**9, timeout)
    summary: dict[str, dict[str, Any]] = {}
    totals: Counter[str] = Counter()
    for row in tasks:
        entry = summary.setdefault(
            row.func_or_class_name,
            {"func_or_class_name": row.func_or_class_name, "type": row.type, "state_counts": {}},
        )
        entry["state_counts"][row.state] = entry["state_counts"].get(row.state, 0) + 1
        totals[row.type] += 1
    return {
        "cluster": {
            "summary": summary,
            "total_tasks": totals["NORMAL_TASK"],
            "total_actor_tasks": totals["ACTOR_TASK"],
            "total_actor_scheduled": len(actors),
            "summary_by": "func_name",
        }
    }


def summarize_actors(
    address: str | None = None,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> dict[str, Any]:
    """Ray's shape: ``{"cluster": {"summary": {class: {"class_name", "state_counts"}},
    "total_actors", "summary_by": "class"}}``."""
    actors = _list("actors", address, None, 10**9, timeout)
    summary: dict[str, dict[str, Any]] = {}
    for row in actors:
        entry = summary.setdefault(
            row.class_name, {"class_name": row.class_name, "state_counts": {}}
        )
        entry["state_counts"][row.state] = entry["state_counts"].get(row.state, 0) + 1
    return {"cluster": {"summary": summary, "total_actors": len(actors), "summary_by": "class"}}


def summarize_objects(
    address: str | None = None,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> dict[str, Any]:
    """Ray's shape, by call site (``"disabled"``: call sites are not recorded, as in Ray by
    default): ``{"cluster": {"summary": {site: {"total_objects", "total_size_mb", ...}},
    "total_objects", "total_size_mb", "callsite_enabled", "summary_by": "callsite"}}``."""
    objects = _list("objects", address, None, 10**9, timeout)
    summary: dict[str, dict[str, Any]] = {}
    total_mb = 0.0
    for row in objects:
        entry = summary.setdefault(
            row.call_site,
            {
                "total_objects": 0,
                "total_size_mb": 0.0,
                "total_num_workers": 1,  # the node tracks objects, not per-process holders
                "total_num_nodes": 1,
                "task_state_counts": {},
                "task_attempt_number_counts": {},
                "ref_type_counts": {},
            },
        )
        entry["total_objects"] += 1
        size_mb = row.object_size / 1024**2
        entry["total_size_mb"] += size_mb
        total_mb += size_mb
        for key, value in (
            ("task_state_counts", row.task_status),
            ("ref_type_counts", row.reference_type),
            ("task_attempt_number_counts", "1"),
        ):
            entry[key][value] = entry[key].get(value, 0) + 1
    return {
        "cluster": {
            "summary": summary,
            "total_objects": len(objects),
            "total_size_mb": total_mb,
            "callsite_enabled": False,
            "summary_by": "callsite",
        }
    }


# ------------------------------------------------------------------ logs


def list_worker_logs(pid: int | None = None, lines: int = 100) -> list[dict[str, Any]]:
    """Each worker's recent output: ``{"pid", "name", "lines": [(time, stream, text)]}``.

    The node keeps the last few hundred lines per worker; ``pid`` picks one worker.
    """
    from rayjupyter.core.api import _client

    return [entry.asdict() for entry in queries.worker_logs(_client(), pid, lines)]


def list_logs(
    address: str | None = None,
    node_id: str | None = None,
    node_ip: str | None = None,
    glob_filter: str | None = None,
    timeout: int = DEFAULT_RPC_TIMEOUT,
) -> dict[str, list[str]]:
    """The logs ``get_log`` can read, by category: ``worker_out``/``worker_err`` (each
    worker's recent output, ``worker-PID.out``) and ``job`` (``job-driver-ID.log``).

    ``node_id``/``node_ip`` must name the node asked (the head, or the node at ``address``):
    logs are kept by the node whose workers printed them."""
    with _connection(address, timeout) as client:
        _check_node(client, node_id, node_ip, timeout)
        entries = queries.worker_logs(client, None, 1, timeout=float(timeout))
        jobs = queries.list_state(client, "jobs", (), 10**9, timeout=float(timeout))
    found = {
        "worker_out": [f"worker-{e.pid}.out" for e in entries],
        "worker_err": [f"worker-{e.pid}.err" for e in entries],
        "job": [
            f"job-driver-{r.submission_id}.log"
            for r in jobs
            if isinstance(r, JobRow) and r.submission_id
        ],
    }
    pattern = glob_filter or "*"
    return {k: [n for n in v if fnmatch.fnmatch(n, pattern)] for k, v in found.items()}


def _check_node(client: Client, node_id: str | None, node_ip: str | None, timeout: float) -> None:
    if node_id is None and node_ip is None:
        return
    status = queries.status(client, timeout=float(timeout))
    mine = next((n for n in status.nodes if n.NodeID == client.node_id.hex()), None)
    if mine is None:
        return
    if (node_id is not None and node_id != mine.NodeID) or (
        node_ip is not None and node_ip != mine.NodeManagerAddress
    ):
        raise ValueError(
            f"logs are read from the node they were printed on: connect to that node's "
            f"address (this one is node {mine.NodeID} at {mine.address})"
        )


def get_log(
    address: str | None = None,
    node_id: str | None = None,
    node_ip: str | None = None,
    filename: str | None = None,
    actor_id: str | None = None,
    task_id: str | None = None,
    pid: int | None = None,
    follow: bool = False,
    tail: int = DEFAULT_LOG_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    suffix: str = "out",
    encoding: str | None = "utf-8",
    errors: str | None = "strict",
    submission_id: str | None = None,
    attempt_number: int = 0,
    _interval: float | None = None,
) -> Iterator[str]:
    """Lines of one log, as Ray's ``get_log`` yields them: a worker's (``pid``, the actor's
    process for ``actor_id``, the worker that ran ``task_id``, or ``filename``
    ``worker-PID.out|err``) or a submitted job's (``submission_id`` or
    ``job-driver-ID.log``). ``tail`` keeps the last lines (-1: all the node kept);
    ``follow`` keeps yielding new lines until the job ends (a worker's: until interrupted)."""
    if suffix not in ("out", "err"):
        raise ValueError(f"Invalid suffix: {suffix}. Must be one of 'out' or 'err'.")
    if filename is not None:
        if filename.startswith("job-driver-") and filename.endswith(".log"):
            submission_id = filename[len("job-driver-") : -len(".log")]
        elif filename.startswith("worker-") and filename[-4:] in (".out", ".err"):
            pid, suffix = int(filename[len("worker-") : -4]), filename[-3:]
        else:
            raise ValueError(f"no log named {filename!r}: list_logs() names the logs there are")
    if not (submission_id or pid or actor_id or task_id):
        raise ValueError(
            "None of actor_id, task_id, pid, submission_id or filename is provided: give one"
        )
    interval = float(_interval or 0.2)
    with _connection(address, timeout) as client:
        _check_node(client, node_id, node_ip, timeout)
        if submission_id:
            yield from _job_log(client, submission_id, tail, follow, interval, timeout)
            return
        if pid is None:
            pid = _pid_of(client, actor_id, task_id, timeout)
        stream = 1 if suffix == "out" else 2
        limit = tail if tail and tail > 0 else 10**6
        seen = 0.0
        while True:
            entries = queries.worker_logs(client, int(pid), limit, timeout=float(timeout))
            lines = [
                (t, text) for e in entries for t, s, text in e.lines if s == stream and t > seen
            ]
            if not lines and not entries and not seen:
                raise ValueError(f"no output kept for worker pid {pid}: list_logs() names them")
            for t, text in lines:
                seen = max(seen, t)
                yield text + "\n"
            if not follow:
                return
            time.sleep(interval)


def _pid_of(client: Client, actor_id: str | None, task_id: str | None, timeout: float) -> int:
    if actor_id:
        rows = queries.list_state(client, "actors", (("actor_id", "=", actor_id),), 1, timeout)
        if not rows or not isinstance(rows[0], ActorRow) or not rows[0].pid:
            raise ValueError(f"actor {actor_id} has no process now (list_actors shows them)")
        return int(rows[0].pid)
    rows = queries.list_state(client, "tasks", (("task_id", "=", task_id),), 1, timeout)
    if not rows or not isinstance(rows[0], TaskRow) or not rows[0].worker_pid:
        raise ValueError(f"task {task_id} has not run on a worker (list_tasks shows them)")
    return int(rows[0].worker_pid)


def _job_log(
    client: Client, submission_id: str, tail: int, follow: bool, interval: float, timeout: float
) -> Iterator[str]:
    offset = 0
    text_so_far: list[str] = []
    while True:  # what is there now, then (follow) what comes
        text, offset, ended = client.request(
            P.GetJobLogs, submission_id, offset, 1 << 20, timeout=float(timeout)
        )
        if not text:
            break
        text_so_far.append(text)
    lines = "".join(text_so_far).splitlines(keepends=True)
    if tail and tail > 0:
        lines = lines[-tail:]
    yield from lines
    while follow and not ended:
        text, offset, ended = client.request(
            P.GetJobLogs, submission_id, offset, 1 << 20, timeout=float(timeout)
        )
        if text:
            yield from text.splitlines(keepends=True)
        elif not ended:
            time.sleep(interval)
