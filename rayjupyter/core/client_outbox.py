"""A client's sending side: messages batched into frames, ref-count and pin changes first.

The calling thread sends under a lock, so a lone submit costs one send and no thread hop.
Submits and puts that follow each other closely, with no wait between them, are held
instead, and a driver's IO thread sends them together (``flush``): a loop of 10,000
submits costs a few hundred frames, not 10,000, and the node wakes once per frame, not
once per submit. A wait (``get``) ends a burst: the submit after it goes at once, so a
loop of ``get(f.remote())`` never hands a submit to the IO thread, however fast it runs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import Any

import zmq

from rayjupyter.core import protocol
from rayjupyter.core import protocol as P
from rayjupyter.core.object_ref import reference_counter
from rayjupyter.core.transport import Transport

BATCH_WINDOW_S = 0.0002  # messages closer together than this are sent in one frame
# the IO thread, woken for a held batch while submits still come: how long it lets the
# burst go on (one frame for all of it), and how many messages it holds at most
BURST_HOLD_S = 0.001
BURST_MAX_MESSAGES = 1024  # about what the node reads from one client per loop turn
#: notices (direct_calls.py) held at most: then they go, as one frame
NOTICES_MAX = 256


class Outbox:
    """What a client has to send, and the wake socket that asks its IO thread to send it.

    A client without an IO thread (a worker) passes no context: it has no wake socket,
    and its zmq context starts no threads (libzmq starts its I/O and reaper threads at the
    first socket). Each of a thousand actors' workers had two such threads, their stacks
    and malloc arenas for nothing."""

    def __init__(
        self,
        transport: Transport,
        context: zmq.Context[zmq.Socket[bytes]] | None,
        name: str,
        pins: deque[tuple[bool, bytes]],
    ) -> None:
        self.transport = transport
        self.pins = pins  # (pin?, object id) of values mapped or unmapped here
        self.lock = threading.Lock()
        self.messages: list[Any] = []
        # what messages holds is only notices (and the ref-count changes before them): a
        # wait need not send them, the IO thread does within FLUSH_INTERVAL_S
        self.only_notices = False
        self.last_send = 0.0
        # when the latest submit or put came (0 once a thread waits: the burst is over)
        self.last_batched = 0.0
        self.flush_requested = False
        self.closed = False
        self.batching = False  # a driver's IO thread flushes what send(batch=True) holds
        self.wake_rx: zmq.Socket[bytes] | None = None
        self.wake_tx: zmq.Socket[bytes] | None = None
        if context is not None:
            self.wake_rx = context.socket(zmq.PAIR)
            self.wake_rx.bind(f"inproc://wake-{name}")
            self.wake_tx = context.socket(zmq.PAIR)
            self.wake_tx.connect(f"inproc://wake-{name}")

    def send(self, messages: list[Any], *, batch: bool = False) -> None:
        """Send messages, after any queued ref-count and pin changes (order matters).

        ``batch=True`` (submits and puts from a driver) sends at once after a quiet spell
        or a wait, so a lone call is not delayed, but holds messages that follow each other
        closely for the IO thread to send together (each send wakes the node: tens of
        microseconds).
        """
        with self.lock:
            if self.closed:
                return
            outbox = self.messages
            self._queue_ops(outbox)
            if messages:
                outbox.extend(messages)
                self.only_notices = False
            now = time.monotonic()
            if batch and self.batching:
                burst = now - self.last_batched < BATCH_WINDOW_S
                self.last_batched = now
            else:
                burst = False
            if burst and self.wake_tx is not None:
                if not self.flush_requested:
                    self.flush_requested = True
                    self.wake_tx.send(b"")
                return
            if outbox:
                self.messages = []
                self.only_notices = False
                self.flush_requested = False
                self.transport.send(protocol.dumps(outbox))
                self.last_send = now

    def notify(self, message: Any) -> None:
        """Queue a message the node needs in order but nobody waits on (the books of a
        direct call): it rides with the next message, or goes within FLUSH_INTERVAL_S, or
        once NOTICES_MAX are held. Each would otherwise wake the node once per call."""
        with self.lock:
            if self.closed:
                return
            outbox = self.messages
            if not outbox:
                self.only_notices = True
            self._queue_ops(outbox)
            outbox.append(message)
            if len(outbox) < NOTICES_MAX:
                return
        self.send([])

    def _queue_ops(self, outbox: list[Any]) -> None:
        """Ref-count and pin changes so far go ahead of the messages that follow them."""
        # pins first: a value dropped with its ref is unmapped before it is freed, so the
        # node may reuse its file (object_store's pool) only once nobody maps it
        if self.pins:
            pins: list[tuple[bool, bytes]] = []
            while self.pins:
                pins.append(self.pins.popleft())
            outbox.append(P.PinOps(tuple(pins)))
        ops = reference_counter.drain()
        if ops:
            outbox.append(P.RefOps(ops))

    def burst_over(self) -> None:
        """A thread waits: the next submit goes at once (and a held burst goes now)."""
        self.last_batched = 0.0

    def wake_io_thread(self) -> None:
        """Have the IO thread look again (the wake socket is its flush request too)."""
        with self.lock:
            if not self.flush_requested and not self.closed and self.wake_tx is not None:
                self.flush_requested = True
                self.wake_tx.send(b"")

    def flush(self) -> None:
        """The IO thread, woken: send what was held, once the burst it belongs to is over.

        Woken at the second of a run of submits, the IO thread would otherwise send the
        few that came meanwhile and be woken again at once (how many depends on how soon
        the machine schedules it); it lets the submits go on while they keep coming
        closer than BATCH_WINDOW_S, for at most BURST_HOLD_S and BURST_MAX_MESSAGES.
        """
        while self.wake_rx is not None and self.wake_rx.poll(0):
            self.wake_rx.recv()
        deadline = time.monotonic() + BURST_HOLD_S
        while not self.closed and len(self.messages) < BURST_MAX_MESSAGES:
            now = time.monotonic()
            if now - self.last_batched >= BATCH_WINDOW_S or now >= deadline:
                break
            time.sleep(min(BATCH_WINDOW_S, deadline - now))
        self.send([])

    def close(self, last: list[Any]) -> None:
        """Send ``last`` after what is queued; the IO thread sees ``closed`` at once."""
        with contextlib.suppress(zmq.ZMQError):
            self.send(last)
        with self.lock:
            self.closed = True
            if self.wake_tx is not None:
                self.wake_tx.send(b"")

    def close_sockets(self) -> None:
        for sock in (self.wake_rx, self.wake_tx):
            if sock is not None:
                sock.close(linger=0)
