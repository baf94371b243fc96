"""Object files in shared memory: the functions any process uses.

``shm_path`` names an object's file in its session's store directory (``store_dir``:
/dev/shm, or files on disk when the node found /dev/shm too small, see store_placement),
``write_object`` (the maker of a value
writes its file once, reusing a freed file from the pool when one fits) and ``map_object``
(readers map it read-only and get zero-copy values). The node's manager of these files
(capacity, pins, spilling) is ``object_store.ObjectStore``.

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
import errno
import os
import shutil
import weakref
from collections.abc import Callable, Iterator
from typing import Final, Protocol

from rayjupyter.core.serialization import SerializedObject

__all__ = [
    "COPY_CHUNK",
    "POOL_MIN_SIZE",
    "SHM_DIR",
    "SHM_PREFIX",
    "map_object",
    "pool_prefix",
    "pooled_files",
    "reserve",
    "set_store_dir",
    "shm_path",
    "store_dir",
    "store_full_error",
    "take_pooled",
    "unlink_quietly",
    "write_object",
]

SHM_DIR: Final[str] = "/dev/shm"
COPY_CHUNK: Final[int] = 1 << 30  # bytes per pwrite or sendfile call
SHM_PREFIX: Final[str] = "rj-"


class _StoreDirs(dict[str, str]):
    """session -> the directory of its object files, learned once per process: /dev/shm,
    unless the node chose files on disk (store_placement), which it shows by making the
    session's fallback folder before any client can know the session."""

    def __missing__(self, session: str) -> str:
        from rayjupyter.core.store_placement import fallback_dir

        fallback = fallback_dir(session)
        directory = fallback if os.path.isdir(fallback) else SHM_DIR
        self[session] = directory
        return directory


_store_dirs: Final[_StoreDirs] = _StoreDirs()


def store_dir(session: str) -> str:
    """The directory of a session's object files (looked up once per session, then cached)."""
    return _store_dirs[session]


def set_store_dir(session: str, directory: str) -> None:
    """The node says where its store is (before any client connects)."""
    _store_dirs[session] = directory


def shm_path(session: str, object_id: bytes) -> str:
    """The file of one object of one cluster session (in shared memory, as a rule)."""
    return f"{_store_dirs[session]}/{SHM_PREFIX}{session}-{object_id.hex()}"


# Freed files that nobody maps are kept for reuse: writing into pages tmpfs has already
# allocated runs at memcpy speed (about 4 GB/s here) where fresh pages fault at 1-1.5 GB/s.
# A pooled file is named rj-<session>-pool-<size>-<n>; a writer takes one by renaming it,
# which is atomic, so two writers never get the same file.
POOL_MIN_SIZE: Final[int] = 1 << 20  # smaller objects: not worth a directory listing


def pool_prefix(session: str) -> str:
    return f"{store_dir(session)}/{SHM_PREFIX}{session}-pool-"


def pooled_files(prefix: str) -> list[tuple[int, str]]:
    """(size, path) of the pooled files under prefix."""
    directory, stem = os.path.split(prefix)
    files = []
    for name in os.listdir(directory):
        if name.startswith(stem):
            size, _, _ = name[len(stem) :].partition("-")
            if size.isdigit():
                files.append((int(size), os.path.join(directory, name)))
    return files


def take_pooled(prefix: str, nbytes: int, dest: str) -> bool:
    """Move a pooled file of about nbytes (not more than a quarter larger) to dest."""
    fits = sorted(f for f in pooled_files(prefix) if nbytes <= f[0] <= nbytes + nbytes // 4)
    for _, path in fits:
        try:
            os.rename(path, dest)
            return True
        except FileNotFoundError:  # another writer took it first
            continue
    return False


def store_full_error(path: str, nbytes: int, exc: OSError) -> Exception:
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


def reserve(fd: int, nbytes: int) -> None:
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
        done += os.pwrite(fd, view[done : done + COPY_CHUNK], offset + done)


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
    reused = pool is not None and nbytes >= POOL_MIN_SIZE and take_pooled(pool, nbytes, path)
    if reused:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if reused:
            os.ftruncate(fd, nbytes)  # a little larger: give the tail back
        else:
            reserve(fd, nbytes)
        for offset, piece in sobj.chunks():  # gaps between pieces stay zero
            _pwrite_all(fd, piece, offset)
    except BaseException as exc:
        os.close(fd)
        unlink_quietly(path)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise store_full_error(path, nbytes, exc) from exc
        raise
    os.close(fd)
    return nbytes


# ----------------------------------------------------------------------------------------
# Reading: a read-only mapping whose lifetime follows the values built on it.

_PROT_READ: Final[int] = 0x1
_MAP_SHARED: Final[int] = 0x01
# the process's own symbols include libc's: find_library("c") would run ldconfig at import
_libc = ctypes.CDLL(None, use_errno=True)
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


def unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
