"""Links to peer nodes: this node as a client of each one (``PeerLink``), and what every
peer part asks of the node (``PeerHost``).

A node talks to a peer as a client of that peer: two DEALER sockets, as a driver has. The
links part (``Node.peer_links``) opens and drops them, reads them in the loop and hands each
message to the node's table for messages from peers; it also knows which of our own
clients are peer nodes (``node_clients``). The other peer parts (``node_membership``,
``node_forwarding``, ``node_pulls``) take it, and the node as a ``PeerHost``, in their
constructors: none of them imports ``node.py``.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import zmq

from rayjupyter.core import auth, discovery, ids, protocol
from rayjupyter.core import protocol as P
from rayjupyter.core.config import NodeConfig, worker_endpoint
from rayjupyter.core.head import HeadState
from rayjupyter.core.node_actors import ActorRecord, NodeActors
from rayjupyter.core.node_instructions import Instruction
from rayjupyter.core.node_io import NodePoll
from rayjupyter.core.node_runtime_env import NodeRuntimeEnv
from rayjupyter.core.node_state import NodeState
from rayjupyter.core.object_store import ObjectStore
from rayjupyter.core.peer_bulk import BulkLink, BulkLinks
from rayjupyter.core.scheduler import TaskRecord
from rayjupyter.core.task_events import TaskEventLog
from rayjupyter.core.transport import part_size, send_frame

if TYPE_CHECKING:  # (for types only: these parts take the node itself, not yet a host)
    from rayjupyter.core.node_generators import NodeGenerators
    from rayjupyter.core.node_placement import NodePlacement


class PeerLink:
    """This node as a client of another node."""

    def __init__(
        self, context: zmq.Context[zmq.Socket[bytes]], address: str, secret: str, node_id: bytes
    ) -> None:
        self.address = address
        self.client_id = ids.new_client_id()
        self.part = part_size()  # larger frames go in parts (the peer's ZMQ_MAXMSGSIZE)
        self.endpoint = peer_endpoint(address)
        self.tx = self._socket(context, b"t", secret)
        self.rx = self._socket(context, b"r", secret)
        self.known_funcs: set[bytes] = set()
        self.outbox: list[Any] = []
        self.last_heard = time.monotonic()
        # Hello goes on the receiving socket, and nothing else is sent before the Welcome:
        # the peer can only answer on a connection it has heard from (a router drops the rest).
        self.welcomed = False
        hello = P.Hello("node", os.getpid(), protocol.PROTOCOL_VERSION, "", node_id)
        self.rx.send(protocol.dumps([hello]), zmq.NOBLOCK)

    def _socket(
        self, context: zmq.Context[zmq.Socket[bytes]], channel: bytes, secret: str
    ) -> zmq.Socket[bytes]:
        sock = context.socket(zmq.DEALER)
        sock.routing_id = self.client_id + channel
        sock.linger = 0
        sock.sndhwm = 0
        sock.rcvhwm = 0
        auth.secure_client(sock, secret, self.endpoint)
        sock.connect(self.endpoint)
        return sock

    def send(self, message: Any) -> None:
        self.outbox.append(message)

    def flush(self) -> None:
        """Send what is queued; never block the node's loop on a peer that is not there
        (a DEALER blocks when it has no connection: refused, or the peer died)."""
        if self.outbox and self.welcomed:
            try:
                send_frame(self.tx, protocol.dumps(self.outbox), self.part, zmq.NOBLOCK)
            except zmq.Again:
                return  # kept for the next turn; a dead peer's link is dropped
            self.outbox = []

    def close(self) -> None:
        self.tx.close(0)
        self.rx.close(0)


#: set to 1, links to peers on this machine go over TCP with CurveZMQ too (to measure it)
PEER_CURVE_ENV = "RAYJUPYTER_PEER_CURVE_ON_LOOPBACK"


def peer_endpoint(address: str) -> str:
    """Where we reach the peer at ``address`` (host:port): its Unix socket when it runs on
    this machine, else TCP with CurveZMQ.

    On one machine nothing crosses a wire, so encryption protects nothing; and it costs
    most of a transfer's time (a 1 GB pull on 2 cores: 0.5-0.9 GB/s with CurveZMQ, 1.2-2.3
    GB/s over the Unix socket; benchmarks/multinode.py). The Unix socket still asks for the
    cluster's secret (PLAIN), in a folder only our user may open. A peer is on this machine
    when its session folder here names its address, its node lives in our network namespace
    and its socket is there.
    """
    session = peer_session(address)
    return worker_endpoint(session) if session else f"tcp://{address}"


def peer_session(address: str) -> str | None:
    """The session of the peer at ``address`` when it runs on this machine (see
    ``peer_endpoint``), else None."""
    if os.environ.get(PEER_CURVE_ENV, "0") not in ("", "0"):
        return None
    for path in glob.glob(os.path.join(discovery.SESSIONS_ROOT, "*", discovery.CLUSTER_FILE)):
        session = os.path.basename(os.path.dirname(path))
        info = discovery.read_cluster_file(session)
        if info is None or info.get("address") != address:
            continue
        endpoint = worker_endpoint(session)
        pid = int(info.get("pid", 0))
        if pid and _same_network(pid) and os.path.exists(endpoint.removeprefix("ipc://")):
            return session
    return None


def _same_network(pid: int) -> bool:
    """Whether the process lives, is ours, and shares our network namespace: a node in
    another one is another host to us (its link may be cut, as a host's), never a socket."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:  # gone, another user's, or no /proc: TCP
        return False


class PeerHost(Protocol):
    """What the peer parts ask of the node (``Node`` is one): its identity and settings,
    its tables, its object table and the task lifecycle."""

    node_id: bytes
    address: str
    session: str
    config: NodeConfig
    running: bool
    head: HeadState
    state: NodeState
    store: ObjectStore
    events: TaskEventLog
    objects: dict[bytes, Any]
    tasks: dict[bytes, TaskRecord]
    funcs: dict[bytes, bytes]
    channels: dict[bytes, Any]  # clients over a socket (workers, local drivers and peers)
    clients: dict[bytes, Any]  # those that said Hello (ClientInfo)
    actors: dict[bytes, ActorRecord]
    envs: NodeRuntimeEnv
    generators: NodeGenerators
    placement: NodePlacement
    actor_part: NodeActors
    handlers: dict[type, Callable[[bytes, Any], None]]  # the node's dispatch table

    @property
    def is_head(self) -> bool: ...
    def advertised(self) -> dict[str, float]: ...
    def announce_ready(self) -> None: ...
    def free_resources(self) -> dict[str, float]: ...
    def queued(self) -> int: ...
    def drivers(self) -> list[bytes]: ...
    def send(self, client: bytes, message: Any) -> None: ...
    def send_chunk(self, client: bytes, chunk: P.ObjectChunk) -> None: ...
    def send_file_chunk(
        self, client: bytes, chunk: P.ObjectChunk, path: str, length: int
    ) -> bool: ...
    def release_client(self, client: bytes) -> None: ...
    def execute(self, instructions: list[Instruction]) -> None: ...
    def fail_task(self, task: TaskRecord, error_blob: bytes) -> None: ...
    def forget_task(self, task: TaskRecord) -> None: ...
    def task_ready(self, task: TaskRecord) -> None: ...
    def new_entry(self) -> Any: ...
    def hold(self, client: bytes, object_id: bytes) -> None: ...
    def incref(self, object_id: bytes) -> None: ...
    def decref(self, object_id: bytes) -> None: ...
    def set_ready(
        self,
        object_id: bytes,
        inline: bytes | None,
        size: int,
        is_error: bool,
        contained: tuple[bytes, ...],
        location: str = "",
    ) -> None: ...


class NodeLinks:
    """Our links to peers, read in the node's loop; and which of our clients are peers."""

    def __init__(
        self,
        *,
        context: zmq.Context[zmq.Socket[bytes]],
        secret: str,
        node_id: bytes,
        poll: NodePoll,
        handlers: dict[type, Callable[[PeerLink, Any], None]],
        report_error: Callable[[Any], None],
    ) -> None:
        self.context = context
        self.secret = secret
        self.node_id = node_id
        self.poll = poll
        self.handlers = handlers  # the node's table for messages from peers
        self.report_error = report_error
        self.links: dict[str, PeerLink] = {}
        self.link_of_socket: dict[zmq.Socket[bytes], PeerLink] = {}
        self.node_clients: dict[bytes, bytes] = {}  # peer nodes' client ids -> their node ids
        # chunks from peers on this machine: straight into the store's file (peer_bulk.py)
        self.bulk = BulkLinks(poll, secret)

    def bulk_link(self, address: str) -> BulkLink | None:
        """The link chunks from ``address`` come over when it is on this machine."""
        link = self.bulk.links.get(address)
        if link is not None or address in self.bulk.refused:
            return link
        return self.bulk.get(address, peer_session(address))

    def link(self, address: str) -> PeerLink:
        link = self.links.get(address)
        if link is None:
            link = self.links[address] = PeerLink(self.context, address, self.secret, self.node_id)
            self.link_of_socket[link.rx] = link
            self.poll.register(link.rx, zmq.POLLIN)
        return link

    def drop_link(self, address: str) -> None:
        link = self.links.pop(address, None)
        self.bulk.forget(address)
        if link is not None:
            del self.link_of_socket[link.rx]
            self.poll.unregister(link.rx)
            link.close()

    def flush_links(self) -> None:
        for link in self.links.values():
            link.flush()
        self.bulk.flush()

    def drain_link(self, link: PeerLink) -> None:
        link.last_heard = time.monotonic()
        handlers = self.handlers
        for _ in range(10_000):
            try:
                frames = link.rx.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) == 2:  # a chunk of a value: a small header, then the raw bytes
                header = protocol.loads(frames[0].bytes)[0]
                handlers[P.ObjectChunk](link, header._replace(data=frames[1].buffer))
                continue
            for message in protocol.loads(frames[0].bytes):
                try:
                    handlers[type(message)](link, message)
                except Exception:
                    self.report_error(message)
