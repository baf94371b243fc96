"""The deployments the Serve benchmark runs, written once for both libraries.

``build(serve)`` takes the ``serve`` module (``rayjupyter.serve`` or ``ray.serve``) and
returns the deployments, so both run the very same code.
"""

from __future__ import annotations

import asyncio
from typing import Any


def build(serve: Any) -> dict[str, Any]:
    options = {"ray_actor_options": {"num_cpus": 0}, "max_ongoing_requests": 100}

    @serve.deployment(**options)
    class NoOp:
        async def __call__(self, request: Any = None) -> str:
            return "ok"

    @serve.deployment(**options)
    class Batched:
        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
        async def predict(self, items: list[Any]) -> list[Any]:
            await asyncio.sleep(0.001)  # a 1 ms model, whatever the batch size
            return items

        async def __call__(self, request: Any = None) -> str:
            return "ok"

    return {"NoOp": NoOp, "Batched": Batched}
