"""What the running code is: its job, node, worker, task and actor (Ray's runtime context)."""

from __future__ import annotations

import contextvars
import inspect
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rayjupyter.core.id_types import ActorID, JobID, NodeID, PlacementGroupID, TaskID


@dataclass
class _Process:
    """Per process: set when it connects (and, in an actor, when the actor starts)."""

    job_id: bytes = b""
    node_id: bytes = b""
    worker_id: bytes = b""
    actor_id: bytes = b""
    actor_gpu_ids: tuple[int, ...] = ()
    # the running work's scheduling strategy string (scheduling_strategies.resolve): a
    # pool worker's task or an actor's process; "" outside any group or strategy
    placement: str = ""
    # an actor's process: what StartActor said of it
    actor_name: str = ""
    actor_namespace: str = ""
    actor_class_name: str = ""
    actor_methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    actor_resources: dict[str, float] = field(default_factory=dict)
    actor_restarted: bool = False
    actor_is_async: bool = False
    # exit_actor() was called: the process ends after the running call, even if the user's
    # code caught the exception it raised (as in Ray)
    exit_requested: bool = False
    # an async actor's: wakes what watches for exit_actor() (worker_actor._watch_exit)
    on_exit_request: Callable[[], None] | None = None


current = _Process()


def reset() -> None:
    """Forget the ids of a cluster this process left."""
    global current
    current = _Process()


class TaskInfo(NamedTuple):
    """The task (or actor call) running in this thread or coroutine (a tuple: it is made
    for every task, on the hot path)."""

    task_id: bytes
    job_id: bytes
    gpu_ids: tuple[int, ...] = ()
    name: str = ""  # Ray's task name: the options' name, else the function's, or Class.method
    function: Any = None  # what runs: the function, or the actor's bound method
    resources: tuple[tuple[str, float], ...] | None = None  # None: the default, one CPU

    @property
    def function_name(self) -> str:
        """module.function, or module.Class.method for an actor call (Ray's form)."""
        function = self.function
        owner = getattr(function, "__self__", None)
        if owner is not None:
            cls = type(owner)
            if inspect.iscoroutinefunction(function):  # Ray names these by their qualname
                return f"{cls.__module__}.{function.__qualname__}"
            return f"{cls.__module__}.{cls.__name__}.{function.__name__}"
        return f"{getattr(function, '__module__', '')}.{getattr(function, '__name__', '')}"


#: per task, so concurrent calls of a threaded or async actor each see their own
current_task: contextvars.ContextVar[TaskInfo | None] = contextvars.ContextVar(
    "rayjupyter_task", default=None
)


def original_resource_names(resources: dict[str, float]) -> dict[str, float]:
    """A placement group's bundle resources (``CPU_group_0_<id>``) under their own names."""
    out: dict[str, float] = {}
    for name, amount in resources.items():
        base = name.split("_group_", 1)[0]
        if base == "bundle":  # the group's own marker every task in a bundle takes, not asked
            continue
        out[base] = max(out.get(base, 0.0), amount)
    return {k: v for k, v in out.items() if v}


def _deprecated(name: str) -> None:
    warnings.warn(
        f"RuntimeContext.{name} is deprecated. Use get_{name}() instead.",
        DeprecationWarning,
        stacklevel=3,
    )


class RuntimeContext:
    """``rj.get_runtime_context()``: Ray's RuntimeContext, ids as hex strings."""

    # ------------------------------------------------------------------ ids

    def get_job_id(self) -> str:
        task = current_task.get()
        return (task.job_id if task else current.job_id).hex()

    def get_node_id(self) -> str:
        return current.node_id.hex()

    def get_worker_id(self) -> str:
        return current.worker_id.hex()

    def get_task_id(self) -> str | None:
        task = current_task.get()
        return task.task_id.hex() if task else None

    def get_actor_id(self) -> str | None:
        return current.actor_id.hex() if current.actor_id else None

    def get_placement_group_id(self) -> str | None:
        """The placement group this task or actor runs in (hex), None outside any group."""
        placement = current.placement
        return placement.split(":")[1] if placement.startswith("pg:") else None

    @property
    def job_id(self) -> JobID:
        """Deprecated (as in Ray): ``get_job_id()`` gives the hex string."""
        _deprecated("job_id")
        return JobID(bytes.fromhex(self.get_job_id()))

    @property
    def node_id(self) -> NodeID:
        _deprecated("node_id")
        return NodeID(bytes.fromhex(self.get_node_id()))

    @property
    def task_id(self) -> TaskID | None:
        _deprecated("task_id")
        task_id = self.get_task_id()
        return TaskID(bytes.fromhex(task_id)) if task_id else None

    @property
    def actor_id(self) -> ActorID | None:
        _deprecated("actor_id")
        actor_id = self.get_actor_id()
        return ActorID(bytes.fromhex(actor_id)) if actor_id else None

    @property
    def current_placement_group_id(self) -> PlacementGroupID | None:
        warnings.warn(
            "RuntimeContext.current_placement_group_id is deprecated. Use "
            "get_placement_group_id() instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        group = self.get_placement_group_id()
        return PlacementGroupID(bytes.fromhex(group)) if group else None

    def get(self) -> dict[str, Any]:
        """Ray's dict form: job, node and namespace; task and actor when inside one."""
        context: dict[str, Any] = {
            "job_id": JobID(bytes.fromhex(self.get_job_id())),
            "node_id": NodeID(bytes.fromhex(self.get_node_id())),
            "namespace": self.namespace,
        }
        task_id = self.get_task_id()
        if task_id is not None:
            context["task_id"] = TaskID(bytes.fromhex(task_id))
        actor_id = self.get_actor_id()
        if actor_id is not None:
            context["actor_id"] = ActorID(bytes.fromhex(actor_id))
        return context

    # ------------------------------------------------------------------ the running work

    def get_task_name(self) -> str | None:
        task = current_task.get()
        return task.name if task else None

    def get_task_function_name(self) -> str | None:
        task = current_task.get()
        return task.function_name if task and task.function is not None else None

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources this task (or this actor, outside its calls) holds, Ray's names."""
        task = current_task.get()
        if task is not None and not current.actor_id:
            held = {"CPU": 1.0} if task.resources is None else dict(task.resources)
        else:
            held = current.actor_resources
        return original_resource_names(held)

    def get_resource_ids(self) -> dict[str, list[tuple[int, float]]]:
        """Deprecated in Ray: the GPU ids held, with the share of each."""
        return {"GPU": [(gpu, 1.0) for gpu in get_gpu_ids()]}

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerators given to this task or actor, by kind (GPUs only here)."""
        return {"GPU": [str(gpu) for gpu in get_gpu_ids()]}

    def is_canceled(self) -> bool:
        """Whether ``rj.cancel`` reached the running task or actor call."""
        task = current_task.get()
        if task is None:
            raise RuntimeError("is_canceled() is only valid inside a task or an actor call.")
        from rayjupyter.core.api import _client

        return task.task_id in _client().cancelled_calls

    # ------------------------------------------------------------------ actors

    @property
    def current_actor(self) -> Any:
        """A handle to the actor this code runs in."""
        if not current.actor_id:
            raise RuntimeError("current_actor is only valid inside an actor.")
        from rayjupyter.core.actor import ActorHandle

        return ActorHandle(current.actor_id, current.actor_class_name, current.actor_methods)

    def get_actor_name(self) -> str | None:
        """The actor's name ("" for an unnamed actor); None outside an actor, as in Ray."""
        return current.actor_name if current.actor_id else None

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """True in an actor's process started again after its previous one died."""
        return current.actor_restarted

    @property
    def namespace(self) -> str:
        if current.actor_id:
            return current.actor_namespace
        from rayjupyter.core.api import _client

        return _client().namespace

    def should_capture_child_tasks_in_placement_group(self) -> bool:
        """Whether tasks started here go into this code's placement group by default."""
        return current.placement.startswith("pg:") and current.placement.endswith(":1")

    # ------------------------------------------------------------------ the cluster

    @property
    def gcs_address(self) -> str:
        """The head's address (Ray's GCS address plays that role)."""
        from rayjupyter.core.api import _client

        return _client().address

    def get_node_labels(self) -> dict[str, str]:
        """Node labels are not supported here: always empty."""
        return {}

    def get_session_name(self) -> str:
        from rayjupyter.core.api import _client

        return _client().session

    def get_temp_dir(self) -> str:
        from rayjupyter.core.api import _client
        from rayjupyter.core.config import session_dir

        return str(session_dir(_client().session))

    def get_dashboard_url(self) -> str:
        """The dashboard started by ``init(include_dashboard=True)``, else ""."""
        from rayjupyter.core.api import _state

        context = _state.get("context")
        return str(getattr(context, "dashboard_url", None) or "")

    @property
    def runtime_env(self) -> dict[str, Any]:
        env: dict[str, Any] = json.loads(self.get_runtime_env_string())
        return env

    def get_runtime_env_string(self) -> str:
        """The runtime_env this process runs in, as JSON ("{}" for none)."""
        from rayjupyter.core.api import _client

        env = getattr(_client(), "runtime_env", None)
        spec: dict[str, Any] = {}
        if env is not None and env.env_vars:
            spec["env_vars"] = dict(env.env_vars)
        if env is not None and env.working_dir:
            spec["working_dir"] = env.working_dir  # the package's digest, as nodes know it
        if env is not None and env.py_modules:
            spec["py_modules"] = list(env.py_modules)
        return json.dumps(spec)

    def __repr__(self) -> str:
        return (
            f"RuntimeContext(job_id={self.get_job_id()}, node_id={self.get_node_id()}, "
            f"task_id={self.get_task_id()}, actor_id={self.get_actor_id()})"
        )


def get_gpu_ids() -> list[int]:
    """The GPU ids given to the current task or actor (CUDA_VISIBLE_DEVICES holds the same)."""
    task = current_task.get()
    if task and task.gpu_ids:
        return list(task.gpu_ids)
    return list(current.actor_gpu_ids)
