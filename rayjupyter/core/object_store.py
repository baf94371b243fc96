"""The shared-memory object store: one sealed file per object under /dev/shm.

Two halves:

* functions any process uses: ``shm_path``, ``write_object`` (the maker of a value writes its
  file once), ``map_object`` (readers map it read-only and get zero-copy values);
* ``ObjectStore``, the node daemon's manager of those files: capacity accounting, pins, and
  spilling least-recently-used objects to disk. Its decisions live in ``StorePolicy``, a pure
  class with no I/O, so the policy is testable without files; ``ObjectStore`` moves files
  around it.

Writes use ``posix_fallocate`` + ``pwrite`` rather than ``mmap`` + memcpy: on a fresh tmpfs
file every 4 KiB page faults on first touch through a mapping, which halves throughput
(measured ~1.0 GB/s via mmap vs ~2.0 GB/s via pwrite for 1 GB), and ``fallocate`` turns a
full /dev/shm into a clean ENOSPC up front instead of a SIGBUS in the middle of a memcpy.

Reads map with libc ``mmap`` through ctypes and close the file descriptor at once. Python's
``mmap.mmap`` keeps a duplicated descriptor open for the life of the mapping (until 3.13's
``trackfd``), so a driver holding a few thousand large values would hit the open-file limit.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol

from rayjupyter.core.serialization import SerializedObject

__all__ = [
    "SHM_DIR",
    "ObjectStore",
    "StorePolicy",
    "map_object",
    "pool_prefix",
    "shm_path",
    "write_object",
]

SHM_DIR: Final[str] = "/dev/shm"
_SHM_PREFIX: Final[str] = "rj-"
_COPY_CHUNK: Final[int] = 1 << 30


def shm_path(session: str, object_id: bytes) -> str:
    """The shared-memory file of one object of one cluster session."""
    return f"{SHM_DIR}/{_SHM_PREFIX}{session}-{object_id.hex()}"


# Freed files that nobody maps are kept for reuse: writing into pages tmpfs has already
# allocated runs at memcpy speed (about 4 GB/s here) where fresh pages fault at 1-1.5 GB/s.
# A pooled file is named rj-<session>-pool-<size>-<n>; a writer takes one by renaming it,
# which is atomic, so two writers never get the same file.
POOL_MIN_SIZE: Final[int] = 1 << 20  # smaller objects: not worth a directory listing


def pool_prefix(session: str) -> str:
    return f"{SHM_DIR}/{_SHM_PREFIX}{session}-pool-"


def _pooled_files(prefix: str) -> list[tuple[int, str]]:
    """(size, path) of the pooled files under prefix."""
    directory, stem = os.path.split(prefix)
    files = []
    for name in os.listdir(directory):
        if name.startswith(stem):
            size, _, _ = name[len(stem) :].partition("-")
            if size.isdigit():
                files.append((int(size), os.path.join(directory, name)))
    return files


def _take_pooled(prefix: str, nbytes: int, dest: str) -> bool:
    """Move a pooled file of about nbytes (not more than a quarter larger) to dest."""
    fits = sorted(f for f in _pooled_files(prefix) if nbytes <= f[0] <= nbytes + nbytes // 4)
    for _, path in fits:
        try:
            os.rename(path, dest)
            return True
        except FileNotFoundError:  # another writer took it first
            continue
    return False


def _store_full(path: str, nbytes: int, exc: OSError) -> Exception:
    from rayjupyter.core.exceptions import ObjectStoreFullError

    where = os.path.dirname(path) or "."
    try:
        free = shutil.disk_usage(where).free
        room = f"{free} bytes free"
    except OSError:
        room = "free space unknown"
    return ObjectStoreFullError(
        f"No space for a {nbytes}-byte object in {where} ({room}): {exc.strerror}; "
        f"free some objects (drop their ObjectRefs) or enlarge {where}"
    )


def _reserve(fd: int, nbytes: int) -> None:
    """Allocate nbytes for fd up front so that a full filesystem fails here, not mid-write."""
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.ftruncate(fd, nbytes)  # filesystem without fallocate: sparse file, ENOSPC on write


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    done = 0
    total = view.nbytes
    while done < total:
        done += os.pwrite(fd, view[done : done + _COPY_CHUNK], offset + done)


class FlatLayout(Protocol):
    """What write_object writes: a serialized value's size and its pieces at their offsets."""

    nbytes: int

    def chunks(self) -> Iterator[tuple[int, bytes | memoryview]]: ...


class FlatBytes:
    """A value that arrived already flat in one piece (a put from another machine)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.nbytes = len(data)

    def chunks(self) -> Iterator[tuple[int, bytes | memoryview]]:
        yield 0, self.data


def write_object(path: str, sobj: FlatLayout | SerializedObject, pool: str | None = None) -> int:
    """Create path (it must not exist), write sobj's flat layout into it, and return its size.

    With ``pool`` (a pool_prefix), reuse a freed file of about the right size if there is one.
    The file is sealed by convention: nobody writes it again. Raises ObjectStoreFullError
    (and removes the partial file) when the filesystem is full.
    """
    nbytes = sobj.nbytes
    reused = pool is not None and nbytes >= POOL_MIN_SIZE and _take_pooled(pool, nbytes, path)
    if reused:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if reused:
            os.ftruncate(fd, nbytes)  # a little larger: give the tail back
        else:
            _reserve(fd, nbytes)
        for offset, piece in sobj.chunks():  # gaps between pieces stay zero
            _pwrite_all(fd, piece, offset)
    except BaseException as exc:
        os.close(fd)
        _unlink_quietly(path)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _store_full(path, nbytes, exc) from exc
        raise
    os.close(fd)
    return nbytes


# ----------------------------------------------------------------------------------------
# Reading: a read-only mapping whose lifetime follows the values built on it.

_PROT_READ: Final[int] = 0x1
_MAP_SHARED: Final[int] = 0x01
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED: Final[int] = ctypes.c_void_p(-1).value or -1


class _Mapping:
    """Owns one read-only mapping; numpy keeps it alive as the base of the exported array."""

    __slots__ = ("__array_interface__", "__weakref__", "address", "size")

    def __init__(self, address: int, size: int) -> None:
        self.address = address
        self.size = size
        self.__array_interface__ = {
            "data": (address, True),  # True: read-only
            "shape": (size,),
            "typestr": "|u1",
            "version": 3,
        }


def _unmap(address: int, size: int, on_release: Callable[[], None] | None) -> None:
    _libc.munmap(address, size)
    if on_release is not None:
        on_release()


def map_object(path: str, on_release: Callable[[], None] | None = None) -> memoryview:
    """Map path read-only and return a memoryview of the whole file.

    The mapping lives as long as anything built on the view (numpy arrays, Arrow buffers,
    slices); when the last of them is garbage collected the mapping is removed and
    on_release is called (from whichever thread drops the last reference, so it must be
    quick and thread-safe). Raises FileNotFoundError if the file is gone (spilled or freed):
    ask the node to restore it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise ValueError(f"object file {path} is empty; it was not written by write_object")
        address = _libc.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
        if address is None or address == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of {path} failed: {os.strerror(err)}")
    finally:
        os.close(fd)  # the mapping does not need the descriptor
    owner = _Mapping(address, size)
    finalizer = weakref.finalize(owner, _unmap, address, size, on_release)
    finalizer.atexit = False  # at exit the process is going away; do not message anyone
    import numpy as np  # here, not at import: workers that never map anything start faster

    array = np.asarray(owner)  # base is owner: the mapping lives while any view does
    return array.data  # a memoryview whose exporter is the array


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

    def __init__(self, session: str, capacity: int, spill_dir: str) -> None:
        if not session or "/" in session or "\0" in session:
            raise ValueError(f"session must be a non-empty name without '/', got {session!r}")
        self.session = session
        self.spill_dir = spill_dir
        self._policy = StorePolicy(capacity)
        self._spill_dir_made = False
        self._pool_prefix = pool_prefix(session)
        self._pool_seq = 0
        #: freed files kept for reuse take at most this much shared memory
        self.pool_limit = min(capacity // 4, 4 << 30)

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
        """
        if size >= POOL_MIN_SIZE or self._pool_seq:
            pooled = _pooled_files(self._pool_prefix)
            if self._policy.used_bytes + sum(s for s, _ in pooled) + size > self.capacity:
                for _, path in pooled:  # reusable files go before live objects are spilled
                    _unlink_quietly(path)
        self._make_room(size, exclude=object_id)
        self._policy.added(object_id, size)

    def touch(self, object_id: bytes) -> None:
        self._policy.touch(object_id)

    def pin(self, object_id: bytes, client: bytes) -> None:
        """Client has (or is about to have) the object mapped: never spill it meanwhile."""
        self._policy.pin(object_id, client)

    def unpin(self, object_id: bytes, client: bytes) -> None:
        self._policy.unpin(object_id, client)

    def release_client(self, client: bytes) -> None:
        """Client went away: drop all its pins."""
        self._policy.release_client(client)

    def restore(self, object_id: bytes) -> None:
        """If object_id is spilled, copy it back to shared memory (spilling others to make room)."""
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
        on_disk, spilled = entry.on_disk, entry.spilled
        reusable = not spilled and not entry.pins and entry.size >= POOL_MIN_SIZE
        self._policy.freed(object_id)
        if reusable and self._pool_room(entry.size):
            self._pool_seq += 1
            target = f"{self._pool_prefix}{entry.size}-{self._pool_seq}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.path_of(object_id), target)
        elif not spilled:
            _unlink_quietly(self.path_of(object_id))
        if on_disk:
            _unlink_quietly(self._spill_path(object_id))

    def _pool_room(self, size: int) -> bool:
        pooled = sum(s for s, _ in _pooled_files(self._pool_prefix))
        return (
            pooled + size <= self.pool_limit
            and self._policy.used_bytes + pooled + size <= self.capacity
        )

    def shutdown(self) -> None:
        """Delete every file of this session in /dev/shm and the spill directory."""
        prefix = f"{_SHM_PREFIX}{self.session}-"
        for oid in list(self._policy.entries):
            _unlink_quietly(self.path_of(oid))
        for _, path in _pooled_files(self._pool_prefix):
            _unlink_quietly(path)
        self._policy = StorePolicy(self._policy.capacity)
        # Also files written by processes that died before the node accounted them.
        try:
            names = os.listdir(SHM_DIR)
        except FileNotFoundError:
            names = []
        for name in names:
            rest = name[len(prefix) :]
            if name.startswith(prefix) and rest and all(c in "0123456789abcdef" for c in rest):
                _unlink_quietly(os.path.join(SHM_DIR, name))
        if self._spill_dir_made:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self._spill_dir_made = False

    # -- file moves -------------------------------------------------------------------------

    def _spill_path(self, object_id: bytes) -> str:
        return os.path.join(self.spill_dir, object_id.hex())

    def _make_room(self, incoming: int, exclude: bytes) -> None:
        for victim in self._policy.plan_room(incoming, exclude=exclude):
            self._spill(victim)

    def _spill(self, object_id: bytes) -> None:
        entry = self._policy.entry(object_id)
        src = self.path_of(object_id)
        if not entry.on_disk:  # a copy from an earlier spill is still valid: objects are sealed
            if not self._spill_dir_made:
                os.makedirs(self.spill_dir, mode=0o700, exist_ok=True)
                self._spill_dir_made = True
            _copy_file(src, self._spill_path(object_id), entry.size)
        _unlink_quietly(src)  # readers that mapped it keep valid memory
        self._policy.spilled(object_id)


def _copy_file(src: str, dst: str, size: int) -> None:
    """Copy src to a new file dst (0600) with sendfile; ObjectStoreFullError if dst is full."""
    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with open(src, "rb") as fin:
            _reserve(out, size)
            offset = 0
            while offset < size:
                sent = os.sendfile(out, fin.fileno(), offset, min(size - offset, _COPY_CHUNK))
                if sent == 0:
                    raise OSError(errno.EIO, f"{src} ended after {offset} of {size} bytes")
                offset += sent
    except BaseException as exc:
        os.close(out)
        _unlink_quietly(dst)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _store_full(dst, size, exc) from exc
        raise
    os.close(out)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
