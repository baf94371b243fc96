"""Where a node's object store lives and how large it is, decided from what this machine's
/dev/shm can really hold.

Docker's default /dev/shm (and many Jupyter images') is 64 MB: a store sized from RAM does
not fit there, and one shrunk to fit it fails every value larger than ~50 MB. So the store
falls back to plain files in the session's folder (``fallback_dir``): values still map
zero-copy and read-only (page cache instead of tmpfs: writing is somewhat slower, reading
is the same), and the node says once which it chose and why, naming the fix.

``place_store`` is the decision, a pure function of a few numbers; ``measure`` reads them
from the machine. Every process finds the directory of a session with
``object_files.store_dir``: the fallback folder exists exactly when the node chose it.
"""

from __future__ import annotations

import math
import os
from typing import Final, NamedTuple

from rayjupyter.core.config import session_dir

SHM_DIR: Final[str] = "/dev/shm"  # (object_files.SHM_DIR: the same place)
#: of /dev/shm's free space, what the store may take (room for others and freed-file reuse)
SHM_SHARE: Final[float] = 0.8
#: of the machine's memory, the default store (as Ray's default)
DEFAULT_SHARE: Final[float] = 0.3
#: a default store is shrunk to fit /dev/shm only when that leaves it at least this large;
#: below it a page-cache store of the full size serves more (a 2 GB array fits), at about
#: the same read speed, than a small shared-memory one that fails every larger value
MIN_SHM_STORE: Final[int] = 2 << 30
#: of the fallback folder's free disk space, what a file-backed store may take
DISK_SHARE: Final[float] = 0.8
#: the smallest store a node starts with (a tiny disk still gets a working store)
MIN_STORE: Final[int] = 64 << 20

_GIB = 1 << 30
_MIB = 1 << 20


class StorePlacement(NamedTuple):  # (immutable: a frozen dataclass costs the node ~8x more)
    """The store's directory, capacity, and why (shown by %ray_status and the cluster repr)."""

    directory: str  # SHM_DIR or the session's fallback folder
    capacity: int  # bytes
    reason: str  # one line: why this directory and size ("" when the request simply fits)
    warn: bool  # the drivers hear the reason once (a fallback the user can fix)

    @property
    def in_shm(self) -> bool:
        return self.directory == SHM_DIR


def fallback_dir(session: str) -> str:
    """The folder of a session's object files when /dev/shm cannot hold its store (removed
    with the session's folder when the node stops or is found dead)."""
    return os.path.join(session_dir(session), "objects")


def place_store(
    requested: int,
    shm_free: int | None,
    memory: int,
    disk_free: int | None,
    fallback: str,
) -> StorePlacement:
    """Decide the store's directory and capacity.

    requested: object_store_memory bytes asked for (0: the default, DEFAULT_SHARE of memory);
    shm_free: free bytes in /dev/shm (None: there is none); memory: the machine's total
    memory; disk_free: free bytes where ``fallback`` would live (None: unknown).

    A store that fits SHM_SHARE of /dev/shm's free space lives there, as it always has. A
    default one that does not is shrunk to fit when that leaves it MIN_SHM_STORE or more.
    Otherwise (a small /dev/shm, or an explicit size larger than it) the store is files in
    ``fallback``, of the size asked for (no more than DISK_SHARE of the disk's free space).
    """
    want = requested if requested > 0 else max(int(memory * DEFAULT_SHARE), MIN_STORE)
    room = int(shm_free * SHM_SHARE) if shm_free is not None else 0
    if shm_free is not None and want <= room:
        return StorePlacement(SHM_DIR, want, "", False)
    if shm_free is not None and requested <= 0 and room >= MIN_SHM_STORE:
        reason = (
            f"the object store is {_size(room)} ({_size(want)} by default) because {SHM_DIR} "
            f"has {_size(shm_free)} free"
        )
        return StorePlacement(SHM_DIR, room, reason, False)
    capacity = want
    if disk_free is not None:
        capacity = max(min(want, int(disk_free * DISK_SHARE)), MIN_STORE)
    why = "there is no /dev/shm" if shm_free is None else f"{SHM_DIR} has {_size(shm_free)} free"
    reason = (
        f"the object store ({_size(capacity)}) keeps its objects in files under {fallback} "
        f"because {why}: reads stay zero-copy (page cache), writes are slower than in "
        f"shared memory"
    )
    if shm_free is not None:
        shm_size = max(math.ceil(want / SHM_SHARE / _GIB), 1)
        reason += (
            f". For shared memory, give the container a larger /dev/shm "
            f"(docker run --shm-size={shm_size}g; Kubernetes: an emptyDir of medium Memory "
            f"at /dev/shm)"
        )
        if room >= MIN_STORE:
            reason += f" or start with object_store_memory={room} or less"
    return StorePlacement(fallback, capacity, reason, True)


def measure(session: str, requested: int) -> StorePlacement:
    """``place_store`` for this machine now: statvfs of /dev/shm and of the fallback's disk."""
    fallback = fallback_dir(session)
    shm_free = _free_bytes(SHM_DIR)
    disk_free = _free_bytes(os.path.dirname(session_dir(session)))
    return place_store(requested, shm_free, _total_memory(), disk_free, fallback)


def _free_bytes(path: str) -> int | None:
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _total_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _size(n: int) -> str:
    if n >= _GIB:
        return f"{n / _GIB:.1f} GiB"
    return f"{n / _MIB:.0f} MiB"
