"""Ray's Jobs API (``ray.job_submission``): run a script on the cluster's head, apart from
the process that submitted it.

``JobSubmissionClient(address)`` takes the address ``rj.init`` takes
(``rayjupyter://SECRET@HOST:PORT``, ``HOST:PORT`` with the secret in the environment or
in ``~/.rayjupyter/cluster.json``, or nothing for the cluster started on this machine) and
talks to the head over the cluster's authenticated transport: unlike Ray's, the Jobs API
has no open HTTP port, so nobody without the secret submits anything (CVE-2023-48022).

The entrypoint runs as a shell command on the head, in its own process group, with
``RAYJUPYTER_ADDRESS`` and ``RAY_ADDRESS`` set so that ``rj.init()`` inside attaches to the
cluster. Its ``runtime_env`` (``working_dir``, ``py_modules``, ``env_vars``) is packed here
and uploaded: the entrypoint starts in the working_dir, and the driver it starts runs its
tasks in the same env. Its output is kept on the head (``get_job_logs``, ``tail_job_logs``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref
from collections.abc import AsyncIterator
from enum import Enum
from typing import Any, cast

from rayjupyter.core import addresses
from rayjupyter.core import protocol as P
from rayjupyter.core import runtime_env as runtime_env_module
from rayjupyter.core.jobs import JobStatus
from rayjupyter.core.read_models import JobRow

__all__ = ["JobDetails", "JobInfo", "JobStatus", "JobSubmissionClient", "JobType"]

#: Ray's ``JobDetails``: a job's row (``read_models.JobRow``), its ``status`` a JobStatus
JobDetails = JobRow
#: Ray's ``JobInfo`` carries the same fields as ``JobDetails`` minus the ids; one class here
JobInfo = JobRow
LOG_CHUNK_BYTES = 1 << 20
TAIL_INTERVAL_S = 0.2


class JobType(str, Enum):
    """Ray's job types: submitted through this API, or a driver that connected itself."""

    SUBMISSION = "SUBMISSION"
    DRIVER = "DRIVER"


def _with_status(row: Any) -> JobRow:
    if not isinstance(row, JobRow):
        raise TypeError(f"the head answered with {type(row).__name__}, not a job row")
    return dataclasses.replace(row, status=cast(Any, JobStatus(row.status)))


class JobSubmissionClient:
    """Submit, watch and stop jobs on a cluster's head (Ray's ``JobSubmissionClient``)."""

    def __init__(
        self,
        address: str | None = None,
        create_cluster_if_needed: bool = False,
        cookies: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        headers: dict[str, Any] | None = None,
        verify: str | bool | None = True,
        timeout: float = 30.0,
    ) -> None:
        if create_cluster_if_needed:
            raise ValueError(
                "create_cluster_if_needed=True is not supported: start the cluster with "
                "`rayjupyter start --head` first"
            )
        if cookies or headers:
            raise ValueError(
                "cookies and headers are not used: the Jobs API is reached over the cluster's "
                "authenticated port, not HTTP; drop them"
            )
        self._timeout = float(timeout)
        self._default_metadata = dict(metadata or {})
        self._client = addresses.observer(address, timeout=min(self._timeout, 10.0), io_thread=True)
        self._address = self._client.address
        # closed when dropped; at interpreter exit it is left alone (the IO thread may be
        # frozen holding the send lock there; the head lets a silent observer go by itself)
        self._closer = weakref.finalize(self, self._client.close)
        self._closer.atexit = False

    def __repr__(self) -> str:
        return f"JobSubmissionClient(head at {self._address})"

    def close(self) -> None:
        """Disconnect (the jobs go on)."""
        self._closer()

    def __enter__(self) -> JobSubmissionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, kind: Any, *args: Any) -> Any:
        return self._client.request(kind, *args, timeout=self._timeout)

    # ------------------------------------------------------------------ the API

    def submit_job(
        self,
        *,
        entrypoint: str,
        job_id: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        submission_id: str | None = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_num_gpus: float | None = None,
        entrypoint_memory: int | None = None,
        entrypoint_resources: dict[str, float] | None = None,
    ) -> str:
        """Start ``entrypoint`` (a shell command) on the head; returns the submission id."""
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise ValueError("entrypoint must be a non-empty shell command, e.g. 'python x.py'")
        if job_id is not None and submission_id is not None and job_id != submission_id:
            raise ValueError("give submission_id only (job_id is its deprecated name)")
        for name, value in (
            ("entrypoint_num_cpus", entrypoint_num_cpus),
            ("entrypoint_num_gpus", entrypoint_num_gpus),
            ("entrypoint_memory", entrypoint_memory),
            ("entrypoint_resources", entrypoint_resources),
        ):
            if value:
                raise ValueError(
                    f"{name} is not supported: the entrypoint runs on the head without a "
                    "reservation; give the resources to the tasks it submits instead"
                )
        spec = runtime_env_module.validate("runtime_env", runtime_env) or {}
        digest = ""
        if spec:
            env, packages = runtime_env_module.resolve(spec)
            digest = runtime_env_module.register(self._client, env, packages)
        all_metadata = {**self._default_metadata, **(metadata or {})}
        bad = [
            k for k, v in all_metadata.items() if not (isinstance(k, str) and isinstance(v, str))
        ]
        if bad:
            raise TypeError(f"metadata must map str to str; check {bad}")
        answer = self._request(
            P.SubmitJob,
            submission_id or job_id or "",
            entrypoint,
            dict(runtime_env or {}),
            digest,
            all_metadata,
        )
        return str(answer)

    def get_job_info(self, job_id: str) -> JobRow:
        """The job's details (status, message, times, exit code...); RuntimeError if none."""
        return _with_status(self._request(P.GetJobInfo, job_id))

    def get_job_status(self, job_id: str) -> JobStatus:
        return JobStatus(self.get_job_info(job_id).status)

    def list_jobs(self) -> list[JobRow]:
        """Every job the head remembers (submitted ones, oldest first)."""
        return [_with_status(row) for row in self._request(P.ListJobs)]

    def stop_job(self, job_id: str) -> bool:
        """SIGTERM to the job's processes, SIGKILL a few seconds later if they are still
        there; False if the job had ended already."""
        return bool(self._request(P.StopJob, job_id))

    def delete_job(self, job_id: str) -> bool:
        """Forget an ended job and its log (a live one: stop it first)."""
        return bool(self._request(P.DeleteJob, job_id))

    def get_job_logs(self, job_id: str) -> str:
        """Everything the job has printed so far (stdout and stderr)."""
        parts: list[str] = []
        offset = 0
        while True:
            text, offset, _ended = self._request(P.GetJobLogs, job_id, offset, LOG_CHUNK_BYTES)
            if not text:
                return "".join(parts)
            parts.append(text)

    def _log_chunk(self, job_id: str, offset: int) -> tuple[str, int, bool]:
        text, next_offset, ended = self._request(P.GetJobLogs, job_id, offset, LOG_CHUNK_BYTES)
        return str(text), int(next_offset), bool(ended)

    def follow_job_logs(self, job_id: str, interval: float = TAIL_INTERVAL_S) -> Any:
        """A plain generator of new output until the job ends (the CLI's ``--follow``)."""
        offset = 0
        while True:
            text, offset, ended = self._log_chunk(job_id, offset)
            if text:
                yield text
            elif ended:
                return
            else:
                time.sleep(interval)

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        """New output as it comes, until the job ends (``async for lines in ...``)."""
        offset = 0
        while True:
            text, offset, ended = await asyncio.to_thread(self._log_chunk, job_id, offset)
            if text:
                yield text
            elif ended:
                return
            else:
                await asyncio.sleep(TAIL_INTERVAL_S)
