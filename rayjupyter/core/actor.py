"""Actors from the caller's side: ``@remote`` classes, handles, method calls, ``kill``.

A handle counts like an ObjectRef (the node ends a non-detached actor when no handle is
left anywhere), pickles into tasks and other actors, and sends calls through the same
submit path as tasks, so arguments, dependencies and results behave the same.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from typing import Any

from rayjupyter.core import options as option_table
from rayjupyter.core import protocol as P
from rayjupyter.core import (
    queries,
    runtime_context,
    runtime_env,
    scheduling_strategies,
    serialization,
    signatures,
)
from rayjupyter.core.client import Client
from rayjupyter.core.config import check_definition_size
from rayjupyter.core.exceptions import PendingCallsLimitExceeded, SerializationError
from rayjupyter.core.generators import STREAMING, ObjectRefGenerator
from rayjupyter.core.object_ref import ObjectRef, reference_counter
from rayjupyter.core.remote_function import generator_options, put_serialized
from rayjupyter.core.task_args import pack_args

ACTOR_INDEX = 0xFFFFFFFF  # an actor id is its creation's task id with this index
ASYNC_DEFAULT_CONCURRENCY = 1000  # as in Ray


class _PendingCalls:
    """Calls this process made on each actor and whose result is not here yet, counted only
    for actors with a ``max_pending_calls`` limit (as in Ray, per caller and actor)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # results arrive on the client's IO thread
        self._count: dict[bytes, int] = {}

    def take(self, actor_id: bytes, limit: int, label: str) -> None:
        with self._lock:
            count = self._count.get(actor_id, 0)
            if count >= limit:
                raise PendingCallsLimitExceeded(
                    f"{label} was not submitted: this caller already has {count} calls pending "
                    f"on the actor, its max_pending_calls={limit}. Wait for some results "
                    f"(rj.get / rj.wait) before calling again, or raise max_pending_calls "
                    f"(-1: no limit)."
                )
            self._count[actor_id] = count + 1

    def done(self, actor_id: bytes) -> None:
        with self._lock:
            count = self._count.get(actor_id, 0) - 1
            if count > 0:
                self._count[actor_id] = count
            else:
                self._count.pop(actor_id, None)

    def pending(self, actor_id: bytes) -> int:
        with self._lock:
            return self._count.get(actor_id, 0)


pending_calls = _PendingCalls()


def method(*args: Any, **kwargs: Any) -> Any:
    """Options of one actor method, as Ray's ``@ray.method``.

    Bare (``@rj.method``) or with options: ``num_returns`` (an integer, ``"streaming"`` or
    ``"dynamic"``) and ``concurrency_group`` (a name from the actor's
    ``concurrency_groups``). Ray's other method options are refused, not ignored.
    """
    if len(args) == 1 and not kwargs and callable(args[0]):
        return args[0]  # bare @rj.method: nothing to set
    if args:
        raise TypeError(
            "rj.method takes keyword options only, e.g. @rj.method(num_returns=2), or is used "
            "bare as @rj.method."
        )
    unknown = set(kwargs) - {"num_returns", "concurrency_group"}
    if unknown:
        raise TypeError(
            f"rj.method() does not support {', '.join(sorted(unknown))}: the options it takes "
            f"are num_returns and concurrency_group."
        )
    num_returns = kwargs.get("num_returns")
    concurrency_group = kwargs.get("concurrency_group")
    if num_returns is not None:
        option_table.validate_options({"num_returns": num_returns}, for_actor=False)
    if concurrency_group is not None and not isinstance(concurrency_group, str):
        raise TypeError(f"concurrency_group must be a group's name, got {concurrency_group!r}")

    def mark(function: Any) -> Any:
        if num_returns is not None:
            function.__rayjupyter_num_returns__ = num_returns
        if concurrency_group is not None:
            function.__rayjupyter_concurrency_group__ = concurrency_group
        return function

    return mark


#: methods every actor handle has (Ray's): ready once __init__ ran; end the actor gracefully
READY_METHOD = "__ray_ready__"
TERMINATE_METHOD = "__ray_terminate__"


class ActorClassInheritanceException(TypeError):
    """A class was derived from an actor class (derive from the plain class instead)."""


class ActorExitRequest(SystemExit):
    """Raised by ``exit_actor()`` in a plain actor (a SystemExit, as Ray's); the process
    ends after the current call even if the call catches it."""


def exit_actor() -> None:
    """End the current actor on purpose: no restart, later calls fail with ActorDiedError.

    The call that runs it fails with ActorDiedError too (its caller sees the actor's death,
    not a value); queued calls fail; the process runs its ``atexit`` handlers before it
    ends, as in Ray (``rj.kill`` does not). In an async actor it raises AsyncioActorExit.
    """
    from rayjupyter.core import runtime_context
    from rayjupyter.core.exceptions_extra import AsyncioActorExit

    if not runtime_context.current.actor_id:
        raise TypeError(
            "exit_actor API is called on a non-actor worker: call exit_actor() inside an "
            "actor method to end that actor (rj.kill(handle) ends one from outside)."
        )
    runtime_context.current.exit_requested = True
    if runtime_context.current.on_exit_request is not None:
        runtime_context.current.on_exit_request()
    if runtime_context.current.actor_is_async:
        raise AsyncioActorExit("exit_actor() was called.")
    raise ActorExitRequest("exit_actor() was called.")


def _method_table(cls: type) -> dict[str, dict[str, Any]]:
    table = {}
    for name, member in inspect.getmembers(cls, callable):
        if name.startswith("__") and name != "__call__":
            continue
        is_generator = inspect.isgeneratorfunction(member) or inspect.isasyncgenfunction(member)
        table[name] = {
            # a generator method streams by default, as in Ray
            "num_returns": getattr(
                member, "__rayjupyter_num_returns__", "streaming" if is_generator else 1
            ),
            "is_async": inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member),
            # its parameters, so a call is checked at .remote() wherever the handle goes
            "params": signatures.describe(signatures.for_method(cls, name)),
        }
    for name in (READY_METHOD, TERMINATE_METHOD):
        table[name] = {"num_returns": 1, "is_async": False}
    return table


def _check_concurrency_groups(cls: type, groups: dict[str, int] | None) -> None:
    """A method's @rj.method(concurrency_group=...) must name one of the actor's groups."""
    for name, member in inspect.getmembers(cls, callable):
        group = getattr(member, "__rayjupyter_concurrency_group__", None)
        if group is not None and group not in (groups or {}):
            known = ", ".join(sorted(groups or {})) or "none"
            raise ValueError(
                f"{cls.__name__}.{name} is in concurrency group {group!r}, which the actor does "
                f"not define (its groups: {known}); add it to concurrency_groups={{...}}."
            )


def _restore_actor_class(cls: type, options: dict[str, Any]) -> ActorClass:
    """Unpickle an ActorClass without looking into ``cls``: it may not be filled in yet
    (its options were checked where it was made)."""
    actor_class = ActorClass.__new__(ActorClass)
    actor_class.__dict__.update(_cls=cls, _options=options, _blob=None, __name__=cls.__name__)
    actor_class.__doc__ = cls.__doc__
    return actor_class


class ActorClass:
    """A class made remote: ``Cls.remote(*args)`` starts an actor and returns its handle."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = option_table.merge_options(
            option_table.actor_defaults(), options, for_actor=True
        )
        _check_concurrency_groups(cls, self._options.get("concurrency_groups"))
        self._blob: bytes | None = None
        self.__name__ = cls.__name__
        self.__doc__ = cls.__doc__

    # worked out at first use, not when unpickled: a class whose methods create actors of
    # itself is unpickled before its body is filled in (cloudpickle's recursion)
    @functools.cached_property
    def _methods(self) -> dict[str, dict[str, Any]]:
        return _method_table(self._cls)

    @functools.cached_property
    def _argcheck(self) -> Any:
        return signatures.for_class(self._cls)

    def __dir__(self) -> list[str]:
        """``options``, ``remote`` and the class's methods (for autocompletion, as Ray's)."""
        public = (n for n in self._methods if not n.startswith("__"))
        return sorted({*object.__dir__(self), *public})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actors cannot be instantiated directly. Instead of '{self.__name__}()', "
            f"use '{self.__name__}.remote()'."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_actor_class, (self._cls, self._options))

    def __getattr__(self, name: str) -> Any:
        """The class's own attributes (class variables, static and class methods), so a
        method can use ``MyActor.LIMIT`` where ``MyActor`` names this remote class (Ray's
        actor class derives from the user's class to the same end)."""
        cls = self.__dict__.get("_cls")
        if cls is None or name.startswith("__"):
            raise AttributeError(name)
        try:
            return getattr(cls, name)
        except AttributeError:
            raise AttributeError(
                f"actor class {cls.__name__!r} has no attribute {name!r}"
            ) from None

    def options(self, **options: Any) -> ActorClass:
        if "concurrency_groups" in options:  # as in Ray: groups belong to the class
            raise ValueError("Setting 'concurrency_groups' is not supported in '.options()'.")
        copy = ActorClass.__new__(ActorClass)
        copy.__dict__.update(self.__dict__)
        copy._options = option_table.merge_options(self._options, options, for_actor=True)
        return copy

    def _class_blob(self) -> bytes:
        if self._blob is None:
            try:
                blob = serialization.dumps(self._cls)
            except Exception as exc:
                raise SerializationError(
                    f"Could not serialize the actor class {self.__name__!r}: {exc}."
                ) from exc
            check_definition_size(blob, f"actor {self.__name__}")
            self._blob = blob
        return self._blob

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        """``class Derived(SomeActor)``: refused with Ray's message."""
        raise ActorClassInheritanceException(
            "Inheriting from actor classes is not currently supported. You can instead "
            f"inherit from a non-actor base class and make the derived class an actor class "
            f"(with @rj.remote); {self.__name__!r} is an actor class."
        )

    def _remote(
        self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> ActorHandle:
        """Ray's ``Cls._remote(args=[...], kwargs={...}, **options)``."""
        target = self.options(**options) if options else self
        return target.remote(*(args or ()), **(kwargs or {}))

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        from rayjupyter.core.api import _client

        return create_actor(_client(), self, args, kwargs)


def _node_options(actor_class: ActorClass) -> dict[str, Any]:
    options = actor_class._options
    is_async = any(m["is_async"] for m in actor_class._methods.values())
    concurrency = options.get("max_concurrency")
    if concurrency is None:
        concurrency = ASYNC_DEFAULT_CONCURRENCY if is_async else 1
    return {
        "name": options.get("name") or "",
        "namespace": options.get("namespace") or "",
        "lifetime": options.get("lifetime"),
        "get_if_exists": bool(options.get("get_if_exists")),
        "max_restarts": options.get("max_restarts") or 0,
        "max_task_retries": options.get("max_task_retries") or 0,
        "max_concurrency": int(concurrency),
        "concurrency_groups": dict(options.get("concurrency_groups") or {}),
        "max_pending_calls": int(options.get("max_pending_calls") or -1),
        "methods": actor_class._methods,
    }


def create_actor(
    client: Client, actor_class: ActorClass, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> ActorHandle:
    name = actor_class.__name__
    if actor_class._argcheck is not None:
        actor_class._argcheck.check(name, args, kwargs)
    class_blob = actor_class._class_blob()  # (refused here if too large: nothing sent yet)
    packed = pack_args(
        args, kwargs, f"{name}.__init__", lambda s: put_serialized(client, s, argument=True)
    )
    actor_id = client.ids.object_id(client.ids.task_id(), ACTOR_INDEX)
    node_options = _node_options(actor_class)
    # the env its process starts in (packed and registered the first time it is used)
    node_options["runtime_env"] = runtime_env.env_for(client, actor_class._options["runtime_env"])
    request_id = client.new_request_id() if node_options["name"] else 0
    place = option_table.resource_demand(actor_class._options, for_placement=True)
    run = option_table.resource_demand(actor_class._options)
    strategy = scheduling_strategies.from_legacy(actor_class._options)
    if strategy is not None or runtime_context.current.placement:
        place, node_options["strategy"] = scheduling_strategies.resolve(strategy, place)
        run, _ = scheduling_strategies.resolve(strategy, run)
    message = P.CreateActor(
        actor_id,
        class_blob,
        name,
        packed.blob,
        packed.deps,
        packed.nested,
        place,
        run,
        node_options,
        request_id,
    )
    limit = node_options["max_pending_calls"]
    if not request_id:
        client.send([message], batch=True)
        return ActorHandle(actor_id, name, actor_class._methods, limit, _owned=True)
    client.send([message])
    got_id, class_name, methods, limit = client.await_reply(request_id, f"create actor {name}")
    if reference_counter.count(got_id) > 0:  # we already hold it: give back the node's new hold
        reference_counter.pending.append((False, got_id))
    return ActorHandle(got_id, class_name, methods, limit, _owned=True)


class ActorMethod:
    """``handle.method``: call it with ``.remote(*args)``."""

    def __init__(
        self,
        handle: ActorHandle,
        name: str,
        num_returns: int | str,
        backpressure: int | None = None,
    ) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns
        self._backpressure = backpressure

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor methods cannot be called directly. Instead of running "
            f"'handle.{self._name}()', try 'handle.{self._name}.remote()'."
        )

    def options(
        self,
        *,
        num_returns: int | str | None = None,
        name: str | None = None,
        _generator_backpressure_num_objects: int | None = None,
    ) -> ActorMethod:
        count = self._num_returns if num_returns is None else num_returns
        backpressure = _generator_backpressure_num_objects
        checked = option_table.validate_options(
            {"num_returns": count, "_generator_backpressure_num_objects": backpressure},
            for_actor=False,
        )
        generator_options(checked["num_returns"], checked, f"{self._name}")
        backpressure = checked["_generator_backpressure_num_objects"]
        return ActorMethod(self._handle, self._name, count, backpressure)

    def _remote(
        self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        """Ray's ``handle.method._remote(args=[...], kwargs={...}, num_returns=...)``."""
        target = self.options(**options) if options else self
        return target.remote(*(args or ()), **(kwargs or {}))

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        from rayjupyter.core.api import _client

        return self._handle._call(
            _client(), self._name, args, kwargs, self._num_returns, self._backpressure
        )


class ActorHandle:
    """A reference to a live actor; pass it anywhere a value can go."""

    def __init__(
        self,
        actor_id: bytes,
        class_name: str,
        methods: dict[str, dict[str, Any]],
        max_pending_calls: int = -1,
        *,
        _owned: bool = False,
    ) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._max_pending_calls = max_pending_calls  # -1: no limit
        reference_counter.add(actor_id, report=not _owned)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown
            reference_counter.remove(self._actor_id)

    def __reduce__(self) -> tuple[Any, ...]:
        serialization.record_contained_ref(self)
        args = (self._actor_id, self._class_name, self._methods, self._max_pending_calls)
        return (ActorHandle, args)

    def binary(self) -> bytes:
        return self._actor_id

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("__") and name not in (READY_METHOD, TERMINATE_METHOD):
            raise AttributeError(name)
        meta = self._methods.get(name)
        if meta is None:
            raise AttributeError(f"'{self._class_name}' actor has no method {name!r}")
        count = meta["num_returns"]
        return ActorMethod(self, name, count if isinstance(count, str) else int(count))

    def __dir__(self) -> list[str]:
        """The actor's methods, ``__init__`` and ``__ray_terminate__`` (Ray's listing)."""
        names = set(self._methods) - {READY_METHOD}
        return sorted(names | {"__init__", TERMINATE_METHOD})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()})"

    def _call(
        self,
        client: Client,
        method_name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        num_returns: int | str,
        backpressure: int | None = None,
    ) -> Any:
        label = f"{self._class_name}.{method_name}"
        meta = self._methods.get(method_name)
        params = meta.get("params") if meta is not None else None
        if params is not None:
            signatures.from_description(params).check(label, args, kwargs)
        options = {"_generator_backpressure_num_objects": backpressure}
        mode, window = generator_options(num_returns, options, label)
        packed = pack_args(args, kwargs, label, lambda s: put_serialized(client, s, argument=True))
        task_id = client.ids.task_id()
        count = 1 if mode else int(num_returns)
        return_ids = tuple(client.ids.object_id(task_id, i) for i in range(count))
        stream = ObjectRefGenerator(task_id, client) if mode == STREAMING else None
        refs = [] if stream else [ObjectRef(object_id, _owned=True) for object_id in return_ids]
        limit = self._max_pending_calls
        counted = limit > 0 and bool(refs)  # (streaming calls and num_returns=0: not counted)
        if counted:
            pending_calls.take(self._actor_id, limit, label)
        call = P.SubmitTask(
            task_id,
            b"",
            None,
            label,
            packed.blob,
            packed.deps,
            packed.nested,
            return_ids,
            {},
            0,
            False,
            self._actor_id,
            method_name,
            "",
            mode,
            window,
        )
        if not client.direct_calls.submit(call):  # (direct_calls.py)
            client.submit(call)
        if counted:  # pending until its first result is here (the ref keeps it until then)
            actor_id = self._actor_id

            def settled(_info: P.ObjectInfo, _kept: ObjectRef = refs[0]) -> None:
                pending_calls.done(actor_id)

            client.when_ready(refs[0].binary(), settled)
        if stream is not None:
            return stream
        if count == 1:
            return refs[0]
        return None if count == 0 else refs


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop an actor's process now; calls in flight fail with ActorDiedError."""
    from rayjupyter.core.api import _client

    if not isinstance(actor, ActorHandle):
        raise ValueError(f"rj.kill() expects an actor handle, got {type(actor).__name__}")
    client = _client()
    client.direct_calls.forget(actor._actor_id)  # the calls after this one go by the node
    client.send([P.KillActor(actor._actor_id, no_restart)])


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of a named actor; ValueError if no live actor has that name."""
    from rayjupyter.core.api import _client

    if not isinstance(name, str) or not name:
        raise ValueError("get_actor() needs the actor's name, a non-empty string.")
    actor_id, class_name, methods, limit = queries.get_actor(_client(), name, namespace)
    return ActorHandle(actor_id, class_name, methods, limit)


def list_named_actors(all_namespaces: bool = False) -> list[str] | list[dict[str, str]]:
    """The live named actors (detached or not): their names in this driver's namespace, or
    with ``all_namespaces=True`` ``{"name": ..., "namespace": ...}`` for every namespace."""
    from rayjupyter.core.api import _client

    if not isinstance(all_namespaces, bool):
        raise TypeError(f"all_namespaces must be True or False, got {all_namespaces!r}")
    found = queries.named_actors(_client(), all_namespaces)
    if all_namespaces:
        return [{"name": actor.name, "namespace": actor.namespace} for actor in found]
    return [actor.name for actor in found]
