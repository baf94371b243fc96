"""``@remote`` functions: options, function shipping and task submission."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Any

import cloudpickle

from rayjupyter.core import (
    ids,
    runtime_context,
    runtime_env,
    scheduling_strategies,
    serialization,
    signatures,
)
from rayjupyter.core import options as option_table
from rayjupyter.core import protocol as P
from rayjupyter.core.client import Client
from rayjupyter.core.config import check_definition_size
from rayjupyter.core.exceptions import SerializationError
from rayjupyter.core.generators import STREAMING, ObjectRefGenerator
from rayjupyter.core.object_ref import ObjectRef
from rayjupyter.core.serialization import SerializedObject
from rayjupyter.core.task_args import pack_args

PING_BEFORE_WRITE = 64 << 20  # bytes


class RemoteFunction:
    """A function that runs as a task: call ``.remote()``, tune with ``.options()``."""

    def __init__(
        self,
        function: Callable[..., Any],
        options: dict[str, Any],
        func_id: bytes | None = None,
    ) -> None:
        self._function = function
        is_generator = inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function)
        if "num_returns" not in options and is_generator:
            options = {**options, "num_returns": "streaming"}  # as in Ray
        if options.get("max_calls") is None:  # as Ray: a GPU function's worker runs it once
            options = {**options, "max_calls": 1 if options.get("num_gpus") else 0}
        self._options = option_table.merge_options(
            option_table.task_defaults(), options, for_actor=False
        )
        self._demand = option_table.resource_demand(self._options)
        self._strategy = scheduling_strategies.from_legacy(self._options)
        self._func_id = func_id or os.urandom(16)
        self._blob: bytes | None = None
        self._env: tuple[bytes, str] | None = None  # (client id, env digest) once resolved
        # the check of a call's arguments, worked out at the first .remote()
        self._argcheck: signatures.ArgumentCheck | None = None
        self._argcheck_known = False
        self._name = self._options["name"] or getattr(function, "__name__", "task")
        num_returns = self._options["num_returns"]
        # (generator mode, backpressure) of its SubmitTask, and how many refs a call makes
        self._generator = generator_options(num_returns, self._options, self._name)
        self._count = 1 if self._generator[0] else int(num_returns)
        retry = self._options["retry_exceptions"]
        self._retry: bool | bytes = retry if isinstance(retry, bool) else cloudpickle.dumps(retry)
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Remote functions cannot be called directly. Instead of running "
            f"'{self._name}()', try '{self._name}.remote()'."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._function, self._options, self._func_id))

    def options(self, **options: Any) -> RemoteFunction:
        """A copy with some options changed; the function itself is shipped once for both.
        ``max_calls`` belongs to the function's definition: refused here, as in Ray."""
        if "max_calls" in options:
            raise ValueError(
                f"{self._name!r}: max_calls cannot be set in .options(); give it to "
                f"@remote(max_calls=...) where the function is defined."
            )
        merged = option_table.merge_options(self._options, options, for_actor=False)
        copy = RemoteFunction(self._function, merged, self._func_id)
        copy._blob = self._blob
        copy._argcheck, copy._argcheck_known = self._arguments_check(), True
        return copy

    def _function_blob(self) -> bytes:
        if self._blob is None:
            try:
                blob = serialization.dumps(self._function)
            except Exception as exc:
                raise SerializationError(
                    f"Could not serialize the function {self._name!r}: {exc}. Something it "
                    f"uses from its enclosing scope (a lock, a socket, an open file?) cannot be "
                    f"pickled; create it inside the function instead."
                ) from exc
            check_definition_size(blob, f"remote function {_qualified(self._function)}")
            self._blob = blob
        return self._blob

    def _arguments_check(self) -> signatures.ArgumentCheck | None:
        """The function's signature check, worked out once (``.options()`` copies share it)."""
        if not self._argcheck_known:
            self._argcheck = signatures.for_callable(self._function)
            self._argcheck_known = True
        return self._argcheck

    def _env_digest(self, client: Client) -> str:
        """The runtime_env this function's tasks run in, packed and registered once."""
        cached = self._env
        if cached is not None and cached[0] == client.client_id:
            return cached[1]
        digest = runtime_env.env_for(client, self._options["runtime_env"])
        self._env = (client.client_id, digest)
        return digest

    def _remote(
        self,
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Ray's ``f._remote(args=[...], kwargs={...}, **options)``: options and a call at once."""
        target = self.options(**options) if options else self
        return target.remote(*(args or ()), **(kwargs or {}))

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        from rayjupyter.core.api import _client

        return submit(_client(), self, args, kwargs)


def generator_options(num_returns: Any, options: dict[str, Any], name: str) -> tuple[str, int]:
    """(generator mode, backpressure) for SubmitTask; refuses backpressure without streaming."""
    backpressure = options.get("_generator_backpressure_num_objects")
    if backpressure is not None and num_returns != "streaming":
        raise ValueError(
            f"{name!r}: _generator_backpressure_num_objects applies to streaming generators "
            f"only; set num_returns='streaming' (the default for a generator function) or drop it."
        )
    mode = num_returns if isinstance(num_returns, str) else ""
    return mode, -1 if backpressure is None else int(backpressure)


def _qualified(function: Callable[..., Any]) -> str:
    """module.qualname of a function, as error messages name it."""
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", "task")
    module = getattr(function, "__module__", None)
    return f"{module}.{name}" if module else str(name)


def _rebuild(
    function: Callable[..., Any], options: dict[str, Any], func_id: bytes
) -> RemoteFunction:
    return RemoteFunction(function, options, func_id)


def put_serialized(client: Client, sobj: SerializedObject, *, argument: bool = False) -> ObjectRef:
    """Store an already serialized value; the ref returned is held at the node for us.

    ``argument``: a large by-value argument of one call; its id says so (ids.ARGUMENT_INDEX),
    and the worker lets go of its mapping when the call ends (the file then goes back to the
    node's pool, whose pages the next large write reuses)."""
    from rayjupyter.core.exceptions import ObjectStoreFullError
    from rayjupyter.core.object_store import pool_prefix, shm_path, write_object
    from rayjupyter.core.serialization import INLINE_THRESHOLD

    index = ids.ARGUMENT_INDEX if argument else 0
    object_id = client.ids.object_id(client.ids.task_id(), index)
    contained = tuple(ref.binary() for ref in sobj.contained_refs)
    if sobj.nbytes <= INLINE_THRESHOLD or client.remote:  # remote: the node stores it
        client.put(object_id, sobj.to_bytes(), sobj.nbytes, contained)
    else:
        if client.store_capacity and sobj.nbytes > client.store_capacity:
            raise ObjectStoreFullError(
                f"Cannot put an object of {sobj.nbytes / 2**20:.1f} MiB: the object store holds "
                f"{client.store_capacity / 2**20:.1f} MiB. Start the cluster with a larger "
                f"object_store_memory (one larger than /dev/shm is kept in files on disk)."
            )
        if sobj.nbytes >= PING_BEFORE_WRITE:
            # refs dropped just now may free a file this put can reuse: let the node see
            # them first (one round trip, under 1% of writing an object this large)
            client.request(P.Ping)
        path = shm_path(client.session, object_id)
        size = write_object(path, sobj, pool_prefix(client.session))
        client.put(object_id, None, size, contained)
    return ObjectRef(object_id, _owned=True)


def submit(
    client: Client, function: RemoteFunction, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Send one task; returns its ObjectRef, a list of them (num_returns > 1) or None (0)."""
    check = function._argcheck if function._argcheck_known else function._arguments_check()
    if check is not None:
        check.check(function._name, args, kwargs)
    func_id = function._func_id
    blob = None if func_id in client.sent_funcs else function._function_blob()
    env = function._env_digest(client)
    demand, strategy = function._demand, ""
    if function._strategy is not None or runtime_context.current.placement:
        demand, strategy = scheduling_strategies.resolve(function._strategy, demand)
    packed = pack_args(
        args, kwargs, function._name, lambda sobj: put_serialized(client, sobj, argument=True)
    )
    task_id = client.ids.task_id()
    mode, backpressure = function._generator
    count = function._count
    if count == 1:  # (most tasks)
        return_ids: tuple[bytes, ...] = (client.ids.object_id(task_id, 0),)
    else:
        return_ids = tuple(client.ids.object_id(task_id, i) for i in range(count))
    if blob is not None:
        client.sent_funcs.add(func_id)
    stream = ObjectRefGenerator(task_id, client) if mode == STREAMING else None
    refs = [] if stream else [ObjectRef(object_id, _owned=True) for object_id in return_ids]
    message = P.SubmitTask(
        task_id,
        func_id,
        blob,
        function._name,
        packed.blob,
        packed.deps,
        packed.nested,
        return_ids,
        demand,
        function._options["max_retries"],
        function._retry,
        b"",
        "",
        env,
        mode,
        backpressure,
        strategy,
        function._options["max_calls"],
    )
    if not client.task_leases.submit(message, function):  # (task_leases.py)
        client.submit(message)
    if stream is not None:
        return stream
    if count == 1:
        return refs[0]
    if count == 0:
        return None
    return refs
