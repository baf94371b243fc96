"""The Jobs API's messages (client -> head), defined once here and framed by ``protocol``.

Ray's Jobs API travels over the cluster's authenticated transport, never an open HTTP port.
Each message is answered with ``protocol.Reply(request_id, value)``; the head's
``node_jobs.NodeJobs`` handles them, and a node that is not the head answers with an error
naming it. Kept apart from ``protocol.py`` only for size: ``protocol.CLIENT_TO_NODE`` lists
them, so they share its kinds, its version and its framing.
"""

from typing import Any, NamedTuple  # (no __future__ annotations: see protocol.py)


class SubmitJob(NamedTuple):
    """Run ``entrypoint`` (a shell command) on the head: answered with the submission id."""

    request_id: int
    submission_id: str  # "" for a new one
    entrypoint: str
    runtime_env: dict[str, Any]  # as the user gave it (shown back by get_job_info)
    env: str  # digest of the runtime_env registered beforehand ("" for none)
    metadata: dict[str, str]


class GetJobInfo(NamedTuple):
    """One job as ``read_models.JobRow``, or a RuntimeError if there is none."""

    request_id: int
    submission_id: str


class ListJobs(NamedTuple):
    """Every job the head remembers: a list of ``read_models.JobRow``."""

    request_id: int


class StopJob(NamedTuple):
    """SIGTERM to the job's process group, SIGKILL later: True if it was live."""

    request_id: int
    submission_id: str


class DeleteJob(NamedTuple):
    """Forget an ended job and its log: True once deleted."""

    request_id: int
    submission_id: str


class GetJobLogs(NamedTuple):
    """The job's output from byte ``offset``: (text, next offset, job ended)."""

    request_id: int
    submission_id: str
    offset: int
    max_bytes: int  # at most this much per answer


#: the Jobs API's messages, handled by the head's job part
JOB_MESSAGES = (SubmitJob, GetJobInfo, ListJobs, StopJob, DeleteJob, GetJobLogs)
