"""The head's file of named detached actors: what must outlive a restart of the head.

Ray keeps its actor table in the GCS (backed by Redis for fault tolerance); here the head
writes the creation of each named detached actor to a local file (0600, replaced
atomically) and, when it starts again with the same file, creates them anew, so
``rj.get_actor(name)`` finds them. Their state starts over from ``__init__``, as after any
restart; actors whose arguments hold ObjectRefs are not kept (those values die with the head).
"""

from __future__ import annotations

import contextlib
import os
import pickle
from typing import Any

from rayjupyter.core import protocol as P

# (the creation message, job id, namespace, restarts so far)
Saved = tuple[P.CreateActor, bytes, str, int]


def save(path: str, actors: list[Saved]) -> None:
    """Replace the file with these actors; never leaves a half-written file behind."""
    temporary = f"{path}.tmp{os.getpid()}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        pickle.dump(
            [(tuple(message), job, ns, restarts) for message, job, ns, restarts in actors],
            out,
            protocol=5,
        )
    os.replace(temporary, path)


def load(path: str) -> list[Saved]:
    """The actors saved at ``path`` (none if it does not exist or cannot be read)."""
    try:
        with open(path, "rb") as source:
            rows: list[Any] = pickle.load(source)
    except FileNotFoundError:
        return []
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        with contextlib.suppress(OSError):
            os.replace(path, f"{path}.unreadable")
        print(f"rayjupyter node: ignored the unreadable actor file {path} ({exc})", flush=True)
        return []
    return [(P.CreateActor(*message), job, ns, restarts) for message, job, ns, restarts in rows]
