"""rayjupyter.train: Ray Train's API on rayjupyter's runtime.

``from ray import train`` becomes ``from rayjupyter import train``. Framework trainers live
in ``rayjupyter.train.torch`` and ``rayjupyter.train.tensorflow``; nothing here imports
torch or tensorflow until one of them is used.
"""

from rayjupyter.train._backend import Backend, BackendConfig
from rayjupyter.train._checkpoint import Checkpoint
from rayjupyter.train._config import (
    CheckpointConfig,
    FailureConfig,
    Result,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
)
from rayjupyter.train._dataset import DataIterator
from rayjupyter.train._session import (
    TrainContext,
    get_checkpoint,
    get_context,
    get_dataset_shard,
    report,
)
from rayjupyter.train.data_parallel_trainer import DataParallelTrainer

__all__ = [
    "Backend",
    "BackendConfig",
    "Checkpoint",
    "CheckpointConfig",
    "DataIterator",
    "DataParallelTrainer",
    "FailureConfig",
    "Result",
    "RunConfig",
    "ScalingConfig",
    "TrainContext",
    "TrainingFailedError",
    "get_checkpoint",
    "get_context",
    "get_dataset_shard",
    "report",
]
