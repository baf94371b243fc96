"""The errors rayjupyter raises, with Ray's names, in one tree.

    Exception
    └── RayError                       base of every rayjupyter error
        ├── RayTaskError               a task raised; at get() it is also the user's own type
        ├── WorkerCrashedError         the worker died mid-task and the retries ran out
        ├── GetTimeoutError            get() passed its timeout         (also a TimeoutError)
        ├── ObjectStoreFullError       the store cannot make room, even by spilling
        ├── ObjectLostError            every copy of an object is gone
        │   └── OwnerDiedError         ... because the process that owned it died
        ├── RaySystemError             the runtime itself failed (a bug or a broken install)
        ├── TaskCancelledError         cancel() stopped the task
        ├── RayActorError              an actor cannot run the call
        │   ├── ActorDiedError         ... because it died and will not restart
        │   └── ActorUnavailableError  ... for now (restarting or unreachable)
        ├── RuntimeEnvSetupError       a task's runtime_env could not be set up on its node
        ├── TaskUnschedulableError     no node may run the task (e.g. its affinity node is dead)
        ├── ActorUnschedulableError    no node may run the actor
        ├── TaskPlacementGroupRemoved  the task's placement group was removed before it ran
        ├── ActorPlacementGroupRemoved the actor's placement group was removed
        ├── PendingCallsLimitExceeded  a caller has max_pending_calls calls pending on an actor
        ├── SerializationError         a value cannot be pickled        (also a TypeError)
        ├── ClusterConnectionError     no cluster at that address       (also a ConnectionError)
        └── ... Ray's rarer errors (NodeDiedError, OutOfMemoryError, ...): exceptions_extra.py

Every error keeps its type, message and attributes through pickle and cloudpickle, because
errors are made in one process and raised in another.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import pickle
import sys
import threading
import traceback
import types
from collections.abc import Callable
from typing import Any, ClassVar

__all__ = [
    "ActorDiedError",
    "ActorPlacementGroupRemoved",
    "ActorUnavailableError",
    "ActorUnschedulableError",
    "ClusterConnectionError",
    "GetTimeoutError",
    "ObjectLostError",
    "ObjectStoreFullError",
    "OwnerDiedError",
    "PendingCallsLimitExceeded",
    "RayActorError",
    "RayError",
    "RaySystemError",
    "RayTaskError",
    "RuntimeEnvSetupError",
    "SerializationError",
    "TaskCancelledError",
    "TaskPlacementGroupRemoved",
    "TaskUnschedulableError",
    "WorkerCrashedError",
]

# Frames from the engine's own files are cut from the top of a remote traceback: the user
# wants to see their function, not our worker loop. (os.path, not pathlib: a node and its
# workers import pathlib for nothing else, and it costs their start ~3 ms.)
_CORE_DIR = os.path.dirname(os.path.realpath(__file__)) + os.sep
_REPR_LIMIT = 80


class RayError(Exception):
    """Base of every rayjupyter error, so `except RayError` catches all of them."""

    default_message: ClassVar[str] = "The rayjupyter runtime reported an error."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(self.default_message if message is None else message)


class WorkerCrashedError(RayError):
    """The worker process died while running the task, and max_retries ran out."""

    default_message = (
        "The worker died unexpectedly while running this task (os._exit, a signal or a "
        "segfault); raise max_retries to retry it, or look at the worker's last output above."
    )


class GetTimeoutError(RayError, TimeoutError):
    """get() did not receive the value within its timeout; also a builtin TimeoutError."""

    default_message = "get() timed out; pass a larger timeout= or check the task's progress."


class ObjectStoreFullError(RayError):
    """The object store is full of pinned objects and cannot spill any more to disk."""

    default_message = (
        "The object store is full of objects in use; drop some ObjectRefs or raise "
        "object_store_memory in init()."
    )


class ObjectLostError(RayError):
    """Every copy of an object is gone (its node died or it was freed)."""

    default_message = "The object was lost: no node holds a copy any more."


class OwnerDiedError(ObjectLostError):
    """The object is unreachable because the process that owned it died."""

    default_message = "The object's owner (the process that created its ObjectRef) died."


class RaySystemError(RayError):
    """The runtime itself failed: a bug, a broken install or a version mismatch."""

    default_message = "The rayjupyter runtime failed internally; please report this."


class TaskCancelledError(RayError):
    """The task was cancelled with cancel() before it produced a value."""

    default_message = "The task was cancelled."


class RayActorError(RayError):
    """The actor cannot run the method call."""

    default_message = "The actor cannot run this call."
    #: the actor's id (hex), as Ray's attribute; None when the error names no actor
    actor_id: str | None = None


class ActorDiedError(RayActorError):
    """The actor died and will not be restarted (max_restarts ran out or it was killed)."""

    default_message = "The actor died and will not be restarted; raise max_restarts to survive."


class ActorUnavailableError(RayActorError):
    """The actor is alive but unreachable for now, e.g. while it restarts."""

    default_message = "The actor is temporarily unavailable (restarting or unreachable)."


class ClusterConnectionError(RayError, ConnectionError):
    """No cluster answered at the address; also a builtin ConnectionError."""

    default_message = (
        "Could not connect to the cluster; check the address, or call init() with no "
        "address to start a local one."
    )


class RuntimeEnvSetupError(RayError):
    """A task's or actor's runtime_env could not be set up on the node that was to run it."""

    default_message = "The runtime_env could not be set up on the node."


class TaskUnschedulableError(RayError):
    """No node may run the task: its scheduling strategy rules every live node out."""

    default_message = "The task cannot be scheduled on any node of the cluster."


class ActorUnschedulableError(RayError):
    """No node may run the actor: its scheduling strategy rules every live node out."""

    default_message = "The actor cannot be scheduled on any node of the cluster."


class TaskPlacementGroupRemoved(RayError):
    """The placement group the task was to run in was removed before it ran."""

    default_message = "The placement group corresponding to this task has been removed."


class ActorPlacementGroupRemoved(RayError):
    """The placement group the actor ran in was removed."""

    default_message = "The placement group corresponding to this Actor has been removed."


class PendingCallsLimitExceeded(RayError):
    """Raised at ``.remote()``: this caller already has the actor's ``max_pending_calls``
    calls submitted and not finished."""

    default_message = "Too many calls are pending on this actor (max_pending_calls)."


class SerializationError(RayError, TypeError):
    """A value cannot be pickled; raised at submit/put/return time and names the value."""

    default_message = "A value could not be serialized."

    @classmethod
    def for_value(
        cls, value: object, where: str, cause: BaseException, hint: str = ""
    ) -> SerializationError:
        """Build the message that names the value, its type and where it was.

        `where` reads like "argument 0 of task 'f'"; `cause` is the pickler's error.
        """
        message = f"Could not serialize {where}: {_short_repr(value)} of type {_type_name(value)}"
        message += f": {cause}"
        if hint:
            message += f". {hint}"
        return cls(message)


def _type_name(value: object) -> str:
    """The importable name of a value's type, without the noise of "builtins."."""
    return _qualified_name(type(value))


def _qualified_name(kind: type) -> str:
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _short_repr(value: object) -> str:
    """repr() cut to fit on a line, and never raising (the value is already misbehaving)."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        return f"<{_type_name(value)} object (repr failed)>"
    if len(text) > _REPR_LIMIT:
        return text[: _REPR_LIMIT - 3] + "..."
    return text


# --- RayTaskError ---------------------------------------------------------------------


class RayTaskError(RayError):
    """A task raised an exception; carries the remote traceback and the original error.

    `as_instanceof_cause()` turns it into an instance of a class that subclasses both
    RayTaskError and the original exception's type, so `except ValueError` still works.
    """

    function_name: str
    traceback_str: str
    cause: BaseException | None
    pid: int
    ip: str | None

    def __init__(
        self,
        function_name: str,
        traceback_str: str,
        cause: BaseException | None = None,
        pid: int | None = None,
        ip: str | None = None,
    ) -> None:
        # Set fields directly: in a dual class, super().__init__ would reach the user's
        # exception type, whose __init__ may want other arguments.
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = os.getpid() if pid is None else pid
        self.ip = ip
        self.args = (self.header(),)

    @classmethod
    def from_exception(
        cls,
        exc: BaseException,
        function_name: str,
        pid: int | None = None,
        ip: str | None = None,
    ) -> RayTaskError:
        """Wrap an exception caught while running a task, formatting its traceback now.

        The cause is kept only in a form that survives a pickle round trip; an exception
        that cannot be sent is reduced to its text in the traceback.
        """
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_CORE_DIR):
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        cause, note = _sendable_cause(exc)
        if note:
            text += f"({note})\n"
        return cls(function_name, text, cause, pid, ip)

    def header(self) -> str:
        """The first line: which function failed, and in which process."""
        where = f"pid={self.pid}" if self.ip is None else f"pid={self.pid}, ip={self.ip}"
        return f"{self.function_name}() ({where})"

    def __str__(self) -> str:
        return f"{self.header()}\n{self.traceback_str.rstrip()}"

    def _render_traceback_(self) -> list[str]:
        """What IPython prints instead of the local traceback: the remote one."""
        return [
            f"{type(self).__name__}: {self.header()}",
            *self.traceback_str.rstrip().splitlines(),
        ]

    def as_instanceof_cause(self) -> RayTaskError:
        """This error as an instance of both RayTaskError and the cause's own type.

        Falls back to self when there is no cause or its type cannot be subclassed.
        """
        cause_type = _user_cause_type(self.cause)
        if cause_type is None or isinstance(self, cause_type):
            return self
        dual = _dual_class(cause_type)
        if dual is None:
            return self
        try:
            instance = dual(self.function_name, self.traceback_str, self.cause, self.pid, self.ip)
        except Exception:  # an exotic __new__ on the user's type
            return self
        _copy_builtin_fields(instance, self.cause)
        instance.__dict__.update(
            (k, v) for k, v in self.__dict__.items() if k not in instance.__dict__
        )
        return instance

    def __reduce__(self) -> tuple[Any, ...]:
        own = ("function_name", "traceback_str", "cause", "pid", "ip")
        extra = {k: v for k, v in self.__dict__.items() if k not in own}
        cause = None if self.cause is None else _CauseCarrier(self.cause)
        # A dual class exists only in this process: send None and derive it again there.
        kind = None if type(self) in _DUAL_TYPES else type(self)
        args = (kind, self.function_name, self.traceback_str, cause, self.pid, self.ip)
        return (_rebuild_task_error, args, extra or None)


def _rebuild_task_error(
    kind: type[RayTaskError] | None,
    function_name: str,
    traceback_str: str,
    cause: BaseException | None,
    pid: int,
    ip: str | None,
) -> RayTaskError:
    """Unpickle a RayTaskError; kind None means "a dual class", re-derived on this side."""
    error = RayTaskError.__new__(kind or RayTaskError)
    RayTaskError.__init__(error, function_name, traceback_str, cause, pid, ip)
    return error.as_instanceof_cause() if kind is None else error


def task_failure(exc: BaseException) -> BaseException:
    """The error a task (or actor ``__init__``) ends with, for any exception its code raised:
    a BaseException of the user's fails the task as in Ray, but SystemExit ends the worker,
    and KeyboardInterrupt and asyncio's CancelledError stay cancels (raised on here)."""
    asyncio = sys.modules.get("asyncio")
    if isinstance(exc, SystemExit | KeyboardInterrupt) or (
        asyncio is not None and isinstance(exc, asyncio.CancelledError)
    ):
        raise exc
    return exc


def _user_cause_type(cause: BaseException | None) -> type[BaseException] | None:
    """The user's own exception type, looking through RayTaskErrors of nested tasks."""
    seen = 0
    while isinstance(cause, RayTaskError) and seen < 100:
        cause = cause.cause
        seen += 1
    if cause is None or isinstance(cause, RayTaskError):
        return None
    return type(cause)


_DUAL_CLASSES: dict[type[BaseException], type[RayTaskError] | None] = {}
_DUAL_TYPES: set[type[RayTaskError]] = set()
_DUAL_LOCK = threading.Lock()


def _dual_class(cause_type: type[BaseException]) -> type[RayTaskError] | None:
    """The cached class deriving from RayTaskError and cause_type, or None if impossible."""
    with _DUAL_LOCK:
        if cause_type in _DUAL_CLASSES:
            return _DUAL_CLASSES[cause_type]
        name = f"RayTaskError({cause_type.__name__})"
        namespace = {
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"A RayTaskError that is also a {_qualified_name(cause_type)}.",
            "__getattr__": _delegate_to_cause,
        }
        if issubclass(cause_type, _GROUP_TYPES):  # its __new__ takes (message, errors)
            namespace["__new__"] = _group_dual_new
        try:
            dual: type[RayTaskError] | None = type(name, (RayTaskError, cause_type), namespace)
        except Exception:  # final type, layout conflict, or a refusing __init_subclass__
            dual = None
        _DUAL_CLASSES[cause_type] = dual
        if dual is not None:
            _DUAL_TYPES.add(dual)
        return dual


#: BaseExceptionGroup where Python has it (3.11+)
_GROUP_TYPES: tuple[type[BaseException], ...] = tuple(
    t for t in (getattr(builtins, "BaseExceptionGroup", None),) if t is not None
)


def _group_dual_new(cls: type, function_name: str, traceback_str: str, cause: Any, *_: Any) -> Any:
    """An ExceptionGroup's dual keeps the group's message and members (``except*`` works)."""
    return _GROUP_TYPES[0].__new__(cls, cause.message, cause.exceptions)


def _delegate_to_cause(self: RayTaskError, name: str) -> Any:
    """Attributes the user's exception had (e.code, e.response) read through to the cause."""
    if name.startswith("__") or name == "cause":
        raise AttributeError(name)
    cause = self.__dict__.get("cause")
    if cause is None:
        raise AttributeError(name)
    return getattr(cause, name)


def _builtin_fields(exc: BaseException) -> dict[str, Any]:
    """C-level fields of builtin exception types (OSError.errno, StopIteration.value, ...)."""
    fields: dict[str, Any] = {}
    for klass in type(exc).__mro__:
        if klass is BaseException or klass is object or klass.__module__ != "builtins":
            continue
        for name, attr in vars(klass).items():
            if name.startswith("__"):
                continue
            if isinstance(attr, types.GetSetDescriptorType | types.MemberDescriptorType):
                with contextlib.suppress(AttributeError):
                    fields.setdefault(name, getattr(exc, name))
    return fields


def _copy_builtin_fields(target: BaseException, source: BaseException | None) -> None:
    """Give the dual instance the cause's builtin fields (its __new__ parsed our args)."""
    if source is None:
        return
    for name, value in _builtin_fields(source).items():
        with contextlib.suppress(AttributeError, TypeError):
            setattr(target, name, value)


class _CauseCarrier:
    """Pickles an exception by type, args and attributes, never calling its __init__ again.

    User exceptions often have an __init__ whose parameters differ from self.args, which
    makes the default pickling fail on load; this sidesteps that.
    """

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[Callable[..., BaseException], tuple[Any, ...]]:
        exc = self.exc
        if isinstance(exc, RayTaskError):
            return (_identity, (exc,))
        attrs = dict(getattr(exc, "__dict__", {}))
        return (_rebuild_exception, (type(exc), exc.args, _builtin_fields(exc), attrs))


def _identity(exc: BaseException) -> BaseException:
    return exc


def _rebuild_exception(
    kind: type[BaseException],
    args: tuple[Any, ...],
    fields: dict[str, Any],
    attrs: dict[str, Any],
) -> BaseException:
    """Recreate an exception without running its __init__ (see _CauseCarrier)."""
    try:
        exc = kind.__new__(kind, *args)
    except Exception:
        exc = kind.__new__(kind)
    exc.args = args
    for name, value in fields.items():
        with contextlib.suppress(AttributeError, TypeError):
            setattr(exc, name, value)
    if attrs:
        exc.__dict__.update(attrs)
    return exc


def _sendable_cause(exc: BaseException) -> tuple[BaseException | None, str]:
    """The exception itself if it survives a round trip, else a reduced copy or None.

    Returns (cause, note); the note says what was lost, and is "" when nothing was.
    """
    try:
        import cloudpickle  # the serializer tasks use; imported late to keep import cheap
    except ImportError:  # pragma: no cover - a hard dependency
        dumps: Callable[[Any], bytes] = pickle.dumps
    else:
        dumps = cloudpickle.dumps
    try:
        pickle.loads(dumps(_CauseCarrier(exc)))
        return exc, ""
    except Exception as first:
        problem = f"{type(first).__name__}: {first}"
    name = _type_name(exc)
    # Keep the type and args, drop the attributes that would not pickle.
    try:
        bare = _rebuild_exception(type(exc), exc.args, _builtin_fields(exc), {})
        pickle.loads(dumps(_CauseCarrier(bare)))
    except Exception:
        return None, f"the {name} could not be pickled, so only its text travels: {problem}"
    return bare, f"the {name}'s attributes could not be pickled and were dropped: {problem}"


# Ray's rarer error classes, in the same tree (drawn in their module's docstring); kept in a
# module of their own so this one stays readable. Imported last: they subclass the above.
from rayjupyter.core.exceptions_extra import *  # noqa: E402, F403
from rayjupyter.core.exceptions_extra import __all__ as _extra  # noqa: E402

__all__ += _extra
