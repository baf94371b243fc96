"""The driver side of ``fit()``: start the workers, set up the framework, run the loop on
all of them, gather their reports, keep checkpoints, and restart after a worker's death.

A run is a series of attempts. Each attempt has its own worker group and report queue;
when a worker or its node dies the attempt is torn down and the next one starts from the
latest checkpoint, up to ``FailureConfig.max_failures``. An error raised by the user's
code in one worker stops every worker and is raised by ``fit()`` with its own type.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import rayjupyter as rj
from rayjupyter.train import _dataset
from rayjupyter.train._backend import Backend, BackendConfig
from rayjupyter.train._checkpoint import Checkpoint
from rayjupyter.train._checkpoint_manager import CheckpointManager
from rayjupyter.train._config import Result, RunConfig, ScalingConfig, TrainingFailedError
from rayjupyter.train._reports import ReportCollector, Step
from rayjupyter.train._session import TrainContext
from rayjupyter.train._worker_group import WorkerGroup, WorkerLost, check_lost
from rayjupyter.util.queue import Empty, Queue

REPORT_QUEUE_SIZE = 256  # reports waiting for the driver; a worker's report() waits beyond
POLL_S = 0.05  # how long the driver waits on the queue before checking the workers
LOST_GRACE_S = 3.0  # after a user-level error, how long to look for a dead worker behind it


class RunCallback:
    """What a view of the run is told (all on the driver); every hook is optional."""

    def on_attempt(self, attempt: int, workers: list[Any]) -> None: ...

    def on_step(self, step: Step, checkpoint: Checkpoint | None) -> None: ...

    def on_failure(self, failures: int, error: BaseException) -> None: ...

    def on_end(self, result: Result | None, error: BaseException | None) -> None: ...


class Controller:
    def __init__(
        self,
        loop: Callable[..., Any],
        loop_config: dict[str, Any] | None,
        backend_config: BackendConfig,
        scaling: ScalingConfig,
        run_config: RunConfig,
        datasets: dict[str, Any],
        resume_from: Checkpoint | None,
        name: str,
        callbacks: list[RunCallback],
    ) -> None:
        self.loop = loop
        self.loop_config = loop_config
        self.backend_config = backend_config
        self.backend: Backend = backend_config.backend_cls()
        self.scaling = scaling
        self.run_config = run_config
        self.datasets = datasets
        self.name = name
        self.run_dir = os.path.join(run_config.resolved_storage(), name)
        assert run_config.checkpoint_config is not None
        self.manager = CheckpointManager(run_config.checkpoint_config)
        self.latest = resume_from
        self.history: list[dict[str, Any]] = []
        self.callbacks = callbacks

    def _emit(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def fit(self) -> Result:
        if not rj.is_initialized():
            rj.init()
        os.makedirs(self.run_dir, exist_ok=True)
        failure_config = self.run_config.failure_config
        assert failure_config is not None
        failures = 0
        try:
            while True:
                try:
                    self._attempt(failures)
                    break
                except WorkerLost as lost:
                    failures += 1
                    self._emit("on_failure", failures, lost)
                    limit = failure_config.max_failures
                    if limit != -1 and failures > limit:
                        raise TrainingFailedError(
                            f"a training worker died {failures} time(s), more than "
                            f"FailureConfig(max_failures={limit}) allows: {lost}"
                        ) from lost
        except BaseException as error:
            self._emit("on_end", None, error)
            raise
        result = Result(
            metrics=self.history[-1] if self.history else None,
            checkpoint=self.manager.latest or self.latest,
            path=self.run_dir,
            best_checkpoints=self.manager.best_checkpoints,
            metrics_history=list(self.history),
        )
        self._emit("on_end", result, None)
        return result

    def _attempt(self, attempt: int) -> None:
        first_index = len(self.history)
        if attempt:
            self._drop_unfinished_checkpoints(first_index)
        group = WorkerGroup(self.scaling)
        queue = None
        try:
            self._emit("on_attempt", attempt, group.workers)
            self.backend.on_start(group, self.backend_config)
            queue = Queue(REPORT_QUEUE_SIZE, actor_options={"num_cpus": 0})
            world = len(group)
            shards = {name: _dataset.split(data, world) for name, data in self.datasets.items()}
            refs = []
            for rank, worker in enumerate(group.workers):
                context = TrainContext(
                    rank,
                    world,
                    worker.local_rank,
                    worker.local_world_size,
                    worker.node_rank,
                    self.name,
                    self.run_dir,
                )
                mine = {name: parts[rank] for name, parts in shards.items()}
                refs.append(
                    worker.actor.run.remote(
                        self.loop,
                        self.loop_config,
                        context,
                        queue,
                        first_index,
                        self.latest,
                        mine,
                    )
                )
            collector = ReportCollector(world, first_index)
            try:
                self._watch(refs, queue, collector)
            except WorkerLost:
                self._drain(queue, collector, block=False)  # steps finished before the death
                raise
            self.backend.on_shutdown(group, self.backend_config)
        finally:
            if queue is not None:
                queue.shutdown(force=True)
            group.shutdown()

    def _watch(self, refs: list[Any], queue: Queue, collector: ReportCollector) -> None:
        """Read reports while the loops run; stop at the first failure."""
        pending = list(refs)
        while True:
            self._drain(queue, collector, block=bool(pending))
            if not pending:
                return
            ready, pending = rj.wait(pending, num_returns=len(pending), timeout=0)
            for ref in ready:
                self._check(ref, pending)

    def _drain(self, queue: Queue, collector: ReportCollector, block: bool) -> None:
        try:
            item = queue.get(block=block, timeout=POLL_S if block else None)
            while True:
                for step in collector.add(item):
                    self._on_step(step)
                item = queue.get_nowait()
        except Empty:
            return

    def _check(self, ref: Any, pending: list[Any]) -> None:
        try:
            rj.get(ref, timeout=60)
        except Exception as error:
            if check_lost(error):
                raise WorkerLost(str(error)) from error
            # A peer's death often surfaces first as an error in a collective on another
            # worker (gloo's "connection closed"): look for a dead worker before blaming
            # the user's code.
            deadline = time.monotonic() + LOST_GRACE_S
            while pending and time.monotonic() < deadline:
                ready, pending = rj.wait(pending, num_returns=1, timeout=0.1)
                for other in ready:
                    try:
                        rj.get(other, timeout=60)
                    except Exception as other_error:
                        if check_lost(other_error):
                            raise WorkerLost(str(other_error)) from other_error
            raise

    def _on_step(self, step: Step) -> None:
        self.history.append(step.metrics)
        checkpoint = None
        if step.checkpoint_path is not None:
            checkpoint = Checkpoint(step.checkpoint_path)
            for old in self.manager.register(checkpoint, step.metrics):
                shutil.rmtree(old.path, ignore_errors=True)
            self.latest = checkpoint
        self._emit("on_step", step, checkpoint)

    def _drop_unfinished_checkpoints(self, first_index: int) -> None:
        """Folders that a dead attempt began for steps not all workers reached."""
        for entry in os.listdir(self.run_dir):
            number = entry.removeprefix("checkpoint_")
            if entry != number and number.isdigit() and int(number) >= first_index:
                shutil.rmtree(os.path.join(self.run_dir, entry), ignore_errors=True)
