"""A pooled worker process: runs the tasks its node sends, one at a time, forever.

Started by the node as ``python -m rayjupyter.core.worker`` with its identity and the
cluster secret in the environment. It dies with its node (PR_SET_PDEATHSIG), and its
stdout/stderr are pipes the node forwards to the driver with a ``(task pid=N)`` prefix.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import ctypes
import functools
import inspect
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle

from rayjupyter.core import api, nested_lending, runtime_context, runtime_env
from rayjupyter.core import protocol as P
from rayjupyter.core.actor import READY_METHOD, TERMINATE_METHOD, ActorExitRequest, _method_table
from rayjupyter.core.client import Client
from rayjupyter.core.exceptions import RayTaskError, TaskCancelledError, task_failure
from rayjupyter.core.generators import DYNAMIC, DynamicObjectRefGenerator
from rayjupyter.core.object_ref import ObjectRef
from rayjupyter.core.object_store import pool_prefix, shm_path, write_object
from rayjupyter.core.remote_function import put_serialized
from rayjupyter.core.serialization import INLINE_THRESHOLD, deserialize, serialize
from rayjupyter.core.streams import ProducerGate, item_id
from rayjupyter.core.task_args import unpack_args

PR_SET_PDEATHSIG = 1


def _own_repr(instance: Any) -> str:
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


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGKILL when the node goes, then check it has not gone already."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the node's exit still closes our socket
        return
    if os.getppid() != parent_pid:
        os._exit(1)


def _omp_threads(resources: tuple[tuple[str, float], ...] | None) -> str:
    """Ray's OMP_NUM_THREADS for work holding these resources: its whole CPUs, at least 1."""
    if resources is None:  # the default demand, one CPU
        return "1"
    cpus = max((amount for name, amount in resources if name.startswith("CPU")), default=0.0)
    return str(max(1, int(cpus)))


def _ready() -> bool:
    """``handle.__ray_ready__.remote()``: true once the actor's __init__ has run."""
    return True


def exit_gracefully() -> None:
    """``handle.__ray_terminate__.remote()``: end the actor after the calls queued before
    (its ``__ray_shutdown__`` and atexit handlers run), as ``exit_actor()`` does."""
    runtime_context.current.exit_requested = True
    raise ActorExitRequest("__ray_terminate__ was called.")


class TaskExecutor:
    """Runs tasks and, once it hosts an actor, that actor's calls; reports TaskFinished."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.functions: dict[bytes, Callable[..., Any]] = {}
        self.pid = os.getpid()
        self.running: bytes | None = None  # the task a SIGINT (cancel) is meant for
        self.sigint_between_tasks = False  # a cancel may be for the task being set up
        self.instance: Any = None  # the actor, once StartActor ran
        # a threaded actor's threads, per concurrency group ("" is the default group)
        self.pools: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        # an async actor's call slots, per concurrency group ("" is the default group)
        self.slots: dict[str, asyncio.Semaphore] = {}
        self.async_calls: dict[bytes, concurrent.futures.Future[None]] = {}
        self.exit_lock = threading.Lock()
        # OMP_NUM_THREADS given by the node's or the runtime_env's environment: kept; else
        # each task (and an actor) gets its CPU count, as in Ray
        self.omp_from_env = os.environ.get("OMP_NUM_THREADS")
        # async calls rj.cancel reached: they end cancelled even if the method swallowed the
        # CancelledError and returned (Ray's get raises TaskCancelledError then too)
        self.cancelled_async: set[bytes] = set()
        self.async_tasks: dict[bytes, asyncio.Task[None]] = {}  # (read in the loop's thread)

    def cancel_call(self, task_id: bytes) -> None:
        """rj.cancel of a running async actor call: its coroutine gets CancelledError."""
        if task_id in self.async_calls and self.loop is not None:
            self.cancelled_async.add(task_id)
            self.loop.call_soon_threadsafe(self._cancel_in_loop, task_id)

    def _cancel_in_loop(self, task_id: bytes) -> None:
        """In the actor's loop: a call that has begun gets CancelledError where it awaits;
        one that has not begins by reporting itself cancelled (``_execute_async``)."""
        running = self.async_tasks.get(task_id)
        if running is not None:
            running.cancel()

    # ------------------------------------------------------------------ tasks

    def run(self, task: P.ExecuteTask) -> None:
        """Run a task or an actor call: inline, or on the actor's threads or event loop."""
        if not task.actor_id:
            self._execute(task, self._function(task))
        elif self.loop is not None:
            future = asyncio.run_coroutine_threadsafe(self._execute_async(task), self.loop)
            self.async_calls[task.task_id] = future
            future.add_done_callback(lambda _: self._async_call_done(task.task_id))
        elif self.pools:
            pool = self.pools[self._group_of(task.method)]
            pool.submit(self._execute, task, self._method(task.method))
        else:
            self._execute(task, self._method(task.method))

    def _method(self, name: str) -> Callable[..., Any]:
        """The actor's method to call; the two every actor has are answered here."""
        if name == READY_METHOD:
            return _ready
        if name == TERMINATE_METHOD:
            return exit_gracefully
        return getattr(self.instance, name)  # type: ignore[no-any-return]

    def _group_of(self, name: str) -> str:
        """The concurrency group of a method (@rj.method(concurrency_group=...)), "" if none."""
        member = getattr(type(self.instance), name, None)
        group = getattr(member, "__rayjupyter_concurrency_group__", "")
        return group if group in self.pools or group in self.slots else ""

    def _async_call_done(self, task_id: bytes) -> None:
        self.async_calls.pop(task_id, None)
        self.cancelled_async.discard(task_id)

    def _function(self, task: P.ExecuteTask) -> Callable[..., Any]:
        function = self.functions.get(task.func_id)
        if function is None:
            function = cloudpickle.loads(task.func_blob or b"")
            self.functions[task.func_id] = function
        return function

    def _enter(self, task: P.ExecuteTask, function: Any) -> contextvars.Token[Any]:
        if task.gpu_ids or not task.actor_id:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, task.gpu_ids))
        if not task.actor_id:  # (an actor's process keeps the actor's own)
            runtime_context.current.placement = task.strategy
            if self.omp_from_env is None:
                os.environ["OMP_NUM_THREADS"] = _omp_threads(task.resources)
        return runtime_context.current_task.set(
            runtime_context.TaskInfo(
                task.task_id, task.job_id, task.gpu_ids, task.name, function, task.resources
            )
        )

    def _execute(self, task: P.ExecuteTask, function: Callable[..., Any]) -> None:
        outer = self.running  # a task lent to us runs inside the wait of another
        placement = runtime_context.current.placement  # (the waiting task's, then)
        omp = os.environ.get("OMP_NUM_THREADS")  # (and its OMP_NUM_THREADS)
        token = self._enter(task, function)
        try:
            dep_values = [self.client.materialize(info, keep_mapped=True) for info in task.deps]
            args, kwargs = unpack_args(task.args_blob, dep_values, deserialize)
            del dep_values
            if not task.actor_id:
                self.running = task.task_id
            try:
                self._stop_if_cancelled(task.task_id)
                result = function(*args, **kwargs)
                if task.generator:  # its items go out while it runs (cancel reaches it)
                    result = self._run_generator(task, result)
            finally:
                self.running = outer
                self.client.cancelled_calls.discard(task.task_id)
            del args, kwargs
            message: P.TaskFinished | None = P.TaskFinished(
                task.task_id, self._store(task, result), None, False
            )
        except ActorExitRequest:
            message = None
        except KeyboardInterrupt:  # rj.cancel: the node turns this into TaskCancelledError
            message = self._failure(task, TaskCancelledError(f"Task {task.name!r} was cancelled."))
        except BaseException as exc:  # a BaseException of the user's too (not SystemExit)
            message = self._failure(task, task_failure(exc))
        finally:
            runtime_context.current_task.reset(token)
            runtime_context.current.placement = placement
            if omp is not None and self.omp_from_env is None:
                os.environ["OMP_NUM_THREADS"] = omp
        self._finish(message, runtime_context.current.exit_requested)

    def _stop_if_cancelled(self, task_id: bytes) -> None:
        """rj.cancel that came while the task was being set up: its SIGINT was ignored."""
        if self.sigint_between_tasks:
            self.sigint_between_tasks = False
            self.client.read_pending()  # the node sends CancelCall ahead of the signal
        if task_id in self.client.cancelled_calls:
            raise KeyboardInterrupt

    async def _execute_async(self, task: P.ExecuteTask) -> None:
        message: P.TaskFinished | None
        if task.task_id in self.cancelled_async:  # cancelled before it began
            self._finish(self._cancelled_async(task), False)
            return
        current = asyncio.current_task()
        assert current is not None
        self.async_tasks[task.task_id] = current
        try:
            # max_concurrency calls at once (per concurrency group)
            async with self.slots[self._group_of(task.method)]:
                token = self._enter(task, self._method(task.method))
                try:
                    message = await self._call_async(task)
                except ActorExitRequest:
                    message = None
                except BaseException as exc:  # not a cancel (CancelledError): see below
                    message = self._failure(task, task_failure(exc))
                finally:
                    runtime_context.current_task.reset(token)
        except asyncio.CancelledError:  # rj.cancel, while running or waiting for a slot
            message = self._cancelled_async(task)
        finally:
            del self.async_tasks[task.task_id]
        exiting = runtime_context.current.exit_requested
        if task.task_id in self.cancelled_async and not exiting:
            message = self._cancelled_async(task)  # the method caught CancelledError
        self._finish(message, exiting)

    def _cancelled_async(self, task: P.ExecuteTask) -> P.TaskFinished:
        self.cancelled_async.discard(task.task_id)
        error = TaskCancelledError(f"Actor call {task.name!r} was cancelled.")
        return self._failure(task, error)

    async def _call_async(self, task: P.ExecuteTask) -> P.TaskFinished:
        dep_values = [self.client.materialize(info, keep_mapped=True) for info in task.deps]
        args, kwargs = unpack_args(task.args_blob, dep_values, deserialize)
        result = self._method(task.method)(*args, **kwargs)
        if task.generator and inspect.isasyncgen(result):
            result = await self._run_async_generator(task, result)
        elif task.generator:
            result = self._run_generator(task, result)
        elif inspect.isawaitable(result):
            result = await result
        return P.TaskFinished(task.task_id, self._store(task, result), None, False)

    def _finish(self, message: P.TaskFinished | None, exiting: bool) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        if exiting:  # the call's caller sees the actor's death, not a value (as in Ray)
            self._exit_process()
        assert message is not None
        self.client.send([message])

    def _exit_process(self) -> None:
        """exit_actor() / __ray_terminate__: the actor's ``__ray_shutdown__``, then the
        process's atexit handlers, then tell the node and end (never to be restarted)."""
        with self.exit_lock:  # once, whichever thread or coroutine gets here first
            shutdown = getattr(self.instance, "__ray_shutdown__", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:
                    traceback.print_exc()
            with contextlib.suppress(Exception):
                atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            self.client.send([P.ActorExiting(runtime_context.current.actor_id)])
            self.client.close()
            os._exit(0)

    async def _watch_exit(self) -> None:
        """An async actor: exit_actor() called where no call returns to us (a task the
        actor started itself) still ends the actor."""
        while not runtime_context.current.exit_requested:
            await asyncio.sleep(0.25)
        await asyncio.sleep(0.1)  # the call that asked, if any, ends the actor itself
        self._exit_process()

    # ------------------------------------------------------------------ actors

    def start_actor(self, start: P.StartActor) -> None:
        """Become an actor's process: build the instance, then serve its calls."""
        runtime_context.current.actor_id = start.actor_id
        runtime_context.current.job_id = start.job_id
        runtime_context.current.actor_gpu_ids = start.gpu_ids
        runtime_context.current.placement = start.strategy
        runtime_context.current.actor_name = start.name
        runtime_context.current.actor_namespace = start.namespace
        runtime_context.current.actor_class_name = start.class_name
        runtime_context.current.actor_resources = dict(start.resources)
        runtime_context.current.actor_restarted = start.restarts > 0
        if self.omp_from_env is None:
            os.environ["OMP_NUM_THREADS"] = _omp_threads(start.resources or ())
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, start.gpu_ids))
        try:
            cls = cloudpickle.loads(start.class_blob)
            dep_values = [self.client.materialize(info) for info in start.deps]
            args, kwargs = unpack_args(start.args_blob, dep_values, deserialize)
            runtime_context.current.actor_methods = _method_table(cls)
            runtime_context.current.actor_is_async = any(
                inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m)
                for _, m in inspect.getmembers(cls)
            )
            self.instance = cls(*args, **kwargs)
        except ActorExitRequest:
            pass  # exit_actor() in __init__: the actor starts, then ends at once
        except BaseException as exc:
            if not runtime_context.current.exit_requested:
                exc = task_failure(exc)
                error = RayTaskError.from_exception(exc, f"{start.class_name}.__init__", self.pid)
                self.client.send([P.ActorStarted(start.actor_id, _dumps_error(error, self.pid))])
                return
        if runtime_context.current.exit_requested:
            self.client.send([P.ActorStarted(start.actor_id, None)])
            self._exit_process()
        if runtime_context.current.actor_is_async:
            self.loop = asyncio.new_event_loop()
            self.slots = {"": asyncio.Semaphore(start.max_concurrency)}
            for group, size in start.concurrency_groups:
                self.slots[group] = asyncio.Semaphore(size)
            threading.Thread(target=self.loop.run_forever, name="actor-loop", daemon=True).start()
            asyncio.run_coroutine_threadsafe(self._watch_exit(), self.loop)
        elif start.max_concurrency > 1 or start.concurrency_groups:
            # with groups, the default group gets threads too, so no group waits on another
            pools = [("", start.max_concurrency), *start.concurrency_groups]
            self.pools = {
                group: concurrent.futures.ThreadPoolExecutor(size, group or "actor")
                for group, size in pools
            }
        self.client.send([P.ActorStarted(start.actor_id, None, _own_repr(self.instance))])

    # ------------------------------------------------------------------ generators

    def _run_generator(self, task: P.ExecuteTask, generator: Any) -> Any:
        """Stream a generator's items (or, "dynamic", collect their refs); the task's value."""
        if inspect.isasyncgen(generator):  # a task (not an async actor): step it on a loop
            generator = _stepped(generator)
        if not hasattr(generator, "__next__"):
            raise TypeError(
                f"Task {task.name!r} has num_returns={task.generator!r} but returned "
                f"{type(generator).__name__}, not a generator: use yield, or an integer "
                f"num_returns."
            )
        if task.generator == DYNAMIC:
            return DynamicObjectRefGenerator([self._put(task, value) for value in generator])
        gate = ProducerGate(task.backpressure)
        index = 0
        try:
            while True:
                self._await_credit(task, gate, index)
                try:
                    value = next(generator)
                except StopIteration:
                    break
                self._send_item(task, gate, index, value)
                index += 1
        except KeyboardInterrupt:
            # cancelled between items (held back, or sending one): the producer hears of
            # it at its yield, as it would have had the signal come while it ran
            if inspect.isgenerator(generator) and inspect.getgeneratorstate(generator) == (
                inspect.GEN_SUSPENDED
            ):
                with contextlib.suppress(StopIteration):
                    generator.throw(KeyboardInterrupt())
            raise
        finally:
            self.client.credits.pop(task.task_id, None)
        return None

    async def _run_async_generator(self, task: P.ExecuteTask, generator: Any) -> Any:
        """An async actor's async generator: as _run_generator, awaiting on the actor's loop."""
        if task.generator == DYNAMIC:
            return DynamicObjectRefGenerator([self._put(task, value) async for value in generator])
        gate = ProducerGate(task.backpressure)
        index = 0
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wake_up() -> None:
            loop.call_soon_threadsafe(wake.set)

        self.client.credit_waiters[task.task_id] = wake_up
        try:
            while True:
                try:
                    while not self._may_make(task, gate, index):
                        await wake.wait()
                        wake.clear()
                except asyncio.CancelledError:  # cancelled while held back: tell the producer
                    with contextlib.suppress(StopAsyncIteration):
                        await generator.athrow(asyncio.CancelledError())
                    raise
                try:
                    value = await generator.__anext__()
                except StopAsyncIteration:
                    break
                self._send_item(task, gate, index, value)
                index += 1
        finally:
            self.client.credit_waiters.pop(task.task_id, None)
            self.client.credits.pop(task.task_id, None)
        return None

    def _may_make(self, task: P.ExecuteTask, gate: ProducerGate, index: int) -> bool:
        credit = self.client.credits.get(task.task_id)
        if credit is not None:
            gate.update(*credit)
        return gate.may_make(index)

    def _await_credit(self, task: P.ExecuteTask, gate: ProducerGate, index: int) -> None:
        """Backpressure: wait until the caller has taken enough items to make this one.

        A sync actor's call reads what has come between items, so rj.cancel stops it there.
        """
        client = self.client
        if task.actor_id:
            client.read_pending()
            if task.task_id in client.cancelled_calls:
                raise KeyboardInterrupt
        if self._may_make(task, gate, index):
            return

        def go_on() -> bool:
            return self._may_make(task, gate, index) or task.task_id in client.cancelled_calls

        client._wait(go_on, None)
        if task.task_id in client.cancelled_calls:
            # one cancel, one interrupt: the SIGINT that follows its CancelCall must not
            # cut the producer's cleanup short (it now counts as between tasks)
            self.running = None
            raise KeyboardInterrupt

    def _send_item(self, task: P.ExecuteTask, gate: ProducerGate, index: int, value: Any) -> None:
        if not gate.must_send(index):
            return  # the node has it from an earlier attempt
        object_id = item_id(task.task_id, index)
        what = f"item {index} of generator task {task.name!r}"
        result = self._store_value(task, object_id, value, what)
        self.client.send([P.GeneratorItem(task.task_id, index, result)])

    def _put(self, task: P.ExecuteTask, value: Any) -> ObjectRef:
        sobj = serialize(value, what=f"a value yielded by task {task.name!r}")
        return put_serialized(self.client, sobj)

    def _store_value(
        self, task: P.ExecuteTask, object_id: bytes, value: Any, what: str
    ) -> tuple[bytes, bytes | None, int, tuple[bytes, ...]]:
        sobj = serialize(value, what=what)
        contained = tuple(ref.binary() for ref in sobj.contained_refs)
        if sobj.nbytes <= INLINE_THRESHOLD:
            return (object_id, sobj.to_bytes(), sobj.nbytes, contained)
        path = shm_path(self.client.session, object_id)
        if task.attempt:
            _remove(path)  # a crashed earlier attempt may have left it half written
        size = write_object(path, sobj, pool_prefix(self.client.session))
        return (object_id, None, size, contained)

    def _store(
        self, task: P.ExecuteTask, result: Any
    ) -> tuple[tuple[bytes, bytes | None, int, tuple[bytes, ...]], ...]:
        count = len(task.return_ids)
        if count > 1 and inspect.isgenerator(result):  # a generator for a fixed num_returns
            result = list(result)
        if count == 1:
            values = [result]
        elif count == 0:
            values = []
        else:
            if not isinstance(result, list | tuple) or len(result) != count:
                got = len(result) if isinstance(result, list | tuple) else type(result).__name__
                raise ValueError(
                    f"Task {task.name!r} has num_returns={count} but returned {got}; return a "
                    f"tuple or list of exactly {count} values."
                )
            values = list(result)
        what = f"the return value of task {task.name!r}"
        return tuple(
            self._store_value(task, object_id, value, what)
            for object_id, value in zip(task.return_ids, values, strict=True)
        )

    def _failure(self, task: P.ExecuteTask, exc: BaseException) -> P.TaskFinished:
        error = RayTaskError.from_exception(exc, task.name, self.pid)
        blob = _dumps_error(error, self.pid)
        return P.TaskFinished(task.task_id, (), blob, _retryable(task.retry_exceptions, exc))


def _stepped(generator: Any) -> Any:
    """An async generator as a plain one, each step run on an event loop of its own."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                value = loop.run_until_complete(generator.__anext__())
            except StopAsyncIteration:
                return
            try:
                yield value
            except BaseException as exc:  # a cancel thrown in at the yield: pass it on
                with contextlib.suppress(StopAsyncIteration):
                    loop.run_until_complete(generator.athrow(exc))
                raise
    finally:
        loop.close()


def _dumps_error(error: RayTaskError, pid: int) -> bytes:
    """The error as bytes; without its cause if the cause cannot be pickled."""
    try:
        return bytes(cloudpickle.dumps(error))
    except Exception:
        bare = RayTaskError(error.function_name, error.traceback_str, None, pid)
        return bytes(cloudpickle.dumps(bare))


def _retryable(retry_exceptions: bool | bytes, exc: BaseException) -> bool:
    if isinstance(retry_exceptions, bool):
        return retry_exceptions
    kinds = tuple(cloudpickle.loads(retry_exceptions))
    return isinstance(exc, kinds)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _on_sigint(executor: TaskExecutor, signum: int, frame: Any) -> None:
    """rj.cancel sends SIGINT: interrupt the running task, ignore it between tasks."""
    if executor.running is not None:
        raise KeyboardInterrupt
    executor.sigint_between_tasks = True


def main() -> None:
    env = os.environ
    _die_with_parent(int(env["RAYJUPYTER_PARENT_PID"]))
    secret = env.pop("RAYJUPYTER_SECRET")
    for path in reversed(json.loads(env.get("RAYJUPYTER_SYS_PATH", "[]"))):
        if path not in sys.path:
            sys.path.insert(0, path)
    # a runtime_env worker: its packages come first (ahead of the driver's own copies), and
    # it runs in its working_dir, so relative paths open the shipped data files
    for path in reversed(json.loads(env.pop("RAYJUPYTER_ENV_PATHS", "[]"))):
        with contextlib.suppress(ValueError):
            sys.path.remove(path)
        sys.path.insert(0, path)
    working_dir = env.pop("RAYJUPYTER_WORKING_DIR", "")
    if working_dir:
        os.chdir(working_dir)
    job_env = runtime_env.job_env_of_worker()
    env.pop(runtime_env.WORKER_ENV_VAR, None)
    client = Client(
        env["RAYJUPYTER_NODE_ADDRESS"],
        secret,
        kind="worker",
        client_id=bytes.fromhex(env["RAYJUPYTER_CLIENT_ID"]),
        io_thread=False,
        channel_fd=int(env.pop("RAYJUPYTER_CHANNEL_FD")),
    )
    if job_env is not None:  # the tasks it submits inherit its env
        client.runtime_env = job_env
        client.sent_envs.add(job_env.digest)
    api._set_worker_client(client)
    runtime_context.current.node_id = client.node_id
    runtime_context.current.worker_id = client.client_id
    executor = TaskExecutor(client)
    client.run_lent = executor.run  # children lent to a waiting task (nested_lending.py)
    # each nested level is about 8 frames: room for nested_lending.MAX_NESTED of them
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000 + 16 * nested_lending.MAX_NESTED))
    signal.signal(signal.SIGINT, functools.partial(_on_sigint, executor))
    while True:
        task = client.next_task()
        if task is None:
            break
        if isinstance(task, P.StartActor):
            executor.start_actor(task)
        elif isinstance(task, P.CancelCall):
            executor.cancel_call(task.task_id)
        else:
            executor.run(task)
        del task


if __name__ == "__main__":
    main()
