"""Who is connected to the node: a client's Hello, its heartbeats, its leaving.

A part of the node daemon (``Node.connections``). Every client (a driver, a worker, a peer
node, an observer) says Hello first and is answered with a Welcome (or refused, when its
protocol version differs); the node keeps a ``ClientInfo`` for it. A client leaves by saying
so, by closing its channel, or, for an attached driver, by going silent for
``client_timeout_s``: what it held is let go (its refs, pins, generators, placement groups).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rayjupyter.core import protocol
from rayjupyter.core import protocol as P
from rayjupyter.core.config import NodeConfig
from rayjupyter.core.node_generators import NodeGenerators
from rayjupyter.core.node_instructions import Instruction
from rayjupyter.core.node_io import ClientInfo
from rayjupyter.core.node_objects import NodeObjects
from rayjupyter.core.node_placement import NodePlacement
from rayjupyter.core.node_state import NodeState
from rayjupyter.core.object_store import ObjectStore


class NodeConnections:
    """The node's clients: their records, their arrival and their leaving."""

    def __init__(
        self,
        *,
        node_id: bytes,
        session: str,
        config: NodeConfig,
        state: NodeState,
        clients: dict[bytes, ClientInfo],
        tcp_clients: set[bytes],
        node_clients: dict[bytes, bytes],
        generators: NodeGenerators,
        object_table: NodeObjects,
        store: ObjectStore,
        placement: NodePlacement,
        send: Callable[[bytes, Any], None],
        execute: Callable[[list[Instruction]], None],
        owner_gone: Callable[[bytes], None],
        driver_arrived: Callable[[bytes], None] = lambda client: None,
        store_notice: str = "",
    ) -> None:
        self.node_id = node_id
        self.session = session
        self.object_store_memory = config.object_store_memory
        self.client_timeout_s = config.client_timeout_s
        self.owner_pid = config.owner_pid  # the driver that started us is never let go
        # where the store went when /dev/shm was too small: the first driver hears it, once
        self.store_notice = store_notice
        self.state = state
        self.workers = state.workers
        self.clients = clients
        self.tcp_clients = tcp_clients
        self.node_clients = node_clients  # peer nodes among our clients
        self.generators = generators
        self.object_table = object_table
        self.store = store
        self.placement = placement
        self.send = send
        self.execute = execute
        self.owner_gone = owner_gone  # the actors a gone client created end with it
        self.driver_arrived = driver_arrived  # a job's driver is known at once (node_jobs)

    def drivers(self) -> list[bytes]:
        return [c for c, info in self.clients.items() if info.kind == "driver"]

    def on_hello(self, client: bytes, message: P.Hello) -> None:
        if message.version != protocol.PROTOCOL_VERSION:
            error = (
                f"protocol version {message.version} does not match the node's "
                f"{protocol.PROTOCOL_VERSION}: install the same rayjupyter version on both sides"
            )
            self.send(client, P.Welcome(self.node_id, self.session, 0, error))
            return
        self.send(client, P.Welcome(self.node_id, self.session, self.object_store_memory, ""))
        if message.kind == "node":  # a peer: its tasks run here, it gets our workers' output
            self.node_clients.setdefault(client, message.node_id)  # (dropped when it dies)
        self.clients[client] = ClientInfo(
            message.kind, message.pid, message.namespace, time.monotonic()
        )
        worker = self.workers.get(client)
        if worker is not None:
            self.execute(self.state.worker_connected(worker))
        elif message.kind == "driver":
            self.driver_arrived(client)
            if self.store_notice:
                self.send(client, P.LogLines(2, f"rayjupyter: {self.store_notice}\n"))
                self.store_notice = ""

    def on_heartbeat(self, client: bytes, message: P.Heartbeat) -> None:
        self.send(client, P.Reply(0, None))  # so an attached driver knows the node lives

    def on_disconnect(self, client: bytes, message: P.Disconnect) -> None:
        self.release_client(client)

    def let_go_of_silent_drivers(self) -> None:
        """A driver (or observer) that stopped talking died: drop what it held (its actors
        end with it)."""
        deadline = time.monotonic() - self.client_timeout_s
        for client, info in list(self.clients.items()):
            owner = info.pid == self.owner_pid
            if info.kind != "worker" and not owner and info.last_seen < deadline:
                self.release_client(client)

    def release_client(self, client: bytes) -> None:
        """A client is gone: drop its holds and pins; the actors it created end."""
        self.clients.pop(client, None)
        self.tcp_clients.discard(client)
        if self.generators.streams:
            self.generators.client_gone(client)
        self.object_table.release_holds(client)
        self.store.release_client(client)
        self.placement.client_gone(client)
        self.owner_gone(client)
