"""rayjupyter.data's decisions without processes: blocks, the optimizer, back-pressure,
slicing plans, sort boundaries, aggregations."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rayjupyter.data import aggregate as agg
from rayjupyter.data import alltoall, block, sources
from rayjupyter.data.plan import Compute, MapOp, Read, optimize
from rayjupyter.data.resources import Limits, OpUsage, actor_pool_target, choose_op
from rayjupyter.data.stages import (
    FilterRows,
    MapBatches,
    MapRows,
    SelectColumns,
    UserFn,
    run_chain,
)


def _map(inp, name="Map", actors=False, args=()):
    stage = MapRows(name, UserFn(lambda r: r))
    compute = Compute(actors=True, min_size=1, max_size=2) if actors else Compute()
    return MapOp(name=name, inputs=(inp,), stage=stage, compute=compute, remote_args=args)


def test_read_and_task_maps_fuse_into_one_operator():
    read = Read(name="ReadRange", tasks=tuple(sources.range_tasks(10, 2)))
    specs = optimize(_map(_map(read, "A"), "B"))
    assert [s.name for s in specs] == ["ReadRange->A->B"]
    assert len(specs[0].stages) == 2 and specs[0].read_tasks is not None


def test_actor_pool_and_different_resources_break_fusion():
    read = Read(name="ReadRange", tasks=tuple(sources.range_tasks(10, 2)))
    specs = optimize(_map(_map(read, "A"), "B", actors=True))
    assert [s.name for s in specs] == ["ReadRange->A", "B"]
    specs = optimize(_map(_map(read, "A"), "G", args=(("num_gpus", 1),)))
    assert [s.name for s in specs] == ["ReadRange->A", "G"]
    assert specs[1].remote_args == {"num_gpus": 1}


def test_select_and_filter_push_down_into_parquet(tmp_path):
    pq.write_table(
        pa.table({"a": [1, 2, 3], "b": [4, 5, 6], "c": [7, 8, 9]}),
        tmp_path / "x.parquet",
        row_group_size=2,
    )
    tasks = tuple(sources.parquet_tasks([str(tmp_path / "x.parquet")], None, None, None, False))
    assert len(tasks) == 2  # one per row group
    read = Read(name="ReadParquet", tasks=tasks)
    select = MapOp(name="Project", inputs=(read,), stage=SelectColumns("Project", ["a"]))
    expr = pc.field("a") > 1
    filt = MapOp(name="Filter", inputs=(select,), stage=FilterRows("Filter", expr=expr))
    specs = optimize(filt)
    assert len(specs) == 1 and specs[0].stages == []  # both went into the reader
    tables = [t for task in specs[0].read_tasks for t in task()]
    assert pa.concat_tables(tables).to_pydict() == {"a": [2, 3]}


def test_run_chain_yields_blocks_then_metadata_and_catches_user_errors():
    stage = MapBatches("MB", UserFn(lambda b: {"x": b["id"] * 2}), batch_size=3)
    items = list(run_chain(None, [stage], (pa.table({"id": list(range(7))}),), 2**30))
    tables, metas = items[0::2], items[1::2]
    assert [t.num_rows for t in tables] == [7]  # the batches' outputs joined into one block
    assert [m.num_rows for m in metas] == [7]
    items = list(run_chain(None, [stage], (pa.table({"id": list(range(7))}),), 24))
    assert [t.num_rows for t in items[0::2]] == [3, 3, 1]  # each batch: 24 bytes, the target

    def boom(batch):
        raise KeyError("bad")

    items = list(run_chain(None, [MapBatches("MB", UserFn(boom))], (pa.table({"a": [1]}),), 2**30))
    assert isinstance(items[-1].error, KeyError) and "boom" in items[-1].error_traceback


def test_block_splitting_and_rebatching():
    assert block.split_sizes(10, 100, 1000) == [10]
    assert block.split_sizes(10, 1000, 300) == [3, 3, 2, 2]
    batches = list(block.rebatch([pa.table({"a": [1, 2]}), pa.table({"a": [3, 4, 5]})], 2))
    assert [b.column("a").to_pylist() for b in batches] == [[1, 2], [3, 4], [5]]


def test_tensor_columns_round_trip_through_batches_and_rows():
    data = np.arange(12).reshape(3, 2, 2)
    table = block.table_from_batch({"t": data, "i": np.arange(3)})
    np.testing.assert_array_equal(block.batch_from_table(table, "numpy")["t"], data)
    rows = list(block.rows_of(table))
    np.testing.assert_array_equal(rows[1]["t"], data[1])
    assert rows[1]["i"] == 1
    assert block.table_from_rows([1, 2]).column_names == ["item"]


def test_back_pressure_stops_at_the_store_budget_but_never_deadlocks():
    limits = Limits(cpu_slots=4, store_budget=100)
    idle = OpUsage(True, 0, 0, True, 0, 60)
    assert choose_op([idle], limits) == 0  # nothing runs: one task may always start
    busy = OpUsage(True, 1, 0, True, 0, 60)
    assert choose_op([busy], limits) is None  # 60 running + 60 more > 100
    # downstream with the smaller queue goes first
    up = OpUsage(True, 0, 0, True, 50, 10)
    down = OpUsage(True, 0, 0, True, 0, 10)
    assert choose_op([up, down], Limits(4, 1000)) == 1
    # CPU slots bound the tasks, not actor calls
    full = OpUsage(True, 4, 0, True, 0, 1)
    actor = OpUsage(True, 0, 4, False, 0, 1)
    assert choose_op([full, actor], Limits(4, 1000)) == 1


def test_actor_pool_grows_only_while_all_busy():
    assert actor_pool_target(0, 2, 4, 0, 5) == 2
    assert actor_pool_target(2, 2, 4, 2, 5) == 3
    assert actor_pool_target(4, 2, 4, 4, 5) == 4
    assert actor_pool_target(3, 2, 4, 1, 5) == 3


def test_slice_plans_boundaries_and_zip_names():
    assert alltoall.slice_plan([3, 0, 4], [2, 5]) == [[(0, 0, 2)], [(0, 2, 3), (2, 0, 4)]]
    bounds = alltoall.boundaries([np.arange(100)], 4)
    assert len(bounds) == 3 and list(bounds) == sorted(bounds)
    assert alltoall.zip_names(["a", "b"], ["b", "c", "b_1"]) == ["b_1", "c", "b_1_1"]


def test_aggregations_merge_exactly():
    values = np.random.default_rng(0).normal(size=1000)
    t = pa.table({"x": values})
    for fn, expected in (
        (agg.Std("x"), np.std(values, ddof=1)),
        (agg.Mean("x"), values.mean()),
        (agg.Sum("x"), values.sum()),
        (agg.Count(), 1000),
    ):
        parts = [fn.accumulate_block(fn.init(None), t.slice(i, 250)) for i in range(0, 1000, 250)]
        acc = parts[0]
        for p in parts[1:]:
            acc = fn.merge(acc, p)
        assert fn.finalize(acc) == pytest.approx(expected)
    grouped = agg.arrow_group_aggregate(
        pa.table({"k": [2, 1, 2], "v": [1.0, 2.0, 5.0]}),
        ["k"],
        [agg.Count(), agg.Mean("v"), agg.Std("v")],
    )
    assert grouped.column_names == ["k", "count()", "mean(v)", "std(v)"]
    assert grouped.column("k").to_pylist() == [1, 2]
    assert grouped.column("mean(v)").to_pylist() == [2.0, 3.0]


def test_concurrency_rules():
    with pytest.raises(ValueError, match="callable class needs concurrency"):
        Compute.from_concurrency(None, True)
    with pytest.raises(ValueError, match="actor pool"):
        Compute.from_concurrency((1, 2), False)
    assert Compute.from_concurrency((1, 3), True) == Compute(True, 1, 3)


def test_the_library_uses_only_rayjupyters_public_api():
    import ast
    from pathlib import Path

    import rayjupyter.data

    for path in Path(rayjupyter.data.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(("rayjupyter.core", "rayjupyter.notebook")), (
                    f"{path.name} imports {name}"
                )


def test_html_tables_use_the_lab_theme():
    from rayjupyter.data.display import table_html

    out = table_html(["a", "<b>"], [[1, "x" * 100]], "caption")
    assert "var(--jp-" in out and "&lt;b&gt;" in out and "..." in out


def test_text_progress_line():
    from rayjupyter.data.progress import OpProgress, TextProgress

    rows = [
        OpProgress("ReadRange->Map", 50, 100, 10.0, 0, 1, False),
        OpProgress("Sort", 0, None, 0.0, 0, 0, False),
    ]
    assert TextProgress.line(rows) == "ReadRange->Map: 50/100 rows | Sort: 0 rows"


def test_compact_copies_only_slices_and_chunked_tables():
    from rayjupyter.core.serialization import serialize

    data = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ones((1000, 128)))
    table = pa.table({"data": data, "id": np.arange(1000)})
    assert block.compact(table) is table  # one chunk of its own buffers: no copy
    piece = block.compact(table.slice(10, 100))
    assert piece.get_total_buffer_size() == piece.nbytes  # not the parent's buffers
    assert serialize(piece).nbytes < table.nbytes // 5
    joined = block.compact(pa.concat_tables([table, table.slice(0, 5)]))
    assert [c.num_chunks for c in joined.columns] == [1, 1] and joined.num_rows == 1005
    np.testing.assert_array_equal(joined["id"].to_numpy()[1000:], np.arange(5))


def test_a_map_task_holds_about_a_read_piece_not_its_whole_range():
    import tracemalloc

    # 64 MiB in one read task, fused with a map_batches, out in 8 MiB blocks
    rows, target = 8192, 8 * 2**20
    (task,) = sources.range_tasks(rows, 1, (1024,))
    double = MapBatches("Double", UserFn(lambda b: {"data": b["data"] * 2}))
    list(run_chain(sources.range_tasks(4, 1, (1024,))[0], [double], (), target))  # imports
    tracemalloc.start()
    try:
        blocks = 0
        for item in run_chain(task, [double], (), target):
            if isinstance(item, pa.Table):
                assert [c.num_chunks for c in item.columns] == [1]  # readers map it as is
                assert item.get_total_buffer_size() == item.nbytes <= target
                blocks += 1
            del item
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert blocks == 8
    # a 16 MiB read piece and one batch's output (was: the 64 MiB range, and as much again
    # in a temporary, plus the pieces and batches already handed on)
    assert peak < 32 * 2**20, peak


def test_a_task_packs_its_batches_into_blocks_and_lets_each_batch_go():
    import weakref

    from rayjupyter.data.stages import coalesce

    made: list[weakref.ref] = []
    held_back: list[int] = []

    def batches():
        for i in range(10):
            held_back.append(sum(ref() is not None for ref in made))
            data = np.full((100, 8), i, dtype=np.float32)  # 3.2 KB with the ids
            made.append(weakref.ref(data))
            yield pa.table({"data": block.array_from_values(data), "i": np.full(100, i)})
            del data
        yield pa.table({"s": ["a string column is joined, not packed"]})

    out = list(coalesce(batches(), 10_000, blocks=True))
    assert held_back == [0] * 10  # each batch copied into its block, not held until it fills
    assert [t.num_rows for t in out] == [250, 250, 250, 250, 1]  # 40 bytes a row
    for table in out[:4]:
        assert [c.num_chunks for c in table.columns] == [1, 1]
        assert table.get_total_buffer_size() == table.nbytes <= 10_000
    ids = np.concatenate([t["i"].to_numpy() for t in out[:4]])
    np.testing.assert_array_equal(ids, np.repeat(np.arange(10), 100))
    data = np.concatenate([block.column_to_numpy(t["data"]) for t in out[:4]])
    np.testing.assert_array_equal(data[:, 0], ids)
    assert out[4].column_names == ["s"]
