"""Which chunk of a value to ask which holder for next: the decisions of one pull, no I/O.

A value that several peers hold is pulled from all of them at once: each holder has a
window of chunks in flight, and a holder that answers gets the next chunk not yet asked
for, so a fast holder serves more of the value than a slow one. A holder that fails (it
died, or no longer has the value) gives its chunks in flight back, and the others take
them; the pull fails only when no holder is left. ``node_pulls.NodePulls`` carries the
requests out and writes what arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: one request's bytes: small enough for each copy (kernel, zmq, store) to stay in cache
CHUNK_BYTES = 2 << 20
#: a holder's requests in flight: enough to keep its socket busy between our turns
WINDOW = 16


@dataclass
class PullPlan:
    """The chunks of a value of ``size`` bytes, spread over its holders."""

    size: int
    holders: list[str]  # in order of preference; the first is asked first
    chunk: int = CHUNK_BYTES
    window: int = WINDOW
    next_offset: int = 0  # where the chunks never asked for begin
    received: int = 0
    #: per holder: the chunks asked of it and not answered yet (offset -> length)
    in_flight: dict[str, dict[int, int]] = field(default_factory=dict)
    #: chunks a failed holder never sent, to ask another for (offset, length)
    orphans: list[tuple[int, int]] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=dict)  # bytes each holder sent

    def __post_init__(self) -> None:
        self.holders = list(dict.fromkeys(h for h in self.holders if h))
        for holder in self.holders:
            self.in_flight[holder] = {}
            self.served[holder] = 0

    @property
    def done(self) -> bool:
        return self.received >= self.size

    @property
    def failed(self) -> bool:
        """No holder is left and bytes are missing."""
        return not self.holders and not self.done

    def requests(self) -> list[tuple[str, int, int]]:
        """(holder, offset, length) to ask for now: each holder's window filled."""
        asks = []
        for holder in self.holders:
            asks.extend(self._fill(holder))
        return asks

    def _fill(self, holder: str) -> list[tuple[str, int, int]]:
        asks = []
        pending = self.in_flight[holder]
        while len(pending) < self.window:
            if self.orphans:
                offset, length = self.orphans.pop()
            elif self.next_offset < self.size:
                offset = self.next_offset
                length = min(self.chunk, self.size - offset)
                self.next_offset += length
            else:
                break
            pending[offset] = length
            asks.append((holder, offset, length))
        return asks

    def arrived(
        self, holder: str, offset: int, length: int
    ) -> tuple[bool, list[tuple[str, int, int]]]:
        """A chunk came from holder: (whether it was one we asked it for, the next asks).

        An answer we did not ask for (a holder we gave up on, or a repeat) is not to be
        written: another holder was asked for those bytes."""
        pending = self.in_flight.get(holder)
        if pending is None or pending.get(offset) != length:
            return False, []
        del pending[offset]
        self.received += length
        self.served[holder] += length
        return True, self._fill(holder)

    def holder_failed(self, holder: str) -> list[tuple[str, int, int]]:
        """Forget a holder: its chunks in flight go to the others (the next asks)."""
        if holder not in self.in_flight:
            return []
        self.holders.remove(holder)
        self.orphans.extend(self.in_flight.pop(holder).items())
        return self.requests()
