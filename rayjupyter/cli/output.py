"""What the CLI's state and job commands share: reaching the cluster, and printing rows as a
table that fits the terminal, as JSON or as YAML (``--format``, as Ray's CLI)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rayjupyter.core import addresses
from rayjupyter.core.client import Client

FORMATS = ("default", "table", "json", "yaml")
MIN_COLUMN = 6  # a column never narrower than this (plus the ellipsis)


class CliError(Exception):
    """A one-line message for the user; the command exits with status 1."""


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        help="the cluster: rayjupyter://SECRET@HOST:PORT or HOST:PORT (default: "
        "$RAYJUPYTER_ADDRESS or $RAY_ADDRESS, else the head started on this machine)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for it")


def add_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=FORMATS, default="default", help="table (default), json or yaml"
    )


@contextmanager
def connected(args: argparse.Namespace) -> Iterator[Client]:
    """An observer connection for one command (it runs no work and leaves nothing behind)."""
    try:
        client = addresses.observer(args.address, timeout=min(args.timeout, 10.0))
    except (addresses.AddressError, ConnectionError) as exc:
        raise CliError(str(exc)) from None
    try:
        yield client
    finally:
        client.close()


def plain(value: Any) -> Any:
    """A row (read model) or anything inside it as JSON-able data."""
    if hasattr(value, "asdict"):
        value = value.asdict()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def dump(data: Any, fmt: str) -> str:
    """``data`` as JSON or YAML text."""
    data = plain(data)
    if fmt == "json":
        return json.dumps(data, indent=2)
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        raise CliError(
            "--format yaml needs PyYAML: pip install pyyaml (or use --format json)"
        ) from None
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False)).rstrip()


def terminal_width() -> int:
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    return shutil.get_terminal_size((120, 24)).columns


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("\n", " ")


def table(rows: Sequence[Any], columns: Sequence[str], width: int | None = None) -> str:
    """Rows as an aligned text table no wider than the terminal: the widest columns are
    cut first (their cells end with "~"), and the last columns left out (a line says so)
    when even that is too wide; an empty list says so."""
    if not rows:
        return "(no rows)"
    width = width or terminal_width()
    columns = list(columns)
    dropped = 0
    # too many columns for the terminal even at their narrowest: the last ones go
    while len(columns) > 1 and len(columns) * (MIN_COLUMN + 2) - 2 > width:
        columns.pop()
        dropped += 1
    cells = [[_cell(row.get(c) if hasattr(row, "get") else None) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    budget = width - 2 * (len(columns) - 1)
    while sum(widths) > budget:
        widest = max(range(len(widths)), key=lambda i: widths[i])
        if widths[widest] <= MIN_COLUMN:
            break  # as narrow as they go
        widths[widest] -= 1

    def fit(text: str, size: int) -> str:
        return text.ljust(size) if len(text) <= size else text[: size - 1] + "~"

    header = "  ".join(fit(c.upper(), w) for c, w in zip(columns, widths, strict=True))
    lines = [header.rstrip()]
    lines += [
        "  ".join(fit(text, w) for text, w in zip(line, widths, strict=True)).rstrip()
        for line in cells
    ]
    if dropped:
        lines.append(f"({dropped} more columns: widen the terminal or --format json)"[:width])
    return "\n".join(lines)


def show(rows: Sequence[Any], columns: Sequence[str], fmt: str, detail: bool = False) -> str:
    """Rows in ``fmt``: a table of ``columns`` (every field with ``detail``), JSON or YAML."""
    if fmt in ("json", "yaml"):
        return dump(list(rows), fmt)
    if detail and rows and hasattr(rows[0], "keys"):
        columns = list(rows[0].keys())
    return table(rows, columns)


def parse_filters(texts: Sequence[str] | None) -> list[tuple[str, str, str]]:
    """Ray's ``--filter "key=value"`` / ``"key!=value"`` into filter tuples."""
    filters = []
    for text in texts or ():
        if "!=" in text:
            key, _, value = text.partition("!=")
            op = "!="
        elif "=" in text:
            key, _, value = text.partition("=")
            op = "="
        else:
            raise CliError(f"--filter {text!r}: write KEY=VALUE or KEY!=VALUE (e.g. state=ALIVE)")
        filters.append((key.strip(), op, value.strip()))
    return filters
