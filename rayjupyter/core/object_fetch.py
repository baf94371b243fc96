"""Values for a driver on another machine than its node.

Such a driver cannot map the node's shared memory, so a value held in the store comes over
its connection instead: in chunks, a few requests in flight, into a private anonymous
mapping of the driver (read-only once complete, like a value mapped from the store).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

from rayjupyter.core import protocol as P

CHUNK_BYTES = 8 << 20
CHUNKS_IN_FLIGHT = 4


@dataclass(eq=False)
class Fetch:
    """One value being copied from the node's store into this process."""

    object_id: bytes
    size: int
    buffer: mmap.mmap
    requested: int = 0
    received: int = 0
    error: str = ""

    @classmethod
    def start(cls, object_id: bytes, size: int) -> Fetch:
        return cls(object_id, size, mmap.mmap(-1, max(size, 1)))

    @property
    def done(self) -> bool:
        return bool(self.error) or self.received >= self.size

    def next_requests(self) -> list[P.PullObject]:
        """Ask for more chunks, keeping at most CHUNKS_IN_FLIGHT outstanding."""
        requests = []
        window = CHUNKS_IN_FLIGHT * CHUNK_BYTES
        while self.requested < self.size and self.requested - self.received < window:
            length = min(CHUNK_BYTES, self.size - self.requested)
            requests.append(P.PullObject(self.object_id, self.requested, length))
            self.requested += length
        return requests

    def add(self, chunk: P.ObjectChunk, data: bytes | memoryview) -> None:
        if chunk.error:
            self.error = chunk.error
            return
        end = chunk.offset + len(data)
        self.buffer[chunk.offset : end] = data
        self.received += len(data)

    def view(self) -> memoryview:
        return memoryview(self.buffer)[: self.size].toreadonly()
