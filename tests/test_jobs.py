"""Ray's Jobs API: the head's job table as a state machine, then real jobs on a real head
(submit, logs, stop, surviving the client, refused without the secret)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import psutil
import pytest
import zmq
from cli_helpers import Head, started_head
from conftest import _SHARED
from helpers import alive_pids, wait_for_condition, wait_for_pids_gone

from rayjupyter.core import protocol
from rayjupyter.core import protocol as P
from rayjupyter.core.jobs import (
    FORGET,
    SIGNAL,
    START,
    InvalidJobTransition,
    JobManager,
    JobStatus,
)
from rayjupyter.job_submission import JobSubmissionClient
from rayjupyter.util import state

pytestmark = pytest.mark.timeout(90)

# ------------------------------------------------------------------ the state machine


def test_a_job_runs_then_succeeds_or_fails_by_its_exit_code():
    jobs = JobManager()
    [(kind, record)] = jobs.submit("a", "python x.py", now=1.0)
    assert kind == START and record.status is JobStatus.PENDING
    assert jobs.started("a", pid=100, now=2.0) == []
    assert record.status is JobStatus.RUNNING
    jobs.exited("a", 0, now=3.0)
    assert record.status is JobStatus.SUCCEEDED and record.exit_code == 0
    jobs.submit("b", "false", now=4.0)
    jobs.started("b", pid=101, now=4.0)
    jobs.exited("b", 2, now=5.0)
    info = jobs.jobs["b"].row("node")
    assert info.status == "FAILED" and "exited with code 2" in (info.message or "")
    assert info.error_type == "JOB_ENTRYPOINT_COMMAND_ERROR" and info.driver_exit_code == 2
    assert info.start_time == 4000 and info.end_time == 5000
    jobs.validate()


def test_stop_sends_sigterm_then_sigkill_after_the_grace():
    jobs = JobManager(stop_grace_s=3.0)
    jobs.submit("a", "sleep 100", now=0.0)
    jobs.started("a", pid=100, now=0.0)
    was_live, out = jobs.stop("a", now=10.0)
    assert was_live and [(k, sig) for k, _, sig in out] == [(SIGNAL, signal.SIGTERM)]
    assert jobs.tick(now=12.0) == []
    [(kind, record, sig)] = jobs.tick(now=13.0)
    assert kind == SIGNAL and sig == signal.SIGKILL
    assert jobs.tick(now=20.0) == []  # once
    jobs.exited("a", -9, now=20.0)
    assert record.status is JobStatus.STOPPED
    assert jobs.stop("a", now=21.0) == (False, [])  # ended: as Ray, stop_job answers False
    jobs.validate()


def test_a_stop_before_the_process_started_signals_it_once_it_has():
    jobs = JobManager()
    jobs.submit("a", "sleep 100", now=0.0)
    assert jobs.stop("a", now=1.0) == (True, [])
    [(kind, _, sig)] = jobs.started("a", pid=7, now=1.5)
    assert kind == SIGNAL and sig == signal.SIGTERM


def test_the_table_is_bounded_and_forgets_the_oldest_ended_job_first():
    jobs = JobManager(max_jobs=2)
    jobs.submit("a", "x", now=0.0)
    jobs.started("a", pid=1, now=0.0)
    jobs.submit("b", "x", now=0.0)
    with pytest.raises(ValueError, match="RAYJUPYTER_MAX_JOBS"):
        jobs.submit("c", "x", now=0.0)  # both live: nothing may go
    jobs.exited("a", 0, now=1.0)
    out = jobs.submit("c", "x", now=2.0)
    assert [(kind, r.submission_id) for kind, r in out] == [(FORGET, "a"), (START, "c")]
    assert list(jobs.jobs) == ["b", "c"]
    jobs.validate()


def test_refusals_name_the_fix():
    jobs = JobManager()
    jobs.submit("a", "x", now=0.0)
    with pytest.raises(ValueError, match="already exists"):
        jobs.submit("a", "x", now=0.0)
    with pytest.raises(ValueError, match="empty"):
        jobs.submit("b", "  ", now=0.0)
    for bad in ("../../etc/x", "a/b", ".hidden", "", "x" * 129):
        with pytest.raises(ValueError, match="is not allowed"):
            jobs.submit(bad, "true", now=0.0)
    with pytest.raises(ValueError, match="stop it"):
        jobs.delete("a")
    jobs.start_failed("a", "no such file", now=1.0)
    assert jobs.jobs["a"].error_type == "JOB_ENTRYPOINT_COMMAND_START_ERROR"
    assert jobs.delete("a")[0][0] == FORGET and not jobs.jobs
    with pytest.raises(KeyError):
        jobs.delete("a")
    jobs.submit("c", "x", now=0.0)
    with pytest.raises(InvalidJobTransition, match="PENDING -> SUCCEEDED"):
        jobs._move(jobs.jobs["c"], JobStatus.SUCCEEDED, "")


# ------------------------------------------------------------------ real jobs on a real head


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    with started_head(tmp_path_factory.mktemp("home")) as started:
        _SHARED.roots, _SHARED.active = {started.pid}, True
        try:
            yield started
        finally:
            _SHARED.roots, _SHARED.active = set(), False


@pytest.fixture
def client(head: Head) -> Iterator[JobSubmissionClient]:
    with JobSubmissionClient(head.connect) as jobs:
        yield jobs


def wait_until_ended(client: JobSubmissionClient, submission_id: str, timeout: float = 60):
    wait_for_condition(lambda: client.get_job_status(submission_id).is_terminal(), timeout=timeout)
    return client.get_job_info(submission_id)


SCRIPT = """
import os
import rayjupyter as rj

rj.init()  # attaches to the cluster that runs the job (RAYJUPYTER_ADDRESS)

@rj.remote
def where():
    import helper  # from the job's working_dir, on the worker too
    return helper.VALUE, os.environ["GREETING"]

print("started in its working_dir:", os.path.exists("helper.py"))
print("task says", rj.get(where.remote()))
print("job id", rj.get_runtime_context().get_job_id())
"""


def test_submit_runs_in_its_working_dir_with_its_env_and_attaches(head, client, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "script.py").write_text(SCRIPT)
    (work / "helper.py").write_text("VALUE = 42\n")
    submission_id = client.submit_job(
        entrypoint="python script.py",
        runtime_env={"working_dir": str(work), "env_vars": {"GREETING": "hi"}},
        metadata={"owner": "test"},
    )
    assert submission_id.startswith("raysubmit_")
    info = wait_until_ended(client, submission_id)
    logs = client.get_job_logs(submission_id)
    assert info.status == JobStatus.SUCCEEDED, logs
    assert info.status.is_terminal() and info.driver_exit_code == 0
    assert "started in its working_dir: True" in logs
    assert "task says (42, 'hi')" in logs
    assert info.metadata == {"owner": "test"} and info.entrypoint == "python script.py"
    assert info.runtime_env["env_vars"] == {"GREETING": "hi"}
    # the driver it started is the job's driver: its job id is on the row
    job_id = logs.split("job id ")[1].split()[0]
    assert info.job_id == job_id
    assert any(j.submission_id == submission_id for j in client.list_jobs())
    # the state API lists it too, by address, with attribute access
    rows = state.list_jobs(address=head.connect, filters=[("type", "=", "SUBMISSION")])
    assert any(r.submission_id == submission_id and r["status"] == "SUCCEEDED" for r in rows)
    assert state.get_job(submission_id, address=head.connect).job_id == job_id
    assert client.delete_job(submission_id)
    with pytest.raises(RuntimeError, match="does not exist"):
        client.get_job_info(submission_id)


def test_a_failing_entrypoint_fails_with_its_output_kept(client):
    submission_id = client.submit_job(
        entrypoint="python -c \"import sys; print('about to fail'); sys.exit(3)\""
    )
    info = wait_until_ended(client, submission_id)
    assert info.status == "FAILED" and info.driver_exit_code == 3
    assert "exited with code 3" in info.message
    assert client.get_job_logs(submission_id) == "about to fail\n"
    assert client.stop_job(submission_id) is False  # ended already


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *a: print("ignoring SIGTERM", flush=True))
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
print("child", child.pid, flush=True)
while True:
    time.sleep(0.1)
"""


def test_stop_terminates_then_kills_the_whole_process_group(client, tmp_path):
    (tmp_path / "stubborn.py").write_text(STUBBORN)
    # exec: the python process itself leads the group (no shell between), so its SIGKILL shows
    submission_id = client.submit_job(entrypoint=f"exec python {tmp_path / 'stubborn.py'}")
    wait_for_condition(lambda: "child" in client.get_job_logs(submission_id), timeout=30)
    child = int(client.get_job_logs(submission_id).split("child ")[1].split()[0])
    entry = client.get_job_info(submission_id).driver_pid
    assert client.get_job_status(submission_id) == JobStatus.RUNNING
    assert client.stop_job(submission_id) is True
    info = wait_until_ended(client, submission_id, timeout=30)
    assert info.status == JobStatus.STOPPED and info.driver_exit_code == -signal.SIGKILL
    assert "ignoring SIGTERM" in client.get_job_logs(submission_id)  # SIGTERM came first
    wait_for_pids_gone([child, entry], timeout=10)  # the child it started went too


def test_logs_stream_while_the_job_runs(client, tmp_path):
    go = tmp_path / "go"
    submission_id = client.submit_job(
        entrypoint=f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second"
    )

    async def tail() -> list[str]:
        chunks = []
        async for chunk in client.tail_job_logs(submission_id):
            chunks.append(chunk)
            go.touch()  # the job prints its second line only once the first has come
        return chunks

    chunks = asyncio.run(tail())
    assert chunks == ["first\n", "second\n"]  # as printed, while it ran
    assert client.get_job_status(submission_id) == JobStatus.SUCCEEDED


def test_a_job_survives_the_client_that_submitted_it(head, client, tmp_path):
    go, marker = tmp_path / "go", tmp_path / "done"
    entrypoint = f"while [ ! -e {go} ]; do sleep 0.05; done; echo finished; touch {marker}"
    submitter = textwrap.dedent(
        f"""
        from rayjupyter.job_submission import JobSubmissionClient
        jobs = JobSubmissionClient({head.connect!r})
        print(jobs.submit_job(entrypoint={entrypoint!r}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", submitter], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    submission_id = done.stdout.strip().splitlines()[-1]
    assert client.get_job_status(submission_id) == JobStatus.RUNNING  # its submitter is gone
    go.touch()
    info = wait_until_ended(client, submission_id)
    assert info.status == JobStatus.SUCCEEDED and marker.exists()
    assert client.get_job_logs(submission_id) == "finished\n"


def test_refused_without_the_secret(head, client, tmp_path):
    before = len(client.list_jobs())
    hostport = head.connect.rpartition("@")[2]
    with pytest.raises(ConnectionError):
        JobSubmissionClient(f"rayjupyter://not-the-secret@{hostport}", timeout=5)
    with pytest.raises(ValueError, match="HTTP address"):
        JobSubmissionClient(f"http://{hostport}")
    # a submission sent straight to the port, without the secret's handshake: no answer,
    # no job (nothing is even unpickled before the secret is proven)
    marker = tmp_path / "never"
    context = zmq.Context()
    try:
        raw = context.socket(zmq.DEALER)
        raw.linger = 0
        raw.connect(f"tcp://{hostport}")
        raw.send(protocol.dumps([P.SubmitJob(1, "", f"touch {marker}", {}, "", {})]))
        assert raw.poll(1000) == 0  # bounded wait for an answer that must not come
        raw.close(0)
    finally:
        context.term()
    assert len(client.list_jobs()) == before and not marker.exists()


def test_unsupported_options_are_refused_not_ignored(client, tmp_path):
    with pytest.raises(ValueError, match="entrypoint_num_cpus"):
        client.submit_job(entrypoint="true", entrypoint_num_cpus=1)
    with pytest.raises(ValueError, match="pip"):
        client.submit_job(entrypoint="true", runtime_env={"pip": ["requests"]})
    with pytest.raises(ValueError, match="is not allowed"):  # it names a file on the head
        client.submit_job(entrypoint="true", submission_id="../../escape")
    with pytest.raises(ValueError, match="already exists"):
        first = client.submit_job(entrypoint="true")
        client.submit_job(entrypoint="true", submission_id=first)
    wait_until_ended(client, first)


def test_the_head_stopping_takes_its_jobs_with_it(tmp_path):
    with started_head(tmp_path / "home") as own, JobSubmissionClient(own.connect) as jobs:
        submission_id = jobs.submit_job(entrypoint="sleep 300")
        wait_for_condition(lambda: jobs.get_job_info(submission_id).driver_pid, timeout=10)
        pid = jobs.get_job_info(submission_id).driver_pid
        assert alive_pids([pid])
    wait_for_pids_gone([pid], timeout=10)


def test_the_entrypoint_is_killed_when_the_head_is(tmp_path):
    with started_head(tmp_path / "home") as own:
        with JobSubmissionClient(own.connect) as jobs:
            submission_id = jobs.submit_job(entrypoint="sleep 300")
            wait_for_condition(lambda: jobs.get_job_info(submission_id).driver_pid, timeout=10)
            pid = jobs.get_job_info(submission_id).driver_pid
        supervisor = psutil.Process(pid)
        # dash runs `sleep` as a child of the shell: the whole group must go, not only sh
        wait_for_condition(
            lambda: any(p.name() == "sleep" for p in supervisor.children(recursive=True)),
            timeout=10,
        )
        below = [p.pid for p in psutil.Process(own.pid).children(recursive=True)]
        os.kill(own.pid, signal.SIGKILL)
        wait_for_pids_gone([own.pid, *below], timeout=15)  # workers, entrypoint, its sleep


def test_a_node_that_is_not_the_head_says_where_the_head_is(head, client):
    joined = head.cli("start", "--address", head.connect, "--num-cpus", "1")
    assert joined.returncode == 0, joined.stderr
    records = [json.loads(p.read_text()) for p in (head.cli.home / "started").glob("*.json")]
    node = next(r for r in records if r["role"] == "node")
    try:
        secret = head.connect[len("rayjupyter://") :].rpartition("@")[0]
        elsewhere = JobSubmissionClient(f"rayjupyter://{secret}@{node['address']}")
        with elsewhere, pytest.raises(RuntimeError, match="not the head: submit jobs to the"):
            elsewhere.submit_job(entrypoint="true")
    finally:
        os.kill(node["pid"], signal.SIGTERM)
        wait_for_pids_gone([node["pid"]], timeout=15)
        (head.cli.home / "started" / f"{node['pid']}.json").unlink()


def test_a_jobs_log_is_bounded_and_says_so(tmp_path):
    limit = {"RAYJUPYTER_JOB_LOG_MAX_BYTES": "1000"}
    with (
        started_head(tmp_path / "home", env=limit) as own,
        JobSubmissionClient(own.connect) as jobs,
    ):
        submission_id = jobs.submit_job(entrypoint="yes yy | head -c 20000")
        assert wait_until_ended(jobs, submission_id).status == JobStatus.SUCCEEDED
        text = jobs.get_job_logs(submission_id)
    kept, _, note = text.partition("\n[rayjupyter: ")
    assert kept.startswith("yy\nyy\n") and len(kept) <= 1000
    assert "reached 1000 bytes" in note and "RAYJUPYTER_JOB_LOG_MAX_BYTES" in note
