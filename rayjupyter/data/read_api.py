"""Sources: ``range``, ``from_*`` and ``read_*``, each a Dataset over a Read (lazy) or
over blocks put in the store now (in-memory data), named as in Ray Data."""

from __future__ import annotations

import builtins
from typing import Any

import pyarrow as pa

import rayjupyter as rj
from rayjupyter.data import sources
from rayjupyter.data.block import (
    RefBundle,
    array_from_values,
    even_sizes,
    metadata_of,
    table_from_batch,
    table_from_rows,
)
from rayjupyter.data.context import DataContext
from rayjupyter.data.dataset import Dataset, MaterializedDataset
from rayjupyter.data.plan import InputData, Read


def _check_override(override_num_blocks: int | None) -> None:
    if override_num_blocks is not None and override_num_blocks < 1:
        raise ValueError(f"override_num_blocks must be >= 1, got {override_num_blocks}.")


def _num_blocks(n_rows: int, override_num_blocks: int | None) -> int:
    _check_override(override_num_blocks)
    if override_num_blocks is not None:
        return override_num_blocks
    return builtins.max(1, builtins.min(n_rows, DataContext.get_current().read_op_min_num_blocks))


def range(n: int, *, override_num_blocks: int | None = None) -> Dataset:
    """Rows ``{"id": 0} .. {"id": n-1}``."""
    tasks = sources.range_tasks(n, _num_blocks(n, override_num_blocks))
    return Dataset(Read(name="ReadRange", tasks=tuple(tasks), schema=pa.schema({"id": pa.int64()})))


def range_tensor(
    n: int, *, shape: tuple[int, ...] = (1,), override_num_blocks: int | None = None
) -> Dataset:
    """Rows ``{"data": ndarray of shape filled with i}``."""
    tasks = sources.range_tasks(n, _num_blocks(n, override_num_blocks), tuple(shape))
    return Dataset(Read(name="ReadRangeTensor", tasks=tuple(tasks)))


def _from_tables(tables: list[pa.Table], name: str) -> MaterializedDataset:
    if not rj.is_initialized():
        rj.init()
    bundles = [RefBundle(rj.put(t), metadata_of(t), (i,)) for i, t in enumerate(tables)]
    ds = MaterializedDataset(bundles)
    ds._op = InputData(name=name, bundles=tuple(bundles))
    return ds


def from_items(items: list[Any], *, override_num_blocks: int | None = None) -> MaterializedDataset:
    """Dict items become rows; other items become ``{"item": x}``."""
    items = list(items)
    blocks = _num_blocks(len(items), override_num_blocks)
    tables, start = [], 0
    for size in even_sizes(len(items), builtins.max(1, builtins.min(blocks, len(items) or 1))):
        tables.append(table_from_rows(items[start : start + size]))
        start += size
    return _from_tables(tables, "FromItems")


def from_pandas(dfs: Any, *, override_num_blocks: int | None = None) -> MaterializedDataset:
    frames = dfs if isinstance(dfs, list) else [dfs]
    tables = [table_from_batch(df) for df in frames]
    if override_num_blocks is not None and len(tables) == 1:
        tables = _cut(tables[0], override_num_blocks)
    return _from_tables(tables, "FromPandas")


def _cut(table: pa.Table, n: int) -> list[pa.Table]:
    out, start = [], 0
    for size in even_sizes(table.num_rows, builtins.max(1, builtins.min(n, table.num_rows))):
        out.append(table.slice(start, size))
        start += size
    return out


def from_numpy(ndarrays: Any) -> MaterializedDataset:
    """Each array becomes a block of ``{"data": row}``; a list gives one block each."""
    arrays = ndarrays if isinstance(ndarrays, list) else [ndarrays]
    return _from_tables([pa.table({"data": array_from_values(a)}) for a in arrays], "FromNumpy")


def from_arrow(tables: Any) -> MaterializedDataset:
    items = tables if isinstance(tables, list) else [tables]
    return _from_tables(
        [pa.Table.from_batches([t]) if isinstance(t, pa.RecordBatch) else t for t in items],
        "FromArrow",
    )


def _meta_task(table: Any) -> Any:
    table = table_from_batch(table)
    return table, metadata_of(table)


def _from_refs(refs: Any, name: str, convert: bool) -> MaterializedDataset:
    refs = refs if isinstance(refs, list) else [refs]
    task = rj.remote(_meta_task).options(num_returns=2)
    pairs = [task.remote(ref) for ref in refs]
    metas = rj.get([m for _, m in pairs], timeout=600)
    bundles = [
        RefBundle(ref if not convert else out, meta, (i,))
        for i, (ref, (out, _), meta) in enumerate(zip(refs, pairs, metas, strict=True))
    ]
    ds = MaterializedDataset(bundles)
    ds._op = InputData(name=name, bundles=tuple(bundles))
    return ds


def from_arrow_refs(refs: Any) -> MaterializedDataset:
    return _from_refs(refs, "FromArrowRefs", convert=False)


def from_pandas_refs(refs: Any) -> MaterializedDataset:
    return _from_refs(refs, "FromPandasRefs", convert=True)


def from_numpy_refs(refs: Any) -> MaterializedDataset:
    refs = refs if isinstance(refs, list) else [refs]
    wrap = rj.remote(_numpy_table)
    return _from_refs([wrap.remote(r) for r in refs], "FromNumpyRefs", convert=False)


def _numpy_table(array: Any) -> pa.Table:
    return pa.table({"data": array_from_values(array)})


# --------------------------------------------------------------------------- files


def _files(
    kind: str,
    name: str,
    paths: Any,
    options: dict[str, Any],
    file_extensions: list[str] | None,
    override_num_blocks: int | None,
    include_paths: bool,
) -> Dataset:
    """A Read of the files under paths (the arguments every file reader takes, last)."""
    files = sources.expand_paths(paths, file_extensions)
    _check_override(override_num_blocks)
    tasks = sources.file_tasks(kind, files, override_num_blocks, include_paths, options)
    return Dataset(Read(name=name, tasks=tuple(tasks)))


def read_parquet(
    paths: str | list[str],
    *,
    columns: list[str] | None = None,
    filter: Any = None,
    override_num_blocks: int | None = None,
    include_paths: bool = False,
    file_extensions: list[str] | None = None,
) -> Dataset:
    """Parquet files, one read task per row group (or grouped into override_num_blocks);
    ``columns`` and ``filter`` (a pyarrow.dataset expression) are applied by the reader."""
    files = sources.expand_paths(paths, file_extensions)
    _check_override(override_num_blocks)
    cols = list(columns) if columns is not None else None
    tasks = sources.parquet_tasks(files, cols, filter, override_num_blocks, include_paths)
    schema = sources.parquet_schema(files[0], cols, include_paths)
    return Dataset(Read(name="ReadParquet", tasks=tuple(tasks), schema=schema))


def read_csv(
    paths: str | list[str],
    *,
    override_num_blocks: int | None = None,
    include_paths: bool = False,
    file_extensions: list[str] | None = None,
    **arrow_csv_args: Any,
) -> Dataset:
    common = (file_extensions, override_num_blocks, include_paths)
    return _files("csv", "ReadCSV", paths, arrow_csv_args, *common)


def read_json(
    paths: str | list[str],
    *,
    override_num_blocks: int | None = None,
    include_paths: bool = False,
    file_extensions: list[str] | None = None,
    **arrow_json_args: Any,
) -> Dataset:
    common = (file_extensions, override_num_blocks, include_paths)
    return _files("json", "ReadJSON", paths, arrow_json_args, *common)


def read_text(
    paths: str | list[str],
    *,
    encoding: str = "utf-8",
    drop_empty_lines: bool = True,
    override_num_blocks: int | None = None,
    include_paths: bool = False,
    file_extensions: list[str] | None = None,
) -> Dataset:
    options = {"encoding": encoding, "drop_empty_lines": drop_empty_lines}
    common = (file_extensions, override_num_blocks, include_paths)
    return _files("text", "ReadText", paths, options, *common)


def read_numpy(
    paths: str | list[str],
    *,
    override_num_blocks: int | None = None,
    include_paths: bool = False,
    file_extensions: list[str] | None = None,
) -> Dataset:
    common = (file_extensions or ["npy"], override_num_blocks, include_paths)
    return _files("numpy", "ReadNumpy", paths, {}, *common)


def read_binary_files(
    paths: str | list[str],
    *,
    include_paths: bool = False,
    override_num_blocks: int | None = None,
    file_extensions: list[str] | None = None,
) -> Dataset:
    common = (file_extensions, override_num_blocks, include_paths)
    return _files("binary", "ReadBinary", paths, {}, *common)


def read_images(
    paths: str | list[str],
    *,
    size: tuple[int, int] | None = None,
    mode: str | None = None,
    include_paths: bool = False,
    override_num_blocks: int | None = None,
    file_extensions: list[str] | None = None,
) -> Dataset:
    """Images through pillow (the ``data`` extra): ``{"image": HxWxC uint8 array}``."""
    exts = file_extensions or ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif"]
    common = (exts, override_num_blocks, include_paths)
    return _files("images", "ReadImage", paths, {"size": size, "mode": mode}, *common)
