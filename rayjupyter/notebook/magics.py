"""The notebook's magics, in one place: ``%ray_connect``, ``%ray_disconnect``,
``%ray_status``, ``%ray_dashboard`` and ``%%remote``. Bad options raise UsageError.

They talk to the active engine (``engines/``): rayjupyter's runtime, or Ray after
``%ray_connect --ray``/``ray://`` (or with ``RAYJUPYTER_ENGINE=ray``)."""

from __future__ import annotations

import argparse
import html
import json
import os
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, magics_class

from rayjupyter.notebook import engines
from rayjupyter.notebook.ipython_typed import (
    argument,
    cell_magic,
    display,
    line_magic,
    magic_arguments,
    parse_argstring,
)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < -1:
        raise argparse.ArgumentTypeError(f"must be >= -1 (-1: retry forever), got {text}")
    return value


_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 10**3, "KIB": 2**10, "M": 2**20, "MB": 10**6}
_UNITS.update({"MIB": 2**20, "G": 2**30, "GB": 10**9, "GIB": 2**30, "T": 2**40, "TB": 10**12})


def _bytes(text: str) -> int:
    number = text.rstrip("BbKkMmGgTtIi")
    unit = text[len(number) :].upper()
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(
            f"expected bytes like 2000000000 or 2GiB, got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return int(value)


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    bad = [name for name in names if not name.isidentifier()]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated variable names like a,b, got {text!r}"
        )
    return names


def _unquote(text: str) -> str:
    """IPython keeps the quotes around an argument: '{"a": 1}' arrives with them."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _resources(text: str) -> dict[str, float]:
    text = _unquote(text)
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected JSON like '{{\"accel\": 1}}', got {text!r}"
        ) from None
    if not isinstance(value, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in value.values()
    ):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object of resource amounts like '{{\"accel\": 1}}', got {text!r}"
        )
    return {str(k): float(v) for k, v in value.items()}


def _engine_and_address(
    address: str | None, ray: str | None
) -> tuple[engines.EngineName, str | None]:
    """Which engine and address ``%ray_connect`` means (the address None: a local cluster)."""
    from rayjupyter.notebook.engines.ray_engine import CLIENT_SCHEME

    if ray is not None:
        if address is not None:
            raise UsageError(
                f"%ray_connect: give the Ray address once: --ray {address} (or {address} "
                f"alone for ray:// addresses)"
            )
        return "ray", ray or None
    if address is not None and address.startswith(CLIENT_SCHEME):
        return "ray", address
    try:
        name = engines.environment_engine()
    except ValueError as exc:
        raise UsageError(f"%ray_connect: {exc}") from None
    if name == "ray" and address is None:
        return "ray", os.environ.get("RAY_ADDRESS", "").strip() or None
    return name, address


_LOCAL_SIZING = ("num_cpus", "num_gpus", "object_store_memory")


def _sizing_for_environment_address(args: Any, address: str) -> str:
    """A notebook's ``%ray_connect --num-cpus 2`` sizes a local cluster; RAY_ADDRESS sends it
    to a running Ray instead, which keeps its own resources: drop the sizing and say so."""
    given = [
        f"--{key.replace('_', '-')}" for key in _LOCAL_SIZING if getattr(args, key) is not None
    ]
    for key in _LOCAL_SIZING:
        setattr(args, key, None)
    if not given:
        return ""
    return (
        f"{', '.join(given)} not applied: RAY_ADDRESS={address} is a running Ray cluster, "
        f"which keeps its own resources (unset RAY_ADDRESS for a local Ray of this size)."
    )


class _Html:
    """An HTML and text pair to display (status cards)."""

    def __init__(self, html: str, text: str) -> None:
        self.html = html
        self.text = text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


@magics_class
class RayMagics(Magics):
    """Connect a notebook to a rayjupyter cluster and run cells on it."""

    @magic_arguments()
    @argument(
        "address",
        nargs="?",
        help="HOST:PORT or rayjupyter://SECRET@HOST:PORT of a running cluster, or "
        "ray://HOST:10001 (Ray Client); none: start a local cluster owned by this kernel",
    )
    @argument("--num-cpus", type=_non_negative, help="CPUs of the local cluster")
    @argument("--num-gpus", type=_non_negative, help="GPUs of the local cluster")
    @argument(
        "--object-store-memory", type=_bytes, help="bytes of shared memory for objects (2GiB)"
    )
    @argument("--namespace", help="namespace for named actors")
    @argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="attach to Ray instead: HOST:6379 or auto (a driver on the cluster); no "
        "address: a local Ray started by this kernel. ray://HOST:10001 needs no flag",
    )
    @line_magic
    def ray_connect(self, line: str) -> None:
        """Connect this kernel to a cluster and show its summary (again: no change)."""
        args = parse_argstring(self.ray_connect, line)
        name, address = _engine_and_address(args.address, args.ray)
        sizing_note = ""
        if name == "ray" and address is not None and args.address is None and args.ray is None:
            sizing_note = _sizing_for_environment_address(args, address)
        request = engines.ConnectRequest(
            address,
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            object_store_memory=args.object_store_memory,
            namespace=args.namespace,
        )
        current = engines.active()
        # connect first: a wrong address fails here and leaves the current engine connected
        summary, note = engines.engine(name).connect(request)
        switched = ""
        if current.name != name and current.connected:
            switched = f"Switched engines from {current.name} to {name}: {current.disconnect()}"
        engines.activate(name)
        for line_ in (sizing_note, switched, note):
            if line_:
                print(line_)
        display(summary)

    @line_magic
    def ray_disconnect(self, line: str) -> None:
        """Leave the cluster; a local cluster this kernel started stops."""
        if line.strip():
            raise UsageError("%ray_disconnect takes no arguments")
        print(engines.active().disconnect())

    @line_magic
    def ray_status(self, line: str) -> None:
        """Nodes, resource use, and tasks and actors by state."""
        from rayjupyter.core import cluster_repr

        if line.strip():
            raise UsageError("%ray_status takes no arguments")
        engine = engines.active()
        if not engine.connected:
            raise UsageError("Not connected: run %ray_connect first")
        status = engine.status(timeout=10.0)
        notes = engine.status_notes()
        text = "\n".join([cluster_repr.status_text(status), *notes])
        extra = "".join(f"<div><small>{html.escape(note)}</small></div>" for note in notes)
        display(_Html(cluster_repr.status_html(status) + extra, text))

    @magic_arguments()
    @argument("--interval", type=_positive, default=1.0, help="seconds between updates")
    @argument("--window", type=int, default=300, help="samples kept on the time charts")
    @argument(
        "--open",
        action="store_true",
        help="start the cluster's web dashboard (once) and show its link instead of charts",
    )
    @line_magic
    def ray_dashboard(self, line: str) -> None:
        """Live charts of the cluster in the notebook: CPU, memory, store, tasks."""
        from rayjupyter.notebook import charts
        from rayjupyter.notebook.kernel import in_kernel

        args = parse_argstring(self.ray_dashboard, line)
        engine = engines.active()
        if args.open:
            from rayjupyter.dashboard.launch import driver_dashboard

            if not engine.connected:
                raise UsageError("Not connected: run %ray_connect first")
            if engine.name == "ray":
                url = engine.dashboard_url() or ""
                if not url:
                    raise UsageError(
                        "this Ray cluster runs no dashboard: start its head with "
                        "--include-dashboard=true"
                    )
            else:
                url = driver_dashboard()
            link = f'Dashboard: <a href="{html.escape(url)}" target="_blank">{html.escape(url)}</a>'
            display(_Html(link, f"Dashboard: {url}"))
            return
        if not in_kernel():
            raise UsageError("%ray_dashboard draws in a Jupyter notebook; here use %ray_status")
        if not engine.connected:
            raise UsageError("Not connected: run %ray_connect first")
        if args.window < 2:
            raise UsageError("%ray_dashboard: --window must be at least 2 samples")
        dashboard = engine.dashboard_url()
        if dashboard:
            print(f"Dashboard: {dashboard}")
        charts.resource_chart(interval=args.interval, window=args.window)

    @magic_arguments()
    @argument("--num-cpus", type=_non_negative, help="CPUs the cell's task needs (default 1)")
    @argument("--num-gpus", type=_non_negative, help="GPUs the cell's task needs")
    @argument("--resources", type=_resources, help="custom resources as JSON: '{\"accel\": 1}'")
    @argument("--max-retries", type=_count, help="retries if the worker dies (default 3)")
    @argument(
        "--no-block",
        dest="block",
        action="store_false",
        help="return at once; a widget shows the task and names arrive when it finishes",
    )
    @argument("--push", type=_names, default=[], help="also send these names: a,b")
    @argument("--pull", type=_names, help="bring back only these names: x,y")
    @argument("--timeout", type=_positive, help="cancel the task after this many seconds")
    @cell_magic
    def remote(self, line: str, cell: str) -> Any:
        """Run this cell as one task on the cluster.

        Names the cell reads that the notebook defines are sent with it (functions and
        classes defined in the notebook by value, modules by import); names it assigns come
        back; its last expression is shown; its prints appear under the cell as it runs;
        an error shows the cell's own line numbers; interrupting the kernel cancels it.
        """
        from rayjupyter.notebook.remote_cell import RemoteOptions, run_remote_cell

        args = parse_argstring(self.remote, line)
        options = RemoteOptions(
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            resources=args.resources,
            max_retries=args.max_retries,
            block=args.block,
            push=list(args.push),
            pull=args.pull,
            timeout=args.timeout,
        )
        return run_remote_cell(self.shell, line, cell, options)
