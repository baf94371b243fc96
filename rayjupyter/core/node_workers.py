"""The node's worker processes: starting them, forwarding their output, noticing their exit.

A part of the node daemon (``Node.pool``): it owns the socket pairs (``channel.py``) to the
node's workers and to drivers on this machine, the workers' pipes and pidfds, and the
listener local drivers attach to; it reads them and hands each message to the node's
dispatch table. Workers are forked by the node itself (spawn.py) while that is cheap, then
by its fork server (fork_server.py: a burst of starts is asked at once, their pids read at
its end, ``adopt_unborn``); each one's stdout and
stderr are pipes the loop reads and forwards to the drivers with Ray's ``(task_name pid=N)``
prefix, and a pidfd tells the loop the moment a worker exits, so its task is retried or
failed at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass, field
from typing import Any

import zmq

from rayjupyter.core import (
    auth,
    channel,
    fork_server,
    ids,
    local_channel,
    node_fate,
    protocol,
    spawn,
    worker_pool,
)
from rayjupyter.core import protocol as P
from rayjupyter.core.channel import Channel
from rayjupyter.core.config import BOUNDS, SECRET_ENV, bound, worker_endpoint
from rayjupyter.core.node_instructions import Instruction
from rayjupyter.core.node_io import ClientInfo, NodePoll
from rayjupyter.core.node_runtime_env import NodeRuntimeEnv
from rayjupyter.core.node_state import NodeState
from rayjupyter.core.scheduler import WorkerRecord
from rayjupyter.core.spawn import StartedProcess
from rayjupyter.core.task_events import RecentLogs
from rayjupyter.core.worker_output import TASK_MARKER

# the poll flags as plain ints: ``events & zmq.POLLIN`` goes through enum.Flag's Python
# code (six calls a channel event, on every task's way in and out)
_POLLOUT = int(zmq.POLLOUT)
_READABLE = int(zmq.POLLIN | zmq.POLLERR)


#: a node turn that handles a large batch of messages (a driver's notices) lets other
#: processes on its CPU run after every 32 (the driver and the worker it waits on)
YIELD_EVERY_MASK = 31


@dataclass
class WorkerPipes:
    """A worker process's handles: its exit fd and its output pipes, read by the loop."""

    pid: int
    pidfd: int
    output_fds: list[int] = field(default_factory=list)
    partial: dict[int, bytes] = field(default_factory=dict)
    # its output pipes while open: asked after each of its tasks (``drain_output``)
    output_poll: Any = field(default_factory=select.poll)
    # per stream, the task whose output follows, as the worker marked it in the stream
    # (worker_output.mark_task): a leased worker runs tasks the node hears of later
    names: dict[int, str] = field(default_factory=dict)


def _read_markers(pipes: WorkerPipes, stream: int, data: bytes) -> bytes:
    """Take the task markers out of complete lines of output, noting the last name (what
    the line held before its marker, a print without a newline, is kept)."""
    kept = []
    for line in data.splitlines(keepends=True):
        at = line.find(TASK_MARKER)
        if at < 0:
            kept.append(line)
            continue
        if at:
            kept.append(line[:at] + b"\n")
        name = line[at + len(TASK_MARKER) :].rstrip(b"\n")
        pipes.names[stream] = name.decode(errors="replace")
    return b"".join(kept)


@dataclass
class Unborn:
    """A worker the fork server was asked for, until its pid is read (``adopt_unborn``)."""

    worker: WorkerRecord  # known to the state already, its pid 0 until then
    stdout_fd: int  # the read ends of its output pipes
    stderr_fd: int
    variables: dict[str, str]  # what it was asked with: the node forks it if the server fails
    worker_end: socket.socket  # its end of the channel, kept open until then


def worker_env(
    secret: str, session: str, sys_path: list[str], client_id: bytes, channel_fd: int
) -> dict[str, str]:
    """What a worker needs to know, passed in its environment (the secret stays off argv)."""
    return {
        SECRET_ENV: secret,
        "RAYJUPYTER_NODE_ADDRESS": worker_endpoint(session),  # for messages: it uses the fd
        "RAYJUPYTER_CHANNEL_FD": str(channel_fd),
        "RAYJUPYTER_CLIENT_ID": client_id.hex(),
        "RAYJUPYTER_SESSION": session,
        "RAYJUPYTER_SYS_PATH": json.dumps(sys_path),
        "RAYJUPYTER_PARENT_PID": str(os.getpid()),
        "PYTHONUNBUFFERED": "1",
    }


class NodeWorkers:
    """The node's worker processes and channels: spawn, read, forward output, exits."""

    def __init__(
        self,
        *,
        secret: str,
        session: str,
        sys_path: list[str],
        poll: NodePoll,
        state: NodeState,
        envs: NodeRuntimeEnv,
        clients: dict[bytes, ClientInfo],
        recent_logs: RecentLogs,
        handlers: dict[type, Callable[[bytes, Any], None]],
        report_error: Callable[[Any], None],
        release_client: Callable[[bytes], None],
        execute: Callable[[list[Instruction]], None],
        send: Callable[[bytes, Any], None],
        log_clients: Callable[[], Iterable[bytes]],
        actor_class: Callable[[bytes], str | None],
        running: Callable[[], bool],
        refusals: auth.RefusalLog,
    ) -> None:
        self.secret = secret
        self.session = session
        self.sys_path = sys_path
        self.poll = poll
        self.state = state
        self.envs = envs
        self.clients = clients
        self.recent_logs = recent_logs
        self.handlers = handlers  # the node's dispatch table (filled once all parts exist)
        self.report_error = report_error
        self.release_client = release_client
        self.execute = execute
        self.send = send
        self.log_clients = log_clients  # who hears workers' output: drivers, peer nodes
        self.actor_class = actor_class  # an actor's class name (its worker's output prefix)
        self.running = running
        self.refusals = refusals  # the node's one log of refused connections (rate-bounded)
        self.channels: dict[bytes, Channel] = {}  # client -> its link (see channel.py)
        self.channel_fds: dict[int, bytes] = {}  # a channel's descriptor -> its client
        self.pipes: dict[bytes, WorkerPipes] = {}
        self.exiting: dict[bytes, WorkerPipes] = {}
        self.unproven: dict[int, tuple[socket.socket, bytearray, float]] = {}
        self.max_unproven = bound("unauthenticated")
        self.channel_listener: socket.socket | None = None
        self.log_backlog = bound("log_backlog_bytes")
        self.dropped_lines: dict[bytes, int] = {}  # per slow local driver, not yet told
        #: called with a client whose channel closed (its direct links go: direct_links.py)
        self.channel_closed: Callable[[bytes], None] = lambda client_id: None
        # forks the workers, if the node started one (fork_server.py); else the node does
        self.fork_server: fork_server.ForkServer | None = None
        self.unborn: list[Unborn] = []  # asked of the fork server, pids not read yet

    def spawn_worker(self, actor_id: bytes = b"", pool: str = "") -> bytes:
        """Start a worker process (for a pool, or dedicated to one actor), in the pool's
        runtime_env if it names one (an actor's comes from its options); its client id.
        ``pool`` (worker_pool.pool_of) is what it is started for, and all it will run."""
        client_id = ids.new_client_id()
        env = worker_pool.env_of(pool)
        if actor_id and not env:
            env = self.envs.actor_env(actor_id)
        node_end, worker_end = channel.pair()
        variables = worker_env(
            self.secret, self.session, self.sys_path, client_id, worker_end.fileno()
        )
        if env:
            variables = {**self.envs.env_process_vars(env), **variables}
        requested = None
        server = self.fork_server
        if server is not None and server.engaged:
            requested = server.request(variables, keep_fd=worker_end.fileno())
        if requested is not None:  # its pid comes with the others of this burst
            worker = WorkerRecord(client_id=client_id, pid=0, actor_id=actor_id, env=env, pool=pool)
            self.state.worker_spawned(worker)
            self.open_channel(client_id, Channel(node_end, blocking_send=False))
            self.unborn.append(Unborn(worker, *requested, variables, worker_end))
            if len(self.unborn) >= fork_server.MAX_UNANSWERED:
                self.adopt_unborn()
            return client_id
        try:
            started = spawn.fork_worker(variables, keep_fd=worker_end.fileno())
        finally:
            worker_end.close()
        if server is not None:
            server.note_direct_fork(started.fork_s)
        self.open_channel(client_id, Channel(node_end, blocking_send=False))
        worker = WorkerRecord(
            client_id=client_id, pid=started.pid, actor_id=actor_id, env=env, pool=pool
        )
        self.state.worker_spawned(worker)
        self._watch_worker(worker, started)
        return client_id

    def adopt_unborn(self) -> None:
        """The pids of the workers the fork server was asked for: each is watched from now
        on (its exit, its output), as one the node forked itself. Called at the end of each
        burst of starts (an instruction list), before a signal to a worker, and before the
        loop polls; if the fork server fails, the node forks the rest itself."""
        unborn = self.unborn[:]
        self.unborn.clear()  # (in place: NodeTasks holds it)
        for entry in unborn:
            pid = self.fork_server.answer() if self.fork_server is not None else 0
            if pid > 0:
                started = StartedProcess(pid, entry.stdout_fd, entry.stderr_fd)
            else:
                os.close(entry.stdout_fd)
                os.close(entry.stderr_fd)
                started = spawn.fork_worker(entry.variables, keep_fd=entry.worker_end.fileno())
            entry.worker_end.close()
            entry.worker.pid = started.pid
            self._watch_worker(entry.worker, started)

    def signal_worker(self, worker: WorkerRecord, signum: int) -> None:
        """Send a worker's process a signal (once its pid is known: never kill(0, ...))."""
        if not worker.pid:
            self.adopt_unborn()
        if worker.pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signum)

    def stop_fork_server(self) -> None:
        self.adopt_unborn()
        if self.fork_server is not None:
            self.fork_server.stop()

    def open_channel(self, client_id: bytes, link: Channel) -> None:
        self.channels[client_id] = link
        self.channel_fds[link.fileno()] = client_id
        self.poll.register(link.fileno(), zmq.POLLIN)

    def close_channel(self, client_id: bytes) -> None:
        link = self.channels.pop(client_id, None)
        self.dropped_lines.pop(client_id, None)
        if link is None:
            return
        del self.channel_fds[link.fileno()]
        self.poll.unregister(link.fileno())
        link.close()
        self.channel_closed(client_id)

    def on_channel(self, client_id: bytes, events: int) -> None:
        """A channel is readable (or has room again for what we still owe its client)."""
        link = self.channels[client_id]
        info = self.clients.get(client_id)
        if info is not None:
            info.last_seen = time.monotonic()
        if events & _POLLOUT:
            link.write_pending()
            if not link.has_pending:
                self.poll.modify(link.fileno(), zmq.POLLIN)
        if not events & _READABLE:
            return
        frames = link.recv_frames(reads=channel.NODE_READS)
        if frames is None:  # the worker closed its end: it is exiting (see its pidfd)
            self.close_channel(client_id)
            info = self.clients.get(client_id)
            if info is not None and info.kind != "worker":  # a driver left or died
                self.release_client(client_id)
            return
        handlers = self.handlers
        for frame in frames:
            try:
                messages = protocol.loads(frame)
            except Exception as exc:  # a buggy client: answered by closing its connection
                self._refuse_channel(client_id, exc)
                return
            for index, message in enumerate(messages):
                try:
                    handlers[type(message)](client_id, message)
                except Exception:  # a bug here must not take the cluster down: report it
                    self.report_error(message)
                if index & YIELD_EVERY_MASK == YIELD_EVERY_MASK:
                    os.sched_yield()

    def _refuse_channel(self, client_id: bytes, error: Exception) -> None:
        """A frame that is not a batch of messages: the channel is closed, and its client let
        go (a worker's exit follows through its pidfd)."""
        print(
            f"rayjupyter node: closed the channel of client {client_id.hex()}: a malformed "
            f"frame ({type(error).__name__}: {str(error)[:200]})",
            file=sys.stderr,
            flush=True,
        )
        self.close_channel(client_id)
        info = self.clients.get(client_id)
        if info is not None and info.kind != "worker":
            self.release_client(client_id)

    # ------------------------------------------------------------------ local drivers

    def listen_for_local_drivers(self) -> None:
        """Drivers that attach from this machine connect here (see local_channel.py)."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = local_channel.socket_path(self.session)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener.bind(path)
        # the kernel's largest backlog: a burst of drivers (a notebook's threads, a
        # dashboard, status pollers) while the loop is busy waits in the queue; a short
        # one refused them (EAGAIN on a Unix socket) and sent them to the slower zmq path
        listener.listen(socket.SOMAXCONN)
        listener.setblocking(False)
        self.channel_listener = listener
        self.poll.handle(listener.fileno(), self._on_local_connection)

    def _on_local_connection(self, fd: int) -> None:
        while True:
            assert self.channel_listener is not None
            try:
                conn, _ = self.channel_listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of descriptors: the client times out and says so
                return
            if len(self.unproven) >= self.max_unproven:
                self.refusals.refused(
                    local_channel.socket_path(self.session),
                    _peer(conn),
                    f"{self.max_unproven} connections have not proved the secret yet "
                    f"(raise {BOUNDS['unauthenticated'].env} if that many are legitimate)",
                )
                conn.close()
                continue
            conn.setblocking(False)
            self.unproven[conn.fileno()] = (conn, bytearray(), time.monotonic())
            self.poll.handle(conn.fileno(), self._on_unproven)
            # its proof is usually here already: read now, so a burst of honest clients
            # queued while the loop was busy never counts against the unproven bound
            self._on_unproven(conn.fileno())

    def _on_unproven(self, fd: int) -> None:
        """Read a new connection's first frame; it opens a channel only with the secret."""
        conn, buf, _ = self.unproven[fd]
        try:
            data = conn.recv(local_channel.AUTH_SIZE - len(buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop_unproven(fd, reason="")
            return
        buf += data
        if len(buf) < local_channel.AUTH_SIZE:
            return
        client_id = local_channel.check_auth(self.secret, bytes(buf))
        if client_id is None:
            self._drop_unproven(fd, reason="wrong or missing secret")
            return
        if client_id in self.channels or client_id in self.clients:
            self._drop_unproven(fd, reason="its client id is connected already")
            return
        del self.unproven[fd]
        self.poll.forget(fd)
        self.open_channel(client_id, Channel(conn, blocking_send=False))
        self.on_channel(client_id, zmq.POLLIN)  # its Hello may have come with the proof

    def _drop_unproven(self, fd: int, reason: str) -> None:
        conn, _, _ = self.unproven.pop(fd)
        self.poll.forget(fd)
        if reason:
            where = local_channel.socket_path(self.session)
            self.refusals.refused(where, _peer(conn), reason)
        conn.close()

    def expire_unproven(self) -> None:
        """Close connections that did not prove the secret in time (once a second)."""
        deadline = time.monotonic() - local_channel.AUTH_TIMEOUT_S
        for fd, (_, _, opened) in list(self.unproven.items()):
            if opened < deadline:
                self._drop_unproven(fd, reason="no secret within the time allowed")

    def reap_adopted(self, also: Set[int] = frozenset()) -> None:
        """Reap the exited orphans of tasks' processes (the node is their subreaper);
        ``also``: other children of the node whose exit their own handler collects."""
        own = {p.pid for p in self.pipes.values()} | {p.pid for p in self.exiting.values()}
        spawn.reap_adopted(own | also)

    def send_on_channel(self, link: Channel, payload: bytes) -> None:
        link.send(payload)
        self.watch_output(link)

    def watch_output(self, link: Channel) -> None:
        if link.has_pending:  # the loop writes the rest when the socket has room
            self.poll.modify(link.fileno(), zmq.POLLIN | zmq.POLLOUT)

    def _watch_worker(self, worker: WorkerRecord, started: StartedProcess) -> None:
        """Watch a started worker's output pipes and its exit."""
        pipes = WorkerPipes(pid=started.pid, pidfd=os.pidfd_open(started.pid))
        self.pipes[worker.client_id] = pipes
        for stream, fd in ((1, started.stdout_fd), (2, started.stderr_fd)):
            pipes.output_fds.append(fd)
            pipes.output_poll.register(fd, select.POLLIN)
            self.poll.watch(fd, functools.partial(self._on_output, worker, stream))
        self.poll.exit_fds.add(pipes.pidfd)
        self.poll.handle(pipes.pidfd, functools.partial(self._on_worker_exit, worker))

    def drain_output(self, pipes: WorkerPipes) -> None:
        """Forward everything a worker has written so far (its pipes are non-blocking).

        One poll() asks which pipe has data: on the hot path (every finished task) most
        tasks print nothing, and a read that finds nothing costs an exception in Python.
        poll, not select: with a few hundred workers the node's descriptors pass 1024,
        which select() cannot watch. The poll object is the worker's, made once; a pipe
        leaves it when it closes (``_on_output``).
        """
        fd_handlers = self.poll.fd_handlers
        for fd, _ in pipes.output_poll.poll(0):
            for _ in range(64):
                if fd not in fd_handlers or not fd_handlers[fd](fd):
                    break

    def _on_output(self, worker: WorkerRecord, stream: int, fd: int) -> bool:
        """Read once from a worker's pipe; False when there was nothing to read."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        pipes = self.pipes.get(worker.client_id) or self.exiting.get(worker.client_id)
        if not data:
            self.poll.unwatch(fd)
            if pipes is not None:
                pipes.output_poll.unregister(fd)
            if pipes is not None and pipes.partial.get(stream):
                self._forward_output(worker, stream, pipes.partial.pop(stream) + b"\n")
            return False
        if pipes is not None:
            data = pipes.partial.pop(stream, b"") + data
            complete, _, rest = data.rpartition(b"\n")
            if rest:
                pipes.partial[stream] = rest
            if not complete:
                return True
            data = complete + b"\n"
        self._forward_output(worker, stream, data)
        return True

    def _forward_output(self, worker: WorkerRecord, stream: int, data: bytes) -> None:
        pipes = self.pipes.get(worker.client_id) or self.exiting.get(worker.client_id)
        if TASK_MARKER in data and pipes is not None:  # (worker_output.mark_task)
            data = _read_markers(pipes, stream, data)
            if not data:
                return
        if pipes is not None and stream in pipes.names and not worker.actor_id:
            name = pipes.names[stream]
        elif worker.task is not None:
            name = worker.task.name
        else:  # as Ray prints an actor's output
            name = (worker.actor_id and self.actor_class(worker.actor_id)) or "worker"
        prefix = f"({name} pid={worker.pid}) "
        lines = data.decode(errors="replace").splitlines()
        self.recent_logs.add(worker.pid, name, stream, lines)
        text = "".join(prefix + line + "\n" for line in lines)
        for client in self.log_clients():  # peers pass it to theirs
            link = self.channels.get(client)
            if link is not None and not self._log_room(client, link, len(lines)):
                continue
            self.send(client, P.LogLines(stream, text))

    def _log_room(self, client: bytes, link: Channel, lines: int) -> bool:
        """Whether a local driver has room for more output (config.BOUNDS
        "log_backlog_bytes"): one that reads too slowly misses lines, and hears how many
        once it has caught up, rather than the node holding them all."""
        if link.pending_bytes > self.log_backlog:
            self.dropped_lines[client] = self.dropped_lines.get(client, 0) + lines
            return False
        missed = self.dropped_lines.pop(client, 0)
        if missed:
            self.send(
                client,
                P.LogLines(
                    2,
                    f"rayjupyter: {missed:,} lines of worker output were dropped for this "
                    f"driver: it read them more slowly than they came "
                    f"({BOUNDS['log_backlog_bytes'].env} bytes were waiting for it).\n",
                ),
            )
        return True

    def _on_worker_exit(self, worker: WorkerRecord, _fd: int) -> None:
        pipes = self.pipes.pop(worker.client_id)
        self.exiting[worker.client_id] = pipes
        self.poll.exit_fds.discard(pipes.pidfd)
        self.poll.unwatch(pipes.pidfd)
        if worker.client_id in self.channels:  # what it sent before it exited comes first
            self.on_channel(worker.client_id, zmq.POLLIN)
            self.close_channel(worker.client_id)
        returncode = spawn.exit_code(os.waitpid(pipes.pid, 0)[1])
        self.drain_output(pipes)  # forward what is left before the pipes close
        for fd in pipes.output_fds:
            if fd in self.poll.fd_handlers:
                self.poll.unwatch(fd)
        del self.exiting[worker.client_id]
        cause = (
            f"exit code {returncode}"
            if returncode >= 0
            else f"killed by {signal.Signals(-returncode).name}"
        )
        instructions = self.state.worker_died(worker, cause, respawn=self.running())
        self.release_client(worker.client_id)
        self.execute(instructions)
        if worker.retired:  # as Ray's drained exit after max_calls: what it started goes on
            return
        for request in node_fate.orphaned(self.state, worker.client_id):  # (as rj.cancel/kill)
            self.handlers[type(request)](worker.client_id, request)


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _peer(conn: socket.socket) -> str:
    """Who is at the other end of a Unix socket: its pid and uid (SO_PEERCRED)."""
    try:
        pid, uid, _ = _UCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except OSError:
        return "an unknown local process"
    return f"pid {pid} uid {uid}"
