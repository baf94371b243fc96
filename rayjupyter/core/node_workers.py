"""The node's worker processes: starting them, forwarding their output, noticing their exit.

A mixin of the node daemon (it shares the node's tables and loop). Workers are forked
from the node (see spawn.py); each one's stdout and stderr are pipes the loop reads and
forwards to the drivers with Ray's ``(task_name pid=N)`` prefix, and a pidfd tells the
loop the moment a worker exits, so its task is retried or failed at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import zmq

from rayjupyter.core import channel, ids, local_channel, protocol, spawn
from rayjupyter.core import protocol as P
from rayjupyter.core.channel import Channel
from rayjupyter.core.config import SECRET_ENV, worker_endpoint
from rayjupyter.core.scheduler import WorkerRecord
from rayjupyter.core.spawn import StartedProcess

if TYPE_CHECKING:
    from rayjupyter.core.node import Node


@dataclass
class WorkerPipes:
    """A worker process's handles: its exit fd and its output pipes, read by the loop."""

    pid: int
    pidfd: int
    output_fds: list[int] = field(default_factory=list)
    partial: dict[int, bytes] = field(default_factory=dict)


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
    """The node's worker-process handling (mixed into ``Node``)."""

    def _node(self) -> Node:
        return self  # type: ignore[return-value]

    def spawn_worker(self, actor_id: bytes = b"", env: str = "") -> bytes:
        """Start a worker process (for the pool, or dedicated to one actor), in a
        runtime_env if ``env`` names one (an actor's comes from its options); its client id."""
        node = self._node()
        client_id = ids.new_client_id()
        if actor_id and not env:
            env = node.envs.actor_env(actor_id)
        node_end, worker_end = channel.pair()
        variables = worker_env(
            node.secret, node.session, node.config.sys_path, client_id, worker_end.fileno()
        )
        if env:
            variables = {**node.envs.env_process_vars(env), **variables}
        try:
            started = spawn.fork_worker(variables, keep_fd=worker_end.fileno())
        finally:
            worker_end.close()
        node._open_channel(client_id, Channel(node_end, blocking_send=False))
        node._adopt_worker(client_id, started, actor_id, env)
        return client_id

    def _open_channel(self, client_id: bytes, link: Channel) -> None:
        node = self._node()
        node.channels[client_id] = link
        node.channel_fds[link.fileno()] = client_id
        node.poller.register(link.fileno(), zmq.POLLIN)

    def _close_channel(self, client_id: bytes) -> None:
        node = self._node()
        link = node.channels.pop(client_id, None)
        if link is None:
            return
        del node.channel_fds[link.fileno()]
        node.poller.unregister(link.fileno())
        link.close()

    def on_channel(self, client_id: bytes, events: int) -> None:
        """A channel is readable (or has room again for what we still owe its client)."""
        node = self._node()
        link = node.channels[client_id]
        info = node.clients.get(client_id)
        if info is not None:
            info.last_seen = time.monotonic()
        if events & zmq.POLLOUT:
            link.write_pending()
            if not link.has_pending:
                node.poller.modify(link.fileno(), zmq.POLLIN)
        if not events & (zmq.POLLIN | zmq.POLLERR):
            return
        frames = link.recv_frames()
        if frames is None:  # the worker closed its end: it is exiting (see its pidfd)
            node._close_channel(client_id)
            info = node.clients.get(client_id)
            if info is not None and info.kind != "worker":  # a driver left or died
                node.release_client(client_id)
            return
        handlers = node.handlers
        for frame in frames:
            for message in protocol.loads(frame):
                try:
                    handlers[type(message)](client_id, message)
                except Exception:  # a bug here must not take the cluster down: report it
                    node._report_internal_error(message)

    # ------------------------------------------------------------------ local drivers

    def listen_for_local_drivers(self) -> None:
        """Drivers that attach from this machine connect here (see local_channel.py)."""
        node = self._node()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = local_channel.socket_path(node.session)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener.bind(path)
        listener.listen(64)
        self.channel_listener = listener
        self.unproven: dict[int, tuple[socket.socket, bytearray, float]] = {}
        node._watch_fd(listener.fileno(), self._on_local_connection)

    def _on_local_connection(self, fd: int) -> None:
        while True:
            try:
                conn, _ = self.channel_listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of descriptors: the client times out and says so
                return
            conn.setblocking(False)
            self.unproven[conn.fileno()] = (conn, bytearray(), time.monotonic())
            node = self._node()
            node.poller.register(conn.fileno(), zmq.POLLIN)
            node.fd_handlers[conn.fileno()] = self._on_unproven

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
        node = self._node()
        client_id = local_channel.check_auth(node.secret, bytes(buf))
        if client_id is None:
            self._drop_unproven(fd, reason="wrong or missing secret")
            return
        if client_id in node.channels or client_id in node.clients:
            self._drop_unproven(fd, reason="its client id is connected already")
            return
        del self.unproven[fd]
        node.poller.unregister(fd)
        del node.fd_handlers[fd]
        node._open_channel(client_id, Channel(conn, blocking_send=False))
        self.on_channel(client_id, zmq.POLLIN)  # its Hello may have come with the proof

    def _drop_unproven(self, fd: int, reason: str) -> None:
        conn, _, _ = self.unproven.pop(fd)
        node = self._node()
        node.poller.unregister(fd)
        del node.fd_handlers[fd]
        conn.close()
        if reason:
            where = local_channel.socket_path(node.session)
            print(
                f"rayjupyter node: refused a connection on {where}: {reason}",
                file=sys.stderr,
                flush=True,
            )

    def expire_unproven(self) -> None:
        """Close connections that did not prove the secret in time (once a second)."""
        deadline = time.monotonic() - local_channel.AUTH_TIMEOUT_S
        for fd, (_, _, opened) in list(self.unproven.items()):
            if opened < deadline:
                self._drop_unproven(fd, reason="no secret within the time allowed")

    def send_on_channel(self, link: Channel, payload: bytes) -> None:
        link.send(payload)
        if link.has_pending:  # the loop writes the rest when the socket has room
            self._node().poller.modify(link.fileno(), zmq.POLLIN | zmq.POLLOUT)

    def _adopt_worker(
        self, client_id: bytes, started: StartedProcess, actor_id: bytes = b"", env: str = ""
    ) -> None:
        """Watch a started worker's output pipes and its exit."""
        node = self._node()
        worker = WorkerRecord(client_id=client_id, pid=started.pid, actor_id=actor_id, env=env)
        pipes = WorkerPipes(pid=started.pid, pidfd=os.pidfd_open(started.pid))
        node.state.worker_spawned(worker)
        node.pipes[client_id] = pipes
        for stream, fd in ((1, started.stdout_fd), (2, started.stderr_fd)):
            pipes.output_fds.append(fd)
            node._watch_fd(fd, functools.partial(node._on_output, worker, stream))
        node.poller.register(pipes.pidfd, zmq.POLLIN)
        node.exit_fds.add(pipes.pidfd)
        node.fd_handlers[pipes.pidfd] = functools.partial(node._on_worker_exit, worker)

    def _drain_output(self, pipes: WorkerPipes) -> None:
        """Forward everything a worker has written so far (its pipes are non-blocking).

        One poll() asks which pipe has data: on the hot path (every finished task) most
        tasks print nothing, and a read that finds nothing costs an exception in Python.
        poll, not select: with a few hundred workers the node's descriptors pass 1024,
        which select() cannot watch.
        """
        node = self._node()
        fds = [fd for fd in pipes.output_fds if fd in node.fd_handlers]
        if not fds:
            return
        poll = select.poll()
        for fd in fds:
            poll.register(fd, select.POLLIN)
        for fd, _ in poll.poll(0):
            for _ in range(64):
                if fd not in node.fd_handlers or not node.fd_handlers[fd](fd):
                    break

    def _on_output(self, worker: WorkerRecord, stream: int, fd: int) -> bool:
        """Read once from a worker's pipe; False when there was nothing to read."""
        node = self._node()
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        pipes = node.pipes.get(worker.client_id) or node._exiting.get(worker.client_id)
        if not data:
            node._unwatch_fd(fd)
            if pipes is not None and pipes.partial.get(stream):
                node._forward_output(worker, stream, pipes.partial.pop(stream) + b"\n")
            return False
        if pipes is not None:
            data = pipes.partial.pop(stream, b"") + data
            complete, _, rest = data.rpartition(b"\n")
            if rest:
                pipes.partial[stream] = rest
            if not complete:
                return True
            data = complete + b"\n"
        node._forward_output(worker, stream, data)
        return True

    def _forward_output(self, worker: WorkerRecord, stream: int, data: bytes) -> None:
        node = self._node()
        if worker.task is not None:
            name = worker.task.name
        elif worker.actor_id in node.actors:
            name = node.actors[worker.actor_id].class_name  # as Ray prints an actor's output
        else:
            name = "worker"
        prefix = f"({name} pid={worker.pid}) "
        lines = data.decode(errors="replace").splitlines()
        node.recent_logs.add(worker.pid, name, stream, lines)
        text = "".join(prefix + line + "\n" for line in lines)
        for client in (*node.drivers(), *node.node_clients):  # peers pass it to theirs
            node.send(client, P.LogLines(stream, text))

    def _on_worker_exit(self, worker: WorkerRecord, _fd: int) -> None:
        node = self._node()
        pipes = node.pipes.pop(worker.client_id)
        node._exiting[worker.client_id] = pipes
        node.poller.unregister(pipes.pidfd)
        node.exit_fds.discard(pipes.pidfd)
        del node.fd_handlers[pipes.pidfd]
        os.close(pipes.pidfd)
        if worker.client_id in node.channels:  # what it sent before it exited comes first
            self.on_channel(worker.client_id, zmq.POLLIN)
            node._close_channel(worker.client_id)
        returncode = spawn.exit_code(os.waitpid(pipes.pid, 0)[1])
        node._drain_output(pipes)  # forward what is left before the pipes close
        for fd in pipes.output_fds:
            if fd in node.fd_handlers:
                node._unwatch_fd(fd)
        del node._exiting[worker.client_id]
        cause = (
            f"exit code {returncode}"
            if returncode >= 0
            else f"killed by {signal.Signals(-returncode).name}"
        )
        instructions = node.state.worker_died(worker, cause, respawn=node.running)
        node.release_client(worker.client_id)
        node.execute(instructions)
