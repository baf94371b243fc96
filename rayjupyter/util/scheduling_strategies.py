"""Ray's ``ray.util.scheduling_strategies``: where tasks and actors may run.

Pass one as ``scheduling_strategy=`` (or the strings "DEFAULT" and "SPREAD").
"""

from rayjupyter.core.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]
