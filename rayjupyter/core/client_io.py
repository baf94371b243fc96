"""A driver's IO thread: it reads what comes while no other thread does, sends what the
outbox holds back (a burst, ref-count changes, direct-call notices) and the heartbeats."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import zmq

from rayjupyter.core import protocol as P
from rayjupyter.core.object_ref import reference_counter

if TYPE_CHECKING:
    from rayjupyter.core.client import Client


def io_loop(client: Client) -> None:
    """The thread's body, until the client closes (the client's timings, read here)."""
    from rayjupyter.core.client import FLUSH_INTERVAL_S, FOREGROUND_IDLE_S, HEARTBEAT_S

    poller = zmq.Poller()
    incoming = client.transport.pollable()
    poller.register(incoming, zmq.POLLIN)
    outbox = client.outbox
    wake_rx = outbox.wake_rx
    assert wake_rx is not None  # (a client with an IO thread has its wake socket)
    poller.register(wake_rx, zmq.POLLIN)
    wake_only = zmq.Poller()
    wake_only.register(wake_rx, zmq.POLLIN)
    last_flush = last_beat = time.monotonic()
    while not client.outbox.closed:
        try:
            if client._reading_here:
                # a thread in _wait reads the channel: stay off it until that has been
                # over for a moment (a loop of gets then costs no hand-offs at all)
                events = dict(wake_only.poll(int(FOREGROUND_IDLE_S * 1000)))
                if not client._waiting_here and (
                    client._ready_callbacks  # refs awaited: nobody waits here to read
                    or time.monotonic() - client._last_read_here > FOREGROUND_IDLE_S
                ):
                    client._reading_here = False
            else:
                events = dict(poller.poll(int(FLUSH_INTERVAL_S * 1000)))
            if incoming in events and client._rx_lock.acquire(blocking=False):
                try:
                    client._drain_rx()
                finally:
                    client._rx_lock.release()
                with client._cond:  # a waiter may have stood aside for this read
                    client._cond.notify_all()
            if client.resubscribe_due:
                client.direct_calls.resubscribe()
            now = time.monotonic()
            if client.task_leases.lease is not None:
                client.task_leases.return_idle(now)
            if wake_rx in events:
                client.outbox.flush()  # the batch held back by send(batch=True)
                last_flush = now
            elif (reference_counter.pending or client._pins or outbox.messages) and (
                now - last_flush >= FLUSH_INTERVAL_S
            ):
                client.send([])
                last_flush = now
            elif now - min(outbox.last_send, max(client.last_heard, last_beat)) > HEARTBEAT_S:
                client.send([P.Heartbeat()])
                last_beat = now  # (sends the node has no answer for do not prove it lives)
        except zmq.ZMQError:
            return
