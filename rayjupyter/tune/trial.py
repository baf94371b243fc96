"""A trial's record on the driver, and its states with one transition table.

Everything here is plain data that pickles into the experiment state, so
``Tuner.restore`` gets the same trials back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class TrialState(str, enum.Enum):
    PENDING = "PENDING"  # waiting to (re)start: new, retried, resumed or exploited
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"  # stopped by a scheduler until it says RESUME
    TERMINATED = "TERMINATED"
    ERROR = "ERROR"


_TRANSITIONS: dict[TrialState, frozenset[TrialState]] = {
    TrialState.PENDING: frozenset({TrialState.RUNNING, TrialState.TERMINATED}),
    TrialState.RUNNING: frozenset(
        {TrialState.PENDING, TrialState.PAUSED, TrialState.TERMINATED, TrialState.ERROR}
    ),
    TrialState.PAUSED: frozenset({TrialState.PENDING, TrialState.TERMINATED}),
    TrialState.TERMINATED: frozenset(),
    TrialState.ERROR: frozenset({TrialState.PENDING}),  # Tuner.restore(resume_errored=True)
}


class TrialTransitionError(RuntimeError):
    pass


@dataclass
class Trial:
    trial_id: str
    config: dict[str, Any]
    path: str
    resources: dict[str, float]
    state: TrialState = TrialState.PENDING
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: str | None = None  # the latest persisted checkpoint directory
    checkpoints: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    restore_from: str | None = None  # the checkpoint the next start loads
    restored: dict[str, Any] = field(default_factory=dict)  # counters the next start resumes
    error: BaseException | None = None
    error_text: str | None = None
    num_failures: int = 0
    transitions: list[tuple[TrialState, TrialState]] = field(default_factory=list)
    name: str | None = None  # TuneConfig(trial_name_creator=) sets it; else the directory's
    trainable_name: str = "trainable"

    @property
    def trial_name(self) -> str:
        return self.name or self.path.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.trial_name

    @property
    def last_result(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    @property
    def is_finished(self) -> bool:
        return self.state in (TrialState.TERMINATED, TrialState.ERROR)

    def set_state(self, new: TrialState) -> None:
        if new == self.state:
            return
        if new not in _TRANSITIONS[self.state]:
            raise TrialTransitionError(
                f"trial {self.trial_id}: {self.state.value} -> {new.value} is not a declared "
                f"transition (recent: {self.transitions[-5:]})"
            )
        self.transitions.append((self.state, new))
        del self.transitions[:-20]  # a bounded history, for the error above
        self.state = new

    def checkpoint_counters(self, path: str) -> dict[str, Any]:
        """What a restart from ``path`` resumes: its iteration, time, next checkpoint index."""
        for ckpt, result in reversed(self.checkpoints):
            if ckpt == path:
                return {
                    "training_iteration": result.get("training_iteration", 0),
                    "time_total_s": result.get("time_total_s", 0.0),
                }
        return {}

    def validate(self) -> None:
        assert self.state in _TRANSITIONS
        assert self.state != TrialState.ERROR or self.error_text is not None, self.trial_id
        assert self.checkpoint is None or self.checkpoint in [c for c, _ in self.checkpoints]
