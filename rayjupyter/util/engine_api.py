"""Which runtime the util helpers (joblib backend, Executor, Pool) submit to: rayjupyter's,
or Ray when this process is a Ray driver or worker (``ray.init`` or ``%ray_connect --ray``)
and our runtime is not connected. Ray is never imported here: only found when loaded."""

from __future__ import annotations

import sys
from typing import Any


def on_ray() -> bool:
    """True when the helpers should use Ray: Ray is initialized here and ours is not."""
    from rayjupyter.core import api

    if api.is_initialized():
        return False
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def core() -> Any:
    """The module whose ``remote``/``get``/``wait``/``put``/``cancel``/``cluster_resources``
    the helpers call: ``ray`` on Ray, ``rayjupyter.core.api`` otherwise."""
    if on_ray():
        return sys.modules["ray"]
    from rayjupyter.core import api

    return api


def kill(actor: Any) -> None:
    if on_ray():
        sys.modules["ray"].kill(actor)
        return
    from rayjupyter.core.actor import kill as kill_ours

    kill_ours(actor)


def exit_actor() -> None:
    """End the calling actor (inside an actor method), on whichever runtime runs it."""
    if on_ray():
        from ray.actor import exit_actor as exit_ray_actor

        exit_ray_actor()  # type: ignore[no-untyped-call]  # Ray's own, untyped
        return
    from rayjupyter.core.actor import exit_actor as exit_ours

    exit_ours()
