"""Gathering the workers' reports into the run's steps: a pure object, no I/O.

Every worker reports the same number of times; step ``i`` is complete when all
``world_size`` workers have sent their ``i``-th report. Its metrics are rank 0's and its
checkpoint is the folder the workers copied their files into (any of them may have).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rayjupyter.train._session import Report

MAX_STEPS_AHEAD = 1000  # how far the fastest worker may run ahead of the slowest


@dataclasses.dataclass
class Step:
    index: int
    metrics: dict[str, Any]
    checkpoint_path: str | None


class ReportCollector:
    def __init__(self, world_size: int, first_index: int) -> None:
        self.world_size = world_size
        self.next_index = first_index  # the first step not yet complete
        self.pending: dict[int, dict[int, Report]] = {}

    def add(self, report: Report) -> list[Step]:
        """Take one report; return the steps it completes, in order."""
        if not 0 <= report.rank < self.world_size:
            raise ValueError(f"report from rank {report.rank} of a {self.world_size}-worker run")
        if report.index < self.next_index:
            raise ValueError(f"rank {report.rank} reported step {report.index} twice")
        if report.index - self.next_index >= MAX_STEPS_AHEAD:
            raise RuntimeError(
                f"rank {report.rank} is {MAX_STEPS_AHEAD} reports ahead of another worker "
                "(MAX_STEPS_AHEAD): every worker must call train.report() the same number "
                "of times"
            )
        by_rank = self.pending.setdefault(report.index, {})
        if report.rank in by_rank:
            raise ValueError(f"rank {report.rank} reported step {report.index} twice")
        by_rank[report.rank] = report
        done: list[Step] = []
        while len(self.pending.get(self.next_index, {})) == self.world_size:
            reports = self.pending.pop(self.next_index)
            paths = [r.checkpoint_path for r in reports.values() if r.checkpoint_path]
            done.append(Step(self.next_index, reports[0].metrics, paths[0] if paths else None))
            self.next_index += 1
        self.validate()
        return done

    def validate(self) -> None:
        assert all(index > self.next_index - 1 for index in self.pending)
        assert all(len(reports) < self.world_size for reports in self.pending.values())
