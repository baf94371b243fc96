"""Ray's state API: what the cluster is doing, as lists of plain dicts.

``filters`` are ``(key, "=" | "!=", value)`` tuples, as in Ray; ``limit`` caps the rows
(the most recent tasks, the first of the others). The node answers with the read models of
``rayjupyter.core.read_models``; each row is handed out as a dict of its fields.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rayjupyter.core import queries
from rayjupyter.core.api import _client
from rayjupyter.core.read_models import TaskRow, as_dict

Filters = list[tuple[str, str, Any]] | None
DEFAULT_LIMIT = 100  # as in Ray


def _rows(kind: str, filters: Filters, limit: int) -> list[dict[str, Any]]:
    return [as_dict(row) for row in queries.list_state(_client(), kind, filters or (), limit)]


def list_tasks(filters: Filters = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Recent tasks and actor calls: name, state, job, worker, start and end times."""
    return _rows("tasks", filters, limit)


def list_actors(filters: Filters = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    return _rows("actors", filters, limit)


def list_objects(filters: Filters = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    return _rows("objects", filters, limit)


def list_nodes(filters: Filters = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    return _rows("nodes", filters, limit)


def list_jobs(filters: Filters = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    return _rows("jobs", filters, limit)


def summarize_tasks() -> dict[str, dict[str, int]]:
    """Task counts per function name and state, over the tasks the head remembers."""
    summary: dict[str, Counter[str]] = {}
    for row in queries.list_state(_client(), "tasks", (), 10**9):
        if isinstance(row, TaskRow):
            summary.setdefault(row.name, Counter())[row.state] += 1
    return {name: dict(states) for name, states in summary.items()}


def list_worker_logs(pid: int | None = None, lines: int = 100) -> list[dict[str, Any]]:
    """Each worker's recent output: ``{"pid", "name", "lines": [(time, stream, text)]}``.

    The node keeps the last few hundred lines per worker; ``pid`` picks one worker.
    """
    return [as_dict(entry) for entry in queries.worker_logs(_client(), pid, lines)]


def list_placement_groups(
    filters: Filters = None, limit: int = DEFAULT_LIMIT
) -> list[dict[str, Any]]:
    """Placement groups (removed ones too, for a while): id, name, state, strategy, whether
    detached, and each bundle's resources and node."""
    from rayjupyter.util.placement_group import placement_group_table

    rows = []
    for row in placement_group_table().values():
        bundles = [
            {
                "bundle_index": index,
                "node_id": row["bundles_to_node_id"].get(index),
                "unit_resources": resources,
            }
            for index, resources in sorted(row["bundles"].items())
        ]
        rows.append(
            {
                "placement_group_id": row["placement_group_id"],
                "name": row["name"],
                "state": row["state"],
                "strategy": row["strategy"],
                "is_detached": row["is_detached"],
                "bundles": bundles,
            }
        )
    for key, op, value in filters or []:
        if op not in ("=", "!="):
            raise ValueError(f"filter {key!r}: operator {op!r} is not supported; use '=' or '!='")
        rows = [r for r in rows if (str(r.get(key)) == str(value)) == (op == "=")]
    return rows[: int(limit)]
