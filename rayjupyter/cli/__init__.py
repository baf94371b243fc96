"""The ``rayjupyter`` command: run a cluster across machines and look into it from a shell.

- ``start | stop | status`` (``cluster.py``): a head, nodes joining it, like ``ray start``;
- ``list | get | summary | logs | memory | timeline | stack | kill-actor``
  (``state_cmds.py``): the state API, with Ray's command and option names;
- ``job submit | status | logs | stop | list | delete`` (``job_cmds.py``): Ray's Jobs CLI.

Every failure is one line on stderr that names the fix, and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys

from rayjupyter.cli import cluster, job_cmds, state_cmds
from rayjupyter.cli.cluster import (
    DEFAULT_PORT,
    cluster_file,
    render_status,
    split_address,
    state_dir,
)
from rayjupyter.cli.output import CliError

__all__ = [
    "DEFAULT_PORT",
    "CliError",
    "build_parser",
    "cluster_file",
    "main",
    "render_status",
    "split_address",
    "state_dir",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayjupyter", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cluster.add_commands(commands)
    state_cmds.add_commands(commands)
    job_cmds.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except CliError as exc:
        name = args.command + (f" {args.job_command}" if args.command == "job" else "")
        print(f"rayjupyter {name}: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
