"""Shared pieces of the serve tests: a gate actor to hold requests open, the fixture."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import rayjupyter as rj
from rayjupyter import serve


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


def serve_url_fixture() -> Callable[..., Any]:
    """An autouse fixture named url (assign it to a module attribute url): Serve started on
    the module's shared cluster, its HTTP proxy on a free port, yielding the proxy's address;
    Serve shut down after each test."""

    @pytest.fixture(autouse=True, name="url")
    def fixture(shared_cluster: Any) -> Iterator[str]:
        address = serve.start(http_options={"port": 0})
        try:
            yield address
        finally:
            serve.shutdown()

    return fixture
