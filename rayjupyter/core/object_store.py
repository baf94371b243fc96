"""The node daemon's shared-memory object store: one sealed file per object under /dev/shm
(or, when /dev/shm is too small, under the session's folder: store_placement).

``ObjectStore`` manages the files that processes write and map (``object_files``):
capacity accounting, pins, and spilling least-recently-used objects to disk. Its decisions
live in ``StorePolicy``, a pure class with no I/O, so the policy is testable without files;
``ObjectStore`` moves files around it. The file functions are re-exported here for the
modules that import them from the store.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from rayjupyter.core.exceptions import ObjectStoreFullError
from rayjupyter.core.object_files import (
    COPY_CHUNK,
    POOL_MIN_SIZE,
    SHM_DIR,
    SHM_PREFIX,
    map_object,
    pool_prefix,
    pooled_files,
    reserve,
    set_store_dir,
    shm_path,
    store_full_error,
    unlink_quietly,
    write_object,
)

__all__ = [
    "SHM_DIR",
    "ObjectStore",
    "StorePolicy",
    "map_object",
    "pool_prefix",
    "shm_path",
    "write_object",
]

# ----------------------------------------------------------------------------------------
# The node-side manager. StorePolicy decides; ObjectStore does the file operations.


@dataclass
class _Entry:
    """What the policy knows about one object."""

    size: int
    spilled: bool = False
    on_disk: bool = False  # a spill copy exists (kept after restore: objects are immutable)
    freed: bool = False  # freed while pinned: file gone, memory counted until unpinned
    pins: dict[bytes, int] = field(default_factory=dict)  # client -> number of mappings


class StorePolicy:
    """Accounting, pins and LRU choice of spill victims, with no I/O.

    Methods that need files moved return the object ids to move; the caller moves them and
    reports back with spilled() / restored() / forget(). Invariant (see validate()):
    used_bytes == sum of sizes of entries in memory, spilled_bytes == sum of spilled ones.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"object store capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.used_bytes = 0
        self.spilled_bytes = 0
        self.entries: dict[bytes, _Entry] = {}
        self._lru: OrderedDict[bytes, None] = OrderedDict()  # in-memory, oldest first
        self.spill_count = 0
        self.restore_count = 0

    # -- queries --------------------------------------------------------------------------

    def contains(self, object_id: bytes) -> bool:
        entry = self.entries.get(object_id)
        return entry is not None and not entry.freed

    def entry(self, object_id: bytes) -> _Entry:
        entry = self.entries.get(object_id)
        if entry is None or entry.freed:
            raise KeyError(f"object {object_id.hex()} is not in this store")
        return entry

    def is_pinned(self, object_id: bytes) -> bool:
        return bool(self.entry(object_id).pins)

    # -- events ---------------------------------------------------------------------------

    def plan_room(self, incoming: int, exclude: bytes | None = None) -> list[bytes]:
        """Least recently used unpinned objects to spill so that incoming bytes fit."""
        victims: list[bytes] = []
        need = self.used_bytes + incoming - self.capacity
        if need <= 0:
            return victims
        for oid in self._lru:
            if oid == exclude:
                continue
            entry = self.entries[oid]
            if entry.pins or entry.freed:
                continue
            victims.append(oid)
            need -= entry.size
            if need <= 0:
                break
        return victims

    def pinned_excess(
        self, releasable: Callable[[bytes], bool]
    ) -> list[tuple[bytes, tuple[bytes, ...]]]:
        """Over capacity: the least recently used pinned objects that, spilled, would bring
        the store back under it, each with who pins it (to be asked to let go of it). Only
        objects whose every pinner is releasable (it may let go when asked) are named."""
        excess = self.used_bytes - self.capacity
        found: list[tuple[bytes, tuple[bytes, ...]]] = []
        for oid in self._lru:
            if excess <= 0:
                break
            entry = self.entries[oid]
            if entry.pins and not entry.freed and all(map(releasable, entry.pins)):
                found.append((oid, tuple(entry.pins)))
                excess -= entry.size
        return found

    def admits(self, incoming: int, spill_failed: bool) -> bool:
        """Whether a new object of incoming bytes is accounted once room was sought for it.

        It is when it fits, and when nothing could be spilled (every object pinned, or one
        larger than the whole capacity): its writer already wrote it, and refusing it would
        fail work that will fit once readers let go. When spilling failed (the spill
        directory is full or unwritable) and it does not fit, it is refused: the store is
        really full, and the one who made the object hears ObjectStoreFullError instead of
        the node's memory growing past its capacity without bound.
        """
        return not spill_failed or self.used_bytes + incoming <= self.capacity

    def added(self, object_id: bytes, size: int) -> bool:
        """Account a new in-memory object; False if it was already known (nothing changed)."""
        known = self.entries.get(object_id)
        if known is not None and not known.freed:
            self.touch(object_id)
            return False
        if known is not None:  # a freed, still-mapped predecessor with the same id
            self.forget(object_id)
        self.entries[object_id] = _Entry(size)
        self._lru[object_id] = None
        self.used_bytes += size
        return True

    def touch(self, object_id: bytes) -> None:
        if object_id in self._lru:
            self._lru.move_to_end(object_id)

    def spilled(self, object_id: bytes) -> None:
        entry = self.entry(object_id)
        if entry.spilled:
            return
        entry.spilled = True
        entry.on_disk = True
        del self._lru[object_id]
        self.used_bytes -= entry.size
        self.spilled_bytes += entry.size
        self.spill_count += 1

    def restored(self, object_id: bytes) -> None:
        entry = self.entry(object_id)
        if not entry.spilled:
            return
        entry.spilled = False
        self._lru[object_id] = None
        self.spilled_bytes -= entry.size
        self.used_bytes += entry.size
        self.restore_count += 1

    def pin(self, object_id: bytes, client: bytes) -> None:
        pins = self.entry(object_id).pins
        pins[client] = pins.get(client, 0) + 1
        self.touch(object_id)

    def unpin(self, object_id: bytes, client: bytes) -> bool:
        """Drop one pin; True if a freed object's last pin went and it is now forgotten."""
        entry = self.entries.get(object_id)
        if entry is None or client not in entry.pins:
            return False
        if entry.pins[client] > 1:
            entry.pins[client] -= 1
            return False
        del entry.pins[client]
        if entry.freed and not entry.pins:
            self.forget(object_id)
            return True
        return False

    def release_client(self, client: bytes) -> list[bytes]:
        """Drop every pin of a client (it exited); returns freed objects now forgotten."""
        gone: list[bytes] = []
        for oid in [oid for oid, e in self.entries.items() if client in e.pins]:
            entry = self.entries[oid]
            del entry.pins[client]
            if entry.freed and not entry.pins:
                self.forget(oid)
                gone.append(oid)
        return gone

    def freed(self, object_id: bytes) -> bool:
        """Mark an object freed; True if forgotten now, False if readers still pin its memory."""
        entry = self.entries.get(object_id)
        if entry is None or entry.freed:
            return entry is None
        if entry.pins and not entry.spilled:
            entry.freed = True  # mapped somewhere: memory stays in use until the last unpin
            entry.on_disk = False
            return False
        self.forget(object_id)
        return True

    def forget(self, object_id: bytes) -> None:
        entry = self.entries.pop(object_id)
        if entry.spilled:
            self.spilled_bytes -= entry.size
        else:
            self.used_bytes -= entry.size
            self._lru.pop(object_id, None)

    def validate(self) -> None:
        """Check the accounting invariants; raises AssertionError naming the broken one."""
        in_mem = sum(e.size for e in self.entries.values() if not e.spilled)
        on_disk = sum(e.size for e in self.entries.values() if e.spilled)
        assert self.used_bytes == in_mem, f"used_bytes {self.used_bytes} != {in_mem}"
        assert self.spilled_bytes == on_disk, f"spilled_bytes {self.spilled_bytes} != {on_disk}"
        lru = set(self._lru)
        mem = {oid for oid, e in self.entries.items() if not e.spilled}
        assert lru == mem, f"LRU holds {len(lru)} ids, {len(mem)} objects are in memory"
        for oid, e in self.entries.items():
            assert not (e.spilled and e.freed), f"{oid.hex()} is both spilled and freed"
            assert all(n > 0 for n in e.pins.values()), f"{oid.hex()} has a zero pin count"


class ObjectStore:
    """The node daemon's store manager; owned by the daemon's single thread (no locks)."""

    def __init__(
        self, session: str, capacity: int, spill_dir: str, directory: str = SHM_DIR
    ) -> None:
        if not session or "/" in session or "\0" in session:
            raise ValueError(f"session must be a non-empty name without '/', got {session!r}")
        self.session = session
        self.spill_dir = spill_dir
        #: where the object files are: /dev/shm, or a folder on disk (store_placement)
        self.directory = directory
        if directory != SHM_DIR:  # its existence tells this machine's clients (store_dir)
            os.makedirs(directory, mode=0o700, exist_ok=True)
        set_store_dir(session, directory)
        self.note = ""  # why this directory and size (store_placement), for the status
        self._policy = StorePolicy(capacity)
        self._spill_dir_made = False
        self._pool_prefix = pool_prefix(session)
        self._pool_seq = 0
        #: freed files kept for reuse take at most this much shared memory
        self.pool_limit = min(capacity // 4, 4 << 30)
        #: freed objects' files that readers still map, set aside under another name until
        #: the last reader lets go (workers keep task arguments mapped, so most are)
        self._draining: dict[bytes, tuple[str, int]] = {}  # id -> (path, size)

    # -- read-only views --------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._policy.capacity

    @property
    def used_bytes(self) -> int:
        return self._policy.used_bytes

    @property
    def spilled_bytes(self) -> int:
        return self._policy.spilled_bytes

    @property
    def policy(self) -> StorePolicy:
        return self._policy

    def contains(self, object_id: bytes) -> bool:
        return self._policy.contains(object_id)

    def size_of(self, object_id: bytes) -> int:
        return self._policy.entry(object_id).size

    def is_spilled(self, object_id: bytes) -> bool:
        return self._policy.entry(object_id).spilled

    def pinned_by(self, object_id: bytes) -> tuple[bytes, ...]:
        """The clients (and tasks) that have object_id mapped, or are about to."""
        entry = self._policy.entries.get(object_id)
        return tuple(entry.pins) if entry is not None else ()

    def path_of(self, object_id: bytes) -> str:
        return shm_path(self.session, object_id)

    def stats(self) -> dict[str, int]:
        p = self._policy
        live = [e for e in p.entries.values() if not e.freed]
        return {
            "capacity": p.capacity,
            "used_bytes": p.used_bytes,
            "spilled_bytes": p.spilled_bytes,
            "num_objects": len(live),
            "num_in_memory": sum(1 for e in live if not e.spilled),
            "num_spilled": sum(1 for e in live if e.spilled),
            "num_pinned": sum(1 for e in p.entries.values() if e.pins),
            "spill_count": p.spill_count,
            "restore_count": p.restore_count,
        }

    # -- events -----------------------------------------------------------------------------

    def add(self, object_id: bytes, size: int) -> None:
        """A sealed shm file for object_id exists: account it; spill LRU objects if over capacity.

        An object larger than the whole capacity is still accepted (its writer already wrote it).
        If spilling fails (spill directory full or unwritable) and the object does not fit,
        its file is deleted and ObjectStoreFullError raised (``StorePolicy.admits``): the
        caller makes that error the object's value, so whoever waits for it hears why.
        """
        if self._policy.contains(object_id):
            self._policy.touch(object_id)
            return
        drained = self._draining.pop(object_id, None)  # a freed predecessor's, still mapped
        if drained is not None:
            unlink_quietly(drained[0])
        if size >= POOL_MIN_SIZE or self._pool_seq:
            pooled = pooled_files(self._pool_prefix)
            if self._policy.used_bytes + sum(s for s, _ in pooled) + size > self.capacity:
                for _, path in pooled:  # reusable files go before live objects are spilled
                    unlink_quietly(path)
        failure = self._make_room(size, exclude=object_id)
        if failure is not None and not self._policy.admits(size, spill_failed=True):
            unlink_quietly(self.path_of(object_id))
            raise self._full_error(size, failure)
        self._policy.added(object_id, size)

    def touch(self, object_id: bytes) -> None:
        self._policy.touch(object_id)

    def pin(self, object_id: bytes, client: bytes) -> None:
        """Client has (or is about to have) the object mapped: never spill it meanwhile."""
        self._policy.pin(object_id, client)

    def unpin(self, object_id: bytes, client: bytes) -> None:
        """Client unmapped object_id; a freed object's last reader gone frees its file.

        A client sends its unpin after the munmap, so once the last pin goes nobody maps
        the file and it may join the pool of reusable files. A store over its capacity
        (everything was pinned when the last object came) spills once an object's last
        reader lets go (the node asked for it: ``NodeObjects.relieve_store``).
        """
        policy = self._policy
        if policy.unpin(object_id, client):
            if object_id in self._draining:
                path, size = self._draining.pop(object_id)
                if self._pool_room(size):
                    self._pool_file(path, size)
                else:
                    unlink_quietly(path)
        elif (
            policy.used_bytes > policy.capacity
            and policy.contains(object_id)  # (not freed meanwhile)
            and not policy.is_pinned(object_id)
        ):
            self._make_room(0, exclude=b"")

    def pinned_excess(
        self, releasable: Callable[[bytes], bool]
    ) -> list[tuple[bytes, tuple[bytes, ...]]]:
        """Pinned objects to spill to get back under capacity, with who pins each."""
        return self._policy.pinned_excess(releasable)

    def release_client(self, client: bytes) -> None:
        """Client went away: drop all its pins.

        Freed files it still mapped are deleted, not pooled: a client the node gave up on
        may still be alive, and a reused file would change under its values.
        """
        for object_id in self._policy.release_client(client):
            drained = self._draining.pop(object_id, None)
            if drained is not None:
                unlink_quietly(drained[0])

    def restore(self, object_id: bytes) -> None:
        """If object_id is spilled, copy it back to shared memory (spilling others to make room).

        A value someone reads is restored even when others cannot be spilled (a full spill
        directory): the store goes over its capacity for it rather than fail the read.
        """
        entry = self._policy.entry(object_id)
        if not entry.spilled:
            self._policy.touch(object_id)
            return
        self._make_room(entry.size, exclude=object_id)
        _copy_file(self._spill_path(object_id), self.path_of(object_id), entry.size)
        self._policy.restored(object_id)

    def free(self, object_id: bytes) -> None:
        """No ref to object_id remains: delete its files and forget it.

        If some process still has it mapped, the shm file is unlinked now (Linux keeps the
        memory for the mappers) and its bytes stay counted until their pins are released.
        """
        entry = self._policy.entries.get(object_id)
        if entry is None or entry.freed:
            return
        on_disk, spilled, mapped = entry.on_disk, entry.spilled, bool(entry.pins)
        reusable = not spilled and entry.size >= POOL_MIN_SIZE
        self._policy.freed(object_id)
        if reusable and mapped:  # pooled (or deleted) when its last reader unpins
            drain = f"{self.path_of(object_id)}-freed"
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.path_of(object_id), drain)
                self._draining[object_id] = (drain, entry.size)
        elif reusable and self._pool_room(entry.size):
            self._pool_file(self.path_of(object_id), entry.size)
        elif not spilled:
            unlink_quietly(self.path_of(object_id))
        if on_disk:
            unlink_quietly(self._spill_path(object_id))

    def _pool_file(self, path: str, size: int) -> None:
        """Move a file nobody maps into the pool, where the next writer of its size takes it."""
        self._pool_seq += 1
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, f"{self._pool_prefix}{size}-{self._pool_seq}")

    def _pool_room(self, size: int) -> bool:
        pooled = sum(s for s, _ in pooled_files(self._pool_prefix))
        return (
            pooled + size <= self.pool_limit
            and self._policy.used_bytes + pooled + size <= self.capacity
        )

    def shutdown(self) -> None:
        """Delete every file of this session in its store directory and the spill directory."""
        prefix = f"{SHM_PREFIX}{self.session}-"
        for oid in list(self._policy.entries):
            unlink_quietly(self.path_of(oid))
        for _, path in pooled_files(self._pool_prefix):
            unlink_quietly(path)
        for path, _ in self._draining.values():
            unlink_quietly(path)
        self._draining.clear()
        self._policy = StorePolicy(self._policy.capacity)
        # Also files written by processes that died before the node accounted them.
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            names = []
        for name in names:
            rest = name[len(prefix) :]
            if name.startswith(prefix) and rest and all(c in "0123456789abcdef" for c in rest):
                unlink_quietly(os.path.join(self.directory, name))
        if self.directory != SHM_DIR:
            shutil.rmtree(self.directory, ignore_errors=True)
        if self._spill_dir_made:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self._spill_dir_made = False

    # -- file moves -------------------------------------------------------------------------

    def _spill_path(self, object_id: bytes) -> str:
        return os.path.join(self.spill_dir, object_id.hex())

    def _make_room(self, incoming: int, exclude: bytes) -> Exception | None:
        """Spill what the policy picks; the error that stopped it, or None if all went.

        Victims spilled before a failure stay spilled (the accounting follows each one).
        """
        for victim in self._policy.plan_room(incoming, exclude=exclude):
            try:
                self._spill(victim)
            except (OSError, ObjectStoreFullError) as exc:  # ENOSPC comes as the latter
                return exc
        return None

    def _full_error(self, size: int, cause: Exception) -> ObjectStoreFullError:
        return ObjectStoreFullError(
            f"The object store is full: a {size}-byte object does not fit in its "
            f"{self.capacity} bytes ({self._policy.used_bytes} in use) and spilling to "
            f"{self.spill_dir} failed ({cause}). Start the cluster with a larger "
            f"object_store_memory (rj.init(object_store_memory=...)), give {self.spill_dir} "
            f"more free space (or make it writable), or drop ObjectRefs you no longer need."
        )

    def _spill(self, object_id: bytes) -> None:
        entry = self._policy.entry(object_id)
        src = self.path_of(object_id)
        if not entry.on_disk:  # a copy from an earlier spill is still valid: objects are sealed
            if not self._spill_dir_made:
                os.makedirs(self.spill_dir, mode=0o700, exist_ok=True)
                self._spill_dir_made = True
            if self.directory == SHM_DIR or not _moved(src, self._spill_path(object_id)):
                _copy_file(src, self._spill_path(object_id), entry.size)
        unlink_quietly(src)  # readers that mapped it keep valid memory
        self._policy.spilled(object_id)


def _moved(src: str, dst: str) -> bool:
    """Rename src to dst if both are on one filesystem (a store on disk spills for free)."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return False
        raise
    return True


def _copy_file(src: str, dst: str, size: int) -> None:
    """Copy src to a new file dst (0600) with sendfile; ObjectStoreFullError if dst is full."""
    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with open(src, "rb") as fin:
            reserve(out, size)
            offset = 0
            while offset < size:
                sent = os.sendfile(out, fin.fileno(), offset, min(size - offset, COPY_CHUNK))
                if sent == 0:
                    raise OSError(errno.EIO, f"{src} ended after {offset} of {size} bytes")
                offset += sent
    except BaseException as exc:
        os.close(out)
        unlink_quietly(dst)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise store_full_error(dst, size, exc) from exc
        raise
    os.close(out)
