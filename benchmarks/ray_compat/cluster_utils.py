"""``ray.cluster_utils`` for the shim: Ray's test helper that starts several nodes as
local processes, here over rayjupyter's launcher (what ``rayjupyter start`` uses).

The first ``add_node`` starts the head; later ones join it. ``address`` is what
``ray.init(address=...)`` takes (the secret included). ``_system_config`` (Ray's internal
tuning) is dropped where a node starts, as the shim's ``ray.init`` drops it when it starts
a cluster (connecting, it is passed on and refused, as Ray refuses it).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from benchmarks.ray_compat.internals import skip_internal

cluster_not_supported = False

#: clusters with a head, newest last
LIVE: list[Cluster] = []


def current_address() -> str | None:
    """The newest live cluster's address: where Ray's ``init()`` with no arguments goes."""
    return LIVE[-1].address if LIVE else None


NODE_DEFAULTS: dict[str, Any] = {"num_cpus": 1, "object_store_memory": 150 * 1024 * 1024}


class Node:
    """One node of a ``Cluster``: rayjupyter's local node process; a name that Ray's node
    object has and this one lacks (``all_processes``, ``kill_raylet``, ...) is one of Ray's
    internals, and a test that uses it is skipped with the name."""

    def __init__(self, local: Any) -> None:
        self._local = local

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return getattr(self._local, name)
        except AttributeError:
            skip_internal(f"ray.cluster_utils node.{name}")


class Cluster:
    """Nodes on this machine, each a node daemon of its own; stopped by ``shutdown``."""

    def __init__(
        self,
        initialize_head: bool = False,
        connect: bool = False,
        head_node_args: dict[str, Any] | None = None,
        shutdown_at_exit: bool = True,
    ) -> None:
        self._nodes: list[Any] = []
        self.head_node: Any = None
        if initialize_head:
            self.add_node(**(head_node_args or {}))
            if connect:
                self.connect()

    @property
    def address(self) -> str | None:
        """What ``init(address=...)`` takes; None before the head is added (as Ray's)."""
        from rayjupyter.core.api import ADDRESS_SCHEME

        if self.head_node is None:
            return None
        return f"{ADDRESS_SCHEME}{self.head_node.secret}@{self.head_node.address}"

    def add_node(self, wait: bool = True, **node_args: Any) -> Any:
        from rayjupyter.core.config import NodeConfig
        from rayjupyter.core.launcher import LocalCluster

        node_args.pop("_system_config", None)  # Ray's internal tuning: dropped at a start
        args = {**NODE_DEFAULTS, **node_args}
        unknown = set(args) - {"num_cpus", "num_gpus", "resources", "object_store_memory"}
        for name in unknown:
            if args[name] is not None:
                skip_internal(f"ray.cluster_utils.Cluster.add_node({name}=...)")
        config = NodeConfig(
            num_cpus=float(args["num_cpus"]),
            num_gpus=float(args.get("num_gpus") or 0),
            resources=dict(args.get("resources") or {}),
            object_store_memory=int(args["object_store_memory"]),
            sys_path=list(sys.path),
            owner_pid=os.getpid(),
            head_address=self.head_node.address if self.head_node is not None else "",
        )
        secret = self.head_node.secret if self.head_node is not None else None
        node = Node(LocalCluster(config, secret=secret))
        if self.head_node is None:
            self.head_node = node
            LIVE.append(self)  # the shim's init() with no address attaches to it, as Ray's
            os.environ["RAYJUPYTER_ADDRESS"] = self.address or ""  # (and the first .remote())
        self._nodes.append(node)
        if wait:
            self.wait_for_nodes()
        return node

    def remove_node(self, node: Any, allow_graceful: bool = True) -> None:
        node.stop(timeout=10.0 if allow_graceful else 0.1)
        self._nodes.remove(node)
        if node is self.head_node:
            self.head_node = None

    def list_all_nodes(self) -> list[Any]:
        return list(self._nodes)

    def wait_for_nodes(self, timeout: float = 30) -> None:
        """Until the head lists every node started (only while this driver is connected)."""
        import rayjupyter as rj

        if not rj.is_initialized():
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for n in rj.nodes() if n.get("Alive")) >= len(self._nodes):
                return
            time.sleep(0.1)
        raise TimeoutError(f"Timed out waiting for {len(self._nodes)} nodes to join.")

    def connect(self, namespace: str | None = None) -> Any:
        import rayjupyter as rj

        if self.address is None:
            raise RuntimeError("The cluster has no head yet: call add_node() first.")
        return rj.init(address=self.address, namespace=namespace)

    def shutdown(self) -> None:
        if self in LIVE:
            LIVE.remove(self)
            os.environ["RAYJUPYTER_ADDRESS"] = (LIVE[-1].address or "") if LIVE else "local"
        for node in reversed(self._nodes):
            node.stop()
        self._nodes.clear()
        self.head_node = None
