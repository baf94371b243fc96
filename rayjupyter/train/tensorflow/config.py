"""TensorflowTrainer and its backend: ``TF_CONFIG`` set on every worker, so that
``tf.distribute.MultiWorkerMirroredStrategy()`` made inside the loop finds its peers.

Each worker picks a free port on its node's address; every worker then gets the same
cluster list (in rank order) and its own task index. Nothing here imports tensorflow.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from rayjupyter.train._backend import Backend, BackendConfig
from rayjupyter.train._worker_group import free_port
from rayjupyter.train.data_parallel_trainer import DataParallelTrainer


@dataclasses.dataclass
class TensorflowConfig(BackendConfig):
    @property
    def backend_cls(self) -> type[Backend]:
        return _TensorflowBackend


def _set_tf_config(tf_config: dict[str, Any], num_threads: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps(tf_config)
    if num_threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(num_threads)


def build_tf_config(addresses: list[str], rank: int) -> dict[str, Any]:
    """The ``TF_CONFIG`` of worker ``rank`` among workers at ``addresses`` (rank order)."""
    return {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": rank}}


class _TensorflowBackend(Backend):
    def on_start(self, worker_group: Any, backend_config: BackendConfig) -> None:
        workers = worker_group.workers
        ports = worker_group.execute_each(free_port, [(w.ip,) for w in workers])
        addresses = [f"{w.ip}:{port}" for w, port in zip(workers, ports, strict=True)]
        threads = int(worker_group.cpus_per_worker)
        worker_group.execute_each(
            _set_tf_config,
            [(build_tf_config(addresses, rank), threads) for rank in range(len(workers))],
        )


class TensorflowTrainer(DataParallelTrainer):
    """A DataParallelTrainer whose workers see a ``TF_CONFIG`` for MultiWorkerMirroredStrategy."""

    def __init__(
        self,
        train_loop_per_worker: Any,
        *,
        train_loop_config: dict[str, Any] | None = None,
        tensorflow_config: TensorflowConfig | None = None,
        **kwargs: Any,
    ) -> None:
        if tensorflow_config is not None and not isinstance(tensorflow_config, TensorflowConfig):
            raise TypeError("tensorflow_config must be a TensorflowConfig")
        super().__init__(
            train_loop_per_worker,
            train_loop_config=train_loop_config,
            backend_config=tensorflow_config or TensorflowConfig(),
            **kwargs,
        )
