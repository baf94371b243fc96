"""The decisions behind a streaming generator task, with no I/O (see ``generators.py``).

A generator task (``num_returns="streaming"``) reports each yielded value as it comes
(``GeneratorItem``); its owner takes them one by one (``next(gen)``) and says how many it
has taken (``GeneratorConsumed``). The node keeps one ``GeneratorStream`` per such task
and asks it what to do with each event; the worker keeps a ``ProducerGate`` that says
whether it may run ahead to the next item.

Item ids are fixed by the task id and the index (``item_id``), so a retried attempt
makes the same ids again and the stream drops the items it has seen already.
"""

from __future__ import annotations

import enum

#: the task's own return id (``gen.completed()``) has index 0; item i has index i + 1
COMPLETED_INDEX = 0
#: names the caller's generator object: its release (a ref op) says it was dropped
HANDLE_INDEX = 0xFFFFFFFE
MAX_ITEMS = HANDLE_INDEX - 1  # indices above are not items (0xFFFFFFFF names actors)
NO_BACKPRESSURE = -1


def item_id(task_id: bytes, index: int) -> bytes:
    """The object id of a generator task's item ``index`` (0-based)."""
    if not 0 <= index < MAX_ITEMS:
        raise ValueError(f"a generator yields at most {MAX_ITEMS} items; index {index} is out")
    return task_id + (index + 1).to_bytes(4, "big")


def completed_id(task_id: bytes) -> bytes:
    return task_id + COMPLETED_INDEX.to_bytes(4, "big")


def handle_id(task_id: bytes) -> bytes:
    """Not an object: the id whose release tells the node the caller dropped its generator."""
    return task_id + HANDLE_INDEX.to_bytes(4, "big")


class StreamPhase(enum.IntEnum):
    RUNNING = 1  # items may still come (also while queued or between retries)
    FINISHED = 2  # the generator ran out
    FAILED = 3  # an error item closed it (application error, crash, cancel)


STREAM_TRANSITIONS: dict[StreamPhase, frozenset[StreamPhase]] = {
    StreamPhase.RUNNING: frozenset({StreamPhase.FINISHED, StreamPhase.FAILED}),
    StreamPhase.FINISHED: frozenset(),
    StreamPhase.FAILED: frozenset(),
}


class ItemVerdict(enum.IntEnum):
    ACCEPT = 1  # a new item: make it ready for the owner
    DUPLICATE = 2  # seen before (a retry replays the items up to where it failed): drop it
    LATE = 3  # the stream has ended (cancelled, failed): drop it


class InvalidStreamEvent(RuntimeError):
    """An event the stream cannot take (an item out of order): a bug, never user error."""


class GeneratorStream:
    """One generator task's stream as the node sees it: counts, window and end."""

    def __init__(self, task_id: bytes, owner: bytes, backpressure: int = NO_BACKPRESSURE):
        self.task_id = task_id
        self.owner = owner
        self.backpressure = backpressure  # items the producer may run ahead; -1: no bound
        self.phase = StreamPhase.RUNNING
        self.produced = 0  # items made ready so far (indices 0 .. produced-1)
        self.consumed = 0  # items the owner has taken with next()
        self.abandoned = False  # the owner dropped its generator: nobody takes the rest
        self.history: list[StreamPhase] = []

    def _transition(self, new: StreamPhase) -> None:
        if new not in STREAM_TRANSITIONS[self.phase]:
            raise InvalidStreamEvent(
                f"stream of task {self.task_id.hex()}: {self.phase.name} -> {new.name} is not "
                f"allowed (recent: {' -> '.join(p.name for p in self.history[-5:]) or 'none'})"
            )
        self.history.append(self.phase)
        self.phase = new

    def item(self, index: int) -> ItemVerdict:
        """The producer reports item ``index``."""
        if self.phase is not StreamPhase.RUNNING:
            return ItemVerdict.LATE
        if index < self.produced:
            return ItemVerdict.DUPLICATE
        if index > self.produced:
            raise InvalidStreamEvent(
                f"stream of task {self.task_id.hex()}: item {index} came before item "
                f"{self.produced}"
            )
        self.produced += 1
        return ItemVerdict.ACCEPT

    def taken(self, count: int) -> int | None:
        """The owner has taken ``count`` items; the producer's new credit if it changed."""
        if count <= self.consumed:
            return None
        self.consumed = min(count, self.produced)
        if self.phase is StreamPhase.RUNNING and self.backpressure >= 0:
            return self.credit()
        return None

    def credit(self) -> int:
        """How many items the producer may have made in all (-1: no bound)."""
        if self.backpressure < 0 or self.abandoned:
            return NO_BACKPRESSURE
        return self.consumed + self.backpressure

    def finished(self) -> None:
        self._transition(StreamPhase.FINISHED)

    def failed(self) -> int | None:
        """The task failed: the index where its error goes (then the stream is over);
        None if it had already ended (the error only reaches ``completed()``)."""
        if self.phase is not StreamPhase.RUNNING:
            return None
        index = self.produced
        self.produced += 1
        self._transition(StreamPhase.FAILED)
        return index

    def abandon(self) -> range:
        """The owner dropped its generator: the items it never took, to let go of now."""
        if self.abandoned:
            return range(0)
        self.abandoned = True
        return range(self.consumed, self.produced)

    @property
    def ended(self) -> bool:
        return self.phase is not StreamPhase.RUNNING

    def validate(self) -> None:
        assert 0 <= self.consumed <= self.produced, (self.consumed, self.produced)
        assert self.backpressure >= NO_BACKPRESSURE
        if self.phase is StreamPhase.RUNNING and self.backpressure >= 0 and not self.abandoned:
            # the producer never holds more than the window beyond what was taken
            assert self.produced <= self.consumed + self.backpressure, (
                self.produced,
                self.consumed,
                self.backpressure,
            )


class ProducerGate:
    """The worker's side: may the generator run on to its next item?"""

    def __init__(self, backpressure: int = NO_BACKPRESSURE) -> None:
        # credit: how many items may exist in all; -1 for no bound
        self.allowed = backpressure
        self.seen = 0  # items the node already has (a retry replays them unsent)

    def update(self, allowed: int, seen: int) -> None:
        """A credit from the node (credits only grow; a late one changes nothing)."""
        if allowed < 0:
            self.allowed = NO_BACKPRESSURE
        elif self.allowed >= 0:
            self.allowed = max(self.allowed, allowed)
        self.seen = max(self.seen, seen)

    def may_make(self, index: int) -> bool:
        """True if item ``index`` (0-based) may be produced now."""
        return self.allowed < 0 or index < self.allowed

    def must_send(self, index: int) -> bool:
        """False for an item the node already has from an earlier attempt."""
        return index >= self.seen
