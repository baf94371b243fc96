"""``DataContext``: the settings of rayjupyter.data, one per driver, named as in Ray Data."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ExecutionResources:
    """Caps for the streaming executor; ``None`` derives them from the cluster."""

    cpu: float | None = None
    object_store_memory: int | None = None


@dataclass
class ExecutionOptions:
    resource_limits: ExecutionResources = field(default_factory=ExecutionResources)
    # rayjupyter always keeps input order; False (Ray's default) only permits any order
    preserve_order: bool = True


@dataclass
class DataContext:
    """Settings read when a dataset executes (``DataContext.get_current()`` to change them)."""

    target_max_block_size: int = 128 * 1024 * 1024  # blocks larger than this are split
    read_op_min_num_blocks: int = 8  # reads are cut into at least this many blocks
    max_errored_blocks: int = 0  # blocks a user error may drop before failing; -1: any
    object_store_memory_fraction: float = 0.5  # the default store budget, of the cluster's
    enable_progress_bars: bool = True
    execution_options: ExecutionOptions = field(default_factory=ExecutionOptions)

    _lock = threading.Lock()
    _current: DataContext | None = None

    @staticmethod
    def get_current() -> DataContext:
        with DataContext._lock:
            if DataContext._current is None:
                DataContext._current = DataContext()
            return DataContext._current

    def copy(self) -> DataContext:
        import copy

        return copy.deepcopy(self)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name not in type(self).__dataclass_fields__:
            raise AttributeError(
                f"DataContext has no setting {name!r}; the settings are "
                f"{', '.join(sorted(type(self).__dataclass_fields__))}."
            )
        object.__setattr__(self, name, value)
