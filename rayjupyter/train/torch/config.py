"""TorchTrainer and its backend: ``torch.distributed`` started on every worker.

Rank 0 picks a free port on its own node's address; every worker then joins the process
group at once (gloo on CPUs, nccl when every worker holds a GPU) with its rank and the
world size, and sees the usual launcher variables (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR, MASTER_PORT), as under torchrun.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

from rayjupyter.train._backend import Backend, BackendConfig
from rayjupyter.train._worker_group import free_port
from rayjupyter.train.data_parallel_trainer import DataParallelTrainer

_BACKENDS = ("gloo", "nccl")


@dataclasses.dataclass
class TorchConfig(BackendConfig):
    """``backend`` None picks nccl when the workers hold GPUs, gloo otherwise."""

    backend: str | None = None
    init_method: str = "env"
    timeout_s: int = 1800

    def __post_init__(self) -> None:
        if self.backend is not None and self.backend not in _BACKENDS:
            raise ValueError(f"backend must be None, 'gloo' or 'nccl', got {self.backend!r}")
        if self.init_method not in ("env", "tcp"):
            raise ValueError(f"init_method must be 'env' or 'tcp', got {self.init_method!r}")

    @property
    def backend_cls(self) -> type[Backend]:
        return _TorchBackend


def _join(
    address: str,
    port: int,
    rank: int,
    world: int,
    local: tuple[int, int, int],
    backend: str,
    init_method: str,
    timeout_s: int,
    num_threads: int,
) -> None:
    """On a worker: the launcher's variables, then the process group."""
    import torch
    import torch.distributed as dist

    from rayjupyter.train.torch import train_loop_utils

    local_rank, local_world, node_rank = local
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(local_rank),
        LOCAL_WORLD_SIZE=str(local_world),
        NODE_RANK=str(node_rank),
        MASTER_ADDR=address,
        MASTER_PORT=str(port),
    )
    if num_threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(num_threads)
        torch.set_num_threads(num_threads)
    train_loop_utils._set_device(backend == "nccl")
    if dist.is_initialized():
        dist.destroy_process_group()
    url = "env://" if init_method == "env" else f"tcp://{address}:{port}"
    dist.init_process_group(
        backend,
        init_method=url,
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class _TorchBackend(Backend):
    def on_start(self, worker_group: Any, backend_config: BackendConfig) -> None:
        assert isinstance(backend_config, TorchConfig)
        workers = worker_group.workers
        all_gpus = all(worker.gpu_ids for worker in workers)
        backend = backend_config.backend or ("nccl" if all_gpus else "gloo")
        if backend == "nccl" and not all_gpus:
            raise ValueError("the nccl backend needs a GPU per worker: set use_gpu=True")
        address = workers[0].ip
        port = worker_group.execute_single(0, free_port, address)
        threads = int(worker_group.cpus_per_worker)
        args = [
            (
                address,
                port,
                rank,
                len(workers),
                (w.local_rank, w.local_world_size, w.node_rank),
                backend,
                backend_config.init_method,
                backend_config.timeout_s,
                threads,
            )
            for rank, w in enumerate(workers)
        ]
        worker_group.execute_each(_join, args)

    def on_shutdown(self, worker_group: Any, backend_config: BackendConfig) -> None:
        worker_group.execute(_leave)


class TorchTrainer(DataParallelTrainer):
    """A DataParallelTrainer whose workers form a ``torch.distributed`` process group."""

    def __init__(
        self,
        train_loop_per_worker: Any,
        *,
        train_loop_config: dict[str, Any] | None = None,
        torch_config: TorchConfig | None = None,
        **kwargs: Any,
    ) -> None:
        if torch_config is not None and not isinstance(torch_config, TorchConfig):
            raise TypeError("torch_config must be a rayjupyter.train.torch.TorchConfig")
        super().__init__(
            train_loop_per_worker,
            train_loop_config=train_loop_config,
            backend_config=torch_config or TorchConfig(),
            **kwargs,
        )
