"""Which checkpoints a run keeps: a pure bookkeeping object, no files touched.

Events in (``register``), instructions out (the checkpoints to delete). The caller deletes
them; tests drive it without processes or folders.
"""

from __future__ import annotations

import math
from typing import Any

from rayjupyter.train._checkpoint import Checkpoint
from rayjupyter.train._config import CheckpointConfig


class CheckpointManager:
    """Keeps ``num_to_keep`` checkpoints ranked by ``checkpoint_score_attribute`` (or by
    recency without one), and always the latest, which a restart resumes from."""

    def __init__(self, config: CheckpointConfig) -> None:
        self.config = config
        self.kept: list[tuple[int, Checkpoint, dict[str, Any]]] = []  # (order, ckpt, metrics)
        self.latest: Checkpoint | None = None
        self._order = 0

    def _score(self, entry: tuple[int, Checkpoint, dict[str, Any]]) -> tuple[float, int]:
        """Higher is better; ties and missing scores fall back to recency."""
        order, _, metrics = entry
        attribute = self.config.checkpoint_score_attribute
        if attribute is None:
            return (0.0, order)
        value = metrics.get(attribute)
        if not isinstance(value, (int, float)) or math.isnan(value):
            return (-math.inf, order)  # unscored checkpoints go first
        return (float(value) if self.config.checkpoint_score_order == "max" else -value, order)

    def register(self, checkpoint: Checkpoint, metrics: dict[str, Any]) -> list[Checkpoint]:
        """Record a new checkpoint; return those that no longer need to stay on disk."""
        attribute = self.config.checkpoint_score_attribute
        if attribute is not None and attribute not in metrics:
            raise KeyError(
                f"checkpoint_score_attribute {attribute!r} is not among the reported metrics "
                f"({', '.join(sorted(metrics)) or 'none'}): report it with the checkpoint"
            )
        self._order += 1
        self.kept.append((self._order, checkpoint, dict(metrics)))
        self.latest = checkpoint
        limit = self.config.num_to_keep
        deleted: list[Checkpoint] = []
        if limit is None:
            return deleted
        while len(self.kept) > limit:
            candidates = [entry for entry in self.kept if entry[1] != self.latest]
            worst = min(candidates, key=self._score)
            self.kept.remove(worst)
            deleted.append(worst[1])
        self.validate()
        return deleted

    @property
    def best_checkpoints(self) -> list[tuple[Checkpoint, dict[str, Any]]]:
        """The kept checkpoints with their metrics, oldest first, as Ray lists them."""
        return [(checkpoint, metrics) for _, checkpoint, metrics in self.kept]

    def validate(self) -> None:
        """Invariants: the latest is kept, no more than num_to_keep stay, none twice."""
        paths = [entry[1].path for entry in self.kept]
        assert len(paths) == len(set(paths)), paths
        if self.latest is not None:
            assert any(entry[1] == self.latest for entry in self.kept)
        if self.config.num_to_keep is not None:
            assert len(self.kept) <= max(self.config.num_to_keep, 1)
