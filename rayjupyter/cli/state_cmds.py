"""``rayjupyter list | summary | get | logs | memory | timeline | stack | kill-actor``: the
state API from a shell, with Ray's command and option names (``--filter``, ``--limit``,
``--detail``, ``--format``, ``--address``, ``--node-ip-address``...)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from rayjupyter.cli.output import (
    CliError,
    add_connection_options,
    add_format_option,
    connected,
    dump,
    parse_filters,
    show,
    table,
)

#: resource (as Ray's CLI names it) -> (state API kind, the table's columns)
RESOURCES: dict[str, tuple[str, list[str]]] = {
    "tasks": (
        "tasks",
        [
            "task_id",
            "attempt_number",
            "name",
            "state",
            "job_id",
            "actor_id",
            "type",
            "func_or_class_name",
            "node_id",
            "worker_pid",
            "error_type",
        ],
    ),
    "actors": (
        "actors",
        ["actor_id", "class_name", "state", "job_id", "name", "node_id", "pid", "ray_namespace"],
    ),
    "objects": (
        "objects",
        [
            "object_id",
            "object_size",
            "task_status",
            "reference_type",
            "reference_count",
            "where",
            "spilled",
        ],
    ),
    "nodes": ("nodes", ["node_id", "node_ip", "state", "resources_total"]),
    "jobs": (
        "jobs",
        ["job_id", "submission_id", "entrypoint", "type", "status", "message", "error_type"],
    ),
    "placement-groups": (
        "placement_groups",
        ["placement_group_id", "name", "creator_job_id", "state", "strategy", "is_detached"],
    ),
    "workers": ("workers", ["worker_id", "is_alive", "worker_type", "node_id", "ip", "pid"]),
}
ID_OF = {
    "tasks": "task_id",
    "actors": "actor_id",
    "objects": "object_id",
    "nodes": "node_id",
    "jobs": "job_id",
    "placement-groups": "placement_group_id",
    "workers": "worker_id",
}


def _state_call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """A state API call with its errors as one line each."""
    try:
        return function(*args, **kwargs)
    except (ValueError, ConnectionError, RuntimeError, TimeoutError) as exc:
        raise CliError(str(exc)) from None


def cmd_list(args: argparse.Namespace) -> int:
    from rayjupyter.util import state

    kind, columns = RESOURCES[args.resource]
    function = getattr(state, f"list_{kind}")
    rows = _state_call(
        function,
        address=args.address,
        filters=parse_filters(args.filter),
        limit=args.limit,
        timeout=args.timeout,
        detail=args.detail,
    )
    print(show(rows, columns, args.format, detail=args.detail))
    if args.format in ("default", "table") and len(rows) == args.limit:
        print(f"(the first {args.limit} rows: use --limit for more)", file=sys.stderr)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from rayjupyter.util import state

    kind, _ = RESOURCES[args.resource]
    key = ID_OF[args.resource]
    rows = _state_call(
        getattr(state, f"list_{kind}"),
        address=args.address,
        filters=[(key, "=", args.id)],
        limit=10**9,
        timeout=args.timeout,
        detail=True,
    )
    if args.resource == "jobs" and not rows:
        found = _state_call(state.get_job, args.id, address=args.address, timeout=args.timeout)
        rows = [found] if found is not None else []
    if not rows:
        raise CliError(f"no {args.resource[:-1].replace('-', ' ')} with id {args.id}")
    fmt = "json" if args.format == "json" else "yaml"
    try:
        print(dump(rows[-1], fmt))
    except CliError:
        print(dump(rows[-1], "json"))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from rayjupyter.util import state

    function = getattr(state, f"summarize_{args.resource}")
    summary = _state_call(function, address=args.address, timeout=args.timeout)["cluster"]
    if args.format in ("json", "yaml"):
        print(dump(summary, args.format))
        return 0
    totals = {k: v for k, v in summary.items() if k.startswith("total")}
    print(f"======== {args.resource.capitalize()} summary ========")
    print(
        "  ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}" for k, v in totals.items())
    )
    print()
    rows = []
    for key, entry in summary["summary"].items():
        counts = entry.get("state_counts") or entry.get("task_state_counts") or {}
        rows.append({"key": key, **entry, "state_counts": counts})
    columns = {
        "tasks": ["func_or_class_name", "type", "state_counts"],
        "actors": ["class_name", "state_counts"],
        "objects": ["key", "total_objects", "total_size_mb", "state_counts", "ref_type_counts"],
    }[args.resource]
    print(table(rows, columns))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from rayjupyter.util import state

    what = args.what or "cluster"
    if what == "cluster":
        found = _state_call(
            state.list_logs,
            address=args.address,
            node_id=args.node_id,
            node_ip=args.node_ip,
            glob_filter=args.glob,
            timeout=args.timeout,
        )
        names = [name for files in found.values() for name in files]
        if args.glob and len(names) == 1 and not any(c in args.glob for c in "*?["):
            what, args.filename = "file", names[0]  # one log named: print it, as Ray does
        else:
            for category, files in found.items():
                if files:
                    print(f"{category}:")
                    print("\n".join(f"  {name}" for name in files))
            return 0
    options: dict[str, Any] = {}
    if what == "file":
        options["filename"] = args.filename
    elif args.id is None:
        raise CliError(f"`rayjupyter logs {what}` needs --id (or --pid for a worker)")
    elif what == "actor":
        options["actor_id"] = args.id
    elif what == "task":
        options["task_id"] = args.id
    elif what == "job":
        options["submission_id"] = args.id
    elif what == "worker":
        options["pid"] = int(args.id)
    lines = state.get_log(
        address=args.address,
        node_id=args.node_id,
        node_ip=args.node_ip,
        follow=args.follow,
        tail=args.tail,
        timeout=int(args.timeout),
        suffix="err" if args.err else "out",
        _interval=args.interval,
        **options,
    )
    try:
        for line in _checked(lines):
            sys.stdout.write(line)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    return 0


def _checked(lines: Any) -> Any:
    try:
        yield from lines
    except (ValueError, ConnectionError, RuntimeError) as exc:
        raise CliError(str(exc)) from None


UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def cmd_memory(args: argparse.Namespace) -> int:
    """Ray's ``ray memory``: the objects the node tracks and the store's use."""
    from rayjupyter.core import queries
    from rayjupyter.core.read_models import ObjectRow

    with connected(args) as client:
        stats = queries.store_stats(client, timeout=args.timeout)
        rows = [
            r
            for r in queries.list_state(client, "objects", (), 10**9, timeout=args.timeout)
            if isinstance(r, ObjectRow)
        ]
    unit = UNITS[args.units]
    if args.sort_by == "OBJECT_SIZE":
        rows.sort(key=lambda r: -r.object_size)
    elif args.sort_by == "REFERENCE_TYPE":
        rows.sort(key=lambda r: r.reference_type)
    summary = {
        "capacity": stats.capacity / unit,
        "used": stats.used_bytes / unit,
        "spilled": stats.spilled_bytes / unit,
        "objects": stats.num_objects,
        "in_memory": stats.num_in_memory,
        "spilled_objects": stats.num_spilled,
        "pinned": stats.num_pinned,
        "units": args.units,
    }
    if args.format in ("json", "yaml"):
        shown = [] if args.stats_only else rows[: args.num_entries]
        print(dump({"store": summary, "objects": shown}, args.format))
        return 0
    if not args.stats_only:
        shaped = [
            {**r.asdict(), "size": f"{r.object_size / unit:.2f} {args.units}",
             "reference_type": r.reference_type}
            for r in rows[: args.num_entries]
        ]  # fmt: skip
        columns = ["object_id", "size", "reference_type", "reference_count", "where", "spilled"]
        print(table(shaped, columns))
        if len(rows) > args.num_entries:
            print(f"... {len(rows) - args.num_entries} more (use --num-entries)")
        print()
    print("--- Object store (this node) ---")
    print(
        f"Used {summary['used']:.2f} / {summary['capacity']:.2f} {args.units}, spilled "
        f"{summary['spilled']:.2f} {args.units}; {stats.num_objects} objects "
        f"({stats.num_in_memory} in memory, {stats.num_spilled} spilled, "
        f"{stats.num_pinned} pinned)"
    )
    return 0


def cmd_timeline(args: argparse.Namespace) -> int:
    """Ray's ``ray timeline``: a Chrome trace of the tasks the head remembers."""
    from rayjupyter.core import queries
    from rayjupyter.core.read_models import TaskRow
    from rayjupyter.core.task_events import chrome_trace

    with connected(args) as client:
        rows = queries.list_state(client, "tasks", (), 10**9, timeout=args.timeout)
    events = chrome_trace([r for r in rows if isinstance(r, TaskRow)])
    filename = args.filename or os.path.join(
        "/tmp", f"rayjupyter-timeline-{time.strftime('%Y-%m-%d_%H-%M-%S')}.json"
    )
    with open(filename, "w") as out:
        json.dump(events, out)
    print(f"Trace file written to {filename} ({len(events)} events).")
    print("Open it in chrome://tracing or https://ui.perfetto.dev")
    return 0


def find_py_spy() -> str | None:
    """py-spy on PATH, or beside this Python (a virtualenv's bin folder)."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return shutil.which("py-spy") or (beside if os.access(beside, os.X_OK) else None)


def cmd_stack(args: argparse.Namespace) -> int:
    """Ray's ``ray stack``: every worker's and driver's Python stacks, through py-spy."""
    from rayjupyter.util import state

    spy = find_py_spy()
    if spy is None:
        raise CliError("`rayjupyter stack` needs py-spy: pip install py-spy, then run it again")
    workers = _state_call(
        state.list_workers, address=args.address, limit=10**9, timeout=args.timeout
    )
    code = 0
    for worker in workers:
        print(f"Stack of {worker.worker_type.lower()} pid={worker.pid} ({worker.worker_id})")
        done = subprocess.run(
            [spy, "dump", "--pid", str(worker.pid)], capture_output=True, text=True, timeout=60
        )
        print(done.stdout or done.stderr)
        code = code or done.returncode
    return 0 if code == 0 else 1


def cmd_kill_actor(args: argparse.Namespace) -> int:
    """Kill an actor by id or name (``rj.kill``): its process ends now; with ``--no-restart``
    (the default, as ``rj.kill``) it stays dead."""
    from rayjupyter.core import protocol as P
    from rayjupyter.core import queries
    from rayjupyter.core.read_models import ActorRow

    with connected(args) as client:
        actors = [
            r
            for r in queries.list_state(client, "actors", (), 10**9, timeout=args.timeout)
            if isinstance(r, ActorRow) and r.state != "DEAD"
        ]
        found = [r for r in actors if r.actor_id == args.actor]
        if not found:
            found = [
                r
                for r in actors
                if r.name == args.actor
                and (args.namespace is None or r.ray_namespace == args.namespace)
            ]
        if not found:
            raise CliError(
                f"no live actor with id or name {args.actor!r} (see: rayjupyter list actors)"
            )
        if len(found) > 1:
            spaces = ", ".join(sorted(r.ray_namespace for r in found))
            raise CliError(
                f"actors named {args.actor!r} live in several namespaces ({spaces}): "
                "give --namespace"
            )
        actor = found[0]
        client.send([P.KillActor(bytes.fromhex(actor.actor_id), not args.allow_restart)])
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            rows = queries.list_state(client, "actors", (("actor_id", "=", actor.actor_id),), 1)
            if not rows or not isinstance(rows[0], ActorRow) or rows[0].state != "ALIVE":
                break
            time.sleep(0.1)
        else:
            raise CliError(f"actor {actor.actor_id} still runs after {args.timeout:g} s")
    named = f" {actor.name}" if actor.name else ""
    print(f"Killed actor {actor.actor_id} ({actor.class_name}{named}).")
    return 0


def add_commands(commands: Any) -> None:
    """list, get, summary, logs, memory, timeline, stack, kill-actor."""
    listing = commands.add_parser("list", help="rows of tasks, actors, objects, nodes, jobs...")
    listing.add_argument("resource", choices=sorted(RESOURCES))
    listing.add_argument(
        "--filter", "-f", action="append", help="KEY=VALUE or KEY!=VALUE (repeatable)"
    )
    listing.add_argument("--limit", type=int, default=100, help="at most this many rows")
    listing.add_argument("--detail", action="store_true", help="every column")
    add_format_option(listing)
    add_connection_options(listing)
    listing.set_defaults(run=cmd_list)

    get = commands.add_parser("get", help="one task, actor, object, node, job... in full")
    get.add_argument("resource", choices=sorted(RESOURCES))
    get.add_argument("id")
    add_format_option(get)
    add_connection_options(get)
    get.set_defaults(run=cmd_get)

    summary = commands.add_parser("summary", help="counts of tasks, actors or objects by state")
    summary.add_argument("resource", choices=["tasks", "actors", "objects"])
    add_format_option(summary)
    add_connection_options(summary)
    summary.set_defaults(run=cmd_summary)

    logs = commands.add_parser("logs", help="list the logs, or print one (a worker's, a job's)")
    logs.add_argument(
        "what", nargs="?", choices=["cluster", "actor", "task", "worker", "job"], default=None
    )
    logs.add_argument("glob", nargs="?", help="cluster: only the logs whose names match")
    logs.add_argument("--id", help="the actor's, task's or job's id, or the worker's pid")
    logs.add_argument("--pid", dest="id", help="the worker's pid")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    logs.add_argument("--tail", type=int, default=1000, help="the last N lines (-1: all)")
    logs.add_argument("--err", action="store_true", help="stderr instead of stdout")
    logs.add_argument("--interval", type=float, default=0.2, help="--follow: seconds between reads")
    logs.add_argument("--node-id", help="the node whose logs to read")
    logs.add_argument("--node-ip", "--node-ip-address", dest="node_ip", help="the same, by address")
    add_connection_options(logs)
    logs.set_defaults(run=cmd_logs, filename=None)

    memory = commands.add_parser("memory", help="objects in the store and its use")
    memory.add_argument(
        "--sort-by", choices=["PID", "OBJECT_SIZE", "REFERENCE_TYPE"], default="OBJECT_SIZE"
    )
    memory.add_argument("--units", choices=sorted(UNITS), default="B")
    memory.add_argument("--stats-only", action="store_true", help="only the store's summary")
    memory.add_argument("--num-entries", "--n", type=int, default=100, help="rows at most")
    add_format_option(memory)
    add_connection_options(memory)
    memory.set_defaults(run=cmd_memory)

    timeline = commands.add_parser("timeline", help="a Chrome trace of the tasks")
    timeline.add_argument("--filename", help="where to write it (default: a file in /tmp)")
    add_connection_options(timeline)
    timeline.set_defaults(run=cmd_timeline)

    stack = commands.add_parser("stack", help="the Python stacks of workers and drivers (py-spy)")
    add_connection_options(stack)
    stack.set_defaults(run=cmd_stack)

    kill = commands.add_parser("kill-actor", help="kill an actor by id or name")
    kill.add_argument("actor", help="the actor's id (hex) or its name")
    kill.add_argument("--namespace", help="the named actor's namespace")
    kill.add_argument(
        "--allow-restart", action="store_true", help="let it restart (within max_restarts)"
    )
    add_connection_options(kill)
    kill.set_defaults(run=cmd_kill_actor)
