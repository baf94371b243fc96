"""The JSON API under ``/api/v0/`` (see README.md and models.py): thin tornado handlers
that ask the node in a thread (never blocking the event loop) and answer raw numbers.

Errors are one-line JSON: 400 for a bad query, 502 when the cluster does not answer;
never a traceback in a body.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, get_type_hints

from tornado.ioloop import IOLoop
from tornado.web import HTTPError, RequestHandler

from rayjupyter.core import queries, read_models
from rayjupyter.core.exceptions import ClusterConnectionError
from rayjupyter.core.read_models import TaskRow, WorkerLogLines, as_dict
from rayjupyter.core.task_events import chrome_trace
from rayjupyter.dashboard import models
from rayjupyter.dashboard.feed import REQUEST_TIMEOUT_S, ClusterFeed

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100  # as in Ray's state API
MAX_LIMIT = 100_000
LOG_LINES = 100
MAX_LOG_LINES = 10_000


class ApiError(Exception):
    """A request the API refuses, with its HTTP status and one line saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ApiHandler(RequestHandler):
    """Base of every endpoint: subclasses say how to build their payload (in a thread)."""

    feed: ClusterFeed

    def initialize(self, feed: ClusterFeed) -> None:
        self.feed = feed

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    async def get(self) -> None:
        args = {key: self.get_query_argument(key) for key in self.request.query_arguments}
        try:
            payload = self.check(args)
            result = await IOLoop.current().run_in_executor(None, self.build, payload)
        except ApiError as error:
            self._error(error.status, str(error))
            return
        except ClusterConnectionError as error:
            self._error(502, f"the cluster did not answer: {error}")
            return
        self.finish(json.dumps(result, allow_nan=False, default=_json))

    def check(self, args: dict[str, str]) -> Any:
        """Validate the query (in the event loop); what build needs."""
        if args:
            raise ApiError(400, f"this endpoint takes no parameters, got {sorted(args)}")
        return None

    def build(self, checked: Any) -> Any:
        raise NotImplementedError

    def _error(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish(json.dumps({"error": message}) + "\n")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Unexpected failures: logged here, one line to the client."""
        reason = self._reason if status_code < 500 else "internal error (see the dashboard's log)"
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, HTTPError) and exc.log_message:
            reason = exc.log_message
        self.finish(json.dumps({"error": f"{status_code}: {reason}"}) + "\n")


def _json(value: Any) -> Any:
    """Read models (dataclasses) travel as objects of their fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class StatusHandler(ApiHandler):
    def build(self, checked: None) -> models.StatusResponse:
        status = queries.status(self.feed.client, timeout=REQUEST_TIMEOUT_S)
        return {
            "session": self.feed.session,
            "address": self.feed.address,
            "nodes": status.nodes,
            "total": status.total,
            "available": status.available,
            "tasks": status.tasks,
            "actors": status.actors,
            "workers": status.workers,
            "drivers": status.drivers,
            "driver_pids": status.driver_pids,
            "store": status.store,
            "machine": status.machine,
        }


def whole_number(text: str, name: str, low: int, high: int) -> int:
    """``text`` as an int in [low, high], else a 400 naming the range.

    Checked as ASCII digits of bounded length before ``int``: ``str.isdigit`` also accepts
    digits ``int`` refuses (superscripts), and ``int`` refuses strings over Python's
    4,300-digit limit; either would have been a 500.
    """
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(high))):
        raise ApiError(
            400, f"{name} must be a whole number from {low} to {high}, got {_short(text)}"
        )
    value = int(text)
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}, got {value}")
    return value


def _short(text: str) -> str:
    """A query value for an error line: long ones cut, so the line stays one line."""
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"


def _limit(args: dict[str, str]) -> int:
    return whole_number(args.pop("limit", str(DEFAULT_LIMIT)), "limit", 1, MAX_LIMIT)


class RowsHandler(ApiHandler):
    """A list endpoint: ``?KEY=VALUE`` keeps rows whose KEY equals VALUE; ``?limit=N``."""

    kind: str  # the state API's kind, which is also the response's key
    row_model: type

    def check(self, args: dict[str, str]) -> tuple[list[tuple[str, str, str]], int]:
        limit = _limit(args)
        keys = set(get_type_hints(self.row_model))
        unknown = sorted(set(args) - keys)
        if unknown:
            raise ApiError(
                400, f"unknown filter(s) {unknown}: filter on {sorted(keys)}, or pass limit"
            )
        return [(key, "=", value) for key, value in args.items()], limit

    def build(self, checked: tuple[list[tuple[str, str, str]], int]) -> dict[str, Any]:
        filters, limit = checked
        rows = queries.list_state(self.feed.client, self.kind, filters, limit, REQUEST_TIMEOUT_S)
        return {self.kind: rows}


class NodesHandler(RowsHandler):
    kind, row_model = "nodes", read_models.NodeRow


class TasksHandler(RowsHandler):
    kind, row_model = "tasks", read_models.TaskRow


class ActorsHandler(RowsHandler):
    kind, row_model = "actors", read_models.ActorRow


class ObjectsHandler(RowsHandler):
    kind, row_model = "objects", read_models.ObjectRow


class JobsHandler(RowsHandler):
    kind, row_model = "jobs", read_models.JobRow


class TaskSummaryHandler(ApiHandler):
    def build(self, checked: None) -> models.TaskSummaryResponse:
        return {"summary": queries.task_summary(self.feed.client, timeout=REQUEST_TIMEOUT_S)}


class LogsHandler(ApiHandler):
    """``?pid=`` picks one worker; ``?lines=`` how many of its last lines (default 100)."""

    def check(self, args: dict[str, str]) -> tuple[int | None, int]:
        pid = args.pop("pid", None)
        lines = args.pop("lines", str(LOG_LINES))
        if args:
            raise ApiError(400, f"unknown parameter(s) {sorted(args)}: use pid and lines")
        if pid is not None and not (pid.isascii() and pid.isdigit() and len(pid) <= 10):
            raise ApiError(400, f"pid must be a process id, got {_short(pid)}")
        count = whole_number(lines, "lines", 1, MAX_LOG_LINES)
        return (int(pid) if pid is not None else None), count

    def build(self, checked: tuple[int | None, int]) -> models.LogsResponse:
        pid, lines = checked
        entries = queries.worker_logs(self.feed.client, pid, lines, REQUEST_TIMEOUT_S)
        return {"workers": [worker_log(entry) for entry in entries]}


def worker_log(entry: WorkerLogLines) -> models.WorkerLog:
    """The node's (time, stream number, text) tuples as objects with named streams."""
    return {
        "pid": entry.pid,
        "name": entry.name,
        "lines": [
            {"time": at, "stream": "stdout" if stream == 1 else "stderr", "text": text}
            for at, stream, text in entry.lines
        ],
    }


class TimelineHandler(ApiHandler):
    def build(self, checked: None) -> models.TimelineResponse:
        rows = queries.list_state(self.feed.client, "tasks", (), 10**9, REQUEST_TIMEOUT_S)
        tasks = [row for row in rows if isinstance(row, TaskRow)]
        return {"traceEvents": chrome_trace(tasks), "displayTimeUnit": "ms"}  # type: ignore[typeddict-item]


HANDLERS: dict[str, type[ApiHandler]] = {
    "status": StatusHandler,
    "nodes": NodesHandler,
    "tasks": TasksHandler,
    "tasks/summary": TaskSummaryHandler,
    "actors": ActorsHandler,
    "objects": ObjectsHandler,
    "jobs": JobsHandler,
    "logs": LogsHandler,
    "timeline": TimelineHandler,
}
assert set(HANDLERS) == set(models.ENDPOINTS), "every documented endpoint has a handler"


def routes(feed: ClusterFeed) -> list[tuple[str, type[RequestHandler], dict[str, Any]]]:
    """URL patterns (before the prefix) for bokeh's ``extra_patterns``."""
    return [(f"/api/v0/{path}/?", handler, {"feed": feed}) for path, handler in HANDLERS.items()]
