"""Actor calls a driver sends the actor's process itself (Ray's direct actor calls).

A call used to go driver -> node -> actor -> node -> driver: four hops and the node's turn
twice. Once the node has made a direct link between a driver and an actor's process
(direct_links.py), the driver sends a plain call on that link and the actor answers on it:
two hops, the node off the path. The node still hears of every call, from the same
``SubmitTask`` as ever, sent right after with ``sent_to`` naming the process: it keeps the
books (ref counts, task events, the actor's calls in flight, retries when the process dies)
and sends nothing. An answer the link cannot carry (large, holding refs, an error) comes
from the node as before.

Order: a caller's calls run in the order it made them. A call goes direct only when every
earlier call of ours to that actor that went by the node has ended (one that waits at the
node for an argument would otherwise be overtaken), and the actor's process reads its links
before the calls the node relays (transport.py), so a direct call is not overtaken either.
A call with ref arguments, large arguments or a streaming result, or one beyond
``IN_FLIGHT`` unanswered direct calls (a burst: the node batches many answers to a frame),
goes by the node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rayjupyter.core import ids
from rayjupyter.core import protocol as P
from rayjupyter.core.object_ref import ObjectRef

if TYPE_CHECKING:
    from rayjupyter.core.client import Client
    from rayjupyter.core.direct_links import LinkEnds

#: unanswered direct calls to one actor; beyond, calls go by the node
IN_FLIGHT = 8
#: a call's packed arguments at most (bytes) to go direct: it then leaves in one piece of
#: the kernel's, so two threads' calls on one link never mix
ARGS_MAX = 16 * 1024
#: actors whose last call by the node is remembered; beyond, the oldest ended ones go
ROUTES_MAX = 4096


class _Route:
    """What we sent one actor and have not heard back of yet."""

    __slots__ = ("by_node", "direct", "stuck")

    def __init__(self) -> None:
        # a call by the node that returns nothing went: its end is never heard of, so
        # nothing goes direct to that actor from then on
        self.stuck = False
        # our last call to it that went by the node, held until it ends (its ref keeps the
        # node pushing its end to us even if the caller drops its own); None: all ended
        self.by_node: ObjectRef | None = None
        self.direct: list[bytes] = []  # first return ids of direct calls not answered


class DirectCalls:
    """A driver's choice, per actor call, between its direct link and the node."""

    def __init__(
        self,
        client: Client,
        links: LinkEnds | None,
        observers: list[Callable[[P.SubmitTask], None]],
    ) -> None:
        self.client = client
        self.observers = observers  # (client.submit_observers: the notebook's task tap)
        self.links = links  # None: a driver on zmq (another machine) has no links
        self.awaiting = client._awaiting_push
        self.routes: dict[bytes, _Route] = {}
        self.sent = 0  # calls sent direct (tests, benchmarks)

    def submit(self, message: P.SubmitTask) -> bool:
        """Send an actor call on its direct link and tell the node (True), or leave the
        call to the node's path (False: the caller submits it)."""
        links = self.links
        if links is None:
            return False
        route = self.routes.get(message.actor_id)
        worker = links.actors.get(message.actor_id) if links.actors else None
        if (
            worker is None
            or not message.return_ids
            or message.deps
            or message.generator
            or len(message.args_blob) > ARGS_MAX
            or (route is not None and not self._settled(route))
        ):
            self._by_node(message, route)
            return False
        unnoticed = self.client._unnoticed
        unnoticed.update(message.return_ids)  # (before awaiting: see resubscribe)
        try:
            return self._send(message, route, worker, links)
        finally:
            unnoticed.difference_update(message.return_ids)

    def _send(
        self, message: P.SubmitTask, route: _Route | None, worker: bytes, links: LinkEnds
    ) -> bool:
        self.awaiting.update(message.return_ids)  # (before its answer can come)
        call = P.ExecuteTask(
            message.task_id,
            b"",
            None,
            message.name,
            message.args_blob,
            (),
            message.return_ids,
            False,
            0,
            message.actor_id,
            message.method,
            b"",  # (the actor's process knows its job)
            (),
            "",
            -1,
            "",
            (),
            self.client.client_id,
            True,
        )
        if not links.call(worker, call):  # the link closed: the node's path
            self.awaiting.difference_update(message.return_ids)  # (until that submit)
            self._by_node(message, route)
            return False
        if route is None:
            route = self._new_route(message.actor_id)
        route.direct.append(message.return_ids[0])
        self.sent += 1
        for observe in self.observers:
            observe(message)
        self.client.outbox.notify(message._replace(sent_to=worker))
        return True

    def resubscribe(self) -> None:
        """A direct link closed (its worker exited, maybe between its TaskFinished and its
        answer to us): ask the node for every result we still wait for, so none is lost
        (the node answers a subscriber even where it answered the owner directly).

        A call whose notice is not queued yet (another thread is sending it) is left for
        the next turn: asked for before its notice, the node would answer that it knows no
        such object."""
        client = self.client
        client.resubscribe_due = False
        streams = client.streams
        objects = client.objects
        unnoticed = client._unnoticed
        subscribed = client._subscribed
        wanted = []
        for object_id in list(self.awaiting):
            if object_id in objects or object_id in subscribed:
                continue
            if object_id[: ids.TASK_ID_SIZE] in streams:
                continue
            if object_id in unnoticed:
                client.resubscribe_due = True
            else:
                wanted.append(object_id)
        if wanted:
            subscribed.update(wanted)
            client.send([P.Subscribe(tuple(wanted), False)])

    def forget(self, actor_id: bytes) -> None:
        """The actor is being killed: our next calls go by the node, which fails them (its
        process may still answer until the signal lands). A restart makes a new link."""
        if self.links is not None:
            self.links.forget_actor(actor_id)

    def _settled(self, route: _Route) -> bool:
        """No call of ours to it by the node is left, and few direct ones."""
        awaiting = self.awaiting
        if route.stuck:
            return False
        if route.by_node is not None:
            if route.by_node.binary() in awaiting:
                return False
            route.by_node = None  # (drops our hold on its value)
        direct = route.direct
        if len(direct) >= IN_FLIGHT:
            direct[:] = [object_id for object_id in direct if object_id in awaiting]
        return len(direct) < IN_FLIGHT

    def _by_node(self, message: P.SubmitTask, route: _Route | None) -> None:
        if route is None:
            route = self._new_route(message.actor_id)
        if message.return_ids:
            route.by_node = ObjectRef(message.return_ids[0], _owned=True)
        else:
            route.stuck = True

    def _new_route(self, actor_id: bytes) -> _Route:
        routes = self.routes
        if len(routes) >= ROUTES_MAX:
            for old, route in list(routes.items()):
                if self._settled(route) and not route.direct:
                    del routes[old]
        route = routes[actor_id] = _Route()
        return route
