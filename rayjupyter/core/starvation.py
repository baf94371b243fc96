"""Saying so when actors hold the resources that queued work needs, with nothing running
that would give them back: that work waits for as long as those actors live, and without
a word it looks like a hang (Ray's autoscaler prints a warning in this case too).

I/O-free: the node calls ``StarvationWatch.check`` once a second with its tables and
sends the text it returns (once per episode) to the drivers.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rayjupyter.core.scheduler import TaskRecord, TaskState, WorkerRecord

STARVED_ENV = "RAYJUPYTER_STARVED_WARN_S"
STARVED_WARN_S = 10.0  # how long work may wait so before the drivers hear of it


def _fits(demand: Mapping[str, float], total: Mapping[str, float]) -> bool:
    return all(total.get(name, 0.0) >= amount for name, amount in demand.items())


@dataclass
class StarvationWatch:
    """One episode at a time: from the first check that finds queued work starved to the
    first that does not."""

    after_s: float = STARVED_WARN_S
    since: float | None = None
    warned: bool = False

    @classmethod
    def from_env(cls) -> StarvationWatch:
        return cls(float(os.environ.get(STARVED_ENV, STARVED_WARN_S)))

    def check(
        self,
        now: float,
        ready: Iterable[TaskRecord],
        workers: Iterable[WorkerRecord],
        actor_held: Iterable[Mapping[str, float]],
        total: Mapping[str, float],
        pending_actors: Iterable[Mapping[str, float]] = (),
    ) -> str | None:
        """The warning to send now, if any. ``ready``: the queue of ready plain tasks;
        ``actor_held``: what each actor's process holds here; ``total``: the node's;
        ``pending_actors``: what each actor still waiting to be placed needs."""
        # Nothing to say while a plain task runs (it will give its resources back): that is
        # known from the workers alone, so a long queue is not walked every second (walking
        # 600,000 queued tasks once a second made the node's time grow with the square)
        running = any(w.task is not None and not w.actor_id and not w.lent for w in workers)
        tasks = (t.demand for t in ready if t.state is TaskState.READY)
        waiting = (d for d in itertools.chain(tasks, pending_actors) if _fits(d, total))
        needed = None if running else next(waiting, None)
        if needed is None:
            self.since, self.warned = None, False
            return None
        if self.since is None:
            self.since = now
        if self.warned or now - self.since < self.after_s:
            return None
        held: dict[str, float] = {}
        actors = 0
        for demand in actor_held:
            actors += 1
            for name, amount in demand.items():
                held[name] = held.get(name, 0.0) + amount
        if not any(held.get(name, 0.0) > 0 for name in needed):
            return None  # not the actors' doing (a placement group, a worker limit...)
        self.warned = True
        held_text = ", ".join(f"{name}={amount:g}" for name, amount in sorted(held.items()))
        count = 1 + sum(1 for _ in waiting)
        return (
            f"Warning: {count} task(s) or actor(s) have waited {now - self.since:.0f} s for "
            f"{dict(needed)}: {actors} actor(s) hold {held_text} of this node's "
            f"{dict(total)}, and no task is running that would free them. They wait until "
            f"those actors end: create fewer actors, give them num_cpus=0 (the default holds "
            f"no CPU once placed), or add nodes.\n"
        )
