"""The head's job part (``Node.jobs``): Ray's Jobs API carried out over real processes.

``jobs.JobManager`` decides; this shell starts each entrypoint as ``sh -c ENTRYPOINT``
under a small supervisor (``job_supervisor.py``) that leads a process group of its own
(so stopping the job reaches its children), with the cluster's address and secret in its
environment (``rj.init()`` inside attaches to this cluster), its output through a pipe
the node's loop reads into a log file (bounded: ``JOB_LOG_MAX_ENV``), and a pidfd that
tells the loop when it exits. The group dies with the head (the supervisor hears of it
through PR_SET_PDEATHSIG) and is stopped when the head stops: no job outlives its
cluster. Requests reach it only through the node's authenticated transport.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rayjupyter.core import protocol as P
from rayjupyter.core.config import JOB_RUNTIME_ENV_VAR, MAX_JOBS_ENV, SECRET_ENV, session_dir
from rayjupyter.core.node_io import ClientInfo, NodePoll
from rayjupyter.core.node_runtime_env import ENV_PATHS_VAR, WORKING_DIR_VAR
from rayjupyter.core.runtime_env import WORKER_ENV_VAR

# jobs.py (the state machine) and subprocess load with the first Jobs API message: most
# clusters never see one, and they cost every node's start ~2 ms.
if TYPE_CHECKING:
    import subprocess

    from rayjupyter.core.jobs import Instruction, JobManager, JobRecord
    from rayjupyter.core.read_models import JobRow  # (jobs.py builds them, when asked)

JOB_LOG_MAX_ENV = "RAYJUPYTER_JOB_LOG_MAX_BYTES"
JOB_LOG_MAX_BYTES = 256 << 20  # a job's log file stops growing here, and says so
ADDRESS_ENV = "RAYJUPYTER_ADDRESS"
LOOK_INTERVAL_S = 0.1
#: leads each job's process group: runs the entrypoint, and kills the group if the head dies
_SUPERVISOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "job_supervisor.py")


@dataclass
class JobProcess:
    """A running entrypoint's descriptors and its log."""

    process: subprocess.Popen[bytes]
    pipe: int  # its stdout and stderr
    pidfd: int
    log: Any  # the open log file (binary, unbuffered)
    written: int = 0
    truncated: bool = False


class NodeJobs:
    """The Jobs API's messages, on the head."""

    def __init__(
        self,
        *,
        node_id: bytes,
        address: str,
        secret: str,
        session: str,
        is_head: Callable[[], bool],
        head_address: str,
        poll: NodePoll,
        clients: dict[bytes, ClientInfo],
        envs: Any,  # node_runtime_env.NodeRuntimeEnv: registered envs and their packages
        send: Callable[[bytes, Any], None],
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.secret = secret
        self.is_head = is_head
        self.head_address = head_address
        self.poll = poll
        self.clients = clients
        self.envs = envs
        self.send = send
        self._manager: JobManager | None = None
        if MAX_JOBS_ENV in os.environ:
            self.manager  # noqa: B018 - a bad setting stops the node's start, as a bound does
        self.processes: dict[str, JobProcess] = {}
        self.last_look = 0.0  # when tick last looked for the entrypoints' drivers
        self.log_dir = os.path.join(session_dir(session), "jobs")
        limit = os.environ.get(JOB_LOG_MAX_ENV, "")
        self.log_max = int(limit) if limit.isdigit() else JOB_LOG_MAX_BYTES

    @property
    def manager(self) -> JobManager:
        """The jobs' state machine, made at the first Jobs API message."""
        if self._manager is None:
            from rayjupyter.core.jobs import JobManager, max_jobs_from_env

            self._manager = JobManager(max_jobs=max_jobs_from_env())
        return self._manager

    # ------------------------------------------------------------------ handlers

    def on_job_message(self, client: bytes, message: Any) -> None:
        """Every message of ``P.JOB_MESSAGES``: answered with its value or an exception."""
        try:
            if not self.is_head():
                raise RuntimeError(
                    f"node {self.address} is not the head: submit jobs to the head at "
                    f"{self.head_address}"
                )
            value = self._answer(client, message)
        except (ValueError, RuntimeError) as exc:
            value = exc
        except Exception as exc:  # the asker hears of it at once, rather than timing out
            value = RuntimeError(f"the head could not answer {type(message).__name__}: {exc!r}")
        self.send(client, P.Reply(message.request_id, value))

    def _answer(self, client: bytes, message: Any) -> Any:
        now = time.time()
        if isinstance(message, P.SubmitJob):
            if message.env and message.env not in self.envs.runtime_envs:
                raise ValueError(f"the job's runtime_env {message.env} is not registered")
            from rayjupyter.core.jobs import new_submission_id

            submission_id = message.submission_id or new_submission_id()
            self.execute(
                self.manager.submit(
                    submission_id,
                    message.entrypoint,
                    runtime_env=message.runtime_env,
                    env=message.env,
                    metadata=message.metadata,
                    now=now,
                )
            )
            return submission_id
        if isinstance(message, P.ListJobs):
            return self.rows()
        record = self._record(message.submission_id)
        if isinstance(message, P.GetJobInfo):
            return self.row(record)
        if isinstance(message, P.StopJob):
            was_live, instructions = self.manager.stop(record.submission_id, now)
            self.execute(instructions)
            return was_live
        if isinstance(message, P.DeleteJob):
            self.execute(self.manager.delete(record.submission_id))
            return True
        if isinstance(message, P.GetJobLogs):
            return self.read_log(record, message.offset, message.max_bytes)
        raise ValueError(f"no answer for {type(message).__name__}")

    def _record(self, submission_id: str) -> JobRecord:
        record = self.manager.jobs.get(submission_id)
        if record is None:
            raise RuntimeError(f"Job {submission_id} does not exist.")
        return record

    # ------------------------------------------------------------------ rows

    def rows(self) -> list[JobRow]:
        """Every submitted job the head remembers, oldest first."""
        if self._manager is None:
            return []
        return [self.row(record) for record in self.manager.jobs.values()]

    def row(self, record: JobRecord) -> JobRow:
        if record.job_id is None and record.pid and record.submission_id in self.processes:
            record.job_id = self.driver_job_of(record)
        return record.row(self.node_id.hex())

    def driver_job_of(self, record: JobRecord) -> str | None:
        """The job id (hex client id) of the driver the entrypoint started, if one connected:
        a connected driver whose process descends from the entrypoint's."""
        if not record.pid:
            return None
        for client, info in self.clients.items():
            if info.kind == "driver" and _descends_from(info.pid, record.pid):
                return client.hex()
        return None

    # ------------------------------------------------------------------ instructions

    def execute(self, instructions: list[Instruction]) -> None:
        from rayjupyter.core.jobs import FORGET, SIGNAL, START

        for instruction in instructions:
            kind, record = instruction[0], instruction[1]
            if kind == START:
                self._start(record)
            elif kind == SIGNAL:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(record.pid, instruction[2])
            elif kind == FORGET:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.log_path(record.submission_id))

    def tick(self) -> None:
        """Once per loop turn: SIGKILL jobs that ignored their SIGTERM for too long; note
        the driver each running entrypoint started (its job id), a few times a second."""
        if not self.processes:
            return
        now = time.time()
        self.execute(self.manager.tick(now))
        if now - self.last_look < LOOK_INTERVAL_S:
            return
        self.last_look = now
        for submission_id in self.processes:
            record = self.manager.jobs.get(submission_id)
            if record is not None and record.job_id is None:
                record.job_id = self.driver_job_of(record)

    def driver_arrived(self, client: bytes) -> None:
        """A driver connected: if a running entrypoint started it, it is that job's driver
        (looked at now, not only by ``tick``, which a short-lived driver may slip between)."""
        for submission_id in self.processes:
            record = self.manager.jobs.get(submission_id)
            if record is not None and record.job_id is None:
                record.job_id = self.driver_job_of(record)

    def pids(self) -> set[int]:
        """The running entrypoints (children of the node whose exit ``_on_exit`` collects)."""
        return {running.process.pid for running in self.processes.values()}

    def log_path(self, submission_id: str) -> str:
        return os.path.join(self.log_dir, f"{submission_id}.log")

    def _environment(self, record: JobRecord) -> tuple[dict[str, str], str | None]:
        """The entrypoint's variables and working directory (its runtime_env's)."""
        env = dict(os.environ)
        connect = f"rayjupyter://{self.secret}@{self.address}"
        env.update({ADDRESS_ENV: connect, "RAY_ADDRESS": connect, SECRET_ENV: self.secret})
        env["RAY_JOB_SUBMISSION_ID"] = record.submission_id  # Ray sets it too
        env["PYTHONUNBUFFERED"] = "1"  # logs stream as they are printed
        # `python` in the entrypoint is the head's Python (its packages, rayjupyter's)
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
        cwd = None
        if record.env:
            variables = self.envs.env_process_vars(record.env)
            paths = json.loads(variables.pop(ENV_PATHS_VAR, "[]"))
            cwd = variables.pop(WORKING_DIR_VAR, "") or None
            # the driver the job starts runs its tasks in the job's env (api.init reads it)
            env[JOB_RUNTIME_ENV_VAR] = variables.pop(WORKER_ENV_VAR)
            env.update(variables)
            env["PYTHONPATH"] = os.pathsep.join(
                [*paths, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
            )
        return env, cwd

    def _start(self, record: JobRecord) -> None:
        import subprocess

        now = time.time()
        read_end = write_end = -1
        log = None
        try:
            os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
            log = open(self.log_path(record.submission_id), "wb", buffering=0)  # noqa: SIM115
            env, cwd = self._environment(record)
            read_end, write_end = os.pipe()
            process = subprocess.Popen(
                [sys.executable, _SUPERVISOR, record.entrypoint, str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end,
                cwd=cwd,
                env=env,
                start_new_session=True,  # its own process group: stop reaches its children
            )
        except (OSError, KeyError, ValueError) as exc:
            for fd in (read_end, write_end):
                if fd >= 0:
                    os.close(fd)
            if log is not None:
                log.close()
            self.execute(self.manager.start_failed(record.submission_id, str(exc), now))
            return
        os.close(write_end)
        pidfd = os.pidfd_open(process.pid)
        running = JobProcess(process, read_end, pidfd, log)
        self.processes[record.submission_id] = running
        self.poll.watch(read_end, lambda fd: self._on_output(record.submission_id))
        self.poll.handle(pidfd, lambda fd: self._on_exit(record.submission_id))
        self.execute(self.manager.started(record.submission_id, process.pid, now))

    def _on_output(self, submission_id: str) -> bool:
        """Read what the entrypoint printed into its log; False at EOF."""
        running = self.processes.get(submission_id)
        if running is None:
            return False
        for _ in range(64):  # at most 4 MB a turn: the loop has other work
            if running.pipe < 0:
                return False
            try:
                data = os.read(running.pipe, 65536)
            except BlockingIOError:
                return True
            if not data:
                self.poll.unwatch(running.pipe)
                running.pipe = -1
                return False
            self._append(running, data)
        return True

    def _append(self, running: JobProcess, data: bytes) -> None:
        """Into the log, up to its bound; the first byte past it writes a line saying so."""
        room = max(self.log_max - running.written, 0)
        if room:
            running.log.write(data[:room])
            running.written += min(room, len(data))
        if len(data) > room and not running.truncated:
            running.truncated = True
            running.log.write(
                f"\n[rayjupyter: the job's log reached {self.log_max} bytes; later output "
                f"is dropped (raise {JOB_LOG_MAX_ENV})]\n".encode()
            )

    def _on_exit(self, submission_id: str) -> None:
        running = self.processes[submission_id]
        code = running.process.wait()
        # everything it wrote is in the pipe by now: read it before the job counts as ended
        # (a child it left behind that still holds the pipe is not waited for)
        if running.pipe >= 0 and self._on_output(submission_id):
            self.poll.unwatch(running.pipe)
        self.poll.unwatch(running.pidfd)
        running.log.close()
        del self.processes[submission_id]
        record = self.manager.jobs.get(submission_id)
        if record is not None and record.stop_requested_at:
            # what the entrypoint started goes with it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(running.process.pid, signal.SIGKILL)
        self.execute(self.manager.exited(submission_id, code, time.time()))

    def read_log(self, record: JobRecord, offset: int, max_bytes: int) -> tuple[str, int, bool]:
        """Bytes of the log from ``offset`` (whole lines where it can), the next offset, and
        whether the job has ended (nothing more will come once it is read to the end)."""
        ended = record.status.is_terminal() and record.submission_id not in self.processes
        try:
            with open(self.log_path(record.submission_id), "rb") as log:
                log.seek(max(0, offset))
                data = log.read(max(1, min(max_bytes, 8 << 20)))
        except FileNotFoundError:
            data = b""
        if data and not ended and b"\n" in data and not data.endswith(b"\n"):
            data = data[: data.rindex(b"\n") + 1]  # a line still being written waits
        return data.decode(errors="replace"), offset + len(data), ended

    def shutdown(self) -> None:
        """The head stops: every job's process group goes with it."""
        for running in self.processes.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(running.process.pid, signal.SIGKILL)
        for running in self.processes.values():
            with contextlib.suppress(ChildProcessError):
                running.process.wait()
            running.log.close()
        self.processes.clear()


def _descends_from(pid: int, ancestor: int) -> bool:
    for _ in range(16):
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat") as stat:
                pid = int(stat.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid <= 1:
            return False
    return False
