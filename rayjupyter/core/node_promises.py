"""Several nodes, values not made yet: refs nested in a forwarded task's arguments.

A part of the node daemon's peer parts (``NodePulls.promises``). A ref inside a task's
arguments is not waited for before the task runs (Ray's semantics), so the task may go to a
peer while the value is still being made, anywhere. The forwarding node tells the peer of
such objects (``PendingObjects``) and promises to provide each when it is ready: the peer
keeps a pending entry, held for us, so a get there waits instead of failing as unknown;
when the value is ready here (or lost), we send its ``ProvideObjects`` (an inline value, an
error, or where it lives, for the peer to pull). If we die first, the peer's pending
entries are lost (``ObjectLostError``), never waited on for ever.
"""

from __future__ import annotations

from typing import Any

from rayjupyter.core import protocol as P
from rayjupyter.core.node_links import NodeLinks, PeerHost, PeerLink


class NodePromises:
    """Pending objects we told peers of (to provide when ready), and those peers told us of."""

    def __init__(self, node: PeerHost, links: NodeLinks) -> None:
        self.node = node
        self.links = links
        # ours, not ready yet: the peers (addresses) to provide each to when it is; an entry
        # goes when its object is ready (so the table is bounded by the object table)
        self.promised: dict[bytes, set[str]] = {}
        # peers', pending here: object -> the address of the peer that will provide it
        self.awaiting: dict[bytes, str] = {}

    def promise(self, link: PeerLink, object_ids: list[bytes]) -> None:
        """Tell a peer of our objects that are not ready yet; provide them when they are."""
        for object_id in object_ids:
            self.promised.setdefault(object_id, set()).add(link.address)
        link.send(P.PendingObjects(self.node.address, tuple(object_ids)))

    def keep(self, object_id: bytes, entry: Any) -> None:
        """Our object is ready (a value, an error, or on a peer): provide it to the peers
        we promised it to."""
        addresses = self.promised.pop(object_id, None)
        if not addresses:
            return
        if entry.location:
            holder, inline = entry.location, None
        elif entry.in_store:
            holder, inline = self.node.address, None
        else:
            holder, inline = "", entry.inline
        info = (object_id, inline, entry.size, entry.is_error, holder)
        for address in addresses:
            link = self.links.links.get(address)
            if link is not None:
                link.send(P.ProvideObjects((info,)))

    def on_pending_objects(self, client: bytes, message: P.PendingObjects) -> None:
        """A peer's objects that a task it forwards here names: wait for them here, held
        for the peer (as a provided value is) until its ``ProvideObjects`` comes."""
        for object_id in message.object_ids:
            if object_id not in self.node.objects:
                self.node.objects[object_id] = self.node.new_entry()
            self.node.hold(client, object_id)
            self.awaiting[object_id] = message.holder

    def settled(self, object_id: bytes) -> bool:
        """A provided value we were waiting for: True when it was pending here (held once
        already, by ``on_pending_objects``)."""
        return self.awaiting.pop(object_id, None) is not None

    def holder_died(self, address: str, lose: Any) -> None:
        """The peer that was to provide these died: they are lost (``lose(object_id, why)``),
        unless made here meanwhile."""
        gone = [object_id for object_id, holder in self.awaiting.items() if holder == address]
        for object_id in gone:
            del self.awaiting[object_id]
            entry = self.node.objects.get(object_id)
            if entry is not None and not entry.ready:
                lose(
                    object_id,
                    f"node {address}, which was to provide it when it was made, died first",
                )
