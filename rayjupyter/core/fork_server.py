"""Forking workers from a small template process, so a worker's start costs the same at the
3,000th actor as at the first.

A fork from the node itself cost more the more the node held: the kernel copies the node's
page tables and marks all its pages copy-on-write again at every fork, so the node's next
writes copy pages, and a heap that grows with the actors made starting N actors cost N^2.
The template is forked from the node at its start, after the imports workers need and
before the node opens its sockets or builds its tables; it holds three descriptors and
pages that do not change, so each fork from it costs the same.

The template forks an intermediate process, which forks the worker and exits at once: the
worker is then re-parented to the node (a child subreaper, ``spawn.become_subreaper``),
which waits for it, reads its exit through a pidfd and kills it at shutdown as it did the
workers it forked itself. The node sends each request over a SOCK_SEQPACKET socket pair:
the worker's environment as JSON, and its descriptors (its channel end, the write ends of
its output pipes) with SCM_RIGHTS. The answer is the worker's pid, sent once the
intermediate is reaped, so the worker is the node's child by then.

A round trip to the template costs more than a fork of a small node, so the node forks its
workers itself until its own forks cost more than the template's (``note_direct_fork``),
and asks the template from then on. A burst of starts (one instruction list) is asked at
once and its pids read at its end (``NodeWorkers.adopt_unborn``), so the template forks
while the node sends.

The template dies with the node (PR_SET_PDEATHSIG) and when the node closes its end. If it
is gone or does not answer, the node forks its workers itself again (``spawn.fork_worker``),
as it does with ``RAYJUPYTER_FORK_SERVER=0``; ``=1`` asks the template for every worker.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import gc
import json
import os
import signal
import socket
import struct
import sys
from typing import Any

from rayjupyter.core import spawn
from rayjupyter.core.config import DRIVER_CHANNEL_ENV
from rayjupyter.core.spawn import StartedProcess

# "0": the node forks its workers itself; "1": the template forks them all; unset ("auto"):
# the node forks them while that is cheaper, the template once the node's forks cost more
FORK_SERVER_ENV = "RAYJUPYTER_FORK_SERVER"
# A fork of the node costs 1 ms at its start and grows with its heap (3.5 ms at 2,000
# workers on a 2-CPU machine); the template's, a round trip included, 1.9 ms a worker in a
# burst (2.7 ms alone). Past this average of the node's recent forks, the template's are used.
DIRECT_FORK_LIMIT_S = 0.002
_AVERAGE_WEIGHT = 0.1  # of the newest fork in that (exponentially weighted) average
NAME = b"rj-fork-server"  # the template's name in ps and psutil (its command line is the node's)
MAX_REQUEST = 1 << 18  # a larger environment (a runtime_env's variables) is forked directly
REPLY_TIMEOUT_S = 30.0
# requests sent before their pids are read: each waits in the socket's buffer, in bytes of
# which both ways have about 200 KB, and a template blocked on its answers reads no more
MAX_UNANSWERED = 32
_PID = struct.Struct("i")
_FD = array.array("i")
PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1


def mode() -> str:
    """ "off", "always" or "auto" (see FORK_SERVER_ENV)."""
    value = os.environ.get(FORK_SERVER_ENV, "").strip().lower()
    return {"0": "off", "false": "off", "off": "off", "1": "always", "true": "always"}.get(
        value, "auto"
    )


class ForkServer:
    """The node's handle on its template: ``fork_worker`` through it, ``stop`` it."""

    def __init__(
        self, pid: int, link: socket.socket, pidfd: int = -1, engaged: bool = True
    ) -> None:
        self.pid = pid
        # whether the node asks it for its workers now (see note_direct_fork)
        self.engaged = engaged
        self.direct_fork_s = 0.0  # the average of the node's own recent forks
        # signals go through it: if the template died, the node's reaping of orphans
        # (spawn.reap_adopted) may have collected it, and its pid may be another's now
        self.pidfd = pidfd
        self.link: socket.socket | None = link
        self.unanswered = 0  # requests sent whose pid is not read yet

    def note_direct_fork(self, seconds: float) -> None:
        """A fork of the node took this long: past DIRECT_FORK_LIMIT_S on average, the
        template forks the workers from now on (the node's heap rarely shrinks)."""
        self.direct_fork_s += _AVERAGE_WEIGHT * (seconds - self.direct_fork_s)
        if self.direct_fork_s > DIRECT_FORK_LIMIT_S:
            self.engaged = True

    @classmethod
    def start(cls, engaged: bool = True) -> ForkServer:
        """Fork the template from this process (call it before any thread or socket)."""
        node_end, template_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        node_pid = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                node_end.close()
                _serve(template_end, node_pid)
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        template_end.close()
        node_end.settimeout(REPLY_TIMEOUT_S)
        return cls(pid, node_end, os.pidfd_open(pid), engaged)

    def fork_worker(self, env: dict[str, str], keep_fd: int) -> StartedProcess | None:
        """As ``spawn.fork_worker``, by the template; None if it cannot (it is gone)."""
        requested = self.request(env, keep_fd)
        if requested is None:
            return None
        pid = self.answer()
        if pid <= 0:
            os.close(requested[0])
            os.close(requested[1])
            return None
        return StartedProcess(pid, *requested)

    def request(self, env: dict[str, str], keep_fd: int) -> tuple[int, int] | None:
        """Ask for a worker as ``spawn.fork_worker`` makes it; the read ends of its stdout
        and stderr pipes, its pid from the next ``answer`` (in the order asked). None if
        the template cannot (it is gone): the caller forks the worker itself."""
        if self.link is None:
            return None
        request = json.dumps([env, keep_fd]).encode()
        if len(request) > MAX_REQUEST:
            return None
        out_r, out_w, err_r, err_w = spawn.output_pipes()
        try:
            socket.send_fds(self.link, [request], [keep_fd, out_w, err_w])
        except OSError as exc:  # (a timeout too)
            os.close(out_r)
            os.close(err_r)
            self._failed(exc)
            return None
        finally:
            os.close(out_w)
            os.close(err_w)
        self.unanswered += 1
        return out_r, err_r

    def answer(self) -> int:
        """The pid of the worker asked for first of those not answered yet; 0 if the
        template failed (it is stopped then): the caller forks that worker itself."""
        if self.link is None or not self.unanswered:
            return 0
        self.unanswered -= 1
        try:
            reply = self.link.recv(_PID.size)
        except OSError as exc:
            self._failed(exc)
            return 0
        pid = _PID.unpack(reply)[0] if len(reply) == _PID.size else 0
        if pid <= 0:
            self._failed(EOFError("it closed its socket") if not reply else None)
        return max(pid, 0)

    def _failed(self, error: BaseException | None) -> None:
        if error is not None:
            print(
                f"rayjupyter node: its fork server failed ({error!r}); it forks workers itself",
                file=sys.stderr,
                flush=True,
            )
        self.stop()

    def stop(self) -> None:
        """Close its socket (it exits when it reads that), kill and reap it."""
        if self.link is None:
            return
        self.link.close()
        self.link = None
        if self.pidfd < 0:
            return
        with contextlib.suppress(OSError):  # (ESRCH: it has exited)
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # (reaped already, as an orphan)
            os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED)
        os.close(self.pidfd)
        self.pidfd = -1


def start_if_enabled() -> ForkServer | None:
    """The node's template, unless FORK_SERVER_ENV is "0"."""
    chosen = mode()
    return None if chosen == "off" else ForkServer.start(engaged=chosen == "always")


# ---------------------------------------------------------------------- the template's side


def _serve(link: socket.socket, node_pid: int) -> None:
    """The template's loop: fork a worker per request until the node closes its end."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != node_pid:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (Ctrl-C in a terminal is the driver's)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.pop(DRIVER_CHANNEL_ENV, None)  # as the node's, whose workers do not see it
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # not the node's stdin (its owner's pipe)
    os.close(devnull)
    spawn.close_inherited_fds(link.fileno())
    # as the node does once built (node_gc.py): the imports stay out of every collection in
    # the template and in its workers, which so leave their pages shared
    gc.freeze()
    with open("/proc/self/comm", "rb") as comm:
        name = comm.read().strip()
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(NAME), 0, 0, 0)
    while True:
        requests = [_receive(link, 0)]
        if not requests[0][0]:
            return  # the node closed its end
        with contextlib.suppress(BlockingIOError):  # the rest of the burst: forked together
            while len(requests) < MAX_UNANSWERED:
                requests.append(_receive(link, socket.MSG_DONTWAIT))
        started = []
        for data, fds in requests:
            try:
                env, keep_fd = json.loads(data) if len(fds) == 3 else ({}, -1)
                started.append(_fork_middle(env, keep_fd, fds, libc, name) if env else None)
            except Exception:  # answered with 0: the node forks that worker itself
                started.append(None)
            finally:
                for fd in fds:
                    os.close(fd)
        for middle in started:
            link.send(_PID.pack(_worker_pid(middle) if middle is not None else 0))


def _receive(link: socket.socket, flags: int) -> tuple[bytes, list[int]]:
    """One request and its descriptors (socket.recv_fds, which drops ``flags`` in 3.11)."""
    data, ancillary, _, _ = link.recvmsg(MAX_REQUEST, socket.CMSG_LEN(3 * _FD.itemsize), flags)
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _fork_middle(
    env: dict[str, str], keep_fd: int, fds: list[int], libc: Any, name: bytes
) -> tuple[int, int]:
    """Fork an intermediate that forks the worker, writes its pid to a pipe and exits; the
    intermediate's pid and the pipe's read end (``_worker_pid`` reads it)."""
    pid_r, pid_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            me = os.getpid()
            pid = os.fork()
            if pid == 0:
                _become(env, keep_fd, fds, libc, name, me)
            os.write(pid_w, _PID.pack(pid))
        finally:
            os._exit(0)
    os.close(pid_w)
    return middle, pid_r


def _worker_pid(started: tuple[int, int]) -> int:
    """The worker's pid once its intermediate is reaped (so it is the node's child); 0
    when it failed."""
    middle, pid_r = started
    try:
        reply = os.read(pid_r, _PID.size)
    finally:
        os.close(pid_r)
        os.waitpid(middle, 0)
    return _PID.unpack(reply)[0] if len(reply) == _PID.size else 0


def _become(
    env: dict[str, str], keep_fd: int, fds: list[int], libc: Any, name: bytes, middle: int
) -> None:
    """In the worker: its descriptors where the node's ``spawn.fork_worker`` puts them."""
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)  # (the node's name, as before)
    channel_fd, out_w, err_w = fds  # (above 2: the template's 0, 1 and 2 are open)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    if channel_fd != keep_fd:  # the number its environment names (RAYJUPYTER_CHANNEL_FD)
        os.dup2(channel_fd, keep_fd)
    spawn.become_worker(env, keep_fd, 1, 2, reparented_from=middle)
