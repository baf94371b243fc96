"""Asking a node the typed queries of ``protocol.py``, with their answers' types.

One function per query: every reader (the CLI, the reprs, the notebook, the dashboard, the
server extension, ``rj.util.state``) calls these rather than ``Client.request``, so the
answer's type is checked once, here, and mypy knows it everywhere else. ``Replies`` is the
mechanism under them (and under ``create_actor``'s reply): request ids and their answers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from rayjupyter.core import protocol as P
from rayjupyter.core.exceptions import ClusterConnectionError
from rayjupyter.core.state_names import STATE_KINDS

if TYPE_CHECKING:
    from rayjupyter.core.client import Client

    # imported where an answer is checked: the read models' dataclasses cost a few
    # milliseconds of every process's start (state_names.py); an answer's unpickling
    # imports them anyway
    from rayjupyter.core.read_models import (
        NamedActor,
        NodeRow,
        NodeStatus,
        StateRow,
        StoreStats,
        WorkerLogLines,
    )


class Replies:
    """A client's requests to its node and their answers, matched by request id (a part of
    ``client.Client``: its reader files each ``Reply`` in ``answers``)."""

    def __init__(
        self,
        send: Callable[[list[Any]], None],
        wait: Callable[[Callable[[], bool], float | None], bool],
        address: str,
    ) -> None:
        self.send = send
        self.wait = wait
        self.address = address
        self.answers: dict[int, Any] = {}
        self._ids = itertools.count(1)

    def new_id(self) -> int:
        return next(self._ids)

    def request(self, query: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
        """Ask the node a query (a class of ``protocol.QUERIES``, built with a fresh request
        id and ``args``) and wait for the answer; an error answer is raised. The functions
        below read the answers with their types."""
        request_id = self.new_id()
        self.send([query(request_id, *args)])
        return self.await_reply(request_id, getattr(query, "__name__", "a query"), timeout)

    def await_reply(self, request_id: int, what: str, timeout: float = 30.0) -> Any:
        """Wait for the node's Reply to a message that carried request_id."""
        answers = self.answers
        if not self.wait(lambda: request_id in answers, timeout):
            raise ClusterConnectionError(
                f"The node at {self.address} did not answer {what!r} within {timeout:.0f} s."
            )
        value = answers.pop(request_id)
        if isinstance(value, Exception):
            raise value
        return value


T = TypeVar("T")
Filters = list[tuple[str, str, Any]] | tuple[tuple[str, str, Any], ...]


def _checked(value: Any, kind: type[T], query: str) -> T:
    if not isinstance(value, kind):
        raise TypeError(f"the node answered {query} with {type(value).__name__}, not {kind}")
    return value


def status(client: Client, timeout: float = 10.0) -> NodeStatus:
    """The cluster's status snapshot."""
    from rayjupyter.core.read_models import NodeStatus

    return _checked(client.request(P.GetStatus, timeout=timeout), NodeStatus, "GetStatus")


def list_state(
    client: Client, kind: str, filters: Filters = (), limit: int = 100, timeout: float = 30.0
) -> list[StateRow]:
    """Rows of one kind (tasks, actors, objects, nodes, jobs), filtered as in Ray."""
    if kind not in STATE_KINDS:
        raise ValueError(f"unknown state kind {kind!r}: use one of {', '.join(STATE_KINDS)}")
    for key, op, _value in filters:
        if op not in ("=", "!="):
            raise ValueError(f"filter {key!r}: operator {op!r} is not supported; use '=' or '!='")
    wanted = tuple((str(key), str(op), value) for key, op, value in filters)
    answer = client.request(P.ListState, kind, wanted, int(limit), timeout=timeout)
    return list(_checked(answer, list, "ListState"))


def cluster_resources(client: Client, timeout: float = 30.0) -> dict[str, float]:
    answer = client.request(P.GetClusterResources, timeout=timeout)
    return dict(_checked(answer, dict, "GetClusterResources"))


def available_resources(client: Client, timeout: float = 30.0) -> dict[str, float]:
    answer = client.request(P.GetAvailableResources, timeout=timeout)
    return dict(_checked(answer, dict, "GetAvailableResources"))


def nodes(client: Client, timeout: float = 30.0) -> list[NodeRow]:
    return list(_checked(client.request(P.ListNodes, timeout=timeout), list, "ListNodes"))


def store_stats(client: Client, timeout: float = 30.0) -> StoreStats:
    from rayjupyter.core.read_models import StoreStats

    return _checked(client.request(P.GetStoreStats, timeout=timeout), StoreStats, "GetStoreStats")


def ping(client: Client, timeout: float = 30.0) -> None:
    """Returns once the node has handled everything this client sent before."""
    client.request(P.Ping, timeout=timeout)


def task_summary(client: Client, timeout: float = 30.0) -> dict[str, dict[str, int]]:
    """Task counts per name, then per state."""
    answer = client.request(P.GetTaskSummary, timeout=timeout)
    return dict(_checked(answer, dict, "GetTaskSummary"))


def worker_logs(
    client: Client, pid: int | None = None, lines: int = 100, timeout: float = 30.0
) -> list[WorkerLogLines]:
    answer = client.request(P.GetWorkerLogs, pid, int(lines), timeout=timeout)
    return list(_checked(answer, list, "GetWorkerLogs"))


def get_actor(
    client: Client, name: str, namespace: str | None, timeout: float = 30.0
) -> tuple[bytes, str, dict[str, Any], int]:
    """A named actor's id, class name, method table and max_pending_calls; ValueError if
    none is alive."""
    answer = client.request(P.GetActor, name, namespace, timeout=timeout)
    actor_id, class_name, methods, limit = _checked(answer, tuple, "GetActor")
    return bytes(actor_id), str(class_name), dict(methods), int(limit)


def named_actors(
    client: Client, all_namespaces: bool = False, timeout: float = 30.0
) -> list[NamedActor]:
    answer = client.request(P.ListNamedActors, bool(all_namespaces), timeout=timeout)
    return list(_checked(answer, list, "ListNamedActors"))
