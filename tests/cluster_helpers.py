"""Several nodes as separate processes on loopback, for tests: a head started by rj.init and
nodes that join it. One copy here so every multi-node test starts and stops its cluster the
same way (and a change to how a node joins is made once)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import rayjupyter as rj
from rayjupyter.core import api
from rayjupyter.core.config import NodeConfig
from rayjupyter.core.launcher import LocalCluster


class Nodes:
    """The nodes a test started besides the head, stopped (and checked gone) at the end."""

    def __init__(self, head: Any) -> None:
        self.head = head
        self.started: list[LocalCluster] = []

    def join(
        self,
        num_cpus: float = 1,
        secret: str | None = None,
        node_timeout_s: float = 3.0,
        object_store_memory: int = 4 << 30,
        **resources: float,
    ) -> Any:
        config = NodeConfig(
            num_cpus=num_cpus,
            resources=resources,
            head_address=self.head.address,
            object_store_memory=object_store_memory,
            sys_path=list(sys.path),
            owner_pid=os.getpid(),
            node_timeout_s=node_timeout_s,
        )
        node = LocalCluster(config, secret=secret or self.head._secret)
        self.started.append(node)
        return node

    def stop(self) -> None:
        for node in self.started:
            node.stop()


@rj.remote(num_cpus=1)
def node_of(delay: float = 0.0) -> str:
    """The id of the node this task ran on; delay holds its CPU that long first."""
    time.sleep(delay)
    return rj.get_runtime_context().get_node_id()


def alive_nodes() -> int:
    return sum(1 for row in rj.nodes() if row["Alive"])


def head_id() -> str:
    """The node id of the head this process started."""
    return str(api._state["context"].address_info["node_id"])


@contextlib.contextmanager
def started_nodes(**init_kwargs: Any) -> Iterator[Nodes]:
    """A head started with rj.init(**init_kwargs); every node joined to it is stopped, and
    the head shut down, on the way out."""
    head = rj.init(**init_kwargs)
    started = Nodes(head)
    try:
        yield started
    finally:
        started.stop()
        rj.shutdown()


def nodes_fixture(name: str = "nodes", **init_kwargs: Any) -> Callable[..., Any]:
    """A pytest fixture (named name) yielding the Nodes of a head started with init_kwargs;
    assign it to a module attribute of the same name."""

    @pytest.fixture(name=name)
    def fixture() -> Iterator[Nodes]:
        with started_nodes(**init_kwargs) as started:
            yield started

    return fixture
