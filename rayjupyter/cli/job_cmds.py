"""``rayjupyter job submit | status | logs | stop | list | delete``: Ray's ``ray job`` CLI
over ``rayjupyter.job_submission.JobSubmissionClient`` (the cluster's authenticated port)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rayjupyter.cli.output import CliError, add_connection_options, add_format_option, show
from rayjupyter.job_submission import JobStatus, JobSubmissionClient

JOB_COLUMNS = ["submission_id", "job_id", "status", "entrypoint", "message", "driver_exit_code"]


@contextmanager
def _jobs(args: argparse.Namespace) -> Iterator[JobSubmissionClient]:
    from rayjupyter.core.addresses import AddressError

    try:
        client = JobSubmissionClient(args.address, timeout=args.timeout)
    except (AddressError, ConnectionError, ValueError) as exc:
        raise CliError(str(exc)) from None
    try:
        yield client
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    finally:
        client.close()


def _runtime_env(args: argparse.Namespace) -> dict[str, Any] | None:
    env: dict[str, Any] = {}
    if args.runtime_env:
        text = Path(args.runtime_env).read_text()
        try:
            import yaml  # type: ignore[import-untyped]

            loaded = yaml.safe_load(text)
        except ImportError:
            loaded = json.loads(text)
        if not isinstance(loaded, dict):
            raise CliError(f"--runtime-env {args.runtime_env}: expected a mapping")
        env.update(loaded)
    if args.runtime_env_json:
        try:
            loaded = json.loads(args.runtime_env_json)
        except json.JSONDecodeError as exc:
            raise CliError(f"--runtime-env-json is not JSON ({exc})") from None
        if not isinstance(loaded, dict):
            raise CliError("--runtime-env-json must be a JSON object")
        env.update(loaded)
    if args.working_dir:
        env["working_dir"] = args.working_dir
    return env or None


def _follow(client: JobSubmissionClient, submission_id: str) -> None:
    for text in client.follow_job_logs(submission_id):
        sys.stdout.write(text)
        sys.stdout.flush()


def cmd_submit(args: argparse.Namespace) -> int:
    entrypoint = args.entrypoint
    if entrypoint and entrypoint[0] == "--":
        entrypoint = entrypoint[1:]
    if not entrypoint:
        raise CliError(
            "give the command to run after --, e.g. `rayjupyter job submit -- python x.py`"
        )
    command = shlex.join(entrypoint) if len(entrypoint) > 1 else entrypoint[0]
    metadata = json.loads(args.metadata_json) if args.metadata_json else None
    with _jobs(args) as client:
        submission_id = client.submit_job(
            entrypoint=command,
            runtime_env=_runtime_env(args),
            submission_id=args.submission_id,
            metadata=metadata,
        )
        print(f"Job '{submission_id}' submitted successfully.", flush=True)
        if args.no_wait:
            print("Follow its logs with:")
            print(f"    rayjupyter job logs {submission_id} --follow")
            print("Its status with:")
            print(f"    rayjupyter job status {submission_id}")
            return 0
        print(f"Tailing the logs of '{submission_id}' until it ends (Ctrl-C leaves it running):")
        print("-" * 40, flush=True)
        try:
            _follow(client, submission_id)
        except KeyboardInterrupt:
            print(f"\nStopped following; job '{submission_id}' goes on.")
            return 0
        status = client.get_job_status(submission_id)
        print("-" * 40)
        print(f"Job '{submission_id}' {status.value.lower()}: "
              f"{client.get_job_info(submission_id).message}")  # fmt: skip
    return 0 if status is JobStatus.SUCCEEDED else 1


def cmd_status(args: argparse.Namespace) -> int:
    with _jobs(args) as client:
        info = client.get_job_info(args.submission_id)
    if args.format in ("json", "yaml"):
        print(show([info], [], args.format))
        return 0
    print(f"Status for job '{args.submission_id}': {info.status}")
    if info.message:
        print(f"Status message: {info.message}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    with _jobs(args) as client:
        if not args.follow:
            sys.stdout.write(client.get_job_logs(args.submission_id))
            return 0
        try:
            _follow(client, args.submission_id)
        except KeyboardInterrupt:
            return 130
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    with _jobs(args) as client:
        live = client.stop_job(args.submission_id)
        if not live:
            print(f"Job '{args.submission_id}' had ended already.")
            return 0
        print(f"Stop asked of job '{args.submission_id}'.", flush=True)
        if args.no_wait:
            return 0
        deadline = time.monotonic() + args.timeout
        while not client.get_job_status(args.submission_id).is_terminal():
            if time.monotonic() > deadline:
                raise CliError(f"job '{args.submission_id}' still runs after {args.timeout:g} s")
            time.sleep(0.1)
        print(
            f"Job '{args.submission_id}' {client.get_job_status(args.submission_id).value.lower()}."
        )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _jobs(args) as client:
        rows = client.list_jobs()
    print(show(rows, JOB_COLUMNS, args.format))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _jobs(args) as client:
        client.delete_job(args.submission_id)
    print(f"Job '{args.submission_id}' deleted.")
    return 0


def add_commands(commands: Any) -> None:
    job = commands.add_parser("job", help="submit, watch and stop jobs (Ray's Jobs API)")
    jobs = job.add_subparsers(dest="job_command", required=True)

    submit = jobs.add_parser("submit", help="run a command on the head: ... submit -- python x.py")
    submit.add_argument("--submission-id", help="its id (default: a new raysubmit_...)")
    submit.add_argument("--working-dir", help="a directory to upload; the command starts in it")
    submit.add_argument("--runtime-env", help="a runtime_env as a YAML or JSON file")
    submit.add_argument("--runtime-env-json", help="a runtime_env as JSON")
    submit.add_argument("--metadata-json", help="metadata as a JSON object of strings")
    submit.add_argument("--no-wait", action="store_true", help="return once it is submitted")
    submit.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- then the command")
    add_connection_options(submit)
    submit.set_defaults(run=cmd_submit)

    for name, run, text in (
        ("status", cmd_status, "a job's status"),
        ("logs", cmd_logs, "a job's output"),
        ("stop", cmd_stop, "stop a job (SIGTERM, then SIGKILL)"),
        ("delete", cmd_delete, "forget an ended job and its log"),
    ):
        sub = jobs.add_parser(name, help=text)
        sub.add_argument("submission_id")
        add_connection_options(sub)
        sub.set_defaults(run=run)
        if name == "logs":
            sub.add_argument("--follow", "-f", action="store_true", help="until the job ends")
        if name == "stop":
            sub.add_argument("--no-wait", action="store_true", help="do not wait for its end")
        if name == "status":
            add_format_option(sub)

    listing = jobs.add_parser("list", help="every job the head remembers")
    add_format_option(listing)
    add_connection_options(listing)
    listing.set_defaults(run=cmd_list)
