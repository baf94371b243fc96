"""The training workers: one actor per worker, gang-scheduled in one placement group.

``WorkerGroup`` is the driver's handle on them (start, run a function on all, stop);
``TrainWorker`` is the actor, a thin shell that runs what it is sent and, for the training
loop, sets up the session around it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import socket
import time
import warnings
from collections.abc import Callable
from typing import Any

import rayjupyter as rj
from rayjupyter.exceptions import RayActorError, WorkerCrashedError
from rayjupyter.train import _session
from rayjupyter.train._config import ScalingConfig
from rayjupyter.util import placement_group, remove_placement_group
from rayjupyter.util.scheduling_strategies import PlacementGroupSchedulingStrategy

PLACEMENT_WARN_S = 15.0  # warn if the workers' bundles are not reserved after this long
CALL_TIMEOUT_S = 120.0  # a set-up call on the workers (not the loop) must answer by then

# Errors that mean a worker (or its node) is gone, not that the user's code failed.
LOST_ERRORS: tuple[type[BaseException], ...] = (RayActorError, WorkerCrashedError)


class WorkerLost(Exception):
    """A worker or its node died; the run restarts from its latest checkpoint."""


class TrainWorker:
    """One training worker (an actor): runs functions, and the loop inside a session."""

    def metadata(self) -> dict[str, Any]:
        context = rj.get_runtime_context()
        return {
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "gpu_ids": rj.get_gpu_ids(),
        }

    def execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def run(
        self,
        loop: Callable[..., Any],
        config: dict[str, Any] | None,
        context: _session.TrainContext,
        queue: Any,
        first_index: int,
        checkpoint: Any,
        shards: dict[str, Any],
    ) -> None:
        _session._session = _session._Session(context, queue, first_index, checkpoint, shards)
        try:
            if inspect.signature(loop).parameters:
                loop(config if config is not None else {})
            else:
                loop()
        finally:
            _session._session = None


@dataclasses.dataclass
class WorkerInfo:
    """What the driver knows of one worker, in rank order."""

    actor: Any
    node_id: str
    ip: str
    pid: int
    gpu_ids: list[int]
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0


def free_port(address: str) -> int:
    """A port free now on this machine's ``address`` (run on the worker that will use it)."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def check_lost(error: BaseException) -> bool:
    return isinstance(error, LOST_ERRORS)


class WorkerGroup:
    """``num_workers`` actors in one placement group; ranks follow nodes, so the workers of
    a node have consecutive ranks and local ranks 0, 1, ... as in Ray Train."""

    def __init__(self, scaling: ScalingConfig) -> None:
        bundle = scaling.worker_bundle
        self.group = placement_group([bundle] * scaling.num_workers, scaling.placement_strategy)
        self.workers: list[WorkerInfo] = []
        self.cpus_per_worker = bundle.get("CPU", 0.0)
        started = time.monotonic()
        try:
            while not self.group.wait(timeout_seconds=PLACEMENT_WARN_S):
                warnings.warn(
                    f"the {scaling.num_workers} training workers ({bundle} each, "
                    f"{scaling.placement_strategy}) are still waiting for resources after "
                    f"{time.monotonic() - started:.0f} s; the cluster has "
                    f"{rj.available_resources()} free",
                    stacklevel=2,
                )
            options: dict[str, Any] = {"num_cpus": bundle.get("CPU", 0)}
            options["num_gpus"] = bundle.get("GPU", 0)
            custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
            if custom:
                options["resources"] = custom
            actor_class = rj.remote(TrainWorker)
            actors = [
                actor_class.options(
                    scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, index),
                    **options,
                ).remote()
                for index in range(scaling.num_workers)
            ]
            self._actors = actors
            found = self._get([actor.metadata.remote() for actor in actors])
            self.workers = self._ranked(actors, found)
        except BaseException:
            self.shutdown()
            raise

    @staticmethod
    def _ranked(actors: list[Any], found: list[dict[str, Any]]) -> list[WorkerInfo]:
        ips = {row["NodeID"]: row["NodeManagerAddress"] for row in rj.nodes()}
        node_order: list[str] = []
        for meta in found:
            if meta["node_id"] not in node_order:
                node_order.append(meta["node_id"])
        infos = [
            WorkerInfo(a, m["node_id"], ips[m["node_id"]], m["pid"], m["gpu_ids"])
            for a, m in zip(actors, found, strict=True)
        ]
        infos.sort(key=lambda info: node_order.index(info.node_id))  # stable within a node
        for info in infos:
            same_node = [other for other in infos if other.node_id == info.node_id]
            info.local_rank = same_node.index(info)
            info.local_world_size = len(same_node)
            info.node_rank = node_order.index(info.node_id)
        return infos

    def __len__(self) -> int:
        return len(self.workers)

    @staticmethod
    def _get(refs: list[Any]) -> list[Any]:
        """The results in order, failing as soon as any call fails: a dead worker must not
        leave the driver waiting on a peer stuck in a collective with it."""
        deadline = time.monotonic() + CALL_TIMEOUT_S
        pending = list(refs)
        try:
            while pending:
                left = deadline - time.monotonic()
                ready, pending = rj.wait(pending, num_returns=1, timeout=max(left, 0.0))
                if not ready:
                    raise TimeoutError(
                        f"the training workers' set-up did not finish within {CALL_TIMEOUT_S:.0f}"
                        " s (CALL_TIMEOUT_S in rayjupyter/train/_worker_group.py)"
                    )
                rj.get(ready, timeout=CALL_TIMEOUT_S)  # raises the first failure now
            return rj.get(refs, timeout=CALL_TIMEOUT_S)  # type: ignore[no-any-return]
        except LOST_ERRORS as error:
            raise WorkerLost(str(error)) from error

    def execute(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """Run ``fn(*args)`` on every worker at once; results in rank order."""
        return self._get([w.actor.execute.remote(fn, *args) for w in self.workers])

    def execute_each(
        self, fn: Callable[..., Any], args_per_rank: list[tuple[Any, ...]]
    ) -> list[Any]:
        """Run ``fn`` on every worker at once, with each rank's own arguments."""
        refs = [
            w.actor.execute.remote(fn, *args)
            for w, args in zip(self.workers, args_per_rank, strict=True)
        ]
        return self._get(refs)

    def execute_single(self, rank: int, fn: Callable[..., Any], *args: Any) -> Any:
        return self._get([self.workers[rank].actor.execute.remote(fn, *args)])[0]

    def shutdown(self) -> None:
        """Kill the workers and free their bundles (removing the group kills its actors)."""
        for actor in getattr(self, "_actors", []):
            with contextlib.suppress(Exception):  # already gone
                rj.kill(actor)
        with contextlib.suppress(Exception):  # the cluster may be going away too
            remove_placement_group(self.group)
