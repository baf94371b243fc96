"""Trial schedulers (``ray.tune.schedulers``): pure decision objects, see base.py."""

from rayjupyter.tune.schedulers.base import (
    ASHAScheduler,
    AsyncHyperBandScheduler,
    Exploit,
    FIFOScheduler,
    MedianStoppingRule,
    TrialScheduler,
)
from rayjupyter.tune.schedulers.hyperband import HyperBandScheduler
from rayjupyter.tune.schedulers.pbt import PopulationBasedTraining

__all__ = [
    "ASHAScheduler",
    "AsyncHyperBandScheduler",
    "Exploit",
    "FIFOScheduler",
    "HyperBandScheduler",
    "MedianStoppingRule",
    "PopulationBasedTraining",
    "TrialScheduler",
]
