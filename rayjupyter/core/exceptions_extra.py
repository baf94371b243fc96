"""The rest of Ray's error classes, under the tree of ``exceptions.py``.

    RayError
    ├── ActorAlreadyExistsError            a named actor's name is taken      (also ValueError)
    ├── ActorHandleNotFoundError           an actor handle's actor is unknown (also ValueError)
    ├── AsyncioActorExit                   exit_actor() inside an async actor's coroutine
    ├── AuthenticationError                the cluster refused our secret
    ├── CrossLanguageError                 (Ray's Java/C++ workers: never raised here)
    ├── LocalRayletDiedError               this machine's node daemon died
    ├── NodeDiedError                      the node that ran the work died
    ├── ObjectRefStreamEndOfStreamError    a streaming generator has no more items
    ├── OufOfBandObjectRefSerializationException  a ref was pickled outside the runtime
    ├── OutOfDiskError                     the store's spill disk is full
    ├── OutOfMemoryError                   the machine ran out of memory while the work ran
    ├── PlasmaObjectNotAvailable           (Ray's plasma store: never raised here)
    ├── RpcError                           a call between processes failed
    ├── UnserializableException            a task's exception could not be pickled
    ├── UserCodeException                  raised by user code run by the runtime
    ├── ObjectLostError (exceptions.py)
    │   ├── ObjectFetchTimedOutError       the object could not be fetched in time
    │   ├── ObjectFreedError               the object was freed while still referenced
    │   ├── ObjectReconstructionFailedError  lineage could not rebuild the object
    │   └── ReferenceCountingAssertionError  (also AssertionError)
    └── RaySystemError (exceptions.py)
        ├── RayChannelError                (Ray's compiled graphs: never raised here)
        │   └── RayChannelTimeoutError     (also TimeoutError)
        ├── RayCgraphCapacityExceeded      (Ray's compiled graphs: never raised here)
        ├── RayDirectTransportError        (Ray's GPU object transport: never raised here)
        └── StreamingGeneratorReplayInconsistentError  a retried generator yielded otherwise

Each keeps Ray's name and base classes, so ``except`` clauses written for Ray catch the same
errors; the ones marked "never raised here" exist for that reason only.
"""

from __future__ import annotations

from rayjupyter.core.exceptions import ObjectLostError, RayError, RaySystemError

__all__ = [
    "ActorAlreadyExistsError",
    "ActorHandleNotFoundError",
    "AsyncioActorExit",
    "AuthenticationError",
    "CrossLanguageError",
    "LocalRayletDiedError",
    "NodeDiedError",
    "ObjectFetchTimedOutError",
    "ObjectFreedError",
    "ObjectReconstructionFailedError",
    "ObjectRefStreamEndOfStreamError",
    "OufOfBandObjectRefSerializationException",
    "OutOfDiskError",
    "OutOfMemoryError",
    "PlasmaObjectNotAvailable",
    "RayCgraphCapacityExceeded",
    "RayChannelError",
    "RayChannelTimeoutError",
    "RayDirectTransportError",
    "ReferenceCountingAssertionError",
    "RpcError",
    "StreamingGeneratorReplayInconsistentError",
    "UnserializableException",
    "UserCodeException",
]


class ActorAlreadyExistsError(RayError, ValueError):
    """A named actor was created with a name another live actor has in that namespace."""

    default_message = "An actor with this name already exists in this namespace."


class ActorHandleNotFoundError(RayError, ValueError):
    """An actor handle names an actor the cluster does not know."""

    default_message = "The actor handle's actor is not known to the cluster."


class AsyncioActorExit(RayError):
    """exit_actor() called inside an async actor's coroutine."""

    default_message = "The async actor exited (exit_actor)."


class AuthenticationError(RayError):
    """The cluster refused the connection: a wrong or missing cluster secret."""

    default_message = "The cluster refused the connection: check the cluster's secret."


class CrossLanguageError(RayError):
    """Ray's error from a Java or C++ worker; rayjupyter runs Python only."""

    default_message = "An error from a worker in another language."


class LocalRayletDiedError(RayError):
    """The node daemon on this machine died."""

    default_message = "The node daemon on this machine died."


class NodeDiedError(RayError):
    """The node that ran the work died."""

    default_message = "The node that ran this work died."


class ObjectFetchTimedOutError(ObjectLostError):
    """The object could not be fetched from the node that holds it in time."""

    default_message = "Fetching the object from the node that holds it timed out."


class ObjectFreedError(ObjectLostError):
    """The object was freed (e.g. by its owner) while a reference to it was still used."""

    default_message = "The object was freed while a reference to it was still in use."


class ObjectReconstructionFailedError(ObjectLostError):
    """The object was lost and re-running the task that made it failed or was not allowed."""

    default_message = "The object was lost and could not be rebuilt from its lineage."


class ReferenceCountingAssertionError(ObjectLostError, AssertionError):
    """An object was freed although the reference counts said it was still referenced."""

    default_message = "The object was freed while the reference counts still held it."


class ObjectRefStreamEndOfStreamError(RayError):
    """A streaming generator has no more items."""

    default_message = "The object ref stream has ended."


class OufOfBandObjectRefSerializationException(RayError):
    """An ObjectRef was pickled outside the runtime's serializer (Ray's spelling kept)."""

    default_message = "An ObjectRef was serialized out of band."


class OutOfDiskError(RayError):
    """The object store could not spill: its disk is full."""

    default_message = "The object store's spill disk is full."


class OutOfMemoryError(RayError):
    """The machine ran out of memory while the task or actor ran."""

    default_message = "The machine ran out of memory while this work ran."


class PlasmaObjectNotAvailable(RayError):
    """Ray's plasma store error; rayjupyter's store never raises it."""

    default_message = "The object is not available in the store."


class RpcError(RayError):
    """A call between the runtime's processes failed."""

    default_message = "A call between the runtime's processes failed."


class UnserializableException(RayError):
    """A task raised an exception that could not be pickled back to the caller."""

    default_message = "The task raised an exception that could not be serialized."


class UserCodeException(RayError):
    """An error raised by user code that the runtime ran (e.g. in a callback)."""

    default_message = "User code raised an exception."


class RayChannelError(RaySystemError):
    """Ray's compiled-graph channel error; never raised here."""


class RayChannelTimeoutError(RayChannelError, TimeoutError):
    """Ray's compiled-graph channel timeout; never raised here."""


class RayCgraphCapacityExceeded(RaySystemError):
    """Ray's compiled-graph capacity error; never raised here."""


class RayDirectTransportError(RaySystemError):
    """Ray's GPU object transport error; never raised here."""


class StreamingGeneratorReplayInconsistentError(RaySystemError):
    """A retried streaming generator yielded different items than its first attempt."""
