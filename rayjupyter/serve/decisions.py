"""The controller's and the router's decisions, as pure objects with no I/O.

``DeploymentPlan`` holds one deployment's replicas as a state machine (events in,
actions out): the controller shell tells it what happened (a replica started, failed its
health check, died, stopped) and carries out the ``StartReplica``/``StopReplica`` actions
that ``reconcile`` returns. ``AutoscalingPolicy`` turns ongoing-request counts and the
clock into a new target. ``choose_replica`` is power-of-two-choices routing. All three are
tested with numbers, no processes (tests/test_serve_decisions.py).
"""

from __future__ import annotations

import collections
import enum
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from rayjupyter.serve.config import AutoscalingConfig

# A deployment whose replicas fail to start this many times in a row is DEPLOY_FAILED and
# stops trying (the error names the last failure), rather than restarting forever.
MAX_CONSTRUCTOR_FAILURES = 3


class ReplicaState(enum.Enum):
    STARTING = "STARTING"  # actor created, constructor running
    RUNNING = "RUNNING"  # takes requests
    STOPPING = "STOPPING"  # told to stop (scale down, unhealthy, dead, redeploy)


# The only transitions there are; anything else is a bug and raises naming both states.
_TRANSITIONS: dict[ReplicaState, set[ReplicaState]] = {
    ReplicaState.STARTING: {ReplicaState.RUNNING, ReplicaState.STOPPING},
    ReplicaState.RUNNING: {ReplicaState.STOPPING},
    ReplicaState.STOPPING: set(),
}


class DeploymentStatus(enum.Enum):
    UPDATING = "UPDATING"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    UPSCALING = "UPSCALING"
    DOWNSCALING = "DOWNSCALING"
    DEPLOY_FAILED = "DEPLOY_FAILED"


class StartReplica(NamedTuple):
    replica_id: str


class StopReplica(NamedTuple):
    replica_id: str
    graceful: bool  # False: it is dead or unhealthy, kill it now


Action = StartReplica | StopReplica


@dataclass
class DeploymentPlan:
    """One deployment's replicas: the target count and each replica's state."""

    name: str
    target: int
    replicas: dict[str, ReplicaState] = field(default_factory=dict)
    constructor_failures: int = 0
    last_error: str = ""
    scaling: DeploymentStatus | None = None  # UPSCALING/DOWNSCALING while a change settles
    _counter: int = 0
    _pending_stops: list[StopReplica] = field(default_factory=list)  # kills still to order
    history: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ events

    def _move(self, replica_id: str, new: ReplicaState) -> None:
        old = self.replicas[replica_id]
        if new not in _TRANSITIONS[old]:
            raise RuntimeError(
                f"replica {replica_id} of {self.name}: no transition {old.value} -> "
                f"{new.value}; recent: {self.history[-5:]}"
            )
        self.replicas[replica_id] = new
        self.history = [*self.history[-19:], f"{replica_id}:{old.value}->{new.value}"]

    def on_started(self, replica_id: str) -> None:
        """The constructor returned: the replica takes requests."""
        if self.replicas.get(replica_id) is ReplicaState.STARTING:
            self._move(replica_id, ReplicaState.RUNNING)
            self.constructor_failures = 0

    def on_start_failed(self, replica_id: str, error: str) -> None:
        """The constructor raised (or the actor died while starting)."""
        if replica_id in self.replicas:
            self.constructor_failures += 1
            self.last_error = error
            self._stop(replica_id)

    def on_unhealthy(self, replica_id: str, error: str) -> None:
        """A health check failed or timed out, or the replica's process died."""
        if self.replicas.get(replica_id) in (ReplicaState.STARTING, ReplicaState.RUNNING):
            self.last_error = error
            self._stop(replica_id)

    def on_stopped(self, replica_id: str) -> None:
        """The shell has killed (or seen the end of) a STOPPING replica: forget it."""
        if self.replicas.get(replica_id) is ReplicaState.STOPPING:
            del self.replicas[replica_id]

    def _stop(self, replica_id: str) -> None:
        if self.replicas[replica_id] is not ReplicaState.STOPPING:
            self._move(replica_id, ReplicaState.STOPPING)
            self._pending_stops.append(StopReplica(replica_id, graceful=False))

    def set_target(self, target: int, *, by_autoscaler: bool = True) -> None:
        """A new replica count: the autoscaler's shows as UPSCALING/DOWNSCALING (the app
        stays RUNNING); a redeploy's as UPDATING until reached, so serve.run waits for it."""
        if target != self.target:
            self.scaling = None
            if by_autoscaler:
                up = target > self.target
                self.scaling = DeploymentStatus.UPSCALING if up else DeploymentStatus.DOWNSCALING
            self.target = target

    # ------------------------------------------------------------------ decisions

    def live(self) -> list[str]:
        return [r for r, s in self.replicas.items() if s is not ReplicaState.STOPPING]

    def running(self) -> list[str]:
        return [r for r, s in self.replicas.items() if s is ReplicaState.RUNNING]

    def failed(self) -> bool:
        return self.constructor_failures >= MAX_CONSTRUCTOR_FAILURES

    def reconcile(self) -> list[Action]:
        """What to do now to bring the live replicas to the target."""
        actions: list[Action] = list(self._pending_stops)
        self._pending_stops.clear()
        live = self.live()
        if len(live) > self.target:
            # stop starting ones first (they serve nothing yet), newest first
            order = sorted(
                live, key=lambda r: (self.replicas[r] is ReplicaState.RUNNING, r), reverse=False
            )
            for replica_id in order[: len(live) - self.target]:
                self._move(replica_id, ReplicaState.STOPPING)
                actions.append(StopReplica(replica_id, graceful=True))
        elif len(live) < self.target and not self.failed():
            for _ in range(self.target - len(live)):
                self._counter += 1
                replica_id = f"{self.name}#{self._counter}"
                self.replicas[replica_id] = ReplicaState.STARTING
                actions.append(StartReplica(replica_id))
        if self.scaling is not None and len(self.running()) == self.target == len(self.live()):
            self.scaling = None
        return actions

    def status(self) -> DeploymentStatus:
        if self.failed():
            return DeploymentStatus.DEPLOY_FAILED
        running = len(self.running())
        if self.scaling is not None:
            return self.scaling
        if running == self.target == len(self.live()):
            return DeploymentStatus.HEALTHY
        if self.target > 0 and running == 0 and self.last_error:
            return DeploymentStatus.UNHEALTHY
        return DeploymentStatus.UPDATING

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for state in self.replicas.values():
            found[state.value] = found.get(state.value, 0) + 1
        return found

    def validate(self) -> None:
        """Invariants (the controller checks them after every reconcile; tests at the end):
        states are the enum's, a kill still to order names a STOPPING replica, and after a
        reconcile the live replicas are the target unless starting has failed for good."""
        assert self.target >= 0, self.target
        for replica_id, state in self.replicas.items():
            assert isinstance(state, ReplicaState), (replica_id, state)
        for stop in self._pending_stops:
            assert self.replicas.get(stop.replica_id) is ReplicaState.STOPPING, stop
        if not self._pending_stops and not self.failed():
            assert len(self.live()) == self.target, (self.name, self.target, self.replicas)


@dataclass
class AutoscalingPolicy:
    """The target replica count from ongoing requests, with Ray's delays.

    ``decide`` is called every ``metrics_interval_s`` with the current target and each
    running replica's ongoing requests (running plus queued in it). The wish is
    ``ceil(total / target_ongoing_requests)`` within the bounds, the total being the mean
    over ``look_back_period_s``; it becomes the target only
    after every wish for ``upscale_delay_s`` (or ``downscale_delay_s``) has pointed the
    same way, so a burst shorter than the delay changes nothing.
    """

    config: AutoscalingConfig
    _up_since: float | None = None
    _down_since: float | None = None
    # (time, total ongoing) over the last look_back_period_s: the wish is on their mean
    _window: collections.deque[tuple[float, float]] = field(default_factory=collections.deque)

    def observe(self, now: float, ongoing: Sequence[float]) -> float:
        """Record a sample; the mean total over ``look_back_period_s`` (0: this sample)."""
        self._window.append((now, float(sum(ongoing))))
        while self._window and self._window[0][0] < now - self.config.look_back_period_s:
            self._window.popleft()
        if not self._window:
            return float(sum(ongoing))
        return sum(total for _, total in self._window) / len(self._window)

    def desired(self, current: int, ongoing: Sequence[float]) -> int:
        cfg = self.config
        total = float(sum(ongoing))
        wish = math.ceil(total / cfg.target_ongoing_requests) if total > 0 else 0
        if current > 0 and wish != current:  # the scaling factors damp the step
            factor = cfg.upscaling_factor if wish > current else cfg.downscaling_factor
            if factor is not None:
                wish = (
                    current + math.ceil((wish - current) * factor)
                    if wish > current
                    else (current - math.ceil((current - wish) * factor))
                )
        return max(cfg.min_replicas, min(cfg.max_replicas, wish))

    def decide(self, now: float, current: int, ongoing: Sequence[float]) -> int:
        wish = self.desired(current, [self.observe(now, ongoing)])
        if wish > current:
            self._down_since = None
            if self._up_since is None:
                self._up_since = now
            if now - self._up_since >= self.config.upscale_delay_s:
                self._up_since = None
                return wish
        elif wish < current:
            self._up_since = None
            if self._down_since is None:
                self._down_since = now
            if now - self._down_since >= self.config.downscale_delay_s:
                self._down_since = None
                return wish
        else:
            self._up_since = self._down_since = None
        return current


def choose_replica(
    ongoing: dict[str, int], limit: int, rng: random.Random | None = None
) -> str | None:
    """Power of two choices: of two random replicas with room (fewer than ``limit``
    requests ongoing from this router), the less loaded; None if every one is full."""
    room = [r for r, n in ongoing.items() if n < limit]
    if not room:
        return None
    if len(room) == 1:
        return room[0]
    first, second = (rng or random).sample(room, 2)
    return first if ongoing[first] <= ongoing[second] else second
