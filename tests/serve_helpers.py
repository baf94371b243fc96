"""Shared pieces of the serve tests: a gate actor to hold requests open, the fixture."""

from __future__ import annotations

import asyncio

import rayjupyter as rj


@rj.remote
class Gate:
    """Requests wait on it until the test opens it (ordering without sleeps)."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.arrived = 0

    async def wait(self) -> None:
        self.arrived += 1
        await asyncio.wait_for(self.opened.wait(), 60)

    def open(self) -> None:
        self.opened.set()

    def count(self) -> int:
        return self.arrived


def new_gate():
    return Gate.options(num_cpus=0).remote()
