"""Read tasks: how each source is cut into independent pieces of work.

A ``ReadTask`` is a picklable callable that yields tables when run in a task. Planning the
pieces (by file, by Parquet row group, by row range) happens on the driver from file
listings and Parquet footers only, never reading data there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from rayjupyter.data.block import concat, even_sizes


@dataclass
class ReadTask:
    """One piece of a read: ``read()`` yields its tables; ``num_rows`` when known ahead."""

    read_fn: Callable[..., Iterator[pa.Table]]
    args: tuple[Any, ...] = ()
    num_rows: int | None = None
    label: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> Iterator[pa.Table]:
        return self.read_fn(*self.args, **self.kwargs)


# --------------------------------------------------------------------------- in memory


# A read task makes its rows in pieces of about this size, not all at once: a fused
# map_batches then holds one piece in the worker, not the task's whole range (8 read tasks
# over 4 GB made 500 MB tables, plus as much again in numpy temporaries, per worker).
READ_PIECE_BYTES = 16 * 1024 * 1024


def row_pieces(start: int, stop: int, row_bytes: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive pieces of about READ_PIECE_BYTES each."""
    step = max(1, READ_PIECE_BYTES // max(1, row_bytes))
    for low in range(start, stop, step):
        yield low, min(stop, low + step)


def _range_block(start: int, stop: int) -> Iterator[pa.Table]:
    for low, high in row_pieces(start, stop, 8):
        yield pa.table({"id": pa.array(np.arange(low, high, dtype=np.int64))})


def _range_tensor_block(start: int, stop: int, shape: tuple[int, ...]) -> Iterator[pa.Table]:
    row_bytes = 8 * int(np.prod(shape, dtype=np.int64))
    for low, high in row_pieces(start, stop, row_bytes):
        data = np.empty((high - low, *shape), dtype=np.int64)
        data[...] = np.arange(low, high, dtype=np.int64).reshape(-1, *([1] * len(shape)))
        yield pa.table({"data": pa.FixedShapeTensorArray.from_numpy_ndarray(data)})
        del data  # not held while the next piece is made


def range_tasks(n: int, num_blocks: int, shape: tuple[int, ...] | None = None) -> list[ReadTask]:
    tasks, start = [], 0
    for size in even_sizes(n, max(1, min(num_blocks, n))):
        if shape is None:
            tasks.append(ReadTask(_range_block, (start, start + size), size, "range"))
        else:
            tasks.append(
                ReadTask(_range_tensor_block, (start, start + size, shape), size, "range_tensor")
            )
        start += size
    return tasks


# --------------------------------------------------------------------------- files

_SKIPPED_PREFIXES = (".", "_")


def expand_paths(paths: str | list[str], file_extensions: list[str] | None) -> list[str]:
    """A file, a folder (walked, hidden files skipped) or a list of both, sorted per folder."""
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not items:
        raise ValueError("No paths were given.")
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith(_SKIPPED_PREFIXES))
                for name in sorted(files):
                    if not name.startswith(_SKIPPED_PREFIXES):
                        out.append(os.path.join(root, name))
        elif os.path.exists(item):
            out.append(item)
        else:
            raise FileNotFoundError(f"No such file or directory: {item!r}.")
    if file_extensions is not None:
        exts = tuple("." + e.lower().lstrip(".") for e in file_extensions)
        out = [p for p in out if p.lower().endswith(exts)]
    if not out:
        raise ValueError(f"No files found under {paths!r} (file_extensions={file_extensions}).")
    return out


def _group(items: list[Any], num_groups: int) -> list[list[Any]]:
    groups, start = [], 0
    for size in even_sizes(len(items), max(1, min(num_groups, len(items)))):
        groups.append(items[start : start + size])
        start += size
    return groups


def _with_path(table: pa.Table, path: str, include_paths: bool) -> pa.Table:
    if include_paths:
        return table.append_column("path", pa.array([path] * table.num_rows, pa.string()))
    return table


def _read_files(
    kind: str, paths: list[str], include_paths: bool, options: dict[str, Any], pieces: int
) -> Iterator[pa.Table]:
    for path in paths:
        table = _read_one(kind, path, options)
        table = _with_path(table, path, include_paths)
        if pieces > 1:
            start = 0
            for size in even_sizes(table.num_rows, pieces):
                yield table.slice(start, size)
                start += size
        else:
            yield table


def _read_one(kind: str, path: str, options: dict[str, Any]) -> pa.Table:
    if kind == "csv":
        import pyarrow.csv as pcsv

        return pcsv.read_csv(path, **options)
    if kind == "json":
        return _read_json(path, options)
    if kind == "text":
        with open(path, "rb") as f:
            data = f.read().decode(options.get("encoding", "utf-8"))
        lines = data.splitlines()
        if options.get("drop_empty_lines", True):
            lines = [line for line in lines if line.strip()]
        return pa.table({"text": pa.array(lines, pa.string())})
    if kind == "numpy":
        array = np.load(path, allow_pickle=False)
        from rayjupyter.data.block import array_from_values

        return pa.table({"data": array_from_values(array)})
    if kind == "binary":
        with open(path, "rb") as f:
            return pa.table({"bytes": pa.array([f.read()], pa.binary())})
    if kind == "images":
        from PIL import Image

        with Image.open(path) as image:
            if options.get("mode"):
                image = image.convert(options["mode"])
            if options.get("size"):
                image = image.resize(tuple(reversed(options["size"])))
            array = np.asarray(image)
        from rayjupyter.data.block import array_from_values

        return pa.table({"image": array_from_values(array[np.newaxis])})
    raise ValueError(f"unknown file kind {kind!r}")


def _read_json(path: str, options: dict[str, Any]) -> pa.Table:
    """JSON Lines through Arrow; a file holding one JSON array of objects through json."""
    with open(path, "rb") as f:
        head = f.read(1024).lstrip()
    if head.startswith(b"["):
        import json

        with open(path, encoding="utf-8") as f:
            return pa.Table.from_pylist(json.load(f))
    import pyarrow.json as pjson

    return pjson.read_json(path, **options)


def file_tasks(
    kind: str,
    paths: list[str],
    num_blocks: int | None,
    include_paths: bool,
    options: dict[str, Any],
) -> list[ReadTask]:
    """One task per file, or files grouped into ``num_blocks`` tasks; more blocks than
    files split each file's table into pieces (read once, cut zero-copy)."""
    if num_blocks is not None and num_blocks > len(paths):
        pieces = -(-num_blocks // len(paths))
        return [
            ReadTask(_read_files, (kind, [p], include_paths, options, pieces), None, p)
            for p in paths
        ]
    groups = _group(paths, num_blocks if num_blocks is not None else len(paths))
    return [ReadTask(_read_files, (kind, g, include_paths, options, 1), None, g[0]) for g in groups]


# --------------------------------------------------------------------------- parquet


def _read_parquet_pieces(
    pieces: list[tuple[str, list[int] | None]],
    columns: list[str] | None,
    filter_expr: Any,
    include_paths: bool,
) -> Iterator[pa.Table]:
    import pyarrow.dataset as pds
    from pyarrow import fs

    fmt = pds.ParquetFileFormat()
    local = fs.LocalFileSystem()
    tables = []
    for path, row_groups in pieces:
        fragment = fmt.make_fragment(os.path.abspath(path), local, row_groups=row_groups)
        table = fragment.to_table(
            schema=fragment.physical_schema, columns=columns, filter=filter_expr
        )
        tables.append(_with_path(table, path, include_paths))
    yield concat(tables)  # one block per task; run_chain splits it if it is too large


def parquet_tasks(
    paths: list[str],
    columns: list[str] | None,
    filter_expr: Any,
    num_blocks: int | None,
    include_paths: bool,
) -> list[ReadTask]:
    """Pieces are row groups (from the footers); grouped into ``num_blocks`` tasks when
    asked, else one task per row group. Columns and filter go into pyarrow.dataset, so the
    reader skips what is not needed (row groups by statistics, columns not read at all)."""
    import pyarrow.parquet as pq

    pieces: list[tuple[tuple[str, list[int] | None], int]] = []
    for path in paths:
        meta = pq.ParquetFile(path).metadata
        if meta.num_row_groups == 0:
            pieces.append(((path, None), 0))
        for rg in range(meta.num_row_groups):
            pieces.append(((path, [rg]), meta.row_group(rg).num_rows))
    groups = _group(pieces, num_blocks if num_blocks is not None else len(pieces))
    tasks = []
    for group in groups:
        rows = None if filter_expr is not None else sum(n for _, n in group)
        tasks.append(
            ReadTask(
                _read_parquet_pieces,
                ([p for p, _ in group], columns, filter_expr, include_paths),
                rows,
                group[0][0][0],
            )
        )
    return tasks


def parquet_schema(path: str, columns: list[str] | None, include_paths: bool) -> pa.Schema:
    """The schema a read gives, from the first file's footer (no data read)."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(path).remove_metadata()
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    if include_paths:
        schema = schema.append(pa.field("path", pa.string()))
    return schema


def push_columns(task: ReadTask, columns: list[str]) -> ReadTask | None:
    """A Parquet read task that reads only ``columns`` (None when it is not Parquet)."""
    if task.read_fn is not _read_parquet_pieces:
        return None
    pieces, current, filter_expr, include_paths = task.args
    if current is not None and not set(columns) <= set(current):
        return None
    if include_paths and "path" not in columns:
        include_paths = False
    wanted = [c for c in columns if c != "path" or not include_paths]
    return ReadTask(
        _read_parquet_pieces,
        (pieces, wanted, filter_expr, include_paths),
        task.num_rows,
        task.label,
    )


def push_filter(task: ReadTask, expr: Any) -> ReadTask | None:
    """A Parquet read task with ``expr`` and-ed into its filter (None if not Parquet)."""
    if task.read_fn is not _read_parquet_pieces:
        return None
    pieces, columns, current, include_paths = task.args
    combined = expr if current is None else (current & expr)
    return ReadTask(
        _read_parquet_pieces, (pieces, columns, combined, include_paths), None, task.label
    )
