"""``rayjupyter.tune``: Ray Tune's API on rayjupyter (``from rayjupyter import tune``).

Search spaces and searchers propose configs, schedulers decide on each result, and a
controller runs the trials as actors (see controller.py); experiments persist under
``RunConfig.storage_path`` (default ``~/rayjupyter_results``) so ``Tuner.restore`` resumes.
"""

from rayjupyter.tune import schedulers, search
from rayjupyter.tune.checkpoint import Checkpoint
from rayjupyter.tune.config import (
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    Stopper,
    TuneConfig,
)
from rayjupyter.tune.result_grid import Result, ResultGrid
from rayjupyter.tune.sample import (
    choice,
    grid_search,
    lograndint,
    loguniform,
    qloguniform,
    qrandint,
    qrandn,
    quniform,
    randint,
    randn,
    sample_from,
    uniform,
)
from rayjupyter.tune.session import get_checkpoint, get_context, report
from rayjupyter.tune.trainable import Trainable, with_parameters, with_resources
from rayjupyter.tune.tuner import Tuner

__all__ = [
    "Checkpoint",
    "CheckpointConfig",
    "FailureConfig",
    "Result",
    "ResultGrid",
    "RunConfig",
    "Stopper",
    "Trainable",
    "TuneConfig",
    "Tuner",
    "choice",
    "get_checkpoint",
    "get_context",
    "grid_search",
    "lograndint",
    "loguniform",
    "qloguniform",
    "qrandint",
    "qrandn",
    "quniform",
    "randint",
    "randn",
    "report",
    "sample_from",
    "schedulers",
    "search",
    "uniform",
    "with_parameters",
    "with_resources",
]
