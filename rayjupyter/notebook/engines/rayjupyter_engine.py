"""rayjupyter's own runtime behind the engine interface: the code paths the notebook always
used (``connection.py``, the driver's object table, the node's status query)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rayjupyter.core.read_models import NodeStatus
from rayjupyter.notebook.engines.base import ConnectRequest, EngineName, ProgressSource


class ClientProgress:
    """Progress from this driver's object table and the node's running-task count."""

    STATUS_TIMEOUT_S = 2.0

    def __init__(self, client: Any) -> None:
        self.client = client
        self._running = 0

    def finished(self, object_ids: Sequence[bytes]) -> dict[bytes, bool]:
        objects = self.client.objects
        out: dict[bytes, bool] = {}
        for oid in object_ids:
            info = objects.get(oid)
            if info is not None:
                out[oid] = bool(info[3])
        return out

    def running(self) -> int:
        from rayjupyter.core import queries

        try:
            status = queries.status(self.client, timeout=self.STATUS_TIMEOUT_S)
        except Exception:  # closed or busy: keep the last figure, the bar still moves
            return self._running
        self._running = status.tasks_running
        return self._running

    def name(self, object_id: bytes) -> str:
        from rayjupyter.notebook.task_tap import TAP

        return TAP.name(object_id)

    def error(self, object_id: bytes) -> str:
        return ""  # the error itself raises at get; the bar counts the failure

    @property
    def settle_s(self) -> float:
        return 0.0

    def wait(self, object_ids: Sequence[bytes], seconds: float) -> None:
        self.client.wait_objects(list(object_ids), len(object_ids), seconds)

    @property
    def closed(self) -> bool:
        return bool(self.client._closed)


class RayJupyterEngine:
    """The engine of ``%ray_connect`` with a rayjupyter address or none."""

    name: EngineName = "rayjupyter"

    @property
    def connected(self) -> bool:
        from rayjupyter.core import api

        client = api._state["client"]
        return client is not None and not client._closed

    def connect(self, request: ConnectRequest) -> tuple[Any, str]:
        from rayjupyter.notebook import connection

        return connection.connect(
            request.address,
            num_cpus=request.num_cpus,
            num_gpus=request.num_gpus,
            object_store_memory=request.object_store_memory,
            namespace=request.namespace,
        )

    def disconnect(self) -> str:
        from rayjupyter.notebook import connection

        return connection.disconnect()

    def summary(self) -> Any:
        from rayjupyter.core import api

        return api._state["context"]

    def client(self) -> Any:
        from rayjupyter.core import api

        return api._client()

    def status(self, timeout: float = 10.0) -> NodeStatus:
        from rayjupyter.core import queries

        return queries.status(self.client(), timeout=timeout)

    def status_notes(self) -> list[str]:
        return []

    def dashboard_url(self) -> str | None:
        from rayjupyter.core import api

        context = api._state["context"]
        return context.dashboard_url if context is not None else None

    def submit_cell(self, function: Any, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        from rayjupyter.core.api import remote

        return _remote_of(function, remote).options(**options).remote(*args)

    def get(self, ref: Any, timeout: float | None = None) -> Any:
        from rayjupyter.core import api

        return api.get(ref, timeout=timeout)  # api.get cancels on Ctrl-C itself

    def is_ready(self, ref: Any) -> bool:
        from rayjupyter.core import api

        client = api._state["client"]
        return client is not None and ref.binary() in client.objects

    def cancel(self, ref: Any, *, force: bool = True) -> None:
        from rayjupyter.core import api

        api.cancel(ref, force=force)

    def is_timeout(self, error: BaseException) -> bool:
        from rayjupyter.core.exceptions import GetTimeoutError

        return isinstance(error, GetTimeoutError)

    def is_cancelled(self, error: BaseException) -> bool:
        from rayjupyter.core.exceptions import TaskCancelledError

        return isinstance(error, TaskCancelledError)

    def task_traceback(self, error: BaseException) -> str | None:
        from rayjupyter.core.exceptions import RayTaskError

        return error.traceback_str if isinstance(error, RayTaskError) else None

    def set_task_traceback(self, error: BaseException, text: str) -> None:
        error.traceback_str = text  # type: ignore[attr-defined]  # a RayTaskError: it renders it

    def progress_source(self, refs: Sequence[Any]) -> ProgressSource | None:
        from rayjupyter.core import api
        from rayjupyter.core.object_ref import ObjectRef

        if not all(isinstance(ref, ObjectRef) for ref in refs):
            return None
        return ClientProgress(api._client())


_remotes: dict[int, Any] = {}


def _remote_of(function: Any, remote: Any) -> Any:
    """One remote function per Python function, so the node caches it once per connection."""
    key = id(function)
    if key not in _remotes:
        _remotes[key] = remote(function)
    return _remotes[key]
