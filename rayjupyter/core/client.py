"""A process's connection to its node: used by drivers and workers alike.

Frames travel over one ``transport.Transport`` (a socket pair, the node's Unix socket, or
zmq); the waiting logic here is written once for all three. Sending (a lone submit at once
from the calling thread, a burst batched into frames) is ``client_outbox.Outbox``'s. In a
driver an IO thread reads and files results and replies, waking waiters through one
condition variable, except while a thread waits on a transport any thread may read: that
thread reads itself. A worker always reads in the thread that waits.
"""

from __future__ import annotations

import collections
import os
import queue
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from rayjupyter.core import client_io, ids, protocol, transport
from rayjupyter.core import protocol as P
from rayjupyter.core.client_outbox import Outbox
from rayjupyter.core.client_values import ValueReader, weak_method
from rayjupyter.core.config import session_dir
from rayjupyter.core.direct_calls import DirectCalls
from rayjupyter.core.exceptions import (
    ClusterConnectionError,
    GetTimeoutError,
)
from rayjupyter.core.object_ref import reference_counter
from rayjupyter.core.queries import Replies
from rayjupyter.core.revoked_tasks import RevokedTasks
from rayjupyter.core.runtime_env import RuntimeEnv
from rayjupyter.core.task_leases import TaskLeases

FLUSH_INTERVAL_S = 0.05  # how long a ref-count change may wait for a message to ride on
LIVENESS_CHECK_S = 1.0  # how often a waiting driver checks that its local node still runs
WAITING_FOR_MAX = 64  # a worker's get of more objects than this names none (WorkerBlocked)
HEARTBEAT_S = 2.0  # a driver sends at least this often (the node lets silent ones go)
FOREGROUND_IDLE_S = 0.01  # a driver's IO thread reads again once gets paused this long
SILENCE_LIMIT_S = 10.0  # an attached driver gives up on a node that answered nothing for this


#: called with every task a client submits (the notebook's displays name tasks with it)
submit_observers: list[Callable[[P.SubmitTask], None]] = []


class Client:
    """One process's view of the cluster: send messages, await objects and replies."""

    def __init__(
        self,
        address: str,
        secret: str,
        *,
        kind: str,
        client_id: bytes | None = None,
        timeout: float = 8.0,  # a wrong address fails well within 10 s
        io_thread: bool = True,
        liveness: Callable[[], str | None] | None = None,
        namespace: str = "",
        channel_fd: int | None = None,
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self.log_to_driver = True  # init(log_to_driver=False): workers' prints are not shown
        self.pid = os.getpid()  # the process that connected (a forked child is not it)
        #: says why the cluster is gone (None while it is up); checked while waiting
        self.liveness = liveness
        self.address = address
        self.client_id = client_id or ids.new_client_id()
        self.ids = ids.IdGenerator(self.client_id)
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        # ``channel_fd``: our end of a socket pair the node made (see transport.connect)
        self.transport = transport.connect(
            self.context, address, secret, self.client_id, kind=kind, channel_fd=channel_fd
        )
        self._pins: deque[tuple[bool, bytes]] = deque()
        # what we send (client_outbox.py): batched frames, ref-count and pin changes first
        # (a client without an IO thread has nothing to wake: no wake socket, no zmq threads)
        wakes = self.context if io_thread else None
        self.outbox = Outbox(self.transport, wakes, self.client_id.hex(), self._pins)
        self.send = self.outbox.send
        self._cond = threading.Condition()
        self.objects: dict[bytes, P.ObjectInfo] = {}  # finished values this process holds refs to
        self._awaiting_push: set[bytes] = set()  # our own results, pushed by the node when done
        self._subscribed: set[bytes] = set()
        # results of tasks and calls being submitted, whose SubmitTask (or notice of a
        # direct call) is not queued yet: a re-subscription must not reach the node first
        self._unnoticed: set[bytes] = set()
        # a re-subscription left some of those out: the IO thread's next turn sends it again
        self.resubscribe_due = False
        # actor calls sent on direct links to the actors' processes (direct_calls.py)
        self.direct_calls = DirectCalls(weakref.proxy(self), self.transport.links, submit_observers)
        # tasks sent to a worker the node lent us (task_leases.py)
        self.task_leases = TaskLeases(weakref.proxy(self), self.transport.links, submit_observers)
        # requests to the node and their answers (queries.Replies), bound once
        self.replies = Replies(weak_method(self.send), weak_method(self._wait), address)
        self.request = self.replies.request
        self.new_request_id = self.replies.new_id
        self.await_reply = self.replies.await_reply
        self.sent_funcs: set[bytes] = set()
        self.runtime_env: RuntimeEnv | None = None  # the job's env (init(runtime_env=...))
        self.sent_envs: set[str] = set()  # envs the node has from us (runtime_env.register)
        self.tasks: queue.SimpleQueue[P.WorkerOrder | None] = queue.SimpleQueue()
        self._ready_callbacks: dict[bytes, list[Callable[[P.ObjectInfo], None]]] = {}
        self.last_heard = time.monotonic()  # when the node last sent us anything
        self.revoked = RevokedTasks()  # tasks sent ahead that the node took back
        self._block_lock = threading.Lock()
        self._blocks_sent = 0  # WorkerBlocked(True) sent; the node answers each (RevokeTask)
        self._blocks_answered = 0
        # a worker: children the node lent us while a task here waits in get, and what
        # runs them (nested_lending.py; set by worker_main.main for a pool worker)
        self._lent: deque[P.ExecuteTask] = deque()
        self._blocked_waits = 0
        self.run_lent: Callable[[P.ExecuteTask], None] | None = None

        hello = P.Hello(self.kind, os.getpid(), protocol.PROTOCOL_VERSION, self.namespace)
        welcome, rest = transport.handshake(self.transport, self.context, hello, address, timeout)
        self.node_id = welcome.node_id
        self.session = welcome.session
        self.store_capacity = welcome.store_capacity
        # on another machine than the node: its shared memory is not here (see object_fetch)
        self.remote = not address.startswith("ipc://") and not os.path.isdir(
            session_dir(self.session)
        )
        # values from ObjectInfos: inline, mapped from shared memory, or fetched from afar
        self.values = ValueReader(
            session=self.session,
            remote=self.remote,
            address=address,
            store_capacity=self.store_capacity,
            pins=self._pins,
            cond=self._cond,
            send=weak_method(self.send),
            wait=weak_method(self._wait),
            restore=weak_method(self._restore),
        )
        self.materialize = self.values.materialize
        reference_counter.on_zero = self._forget
        # Drivers read in a background thread (output and results arrive while the user's code
        # runs). A worker reads in whichever thread waits (see _pump): a task then reaches
        # the code that runs it without a thread switch, the largest cost of a round trip.
        self._rx_lock = threading.Lock()
        self._reading_here = False  # a waiting thread reads the channel (see _wait)
        self.cancelled_calls: set[bytes] = set()  # (workers) tasks rj.cancel named
        # streaming generators (generators.py): the tasks whose items we take, and (workers
        # running one) the latest credit per task with a callback that wakes an async producer
        self.streams: set[bytes] = set()
        self.credits: dict[bytes, tuple[int, int]] = {}
        self.credit_waiters: dict[bytes, Callable[[], None]] = {}
        # read, not yet handled
        self._unhandled: collections.deque[transport.Incoming] = collections.deque()
        self._drains = 0  # reads so far: a waiter that saw n knows whether it missed one
        self._links_lost = 0  # direct links seen closed (direct_links.py): we re-subscribe
        self._last_read_here = 0.0
        self._waiting_here = 0  # threads in _wait on a channel right now
        self._io_thread: threading.Thread | None = None
        # a worker sleeping until a message comes is woken by its other threads (an actor's,
        # the user's) through this when they queue something for it (see _idle_wait); one
        # client per worker process, so its eventfd may live as long as the process
        self._doorbell: Callable[[], None] | None = None
        if kind == "worker" and isinstance(self.transport, transport.ChannelTransport):
            self._doorbell = self.transport.doorbell()
        # what came with the welcome (a new worker's first task, and its stream's credit),
        # once every table its handling touches exists
        self._handle(rest)
        if io_thread:
            self._io_thread = threading.Thread(
                target=client_io.io_loop, args=(self,), name="rayjupyter-io", daemon=True
            )
            self.outbox.batching = True
            self._io_thread.start()

    # ------------------------------------------------------------------ sending

    @property
    def _closed(self) -> bool:
        """True once closed, or once the node closed our link (nothing more is sent)."""
        return self.outbox.closed

    @_closed.setter
    def _closed(self, closed: bool) -> None:
        self.outbox.closed = closed

    def submit(self, message: P.SubmitTask) -> None:
        unnoticed = self._unnoticed
        unnoticed.update(message.return_ids)  # (before awaiting: see DirectCalls.resubscribe)
        try:
            self._awaiting_push.update(message.return_ids)
            for observe in submit_observers:
                observe(message)
            self.send([message], batch=True)
        finally:
            unnoticed.difference_update(message.return_ids)

    def put(
        self, object_id: bytes, inline: bytes | None, size: int, contained: tuple[bytes, ...]
    ) -> None:
        self.objects[object_id] = (object_id, inline, size, False)
        self.send([P.PutObject(object_id, inline, size, contained)], batch=True)

    def _wait(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until predicate holds; reading the socket ourselves when nobody else does.

        A worker, or a driver on a transport any thread may read, reads in the waiting
        thread: an answer then wakes it directly rather than the IO thread, which would then
        wake it (a second context switch, about 60 us). A driver's IO thread stays off the
        transport meanwhile (client_io.io_loop): two threads polling it would both wake. A driver
        on zmq sockets waits for its IO thread (zmq sockets are not shared between threads).
        """
        self.outbox.burst_over()
        reads_itself = self._io_thread is None or self.transport.shared_reads
        standing_in = reads_itself and self._io_thread is not None  # for the IO thread
        deadline = None if timeout is None else time.monotonic() + timeout
        next_check = time.monotonic() + LIVENESS_CHECK_S
        if standing_in:
            with self._cond:
                self._waiting_here += 1
            self._last_read_here = time.monotonic()
            self._reading_here = True
        try:
            while True:
                seen = self._drains
                if predicate():
                    return True
                if self._lent and self.run_lent is not None:
                    self._run_lent(self.run_lent)
                    continue
                remaining = FLUSH_INTERVAL_S
                if self._io_thread is not None:  # a driver: is its node still there?
                    if self.outbox.closed or time.monotonic() >= next_check:  # (it costs a syscall)
                        self._check_alive()
                        next_check = time.monotonic() + LIVENESS_CHECK_S
                    remaining = LIVENESS_CHECK_S
                if deadline is not None:
                    remaining = min(remaining, deadline - time.monotonic())
                    if remaining <= 0:
                        return predicate()
                if self._io_thread is not None and self.outbox.closed:  # let liveness say why
                    time.sleep(min(remaining, 0.05))
                elif reads_itself:
                    self._pump(remaining, seen)
                else:
                    with self._cond:
                        if self._drains == seen:  # else a read came since we looked
                            self._cond.wait(remaining)
        finally:
            if standing_in:
                self._last_read_here = time.monotonic()
                with self._cond:
                    self._waiting_here -= 1
                if self._ready_callbacks:  # awaited refs: the IO thread reads for them now
                    self.outbox.wake_io_thread()

    def _check_alive(self) -> None:
        """Raise rather than wait forever on a cluster whose node has died."""
        if self.liveness is not None:
            reason = self.liveness()
        elif self.transport.closed:
            reason = (
                f"The cluster at {self.address} closed this connection: its node has stopped. "
                f"Call rj.shutdown(), then rj.init() again."
            )
        elif time.monotonic() - self.last_heard > SILENCE_LIMIT_S:  # heartbeats get answers
            reason = (
                f"No word from the cluster at {self.address} for {SILENCE_LIMIT_S:.0f} s: its "
                f"node is gone or unreachable. Call rj.shutdown(), then rj.init() again."
            )
        else:
            reason = None
        if reason:
            raise ClusterConnectionError(reason)

    def read_pending(self) -> None:
        """Handle whatever has arrived already, without waiting."""
        self._pump(0.0)

    def _pump(self, timeout: float | None, seen: int | None = None, flush: bool = True) -> None:
        """Read and handle what arrives within timeout (None: however long it takes); only
        one thread reads at a time.

        seen is the drain count the caller last looked at: if another thread has read
        since, return at once (what the caller waits for may have come in that read).
        With nothing read, queued ref-count and pin changes are sent, unless not flush.
        """
        if not self._rx_lock.acquire(blocking=False):
            with self._cond:  # another thread reads; it wakes us when something arrives
                if seen is None or self._drains == seen:
                    self._cond.wait(timeout)
            return
        try:
            if seen is not None and self._drains != seen:
                return
            if self.transport.poll_in(-1 if timeout is None else int(timeout * 1000)):
                self._drain_rx()
            elif flush and (reference_counter.pending or self._pins):
                self.send([])
        finally:
            self._rx_lock.release()
        with self._cond:
            self._cond.notify_all()

    def next_task(self) -> P.WorkerOrder | None:
        """The next task for this worker (None once closed), waiting as long as it takes."""
        tasks = self.tasks
        while True:
            seen = self._drains  # (before looking: a task queued since wakes the wait below)
            # (this thread alone takes from it: no exception per task for an empty queue)
            task = tasks.get_nowait() if not tasks.empty() else None
            if task is not None:
                if isinstance(task, P.ExecuteTask):
                    # the node may have taken it back when we last blocked: hear it first
                    while self._blocks_answered < self._blocks_sent and not self.outbox.closed:
                        self._pump(FLUSH_INTERVAL_S)
                if isinstance(task, P.ExecuteTask) and self.revoked.drop(task):
                    continue  # the node gave it to another worker
                return task
            if self.outbox.closed:
                return None
            wait = self._idle_wait()
            try:
                # woken by the doorbell: the changes wait FLUSH_INTERVAL_S for a message
                # to ride on (the next turn), as they would have without the sleep
                self._pump(wait, seen, flush=wait is not None)
            finally:
                reference_counter.on_queued = None

    def _idle_wait(self) -> float | None:
        """How long a worker waiting for its next task may sleep before it looks again.

        Ref-count and pin changes queued wait FLUSH_INTERVAL_S at most for a message to
        ride on. With none queued it sleeps until a message comes, or until another thread
        (an async or threaded actor's, the user's) queues a change or a task and rings the
        doorbell. A thousand idle actors woke 20,000 times a second (a core of a small
        machine), which made starting the next thousand slower and slower; threaded and
        async ones kept waking every FLUSH_INTERVAL_S until they had a doorbell."""
        if reference_counter.pending or self._pins:
            return FLUSH_INTERVAL_S
        if self._doorbell is None:  # (a worker always has one; a ZmqTransport has none)
            return FLUSH_INTERVAL_S if threading.active_count() > 1 else None
        reference_counter.on_queued = self._doorbell
        if reference_counter.pending or self._pins:  # queued before it was set: no ring
            reference_counter.on_queued = None
            return FLUSH_INTERVAL_S
        return None

    # ------------------------------------------------------------------ waiting

    def _request_missing(self, object_ids: list[bytes], restore: bool = False) -> None:
        wanted = [
            oid
            for oid in object_ids
            if oid not in self.objects
            and (restore or (oid not in self._awaiting_push and oid not in self._subscribed))
        ]
        if wanted:
            self._subscribed.update(wanted)
            self.send([P.Subscribe(tuple(wanted), restore)])

    def expect_push(self, object_id: bytes) -> None:
        """The node pushes this object to us when it exists (a generator's item): waiting
        for it must not subscribe (a subscription to an object not yet made fails)."""
        if object_id not in self.objects:
            self._awaiting_push.add(object_id)

    def _blocked(self, blocked: bool, waiting_for: tuple[bytes, ...] = ()) -> None:
        if self.kind == "worker":  # lend our CPU to other tasks while we wait (nested tasks)
            if blocked:
                with self._block_lock:
                    self._blocks_sent += 1
                    self._blocked_waits += 1
            else:
                with self._block_lock:
                    self._blocked_waits -= 1
                    while not self._blocked_waits and self._lent:  # came as the wait ended:
                        self.tasks.put(self._lent.popleft())  # the node waits for it next
                        self._wake_task_loop()
            self.send([P.WorkerBlocked(blocked, waiting_for)])

    def _wake_task_loop(self) -> None:
        """A task was queued outside a read: wake the worker's main thread, asleep in
        ``next_task`` on the link (the doorbell ends its poll, or the poll of the thread
        that reads for it, which then notifies)."""
        if self._doorbell is not None:
            self._doorbell()
        with self._cond:
            self._cond.notify_all()

    def _run_lent(self, run: Callable[[P.ExecuteTask], None]) -> None:
        """A task making what we wait for, lent to us by the node at its worker limit
        (nested_lending.py): run it here, inside the wait, unless the node took it back."""
        task = self._lent.popleft()
        while self._blocks_answered < self._blocks_sent and not self.outbox.closed:
            self._pump(FLUSH_INTERVAL_S)  # it may have been sent ahead and revoked since
        if not self.revoked.drop(task):
            run(task)

    def wait_objects(self, object_ids: list[bytes], num_ready: int, timeout: float | None) -> bool:
        """Block until ``num_ready`` of the objects are available here; False on timeout."""
        objects = self.objects
        missing = [oid for oid in object_ids if oid not in objects]
        needed = len(missing) - (len(object_ids) - num_ready)  # how many more must arrive

        allowed = len(object_ids) - num_ready  # how many may still be missing at the end
        first = 0  # for a get of them all: missing[:first] have come

        def enough() -> bool:
            nonlocal missing, first
            if not allowed:  # the first still missing decides, and results come mostly in
                while first < len(missing) and missing[first] in objects:  # order: each is
                    first += 1  # looked at about once, not at every wake (O(n) per get)
                return first == len(missing)
            missing = [oid for oid in missing if oid not in objects]  # shrinks as they come
            return len(missing) <= allowed

        if needed <= 0:
            return True
        outbox = self.outbox
        if outbox.messages and not outbox.only_notices:  # submits held back for batching
            self.send([])  # go now: we wait on them
        self._request_missing(missing)
        # a get (all of them): the tasks making them may run inside this wait at the limit
        waiting_for = tuple(missing) if needed == len(missing) <= WAITING_FOR_MAX else ()
        self._blocked(True, waiting_for)
        try:
            return self._wait(enough, timeout)
        finally:
            self._blocked(False)

    def wait_until(
        self, predicate: Callable[[], bool], object_ids: list[bytes], timeout: float | None
    ) -> bool:
        """Block until predicate holds, as objects among object_ids arrive; False on timeout."""
        if predicate():
            return True
        if self.outbox.messages:
            self.send([])
        self._request_missing([oid for oid in object_ids if oid not in self.objects])
        self._blocked(True)
        try:
            return self._wait(predicate, timeout)
        finally:
            self._blocked(False)

    def get_infos(self, object_ids: list[bytes], timeout: float | None) -> list[P.ObjectInfo]:
        if not self.wait_objects(object_ids, len(object_ids), timeout):
            missing = sum(1 for oid in object_ids if oid not in self.objects)
            raise GetTimeoutError(
                f"Get timed out: {missing} of {len(object_ids)} object(s) not ready after "
                f"{timeout} s."
            )
        return [self.objects[oid] for oid in object_ids]

    def _restore(self, object_id: bytes, timeout: float | None) -> P.ObjectInfo:
        """A spilled value: the node brings it back (or answers with why not: no room)."""
        self.objects.pop(object_id, None)
        self._request_missing([object_id], restore=True)
        return self.get_infos([object_id], timeout)[0]

    # ------------------------------------------------------------------ receiving

    def when_ready(self, object_id: bytes, callback: Callable[[P.ObjectInfo], None]) -> None:
        """Call back (in the IO thread, or now) once the object is available here."""
        with self._cond:
            info = self.objects.get(object_id)
            if info is None:
                self._ready_callbacks.setdefault(object_id, []).append(callback)
        if info is not None:
            callback(info)
        else:
            if self._reading_here:  # the IO thread stands aside: have it read for this
                self.outbox.wake_io_thread()
            self.send([])  # a held-back submit of this very object goes now
            self._request_missing([object_id])

    def _forget(self, object_id: bytes) -> None:
        self.objects.pop(object_id, None)
        self._subscribed.discard(object_id)
        self._awaiting_push.discard(object_id)

    def _drain_rx(self) -> None:
        try:
            self._read_and_handle()
        finally:  # counted once handled: a waiter that saw the count before missed nothing
            self._drains += 1

    def _read_and_handle(self) -> None:
        self.last_heard = time.monotonic()
        frames = self.transport.read()
        if frames is None:  # our node is gone: nothing more will come
            self.outbox.closed = True
            self.tasks.put(None)
            return
        # kept on self until handled: Ctrl-C in a driver's reading thread must not drop
        # the frames after the one it interrupts (the next drain handles them)
        unhandled = self._unhandled
        unhandled.extend(frames)
        while unhandled:
            item = unhandled.popleft()
            if isinstance(item, bytes):
                self._handle(protocol.loads(item))
            else:  # a chunk of a value: its header, then its raw bytes
                self.values.on_chunk(protocol.loads(item[0])[0], item[1])
        links = self.transport.links
        if links is not None and links.lost != self._links_lost:
            self._links_lost = links.lost
            self.resubscribe_due = True
        if self.resubscribe_due:
            self.direct_calls.resubscribe()

    def _handle(self, messages: list[Any]) -> None:
        notify = False
        for message in messages:
            kind = type(message)
            if kind is P.ObjectsReady:
                if not message.objects:  # a direct call's answer comes by the node: it
                    self.send([])  # needs our notice of that call (direct_calls.py)
                for info in message.objects:
                    oid = info[0]
                    if reference_counter.count(oid) > 0 or (
                        self.streams and oid[: ids.TASK_ID_SIZE] in self.streams
                    ):
                        self.objects[oid] = info
                    self._awaiting_push.discard(oid)
                    self._subscribed.discard(oid)
                    if oid in self._ready_callbacks:
                        for callback in self._ready_callbacks.pop(oid):
                            try:
                                callback(info)
                            except Exception:  # one broken callback must not stop the reader
                                traceback.print_exc()
                notify = True
            elif kind is P.ExecuteTask and self._blocked_waits and not message.actor_id:
                self._lent.append(message)  # run inside the wait (see _run_lent)
                notify = True
            elif kind is P.ExecuteTask or kind is P.StartActor or kind is P.ExitActor:
                self.tasks.put(message)
            elif kind is P.CancelCall:
                self.cancelled_calls.add(message.task_id)
                self.tasks.put(message)
            elif kind is P.UnmapKept:
                self.values.forget_mapped(message.object_ids)
            elif kind is P.ObjectChunk:  # only an error comes alone, without its data frame
                self.values.on_chunk(message, b"")
            elif kind is P.GeneratorCredit:
                self.credits[message.task_id] = (message.allowed, message.seen)
                waiter = self.credit_waiters.get(message.task_id)
                if waiter is not None:
                    waiter()
                notify = True
            elif kind is P.RevokeTask:
                if message.task_id:
                    self.revoked.ids.add(message.task_id)
                if message.answers_block:
                    self._blocks_answered += 1
            elif kind is P.Reply:
                if message.request_id:  # 0: the answer to a heartbeat
                    self.replies.answers[message.request_id] = message.value
                    notify = True
            elif kind is P.DirectLink:
                links = self.transport.links
                if links is not None:
                    links.on_message(message)
            elif kind is P.Lease:
                self.task_leases.on_lease(message)
            elif kind is P.LogLines and self.log_to_driver:
                stream = sys.stdout if message.stream == 1 else sys.stderr
                stream.write(message.text)
                stream.flush()
        if notify:
            with self._cond:
                self._cond.notify_all()

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Flush what is queued, stop the IO thread and close the sockets."""
        if self.outbox.closed:
            return
        # drivers and observers (dashboards) leave; a worker's exit is seen by its node
        self.outbox.close([P.Disconnect()] if self.kind != "worker" else [])
        if self._io_thread is not None and self._io_thread is not threading.current_thread():
            self._io_thread.join(2.0)
        self.tasks.put(None)
        self.transport.close()
        self.outbox.close_sockets()
        self.context.term()
        if reference_counter.on_zero == self._forget:
            reference_counter.on_zero = None
