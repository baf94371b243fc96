"""Tasks a driver sends a worker its node lent it (Ray's worker leases): the driver's side.

The node lends a driver the worker its last task ran on when nothing else waits
(worker_leases.py). While the driver holds that lease, a plain task of the same demand
goes to the worker itself on their direct link (direct_links.py) and is answered there:
two hops, the node off the path. The node hears of it from the ``SubmitTask`` the driver
would have sent, with ``sent_to`` naming the worker, held as a notice that rides with the
next message or goes within FLUSH_INTERVAL_S.

One task at a time goes on a lease: the next goes direct once the last is answered, so a
worker never queues tasks behind each other while the other CPUs idle. A burst, a task
with ref arguments, a runtime_env, a strategy or max_calls, a generator, or args over
``ARGS_MAX`` go by the node, as before. The lease goes back when the node asks (after the
notices), when it was not used for ``IDLE_S``, or when its link closes (the worker died:
the node retries or fails what it ran, and the driver asks it for those results).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rayjupyter.core import protocol as P

if TYPE_CHECKING:
    from rayjupyter.core.client import Client
    from rayjupyter.core.direct_links import LinkEnds

#: a task's packed arguments and function at most (bytes) to go direct: it then leaves in
#: one piece of the kernel's, so two threads' sends on one link never mix
ARGS_MAX = 16 * 1024
#: a lease not used for this long goes back (the node's resources look free again soon)
IDLE_S = 0.05
_ONE_CPU = {"CPU": 1.0}


class _Lease:
    __slots__ = ("busy", "demand", "funcs", "revoked", "used", "worker")

    def __init__(self, worker: bytes, demand: dict[str, float], func_id: bytes) -> None:
        self.worker = worker
        self.demand = demand
        self.funcs = {func_id}  # functions the worker has (we sent it, or it ran one of ours)
        self.busy = b""  # the first return id of the task on it not answered yet
        self.used = time.monotonic()
        self.revoked = False  # the node wants it back: it goes at the IO thread's next turn


class TaskLeases:
    """A driver's lease, if any, and its choice per task between the lease and the node."""

    def __init__(
        self,
        client: Client,
        links: LinkEnds | None,
        observers: list[Callable[[P.SubmitTask], None]],
    ) -> None:
        self.client = client
        self.links = links  # None: a driver on zmq (another machine) gets no leases
        self.observers = observers  # (client.submit_observers: the notebook's task tap)
        self.awaiting = client._awaiting_push
        self.lease: _Lease | None = None
        self.sent = 0  # tasks sent on leases (tests, benchmarks)
        # one item per submit under way: the IO thread gives a lease back only when none
        # is, so a task's notice never follows the lease's return (list appends and pops
        # are atomic; a lock held across a Ctrl-C would hang the next call)
        self._submitting: list[None] = []

    def submit(self, message: P.SubmitTask, function: Any) -> bool:
        """Send a task to the leased worker and tell the node (True), or leave it to the
        node's path (False: the caller submits it). ``function``: its RemoteFunction."""
        if self.lease is None:
            return False
        submitting = self._submitting
        submitting.append(None)
        try:
            return self._submit(message, function)
        finally:
            submitting.pop()

    def _submit(self, message: P.SubmitTask, function: Any) -> bool:
        lease = self.lease
        if (
            lease is None
            or lease.revoked
            or message.resources != lease.demand
            or message.deps
            or message.generator
            or message.runtime_env
            or message.strategy
            or message.max_calls
            or not message.return_ids
        ):
            return False
        if lease.busy:
            if lease.busy in self.awaiting:
                return False
            lease.busy = b""
        blob = None if message.func_id in lease.funcs else function._function_blob()
        if len(message.args_blob) + (len(blob) if blob else 0) > ARGS_MAX:
            return False
        client = self.client
        unnoticed = client._unnoticed
        unnoticed.update(message.return_ids)  # (before awaiting: see DirectCalls.resubscribe)
        try:
            return self._send(message, lease, blob)
        finally:
            unnoticed.difference_update(message.return_ids)

    def _send(self, message: P.SubmitTask, lease: _Lease, blob: bytes | None) -> bool:
        client = self.client
        links = self.links
        assert links is not None  # (a lease comes only over a link)
        self.awaiting.update(message.return_ids)  # (before its answer can come)
        task = P.ExecuteTask(
            message.task_id,
            message.func_id,
            blob,
            message.name,
            message.args_blob,
            (),
            message.return_ids,
            message.retry_exceptions,
            0,
            b"",
            "",
            client.client_id,  # (a driver's job is its own id)
            (),
            "",
            -1,
            "",
            None if message.resources == _ONE_CPU else tuple(message.resources.items()),
            client.client_id,
            True,
        )
        if not links.call(lease.worker, task):  # the link closed: its worker died
            self.awaiting.difference_update(message.return_ids)  # (until the node's submit)
            self.lease = None
            return False
        lease.funcs.add(message.func_id)
        lease.busy = message.return_ids[0]
        lease.used = time.monotonic()
        self.sent += 1
        for observe in self.observers:
            observe(message)
        client.outbox.notify(message._replace(sent_to=lease.worker))
        return True

    def on_lease(self, message: P.Lease) -> None:
        """The node lends us a worker, or wants one back."""
        lease = self.lease
        if message.granted:
            links = self.links
            if lease is None and links is not None and links.has(message.worker):
                self.lease = _Lease(message.worker, dict(message.demand), message.func_id)
                return
        elif lease is not None and lease.worker == message.worker:
            lease.revoked = True
            self._give_back(lease)
            return
        self.client.send([P.ReturnLease(message.worker)])  # (one we do not hold)

    def return_idle(self, now: float) -> None:
        """The IO thread's turn: a lease the node wants back, or one unused for IDLE_S,
        goes back."""
        lease = self.lease
        if lease is None or (not lease.revoked and now - lease.used < IDLE_S):
            return
        if not lease.revoked and lease.busy and lease.busy in self.awaiting:
            return
        self._give_back(lease)

    def _give_back(self, lease: _Lease) -> None:
        """Return the lease, unless a submit under way may be sending on it: then it stays
        (a revoked one goes at the next turn, after that task's notice)."""
        self.lease = None
        if self._submitting:
            if self.lease is None:
                self.lease = lease
            return
        self.client.send([P.ReturnLease(lease.worker)])  # (after the notices held)
