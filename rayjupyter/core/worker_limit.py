"""How many worker processes a node may run, and saying so when work waits for one.

Every pool worker and every actor is a forked process of the node, and each costs the node
a few descriptors (its socket pair, two output pipes, a pidfd), the user a few process
slots (threads count against RLIMIT_NPROC) and the machine some memory. The limit is
derived from those (``machine_max_workers``) unless ``NodeConfig.max_workers`` (from
``RAYJUPYTER_MAX_WORKERS`` or ``rayjupyter start --max-workers``) sets it. When it is
reached, work waits for a process to free up, and ``WorkerLimit`` decides when the drivers
are told: once per episode (from the first refused start until nothing waits any more),
never once per task or per loop turn. It does no I/O; the node sends the text.
"""

from __future__ import annotations

import os
import resource

MAX_WORKERS_ENV = "RAYJUPYTER_MAX_WORKERS"
SETTING = f"{MAX_WORKERS_ENV} (rj.init) or `rayjupyter start --max-workers`"
FLOOR = 64  # below this, the machine's own limits decide, not our estimate
FDS_PER_WORKER = 5  # socket pair end, stdout and stderr pipes, pidfd, one spare
FD_RESERVE = 256  # the node's own sockets, drivers, store files, peers
THREADS_PER_WORKER = 4  # a worker's main thread plus the few its libraries start
WORKER_MEMORY = 32 << 20  # what a forked worker is budgeted: about 4 MiB of its own when
# idle (the rest is shared with the node), plus room for what the user's code holds


def raise_fd_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit (as Ray does): a
    soft limit of 1024, common on Linux, would otherwise cap a node at ~200 workers.
    Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _read_int(path: str) -> int | None:
    try:
        with open(path) as file:
            text = file.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" means no limit


def machine_max_workers() -> int:
    """The most worker processes this machine can hold, from its limits, at least FLOOR."""
    bounds = [(raise_fd_limit() - FD_RESERVE) // FDS_PER_WORKER]
    nproc, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if nproc != resource.RLIM_INFINITY:
        bounds.append(nproc // (2 * THREADS_PER_WORKER))  # the user runs other things too
    for path in ("/proc/sys/kernel/pid_max", "/sys/fs/cgroup/pids.max"):
        pids = _read_int(path)
        if pids is not None:
            bounds.append(pids // (2 * THREADS_PER_WORKER))
    # the machine's memory (MemTotal, as psutil.virtual_memory().total reads it), without
    # importing psutil at every node's start (its import and memory, in every worker too)
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cgroup_memory = _read_int("/sys/fs/cgroup/memory.max")
    if cgroup_memory is not None:
        memory = min(memory, cgroup_memory)
    bounds.append(memory // WORKER_MEMORY)
    return max(FLOOR, min(bounds))


def from_env() -> int:
    """``RAYJUPYTER_MAX_WORKERS`` as a NodeConfig value (0: derive it from the machine)."""
    text = os.environ.get(MAX_WORKERS_ENV, "").strip()
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{MAX_WORKERS_ENV} must be a whole number, got {text!r}") from None
    return check(value, None)


def check(max_workers: int, num_cpus: float | None) -> int:
    """Refuse a limit that could not even hold the CPU pool; 0 means derive it."""
    if max_workers < 0:
        raise ValueError(
            f"max_workers must be >= 0 (0: derived from the machine), got {max_workers}"
        )
    pool = max(1, int(num_cpus)) if num_cpus is not None else 1
    if max_workers and max_workers <= pool:
        raise ValueError(
            f"max_workers={max_workers} leaves no process beyond the pool of {pool} CPU workers; "
            f"set {MAX_WORKERS_ENV} (or --max-workers) above num_cpus, or 0 to derive it"
        )
    return max_workers


def for_node(max_workers: int, num_cpus: float) -> WorkerLimit:
    """The limit a node starts with: the configured one, else the machine's."""
    if check(max_workers, num_cpus):
        raise_fd_limit()
        return WorkerLimit(max_workers)
    return WorkerLimit(machine_max_workers())


class WorkerLimit:
    """The node's limit on worker processes and the episode of reaching it.

    The node asks ``room(live)`` before starting processes, reports each start it had to
    refuse with ``refused(...)`` and calls ``turn_ended()`` after each scheduling turn;
    ``refused`` returns the warning text only for the first refusal of an episode.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a node needs room for at least one worker, got {limit}")
        self.limit = limit
        self.reached = False  # an episode is on: some work waits for a process
        self._refused_this_turn = False
        self.nested_warned = False  # told the drivers that nested tasks fill the limit

    def room(self, live: int) -> int:
        """How many more processes may start now."""
        return max(0, self.limit - live)

    def refused(self, live: int, waiting: int, what: str, detail: str = "") -> str | None:
        """``waiting`` pieces of work (``what``: "actors", "tasks") found no process;
        ``detail``: what the node does about it (nested tasks lent to their parents)."""
        self._refused_this_turn = True
        if self.reached or (detail and self.nested_warned):
            return None  # (a long chain of nested tasks is told once, not per episode)
        self.reached = True
        if detail:
            self.nested_warned = True
            return (
                f"Warning: this node runs {live} worker processes, its limit; {detail}; "
                f"other work waits until they end. Raise the limit with {SETTING} "
                f"(now {self.limit}).\n"
            )
        return (
            f"Warning: this node runs {live} worker processes, its limit; {waiting} {what} "
            f"wait for one to free up. Raise the limit with {SETTING} "
            f"(now {self.limit}), or end idle actors (rj.kill).\n"
        )

    def turn_ended(self) -> None:
        """A scheduling turn with no refusal ends the episode: the next one warns again."""
        if not self._refused_this_turn:
            self.reached = False
        self._refused_this_turn = False

    def validate(self) -> None:
        assert self.limit >= 1, self.limit
