"""The head's control state: the node table (and, with several nodes, placement and the
object directory).

On a local cluster the head lives in the node daemon's process and loop, which saves a
process and a hop at start-up; the multi-node issue gives it a process and socket of its
own without changing this state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # imported where a query builds one: the read models' dataclasses cost a few
    # milliseconds of the node's start (state_names.py)
    from rayjupyter.core.read_models import NodeRow


@dataclass
class NodeInfo:
    """One node of the cluster, as the head's node table holds it."""

    node_id: bytes
    address: str  # host:port of the node daemon
    resources: dict[str, float]
    alive: bool = True
    started_at: float = field(default_factory=time.time)
    session: str = ""
    available: dict[str, float] = field(default_factory=dict)  # as of its last heartbeat
    queued: int = 0  # tasks waiting for resources there, as of its last heartbeat
    last_seen: float = field(default_factory=time.monotonic)


class HeadState:
    """What the head knows about the cluster's nodes."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, NodeInfo] = {}

    def register_node(self, info: NodeInfo) -> None:
        self.nodes[info.node_id] = info

    def mark_dead(self, node_id: bytes) -> None:
        if node_id in self.nodes:
            self.nodes[node_id].alive = False

    def cluster_resources(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for node in self.nodes.values():
            if node.alive:
                for key, value in node.resources.items():
                    total[key] = total.get(key, 0.0) + value
        return total

    def node_table(self) -> list[NodeRow]:
        """Rows shaped like ``ray.nodes()``."""
        from rayjupyter.core.read_models import NodeRow

        rows = []
        for node in self.nodes.values():
            host, _, port = node.address.rpartition(":")
            rows.append(
                NodeRow(
                    NodeID=node.node_id.hex(),
                    Alive=node.alive,
                    NodeManagerAddress=host,
                    NodeManagerPort=int(port),
                    Resources=dict(node.resources),
                    Available=dict(node.available),
                    StartTime=node.started_at,
                )
            )
        return rows
