"""A worker that hosts an actor: building the instance, and ending the process on purpose.

Apart from ``worker.py`` (the task loop) for size. An async actor's event loop starts
before its ``__init__``, which runs inside it (as in Ray: ``asyncio.create_task`` there
works). The process ends on purpose three ways, all through ``exit_process``:
``exit_actor()``, ``__ray_terminate__``, and the node's ``ExitActor`` (its handles all
went): ``__ray_shutdown__`` runs, then the atexit handlers, then the node hears of it.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import inspect
import os
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any

import cloudpickle

from rayjupyter.core import protocol as P
from rayjupyter.core import runtime_context
from rayjupyter.core.actor import ActorExitRequest, _method_table
from rayjupyter.core.exceptions import RayTaskError, task_failure
from rayjupyter.core.serialization import deserialize
from rayjupyter.core.task_args import unpack_args

if TYPE_CHECKING:
    import asyncio  # imported where used: only async actors need it (see worker.py)

    from rayjupyter.core.worker import TaskExecutor


def own_repr(instance: Any) -> str:
    """An actor's ``repr`` if its class defines ``__repr__`` (Ray prints its output as
    ``(Worker(index=1) pid=...)`` then), else ""; bounded, and never raising."""
    own: Any = type(instance).__repr__
    if own is object.__repr__:
        return ""
    try:
        text = repr(instance)
    except Exception:
        return ""
    return text if len(text) <= 200 else text[:199] + "…"


def is_async_class(cls: type) -> bool:
    """An actor with a coroutine (or async generator) method runs on an event loop."""
    return any(
        inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)
        for _, member in inspect.getmembers(cls)
    )


def dumps_error(error: RayTaskError, pid: int) -> bytes:
    """The error as bytes; without its cause if the cause cannot be pickled."""
    try:
        return bytes(cloudpickle.dumps(error))
    except Exception:
        bare = RayTaskError(error.function_name, error.traceback_str, None, pid)
        return bytes(cloudpickle.dumps(bare))


async def _construct(cls: type, args: Any, kwargs: Any) -> Any:
    return cls(*args, **kwargs)


def start_actor(executor: TaskExecutor, start: P.StartActor) -> None:
    """Become an actor's process: build the instance, then serve its calls."""
    current = runtime_context.current
    current.actor_id = start.actor_id
    current.job_id = start.job_id
    current.actor_gpu_ids = start.gpu_ids
    current.placement = start.strategy
    current.actor_name = start.name
    current.actor_namespace = start.namespace
    current.actor_class_name = start.class_name
    current.actor_resources = dict(start.resources)
    current.actor_restarted = start.restarts > 0
    client = executor.client
    try:
        cls = cloudpickle.loads(start.class_blob)
        dep_values = [client.materialize(info) for info in start.deps]
        args, kwargs = unpack_args(start.args_blob, dep_values, deserialize)
        current.actor_methods = _method_table(cls)
        current.actor_is_async = is_async_class(cls)
        if current.actor_is_async:
            import asyncio

            loop = _start_loop(executor, start)
            future = asyncio.run_coroutine_threadsafe(_construct(cls, args, kwargs), loop)
            executor.instance = future.result()
        else:
            executor.instance = cls(*args, **kwargs)
    except ActorExitRequest:
        pass  # exit_actor() in __init__: the actor starts, then ends at once
    except BaseException as exc:  # a BaseException of the user's too (not SystemExit)
        if not current.exit_requested:
            exc = task_failure(exc)
            error = RayTaskError.from_exception(exc, f"{start.class_name}.__init__", executor.pid)
            client.send([P.ActorStarted(start.actor_id, dumps_error(error, executor.pid))])
            return
    if current.exit_requested:
        client.send([P.ActorStarted(start.actor_id, None)])
        exit_process(executor)
    if executor.loop is not None:
        import asyncio

        asyncio.run_coroutine_threadsafe(_watch_exit(executor), executor.loop)
    elif start.max_concurrency > 1 or start.concurrency_groups:
        # with groups, the default group gets threads too, so no group waits on another
        pools = [("", start.max_concurrency), *start.concurrency_groups]
        executor.pools = {
            group: concurrent.futures.ThreadPoolExecutor(size, group or "actor")
            for group, size in pools
        }
    client.send([P.ActorStarted(start.actor_id, None, own_repr(executor.instance))])


def _start_loop(executor: TaskExecutor, start: P.StartActor) -> asyncio.AbstractEventLoop:
    """An async actor's event loop, on a thread of its own, with its call slots."""
    import asyncio

    loop = executor.loop = asyncio.new_event_loop()
    executor.slots = {"": asyncio.Semaphore(start.max_concurrency)}
    for group, size in start.concurrency_groups:
        executor.slots[group] = asyncio.Semaphore(size)
    threading.Thread(target=loop.run_forever, name="actor-loop", daemon=True).start()
    return loop


def exit_process(executor: TaskExecutor) -> None:
    """The actor ends on purpose: its ``__ray_shutdown__``, then the process's atexit
    handlers, then tell the node and end (never to be restarted). Calls that have not
    begun never will (``exit_requested``): the node fails them when the process is gone."""
    runtime_context.current.exit_requested = True
    with executor.exit_lock:  # once, whichever thread or coroutine gets here first
        shutdown = getattr(executor.instance, "__ray_shutdown__", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception:
                traceback.print_exc()
        with contextlib.suppress(Exception):
            atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        executor.client.send([P.ActorExiting(runtime_context.current.actor_id)])
        executor.client.close()
        os._exit(0)


async def _watch_exit(executor: TaskExecutor) -> None:
    """An async actor: exit_actor() called where no call returns to us (a task the actor
    started itself, in a method or in ``__init__``) still ends the actor."""
    import asyncio

    loop = asyncio.get_running_loop()
    asked = asyncio.Event()
    current = runtime_context.current

    def ask() -> None:  # (exit_actor() runs in the loop's thread, or in one of the user's)
        loop.call_soon_threadsafe(asked.set)

    current.on_exit_request = ask
    if not current.exit_requested:  # (asked before the watch began: set, not called)
        await asked.wait()
    await asyncio.sleep(0.1)  # the call that asked, if any, ends the actor itself
    exit_process(executor)
