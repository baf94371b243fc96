"""Which peer node gets work this node does not run: a policy without I/O.

The node's view of its peers (``head.NodeInfo``: capacity, availability as of the last
view, queue length) goes in; a choice comes out. ``NodeState.spill_over`` and
``actor_state.ActorTable`` decide with these; ``node_forwarding`` only sends what they
chose. Kept apart from both so that spill-over, locality and actor hosting follow one
rule and are tested with plain numbers (``tests/test_actor_state.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Iterable, Mapping
from itertools import islice

from rayjupyter.core.head import NodeInfo
from rayjupyter.core.scheduler import ResourcePool, TaskRecord, TaskState

#: arguments this large pull their task to the node holding them
LOCALITY_MIN_BYTES = 1 << 20
#: tasks looked at per spill-over turn (the rest wait for the next turn)
SPILL_SCAN = 256


def fits(available: Mapping[str, float], demand: Mapping[str, float]) -> bool:
    return all(available.get(k, 0.0) + 1e-9 >= v for k, v in demand.items())


def live_peers(nodes: Mapping[bytes, NodeInfo], own_id: bytes) -> list[NodeInfo]:
    return [n for n in nodes.values() if n.alive and n.node_id != own_id]


def feasible_on_peer(peers: Iterable[NodeInfo], demand: Mapping[str, float]) -> bool:
    return any(fits(peer.resources, demand) for peer in peers)


def choose_peer(
    demand: Mapping[str, float], peers: list[NodeInfo], feasible_here: bool
) -> NodeInfo | None:
    """A peer with the demand free now (the one with most CPUs free); or, if this node can
    never meet it, the least busy peer that can. None: it waits here (or nowhere fits)."""
    fitting = [p for p in peers if fits(p.available, demand)]
    if fitting:
        return max(fitting, key=lambda p: p.available.get("CPU", 0.0))
    if feasible_here:
        return None  # it waits here for a free slot rather than in a peer's queue
    feasible = [p for p in peers if fits(p.resources, demand)]
    return min(feasible, key=lambda p: p.queued) if feasible else None


def by_locality(
    held: Mapping[str, int], local: int, demand: Mapping[str, float], peers: list[NodeInfo]
) -> NodeInfo | None:
    """The peer holding most of a task's large arguments (``held``: bytes per address;
    ``local``: bytes here), if it holds over LOCALITY_MIN_BYTES, more than this node, and
    has the demand free."""
    if not held:
        return None
    address, size = max(held.items(), key=lambda item: item[1])
    if size < LOCALITY_MIN_BYTES or size <= local:
        return None
    for peer in peers:
        if peer.address == address and fits(peer.available, demand):
            return peer
    return None


def charge(peer: NodeInfo, demand: Mapping[str, float]) -> None:
    """Work sent there: count its resources taken until the next view says otherwise."""
    for key, value in demand.items():
        peer.available[key] = peer.available.get(key, 0.0) - value


def refund(peer: NodeInfo, demand: Mapping[str, float]) -> None:
    """Work of ours ended there: count its resources free until the next view."""
    for key, value in demand.items():
        peer.available[key] = min(
            peer.available.get(key, 0.0) + value, peer.resources.get(key, 0.0)
        )


def spill(
    ready: deque[TaskRecord],
    peers: list[NodeInfo],
    resources: ResourcePool,
    from_peers: Container[bytes],
) -> list[tuple[TaskRecord, NodeInfo]]:
    """Take off the ready queue the tasks that this node cannot run now and a peer can
    (``choose_peer``), among the first SPILL_SCAN, each charged to its peer so the next
    choice sees it taken. Tasks a peer sent us (owner in ``from_peers``) and tasks pinned
    here by node affinity stay, in their order.

    The node asks at every turn of its loop, mostly while every peer is busy: a demand
    found staying here is not looked at again this turn (nothing frees within one, and a
    charge only takes), and the queue is rebuilt only up to the last task that moved. A
    turn over a full queue then costs a look per task, not a placement."""
    stays: list[dict[str, float]] = []  # (compared in C: no key built per task)
    moves: list[tuple[TaskRecord, NodeInfo]] = []
    reach = 0  # the queue's head up to the last task moved or dropped is rebuilt
    for index, task in enumerate(islice(ready, SPILL_SCAN)):
        if task.state is not TaskState.READY:
            reach = index + 1  # failed while queued (NodeState.stale is an upper bound)
            continue
        demand = task.demand
        if demand in stays:
            continue
        if task.owner in from_peers or task.strategy.startswith("node:"):
            continue  # sent to us by a peer, or placed here by its node affinity
        if resources.fits(demand):
            stays.append(demand)  # it waits for a worker here
            continue
        target = choose_peer(demand, peers, resources.feasible(demand))
        if target is None:
            stays.append(demand)
        else:
            charge(target, demand)
            moves.append((task, target))
            reach = index + 1
    if reach:
        moved = {id(task) for task, _ in moves}
        scanned = [ready.popleft() for _ in range(reach)]
        kept = [t for t in scanned if t.state is TaskState.READY and id(t) not in moved]
        ready.extendleft(reversed(kept))
    return moves
