"""What a worker process does with the tasks its node sends: ``TaskExecutor``.

It runs tasks one at a time, and once it hosts an actor, that actor's calls (inline, on
the actor's threads or on its event loop). The process itself (forked from the node, its
connection, its loop) is ``worker_main.py``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import inspect
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle

from rayjupyter.core import (
    gpu_visibility,
    ids,
    runtime_context,
    worker_actor,
)
from rayjupyter.core import protocol as P
from rayjupyter.core.actor import READY_METHOD, TERMINATE_METHOD, ActorExitRequest
from rayjupyter.core.client import Client
from rayjupyter.core.exceptions import RayTaskError, TaskCancelledError, task_failure
from rayjupyter.core.generators import DYNAMIC, DynamicObjectRefGenerator
from rayjupyter.core.object_ref import ObjectRef
from rayjupyter.core.object_store import pool_prefix, shm_path, write_object
from rayjupyter.core.remote_function import put_serialized
from rayjupyter.core.serialization import INLINE_THRESHOLD, deserialize, serialize
from rayjupyter.core.streams import ProducerGate, item_id
from rayjupyter.core.task_args import unpack_args
from rayjupyter.core.worker_actor import dumps_error as _dumps_error
from rayjupyter.core.worker_output import output

if TYPE_CHECKING:
    # imported where used: only async actors and async generators need an event loop, and
    # asyncio is a tenth of the node's start (every worker is forked from the node)
    import asyncio


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
        # bytes printed so far when a task that may be answered directly began
        self.output_at: dict[bytes, int] = {}

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
        if task.reply_to or not task.actor_id:
            self.output_at[task.task_id] = output.total
        if not task.actor_id:
            outer_name = output.marked
            output.mark_task(task.name)  # (its prints are named after it: worker_output.py)
            self._execute(task, self._function(task))
            if self.running is not None:  # it ran lent inside another task's wait
                output.mark_task(outer_name)
        elif self.loop is not None:
            import asyncio  # (imported by the actor's start, worker_actor._start_loop)

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

    def _materialize(self, info: P.ObjectInfo) -> Any:
        """A task argument's value. A ref's mapping is kept for the next tasks (the same array
        is often passed to many); a large by-value argument is used by this call only: its
        mapping goes with the call's values, so the node can pool its file once freed."""
        return self.client.materialize(info, keep_mapped=not ids.is_call_argument(info[0]))

    def _function(self, task: P.ExecuteTask) -> Callable[..., Any]:
        function = self.functions.get(task.func_id)
        if function is None:
            blob = task.func_blob or self.client.revoked.function(task.func_id)
            function = cloudpickle.loads(blob or b"")
            self.functions[task.func_id] = function
        return function

    def _enter(self, task: P.ExecuteTask, function: Any) -> contextvars.Token[Any]:
        if task.gpu_ids or not task.actor_id:
            gpu_visibility.apply(task.gpu_ids)
        if not task.actor_id:  # (an actor's process keeps the actor's own)
            runtime_context.current.placement = task.strategy
            if self.omp_from_env is None:
                threads = _omp_threads(task.resources)
                if os.environ.get("OMP_NUM_THREADS") != threads:  # (a write costs twice a read)
                    os.environ["OMP_NUM_THREADS"] = threads
        return runtime_context.current_task.set(
            runtime_context.TaskInfo(
                task.task_id,
                task.job_id or runtime_context.current.job_id,  # (a direct call: the actor's)
                task.gpu_ids,
                task.name,
                function,
                task.resources,
            )
        )

    def _execute(self, task: P.ExecuteTask, function: Callable[..., Any]) -> None:
        if task.actor_id and runtime_context.current.exit_requested:
            return  # queued behind exit_actor(): never runs (the node fails it)
        outer = self.running  # a task lent to us runs inside the wait of another
        placement = runtime_context.current.placement  # (the waiting task's, then)
        omp = os.environ.get("OMP_NUM_THREADS")  # (and its OMP_NUM_THREADS)
        token = self._enter(task, function)
        try:
            dep_values = [self._materialize(info) for info in task.deps]
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
            # (result lives on until TaskFinished is sent: the refs it holds, a dynamic
            # generator's items, must not be dropped before the node adopts them)
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
            if (
                omp is not None
                and self.omp_from_env is None
                and os.environ.get("OMP_NUM_THREADS") != omp
            ):
                os.environ["OMP_NUM_THREADS"] = omp
        self._finish(message, runtime_context.current.exit_requested, task)

    def _stop_if_cancelled(self, task_id: bytes) -> None:
        """rj.cancel that came while the task was being set up: its SIGINT was ignored."""
        if self.sigint_between_tasks:
            self.sigint_between_tasks = False
            self.client.read_pending()  # the node sends CancelCall ahead of the signal
        if task_id in self.client.cancelled_calls:
            raise KeyboardInterrupt

    async def _execute_async(self, task: P.ExecuteTask) -> None:
        import asyncio

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
                if runtime_context.current.exit_requested:
                    return  # queued behind exit_actor(): never runs (the node fails it)
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
        self._finish(message, exiting, task)

    def _cancelled_async(self, task: P.ExecuteTask) -> P.TaskFinished:
        self.cancelled_async.discard(task.task_id)
        error = TaskCancelledError(f"Actor call {task.name!r} was cancelled.")
        return self._failure(task, error)

    async def _call_async(self, task: P.ExecuteTask) -> P.TaskFinished:
        dep_values = [self._materialize(info) for info in task.deps]
        args, kwargs = unpack_args(task.args_blob, dep_values, deserialize)
        result = self._method(task.method)(*args, **kwargs)
        if task.generator and inspect.isasyncgen(result):
            result = await self._run_async_generator(task, result)
        elif task.generator:
            result = self._run_generator(task, result)
        elif inspect.isawaitable(result):
            result = await result
        return P.TaskFinished(task.task_id, self._store(task, result), None, False)

    def _finish(
        self, message: P.TaskFinished | None, exiting: bool, task: P.ExecuteTask | None = None
    ) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        if exiting:  # the call's caller sees the actor's death, not a value (as in Ray)
            self._exit_process()
        assert message is not None
        answer = None
        if task is not None:
            quiet = self.output_at.pop(task.task_id, -1) == output.total  # (worker_output.py)
            if quiet or task.by_link:  # the node need not read our pipes; it may hear of a
                message = message._replace(by_link=task.by_link, quiet=quiet)  # task after
            if task.reply_to and quiet and message.error is None:
                answer = self._direct_answer(task, message)
        if answer is None or task is None:
            self.client.send([message])
            if task is not None and task.by_link:
                # a task its caller sent us itself (direct_calls.py, task_leases.py), which
                # the node answers: an empty answer has the caller send the node its notice
                links = self.client.transport.links
                if links is not None:
                    links.answer(task.reply_to, ())
            return
        # the node first, as ever (it keeps the books), then the driver (direct_links.py)
        self.client.send([message._replace(direct=True)])
        if _EXIT_BEFORE_ANSWER:  # (tests: a worker gone between the two sends)
            os._exit(0)
        links = self.client.transport.links
        assert links is not None
        links.answer(task.reply_to, answer)

    def _direct_answer(
        self, task: P.ExecuteTask, message: P.TaskFinished
    ) -> tuple[P.ObjectInfo, ...] | None:
        """The results to send task.reply_to directly: only small inline values holding no
        refs, and only over a link we have (else None: the node's path)."""
        links = self.client.transport.links
        if links is None or not links.has(task.reply_to):
            return None
        answer = []
        for object_id, inline, size, contained in message.results:
            if inline is None or contained:
                return None
            answer.append((object_id, inline, size, False))
        return tuple(answer) if answer else None

    def _exit_process(self) -> None:
        """exit_actor() / __ray_terminate__ / the node's ExitActor: end on purpose."""
        worker_actor.exit_process(self)

    # ------------------------------------------------------------------ actors

    def start_actor(self, start: P.StartActor) -> None:
        """Become an actor's process: build the instance, then serve its calls."""
        if self.omp_from_env is None:
            os.environ["OMP_NUM_THREADS"] = _omp_threads(start.resources or ())
        gpu_visibility.apply(start.gpu_ids)
        worker_actor.start_actor(self, start)

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
                index, value = index + 1, None  # the sent item is not held while making the next
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
        import asyncio

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
        if count == 1:  # most tasks: no list, no generator expression
            what = f"the return value of task {task.name!r}"
            return (self._store_value(task, task.return_ids[0], result, what),)
        if count > 1 and inspect.isgenerator(result):  # a generator for a fixed num_returns
            result = list(result)
        if count == 0:
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
    import asyncio

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


#: tests only: exit between TaskFinished and the direct answer (direct_links.py)
_EXIT_BEFORE_ANSWER = bool(os.environ.get("RAYJUPYTER_TEST_EXIT_BEFORE_DIRECT"))


def _retryable(retry_exceptions: bool | bytes, exc: BaseException) -> bool:
    if isinstance(retry_exceptions, bool):
        return retry_exceptions
    kinds = tuple(cloudpickle.loads(retry_exceptions))
    return isinstance(exc, kinds)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
