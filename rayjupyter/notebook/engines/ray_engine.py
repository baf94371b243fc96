"""Ray behind the engine interface: ``%ray_connect --ray ADDRESS`` (a driver on the cluster),
``--ray`` alone (a local Ray this kernel starts) and ``ray://HOST:PORT`` (Ray Client).

``ray`` is imported here only, and only when this engine connects: a notebook on our runtime
never loads it. Everything goes through Ray's public API (``ray.init``, ``ray.get``,
``ray.wait``, ``ray.cancel``, ``ray.nodes``, the resource calls, ``ray.util.state``)."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from rayjupyter.core import cluster_repr
from rayjupyter.core.read_models import NodeStatus
from rayjupyter.notebook.engines import ray_metrics, ray_status
from rayjupyter.notebook.engines.base import ConnectRequest, EngineName, ProgressSource

CLIENT_SCHEME = "ray://"
PROBE_TIMEOUT_S = 3.0
STATE_API_TIMEOUT_S = 2
STATE_API_RETRY_S = 30.0  # after the state API fails, ask again only this much later
CLIENT_INSTALL = 'pip install "ray[client]"'


class RayConnectError(ConnectionError):
    """%ray_connect to Ray failed; shown as its one line (which names the fix)."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def import_ray() -> Any:
    """``ray``, imported on first use, with line-by-line worker output for ``%%remote``.

    Ray folds lines that differ only in numbers across workers ("[repeated 4x]"), which
    garbles a cell's own prints; its switch is read once at import, so it is set before
    (a user's own setting wins, and a ray imported earlier keeps its own)."""
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import ray
    except ImportError:
        raise RayConnectError(
            "Ray is not installed in this kernel's Python: pip install ray (and ray[client] "
            "for ray:// addresses)"
        ) from None
    return ray


def describe_target(address: str | None) -> str:
    return "a local Ray started by this kernel" if address is None else address


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in seconds, with the fix, when nothing accepts connections at a Ray address."""
    hostport = address.removeprefix(CLIENT_SCHEME)
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayConnectError(
            f"bad Ray address {address!r}: expected HOST:PORT (the head's GCS port, 6379 by "
            f"default), 'auto', or ray://HOST:PORT (Ray Client, 10001 by default)"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        kind = "Ray Client server" if address.startswith(CLIENT_SCHEME) else "Ray cluster"
        raise RayConnectError(
            f"No {kind} at {hostport} ({reason}): start one there with `ray start --head`, or "
            f"check the address; `%ray_connect --ray` with no address starts a local Ray."
        ) from None


def _reason(exc: BaseException, limit: int = 400) -> str:
    """Ray's error in one line: its first line and, when it has more, its last (the cause)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ship_runner_by_value() -> None:
    """Ray pickles the ``%%remote`` runner and its output helpers by value, so a cluster
    without rayjupyter installed runs the cells (the runner imports only the stdlib)."""
    from ray import cloudpickle

    from rayjupyter.notebook import cell_runner, output_routing

    for module in (cell_runner, output_routing):
        cloudpickle.register_pickle_by_value(module)  # type: ignore[no-untyped-call]


class RaySummary:
    """The connection card of a Ray cluster, drawn live as our own clusters' are."""

    def __init__(self, engine: RayEngine) -> None:
        self.engine = engine
        self.address = engine.target or ""
        self.local = engine.local

    def _title(self) -> str:
        return "Ray · local cluster" if self.local else "Ray · cluster"

    def _status(self) -> NodeStatus | None:
        if not self.engine.connected or self.engine.summary_owner is not self:
            return None
        try:
            return self.engine.status()
        except Exception:  # a repr must not raise: show the card without live figures
            return None

    def _repr_html_(self) -> str:
        return cluster_repr.summary_html(
            self.address,
            self.local,
            self._status(),
            self.engine.dashboard_url(),
            title=self._title(),
        )

    def __repr__(self) -> str:
        return cluster_repr.summary_text(
            self.address,
            self.local,
            self._status(),
            self.engine.dashboard_url(),
            title=self._title(),
        )


class RayEngine:
    """One Ray connection per kernel, made and ended by ``%ray_connect``/``%ray_disconnect``."""

    name: EngineName = "ray"

    def __init__(self) -> None:
        self.target: str | None = None  # the address connected to, as the user gave it
        self.local = False
        self.context: Any = None
        self.summary_owner: RaySummary | None = None
        self._state_api_down_until = 0.0
        self._remotes: dict[int, Any] = {}
        self._guard: Any = None  # the LocalRayGuard of a local Ray this kernel started
        self._metrics = ray_metrics.NodeMetrics()  # each node's machine, from its agent

    @property
    def ray(self) -> Any:
        return import_ray()

    @property
    def connected(self) -> bool:
        return self.target is not None and "ray" in sys.modules and self.ray.is_initialized()

    # ------------------------------------------------------------------ connecting

    def connect(self, request: ConnectRequest) -> tuple[Any, str]:
        address = request.address
        wanted = "local" if address is None else address
        if self.connected and self.target == wanted:
            return self.summary(), ""
        local_options = {
            "num_cpus": request.num_cpus,
            "num_gpus": request.num_gpus,
            "object_store_memory": request.object_store_memory,
        }
        given = [f"--{k.replace('_', '-')}" for k, v in local_options.items() if v is not None]
        if address is not None and given:
            raise RayConnectError(
                f"{', '.join(given)} only apply to a local Ray (`%ray_connect --ray` with no "
                f"address); a running cluster keeps the resources it was started with"
            )
        if address is not None and address != "auto":
            if address.startswith(CLIENT_SCHEME) and importlib.util.find_spec("grpc") is None:
                raise RayConnectError(
                    f"Ray Client ({address}) needs grpcio in this kernel: {CLIENT_INSTALL}"
                )
            probe(address)
        ray = import_ray()
        note = ""
        if ray.is_initialized():
            before = self.target or "a Ray session started outside %ray_connect"
            note = f"Switched from {before} to {describe_target(address)}."
            self.disconnect()
        kwargs: dict[str, Any] = {"namespace": request.namespace}
        if address is None:
            kwargs["address"] = "local"  # a new Ray of this kernel's, whatever RAY_ADDRESS says
            kwargs.update({k: v for k, v in local_options.items() if v is not None})
        else:
            kwargs["address"] = address
        from rayjupyter.notebook.engines import ray_local_guard

        children_before = ray_local_guard.children_now()
        try:
            self.context = ray.init(**kwargs)
        except Exception as exc:
            raise RayConnectError(
                f"could not connect to Ray at {describe_target(address)}: {_reason(exc)}"
            ) from None
        self.target = wanted
        self.local = address is None
        if self.local:
            self._guard = ray_local_guard.guard_new_children(children_before)
        self._state_api_down_until = 0.0
        from rayjupyter.notebook.engines import ray_progress

        ray_progress.install_get_hook(ray)
        return self.summary(), note

    def disconnect(self) -> str:
        ray = sys.modules.get("ray")
        target, local = self.target, self.local
        self.target, self.context, self.summary_owner = None, None, None
        self._remotes.clear()
        guard, self._guard = self._guard, None
        if ray is None or not ray.is_initialized():
            if guard is not None:
                guard.stop()
            return "Not connected to a cluster."
        from rayjupyter.notebook.engines import ray_progress

        ray_progress.uninstall_get_hook(ray)
        ray.shutdown()
        if guard is not None:
            guard.stop()
        if local:
            return "Stopped the local Ray started by this kernel."
        return f"Disconnected from the Ray cluster at {target} (it keeps running)."

    def summary(self) -> RaySummary:
        self.summary_owner = RaySummary(self)
        return self.summary_owner

    def dashboard_url(self) -> str | None:
        url = getattr(self.context, "dashboard_url", None)
        if not url:
            return None
        return str(url) if "://" in str(url) else f"http://{url}"

    # ------------------------------------------------------------------ state

    def status(self, timeout: float = 10.0) -> NodeStatus:
        ray = self.ray
        tasks, actors = self._state_summaries()
        nodes = ray.nodes()
        return ray_status.node_status(
            nodes,
            ray.cluster_resources(),
            ray.available_resources(),
            tasks=tasks,
            actors=actors,
            machines=self._metrics.sample(nodes),
        )

    def _state_summaries(self) -> tuple[dict[str, int] | None, dict[str, int] | None]:
        """Task and actor counts from Ray's state API (served by the dashboard), if it answers."""
        if time.monotonic() < self._state_api_down_until:
            return None, None
        try:
            from ray.util import state

            from rayjupyter.notebook.engines.ray_progress import state_api_address

            address = state_api_address()  # this cluster's, not "the" Ray on the machine
            tasks = state.summarize_tasks(
                address=address, timeout=STATE_API_TIMEOUT_S, raise_on_missing_output=False
            )
            actors = state.summarize_actors(
                address=address, timeout=STATE_API_TIMEOUT_S, raise_on_missing_output=False
            )
        except Exception:  # no dashboard (or it is busy): counts left out, said in the notes
            self._state_api_down_until = time.monotonic() + STATE_API_RETRY_S
            return None, None
        return ray_status.live_task_counts(tasks), ray_status.actor_counts(actors)

    def status_notes(self) -> list[str]:
        if self._metrics.answered:
            machine = (
                "Machine CPU and memory come from each node's metrics endpoint (Ray's metrics "
                "agent, every few seconds)"
            )
        else:
            machine = (
                "No node's metrics endpoint answered (Ray's metrics agents come with "
                "ray[default]): the machine CPU line is the CPU slots in use, memory unknown"
            )
        notes = [f"{machine}; Ray reports no node's free resources: shown are totals."]
        if time.monotonic() < self._state_api_down_until:
            notes.append(
                "Task and actor counts need Ray's state API, which the cluster's dashboard "
                "serves: start the head with --include-dashboard=true."
            )
        return notes

    # ------------------------------------------------------------------ tasks

    def submit_cell(self, function: Any, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        key = id(function)
        if key not in self._remotes:
            _ship_runner_by_value()
            self._remotes[key] = self.ray.remote(function)
        return self._remotes[key].options(**options).remote(*args)

    def get(self, ref: Any, timeout: float | None = None) -> Any:
        ray = self.ray
        try:
            return ray.get(ref, timeout=timeout)
        except KeyboardInterrupt:  # a kernel interrupt stops the cluster's work too
            ray.cancel(ref, force=True)
            raise

    def is_ready(self, ref: Any) -> bool:
        ready, _ = self.ray.wait([ref], num_returns=1, timeout=0, fetch_local=False)
        return bool(ready)

    def cancel(self, ref: Any, *, force: bool = True) -> None:
        self.ray.cancel(ref, force=force)

    def is_timeout(self, error: BaseException) -> bool:
        return isinstance(error, self.ray.exceptions.GetTimeoutError)

    def is_cancelled(self, error: BaseException) -> bool:
        return isinstance(error, self.ray.exceptions.TaskCancelledError)

    def task_traceback(self, error: BaseException) -> str | None:
        if not isinstance(error, self.ray.exceptions.RayTaskError):
            return None
        # the error Ray raises is an instance of the cause's type too, whose text is the
        # remote traceback (its traceback_str stays on the RayTaskError it was made from)
        return str(vars(error).get("traceback_str") or error)

    def set_task_traceback(self, error: BaseException, text: str) -> None:
        """IPython prints ``_render_traceback_`` instead of the local frames: the cell's own."""
        cause = getattr(error, "cause", None)
        header = f"{type(cause).__name__}: {cause}" if cause is not None else str(error)
        lines = [f"RayTaskError: {header}", *text.rstrip().splitlines()]
        error._render_traceback_ = lambda: lines  # type: ignore[attr-defined]

    def progress_source(self, refs: Sequence[Any]) -> ProgressSource | None:
        ray = sys.modules.get("ray")
        if ray is None or not all(isinstance(ref, ray.ObjectRef) for ref in refs):
            return None
        from rayjupyter.notebook.engines.ray_progress import RayProgress

        return RayProgress(refs)
