"""The head's job table (Ray's Jobs API) as a state machine with no I/O.

A submitted job is a shell command (its entrypoint) that the head runs as a process of its
own, so it outlives the client that submitted it. ``JobManager`` decides; the node's
``node_jobs.NodeJobs`` starts and signals processes and feeds their exits back. Events in
(``submit``, ``started``, ``start_failed``, ``exited``, ``stop``, ``tick``, ``delete``),
instructions out, as plain tuples:

- ``(START, record)``: start the entrypoint of ``record``;
- ``(SIGNAL, record, signal_number)``: signal the job's process group (SIGTERM, then
  SIGKILL once ``stop_grace_s`` has passed without an exit);
- ``(FORGET, record)``: the record left the table (deleted, or pushed out by the bound):
  drop its log.

States and their transitions (Ray's ``JobStatus``), one table::

    PENDING --started--> RUNNING --exit 0--> SUCCEEDED
       |                    |----exit != 0--> FAILED
       |                    '----stop-------> STOPPED (once the process has exited)
       |--start failed--> FAILED
       '--stop----------> STOPPED
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from rayjupyter.core.config import MAX_JOBS_ENV as MAX_JOBS_ENV  # (node_jobs reads it too)
from rayjupyter.core.state_names import JobStatusName

if TYPE_CHECKING:
    # imported where a row is built: the read models' dataclasses cost a few milliseconds
    # of the node's start, and only queries need them (state_names.py)
    from rayjupyter.core.read_models import JobRow

#: jobs the head remembers; at the bound the oldest ended job is forgotten (with its log)
MAX_JOBS = 1000
STOP_GRACE_S = 3.0  # SIGTERM, then SIGKILL after this long (as Ray's stop_job)

#: names a log file on the head: no path separators, no leading dot
_SUBMISSION_ID = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")

START = "start"
SIGNAL = "signal"
FORGET = "forget"
Instruction = tuple[Any, ...]


class JobStatus(str, Enum):
    """Ray's job states; a str, so ``status == "SUCCEEDED"`` holds as in Ray."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    def __str__(self) -> str:
        return f"{self.value}"

    def is_terminal(self) -> bool:
        """The job has ended and will not change again."""
        return self in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED)


TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.STOPPED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}),
    JobStatus.STOPPED: frozenset(),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
}


class InvalidJobTransition(RuntimeError):
    """A job was asked to move where the table does not allow (a bug in the caller)."""


@dataclass
class JobRecord:
    """One submitted job, as the head keeps it."""

    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any]  # as the user gave it (shown by get_job_info)
    env: str  # the registered runtime_env's digest ("" for none): its packages and vars
    metadata: dict[str, str]
    submitted_at: float  # unix seconds
    status: JobStatus = JobStatus.PENDING
    message: str = "The job is waiting for its process to start."
    error_type: str | None = None
    pid: int = 0  # the entrypoint's process (leader of its own process group)
    started_at: float = 0.0
    ended_at: float = 0.0
    exit_code: int | None = None
    stop_requested_at: float = 0.0  # unix seconds of stop_job (0: never asked)
    killed: bool = False  # SIGKILL was sent
    job_id: str | None = None  # hex id of the driver its entrypoint started, once seen
    history: list[str] = field(default_factory=list)

    def row(self, node_id: str) -> JobRow:
        """The record as Ray's ``JobDetails``."""
        from rayjupyter.core.read_models import JobRow

        return JobRow(
            type="SUBMISSION",
            job_id=self.job_id,
            submission_id=self.submission_id,
            status=_status_name(self.status),
            entrypoint=self.entrypoint,
            message=self.message,
            error_type=self.error_type,
            start_time=int(self.submitted_at * 1000),
            end_time=int(self.ended_at * 1000) if self.ended_at else None,
            metadata=dict(self.metadata),
            runtime_env=dict(self.runtime_env),
            driver_exit_code=self.exit_code,
            driver_node_id=node_id,
            driver_pid=self.pid or None,
        )


def _status_name(status: JobStatus) -> JobStatusName:
    names: dict[JobStatus, JobStatusName] = {
        JobStatus.PENDING: "PENDING",
        JobStatus.RUNNING: "RUNNING",
        JobStatus.STOPPED: "STOPPED",
        JobStatus.SUCCEEDED: "SUCCEEDED",
        JobStatus.FAILED: "FAILED",
    }
    return names[status]


def new_submission_id() -> str:
    """Ray's form of a submission id, so code that parses it keeps working."""
    return "raysubmit_" + os.urandom(8).hex()


def max_jobs_from_env() -> int:
    text = os.environ.get(MAX_JOBS_ENV, "")
    if not text:
        return MAX_JOBS
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{MAX_JOBS_ENV} must be a positive integer, got {text!r}")
    return int(text)


class JobManager:
    """Every submitted job the head remembers, in submission order, at most ``max_jobs``."""

    def __init__(self, max_jobs: int = MAX_JOBS, stop_grace_s: float = STOP_GRACE_S) -> None:
        self.max_jobs = max_jobs
        self.stop_grace_s = stop_grace_s
        self.jobs: OrderedDict[str, JobRecord] = OrderedDict()

    # ------------------------------------------------------------------ events

    def submit(
        self,
        submission_id: str,
        entrypoint: str,
        *,
        runtime_env: dict[str, Any] | None = None,
        env: str = "",
        metadata: dict[str, str] | None = None,
        now: float | None = None,
    ) -> list[Instruction]:
        """A new job: start it. ValueError (a message for the submitter) if it is refused."""
        if not entrypoint.strip():
            raise ValueError("the job's entrypoint is empty: give the command to run")
        if not _SUBMISSION_ID.fullmatch(submission_id):
            raise ValueError(
                f"submission_id {submission_id!r} is not allowed: use 1 to 128 letters, digits, "
                "'_', '-' or '.', not starting with '.'"
            )
        if submission_id in self.jobs:
            raise ValueError(
                f"Job with submission_id {submission_id!r} already exists: pick another id "
                "or delete_job() the old one first."
            )
        out: list[Instruction] = []
        if len(self.jobs) >= self.max_jobs:
            oldest = next((r for r in self.jobs.values() if r.status.is_terminal()), None)
            if oldest is None:
                raise ValueError(
                    f"the head already runs {len(self.jobs)} jobs, its bound: wait for some to "
                    f"end or stop them, or start the head with a larger {MAX_JOBS_ENV}."
                )
            del self.jobs[oldest.submission_id]
            out.append((FORGET, oldest))
        record = JobRecord(
            submission_id=submission_id,
            entrypoint=entrypoint,
            runtime_env=dict(runtime_env or {}),
            env=env,
            metadata=dict(metadata or {}),
            submitted_at=time.time() if now is None else now,
        )
        record.history.append("PENDING")
        self.jobs[submission_id] = record
        out.append((START, record))
        return out

    def started(self, submission_id: str, pid: int, now: float) -> list[Instruction]:
        """Its process runs. A stop that came while it was starting takes effect now."""
        record = self.jobs[submission_id]
        record.pid = pid
        record.started_at = now
        self._move(record, JobStatus.RUNNING, "The job's entrypoint is running.")
        if record.stop_requested_at:
            return [(SIGNAL, record, signal.SIGTERM)]
        return []

    def start_failed(self, submission_id: str, reason: str, now: float) -> list[Instruction]:
        record = self.jobs[submission_id]
        record.ended_at = now
        record.error_type = "JOB_ENTRYPOINT_COMMAND_START_ERROR"
        self._move(record, JobStatus.FAILED, f"The job's entrypoint could not start: {reason}")
        return []

    def exited(self, submission_id: str, code: int, now: float) -> list[Instruction]:
        """Its process ended with ``code`` (negative: killed by that signal)."""
        record = self.jobs.get(submission_id)
        if record is None or record.status.is_terminal():
            return []
        record.exit_code = code
        record.ended_at = now
        if record.stop_requested_at:
            self._move(record, JobStatus.STOPPED, "The job was stopped by stop_job.")
        elif code == 0:
            self._move(record, JobStatus.SUCCEEDED, "The job's entrypoint exited with code 0.")
        else:
            record.error_type = "JOB_ENTRYPOINT_COMMAND_ERROR"
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            self._move(record, JobStatus.FAILED, f"The job's entrypoint {how}.")
        return []

    def stop(self, submission_id: str, now: float) -> tuple[bool, list[Instruction]]:
        """``stop_job``: (True, instructions) if the job was live, (False, []) if it had
        ended already (as Ray answers). KeyError if there is no such job."""
        record = self.jobs[submission_id]
        if record.status.is_terminal():
            return False, []
        if not record.stop_requested_at:
            record.stop_requested_at = now
        if record.status is JobStatus.PENDING and not record.pid:
            return True, []  # it is signalled as soon as it has started
        return True, [(SIGNAL, record, signal.SIGTERM)]

    def tick(self, now: float) -> list[Instruction]:
        """SIGKILL for every job asked to stop more than ``stop_grace_s`` ago and still alive."""
        out: list[Instruction] = []
        for record in self.jobs.values():
            if (
                record.stop_requested_at
                and not record.killed
                and record.pid
                and record.status is JobStatus.RUNNING
                and now - record.stop_requested_at >= self.stop_grace_s
            ):
                record.killed = True
                out.append((SIGNAL, record, signal.SIGKILL))
        return out

    def delete(self, submission_id: str) -> list[Instruction]:
        """``delete_job``: only an ended job may go (ValueError otherwise; KeyError if none)."""
        record = self.jobs[submission_id]
        if not record.status.is_terminal():
            raise ValueError(
                f"Job {submission_id!r} is {record.status.value}: stop it (stop_job) and wait "
                "for it to end before deleting it."
            )
        del self.jobs[submission_id]
        return [(FORGET, record)]

    def live(self) -> list[JobRecord]:
        return [r for r in self.jobs.values() if not r.status.is_terminal()]

    # ------------------------------------------------------------------ checks

    def _move(self, record: JobRecord, to: JobStatus, message: str) -> None:
        if to not in TRANSITIONS[record.status]:
            raise InvalidJobTransition(
                f"job {record.submission_id}: {record.status.value} -> {to.value} is not a "
                f"transition (history: {' -> '.join(record.history)})"
            )
        record.status = to
        record.message = message
        record.history.append(to.value)

    def validate(self) -> None:
        """The table's invariants (tests call it)."""
        assert len(self.jobs) <= self.max_jobs, "the job table is over its bound"
        for record in self.jobs.values():
            assert record.history[-1] == record.status.value, record.history
            if record.status is JobStatus.RUNNING:
                assert record.pid > 0, f"running job {record.submission_id} has no process"
            if record.status.is_terminal():
                assert record.ended_at, f"ended job {record.submission_id} has no end time"
