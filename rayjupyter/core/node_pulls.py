"""Several nodes, values: what peers provide us, copies pulled from their stores, and
values rebuilt from lineage when the only node that had them died.

A part of the node daemon (``Node.pulling``). A large value that stays in a peer's store is
pulled here only when someone needs it: in chunks, from every peer known to hold it at once
(``pull_plan.PullPlan`` decides who is asked for what), written into this store's file
where they belong as they arrive (no buffer of the value's size), so a 1 GB value crosses
in bounded memory. From a peer on this machine the chunks come over its channel socket
(``peer_bulk.py``): the holder sends them from its file with sendfile and they are spliced
into ours, one copy per byte. From other machines, each chunk's bytes are a zmq frame of
their own, sent from a mapping of the holder's file and written here with pwrite. The
peer that provided the value keeps its copy, held for us, until we free the object
(``release_copies``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import mmap
import os
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rayjupyter.core import ids
from rayjupyter.core import protocol as P
from rayjupyter.core.exceptions import ObjectLostError
from rayjupyter.core.node_links import NodeLinks, PeerHost, PeerLink
from rayjupyter.core.node_promises import NodePromises
from rayjupyter.core.object_files import POOL_MIN_SIZE, pool_prefix, take_pooled
from rayjupyter.core.object_store import shm_path
from rayjupyter.core.scheduler import TaskRecord, TaskState

if TYPE_CHECKING:
    from rayjupyter.core.pull_plan import PullPlan  # (imported when a pull starts)


@dataclass
class Pull:
    """A value being copied here from peers' stores, chunk by chunk."""

    object_id: bytes
    address: str  # the peer that holds it for us (the entry's location)
    size: int
    fd: int
    plan: PullPlan


class NodePulls:
    """Values on peers: provided to us, pulled here, rebuilt or lost with their node."""

    def __init__(self, node: PeerHost, links: NodeLinks) -> None:
        self.node = node
        self.links = links
        self.pulls: dict[bytes, Pull] = {}
        # finished tasks whose results live only on peers: kept (with their arguments held)
        # to run again if that peer dies, until every result is freed
        self.lineage: dict[bytes, TaskRecord] = {}
        self.promises = NodePromises(node, links)  # values not made yet, named by tasks
        # other peers that hold a value we may pull (besides its location), as provided
        self.more_holders: dict[bytes, tuple[str, ...]] = {}
        links.bulk.sink = self

    def on_pending_objects(self, client: bytes, message: P.PendingObjects) -> None:
        self.promises.on_pending_objects(client, message)

    def on_provide_objects(self, client: bytes, message: P.ProvideObjects) -> None:
        more_holders = dict(message.more_holders)
        for object_id, inline, size, is_error, holder in message.objects:
            pending = bool(self.promises.awaiting) and self.promises.settled(object_id)
            if pending or object_id not in self.node.objects:
                entry = self.node.objects.get(object_id)
                if entry is None:
                    entry = self.node.objects[object_id] = self.node.new_entry()
                    self.node.hold(client, object_id)
                elif entry.ready:
                    continue  # made here meanwhile (its task ran here, or a retry did)
                if inline is not None or not holder:
                    self.node.set_ready(object_id, inline, size, is_error, ())
                else:
                    location = "" if holder == self.node.address else holder
                    if location and object_id in more_holders:
                        self.more_holders[object_id] = more_holders[object_id]
                    self.node.set_ready(object_id, None, size, False, (), location=location)
                del entry
            else:
                self.node.hold(client, object_id)

    def on_pull_object(self, client: bytes, message: P.PullObject) -> None:
        object_id = message.object_id
        entry = self.node.objects.get(object_id)
        if entry is None or not self.node.store.contains(object_id):
            self.node.send(client, P.ObjectChunk(object_id, message.offset, 0, b"", "not here"))
            return
        self.node.store.restore(object_id)
        path = self.node.store.path_of(object_id)
        # a peer's bulk link (peer_bulk.py): a channel that never said Hello, where a
        # driver's or a worker's did (they would not read a chunk frame)
        if client in self.node.channels and client not in self.node.clients:
            chunk = P.ObjectChunk(object_id, message.offset, entry.size, b"", "")
            self.node.send_file_chunk(client, chunk, path, message.length)
            return
        try:
            data = _read_chunk(path, message.offset, message.length)
        except (OSError, ValueError) as exc:
            self.node.send(client, P.ObjectChunk(object_id, message.offset, 0, b"", str(exc)))
            return
        self.node.send_chunk(client, P.ObjectChunk(object_id, message.offset, entry.size, data, ""))

    def pull(self, object_id: bytes) -> None:
        """Copy a value that peers hold into this node's store (once, however many ask)."""
        entry = self.node.objects[object_id]
        if object_id in self.pulls or not entry.location:
            return
        holders = [entry.location, *self.more_holders.pop(object_id, ())]
        path = shm_path(self.node.session, object_id)
        try:
            fd = _create(self.node.session, path, entry.size)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            reason = os.strerror(exc.errno or errno.EIO)
            self.object_lost(object_id, f"no room in this node's store for it ({reason})")
            return
        from rayjupyter.core.pull_plan import PullPlan  # (only a multi-node cluster pulls)

        plan = PullPlan(entry.size, [h for h in holders if h != self.node.address])
        pull = self.pulls[object_id] = Pull(object_id, entry.location, entry.size, fd, plan)
        if entry.size == 0:
            self._pull_done(pull)
            return
        self._ask(pull, plan.requests())

    def _ask(self, pull: Pull, asks: list[tuple[str, int, int]]) -> None:
        """Queue the requests: they leave together at the end of the loop's turn (one send
        for every chunk that turn wrote; one per chunk costs a wake-up of zmq's IO thread
        each, which measured slower on 2 cores)."""
        for holder, offset, length in asks:
            link = self.links.bulk_link(holder) or self.links.link(holder)
            link.send(P.PullObject(pull.object_id, offset, length))

    def on_object_chunk(self, link: PeerLink, message: P.ObjectChunk) -> None:
        self._chunk(link.address, message)

    # ----------------------------------------------- chunks over a bulk link (ChunkSink)

    def chunk_target(self, address: str, chunk: P.ObjectChunk, length: int) -> int | None:
        pull = self._asked(address, chunk, length)
        return None if pull is None else pull.fd

    def chunk_written(self, address: str, chunk: P.ObjectChunk, length: int) -> None:
        pull = self.pulls.get(chunk.object_id)
        if pull is not None:
            self._written(pull, address, chunk.offset, length)

    def chunk_write_failed(self, address: str, chunk: P.ObjectChunk, error: OSError) -> None:
        pull = self.pulls.get(chunk.object_id)
        if pull is not None:
            self.pull_failed(pull, f"it could not be written here: {_write_error(error)}")

    def on_message(self, address: str, message: object) -> None:
        if isinstance(message, P.ObjectChunk):
            self._chunk(address, message)

    def bulk_lost(self, address: str) -> None:
        """The bulk link to a holder closed: its chunks in flight go to the other holders,
        or are asked again over zmq (the membership notices if the holder died)."""
        for pull in list(self.pulls.values()):
            pending = pull.plan.in_flight.get(address)
            if not pending:
                continue
            if len(pull.plan.holders) > 1:
                self.holder_failed(pull, address, f"the link to node {address} closed")
            elif address in self.links.links:
                for offset, length in pending.items():
                    self.links.links[address].send(P.PullObject(pull.object_id, offset, length))

    # ------------------------------------------------------------------------------------

    def _asked(self, address: str, chunk: P.ObjectChunk, length: int) -> Pull | None:
        """The pull a chunk from address belongs to, if it is one we asked it for (a wrong
        size fails the holder)."""
        pull = self.pulls.get(chunk.object_id)
        if pull is None:
            return None
        asked = pull.plan.in_flight.get(address, {}).get(chunk.offset)
        if asked is not None and asked != length:
            why = f"node {address} sent {length} of its bytes, not {asked}"
            self.holder_failed(pull, address, why)
            return None
        return pull if asked is not None else None

    def _written(self, pull: Pull, address: str, offset: int, length: int) -> None:
        wanted, asks = pull.plan.arrived(address, offset, length)
        if not wanted:
            return
        if pull.plan.done:
            self._pull_done(pull)
        else:
            self._ask(pull, asks)

    def _chunk(self, address: str, message: P.ObjectChunk) -> None:
        pull = self.pulls.get(message.object_id)
        if pull is None:
            return
        if message.error:
            self.holder_failed(pull, address, f"node {address} no longer has it ({message.error})")
            return
        view = memoryview(message.data)
        asked = pull.plan.in_flight.get(address, {}).get(message.offset)
        if asked is not None and asked != len(view):
            why = f"node {address} sent {len(view)} of its bytes, not {asked}"
            self.holder_failed(pull, address, why)
            return
        wanted, asks = pull.plan.arrived(address, message.offset, len(view))
        if not wanted:
            return  # (from a holder we gave up on: another was asked for these bytes)
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(pull.fd, view[done:], message.offset + done)
        except OSError as exc:
            self.pull_failed(pull, f"it could not be written here: {_write_error(exc)}")
            return
        if pull.plan.done:
            self._pull_done(pull)
        else:
            self._ask(pull, asks)

    def holder_failed(self, pull: Pull, address: str, why: str) -> None:
        """A holder cannot serve the rest: the others take its chunks, or the pull fails."""
        if address not in pull.plan.in_flight:
            return  # (given up on already)
        asks = pull.plan.holder_failed(address)
        if pull.plan.failed:
            self.pull_failed(pull, why)
            return
        if address == pull.address and pull.plan.holders:
            # (the entry's location: a get here asks the holders that are left)
            pull.address = pull.plan.holders[0]
            entry = self.node.objects.get(pull.object_id)
            if entry is not None and entry.location == address:
                entry.location = pull.address
        self._ask(pull, asks)

    def holder_died(self, address: str, why: str) -> None:
        """A peer died: the pulls that other holders can finish go on without it (the
        others are the membership's to rebuild or fail, as values whose only copy it had)."""
        for object_id, holders in list(self.more_holders.items()):
            if address in holders:
                self.more_holders[object_id] = tuple(h for h in holders if h != address)
        for pull in list(self.pulls.values()):
            if address in pull.plan.in_flight and len(pull.plan.holders) > 1:
                self.holder_failed(pull, address, f"the node holding it died ({why})")

    def _pull_done(self, pull: Pull) -> None:
        del self.pulls[pull.object_id]
        self.links.bulk.forget_target(pull.fd)
        os.close(pull.fd)
        entry = self.node.objects.get(pull.object_id)
        if entry is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(shm_path(self.node.session, pull.object_id))
            return
        entry.add_copy(pull.address)  # our hold there stays until we free it
        contained = entry.contained  # held already, when the value arrived
        self.node.set_ready(pull.object_id, None, pull.size, False, ())
        entry.contained = contained

    def pull_failed(self, pull: Pull, why: str) -> None:
        del self.pulls[pull.object_id]
        self.links.bulk.forget_target(pull.fd)
        os.close(pull.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(shm_path(self.node.session, pull.object_id))
        entry = self.node.objects.get(pull.object_id)
        if entry is not None and entry.ready:  # (not being rebuilt)
            self.object_lost(pull.object_id, why)

    def rebuild_or_lose(self, address: str) -> None:
        """Values whose only copy was on a dead node: run their tasks again (lineage) where
        retries allow, first marking every lost value as pending (a rebuilt task may need
        another); the rest raise ObjectLostError."""
        rebuilding: dict[bytes, TaskRecord] = {}
        for object_id, entry in list(self.node.objects.items()):
            entry.drop_copy(address)
            if entry.location != address:
                continue
            task_id = ids.task_of(object_id)
            done = self.lineage.get(task_id)
            if task_id not in rebuilding and done is not None and done.retry():
                del self.lineage[task_id]
                rebuilding[task_id] = done
            if task_id in rebuilding:
                entry.ready = False
                entry.location = ""
                self.more_holders.pop(object_id, None)
            else:
                self.object_lost(
                    object_id,
                    f"its only copy was on node {address}, which died, and it cannot be "
                    f"rebuilt (it came from rj.put, or its task is out of retries)",
                )
        if self.promises.awaiting:
            self.promises.holder_died(address, self.object_lost)
        for done in rebuilding.values():
            self._run_again(done)

    def _run_again(self, done: TaskRecord) -> None:
        again = dataclasses.replace(
            done, state=TaskState.WAITING, missing=0, history=[], worker=None, children=[]
        )
        self.node.tasks[again.task_id] = again
        self.node.events.submitted(again.task_id, again.name, again.job, b"", bool(again.deps))
        for dep in again.deps:
            entry = self.node.objects.get(dep)
            if entry is not None and not entry.ready:
                entry.waiters.append(again)
                again.missing += 1
        if again.missing == 0:
            self.node.task_ready(again)

    def forget_lineage(self, object_id: bytes) -> None:
        """A value was freed: once all of its task's values are, let go of its arguments."""
        task = self.lineage.get(ids.task_of(object_id))
        if task is not None and not any(r in self.node.objects for r in task.return_ids):
            del self.lineage[task.task_id]
            self.node.tasks[task.task_id] = task  # so that forget_task releases its arguments
            self.node.forget_task(task)

    def object_lost(self, object_id: bytes, why: str) -> None:
        entry = self.node.objects.get(object_id)
        if entry is None:
            return
        self.more_holders.pop(object_id, None)
        error = ObjectLostError(f"Object {object_id.hex()} was lost: {why}.")
        blob = pickle.dumps(error, protocol=5)
        entry.location = ""
        self.node.set_ready(object_id, blob, len(blob), True, ())

    def release_copies(self, object_id: bytes, locations: set[str]) -> None:
        """An object we freed: let go of the copies peers keep for us."""
        self.more_holders.pop(object_id, None)
        for address in locations:
            if address in self.links.links:
                self.links.links[address].send(P.RefOps(((False, object_id),)))


def _write_error(exc: OSError) -> str:
    reason = os.strerror(exc.errno or errno.EIO)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = f"no room in this node's store for it ({reason})"
    return reason


def _read_chunk(path: str, offset: int, length: int) -> memoryview | bytes:
    """Bytes [offset, offset + length) of a store file, as a read-only mapping: zmq sends
    them from there (no copy here), and they stay valid if the file is freed meanwhile."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        length = max(0, min(length, size - offset))
        if length == 0:
            return b""
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        # (its page table filled in one go: the sender's IO thread faults on none of them)
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mapped = mmap.mmap(
            fd, offset - start + length, flags=flags, prot=mmap.PROT_READ, offset=start
        )
    finally:
        os.close(fd)
    return memoryview(mapped)[offset - start :]


def _create(session: str, path: str, size: int) -> int:
    """The file a pulled value is written into: a freed one of the store's pool if one
    fits (its pages are there already: writing them runs at memcpy speed), else a new one.

    A new file's pages are not taken up front (posix_fallocate): on tmpfs that zeroes the
    whole value before the first byte is asked for (half a second a GB here), while the
    writes allocate them as the chunks arrive, overlapped with the transfer. A store that
    fills up fails a write (ENOSPC), which fails the pull with that reason; nobody maps the
    file before the pull is done, so no reader meets a missing page."""
    if size >= POOL_MIN_SIZE and take_pooled(pool_prefix(session), size, path):
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)  # (a pooled file may be a little larger: its tail goes back)
    except OSError:
        os.close(fd)
        raise
    return fd
