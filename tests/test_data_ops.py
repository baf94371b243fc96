"""rayjupyter.data on a real cluster: each source, transform and consumer against pandas or
pyarrow doing the same work in this process."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import rayjupyter as rj
import rayjupyter.data as rd
from rayjupyter.data.plan import optimize

pytestmark = pytest.mark.usefixtures("shared_cluster")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(
        {
            "k": rng.integers(0, 5, 300),
            "x": rng.normal(size=300),
            "s": [f"r{i}" for i in range(300)],
        }
    )


def test_range_and_rj_data_access():
    ds = rj.data.range(10, override_num_blocks=3)
    assert ds.take_all() == [{"id": i} for i in range(10)]
    assert ds.count() == 10 and ds.columns() == ["id"]
    t = rd.range_tensor(4, shape=(2, 2)).take(2)
    np.testing.assert_array_equal(t[1]["data"], np.ones((2, 2)))


def test_from_sources_round_trip(frame):
    assert rd.from_items([1, 2]).take_all() == [{"item": 1}, {"item": 2}]
    assert rd.from_items([{"a": 1}, {"a": 2}]).to_pandas().equals(pd.DataFrame({"a": [1, 2]}))
    pd.testing.assert_frame_equal(rd.from_pandas(frame).to_pandas(), frame)
    pd.testing.assert_frame_equal(rd.from_arrow(pa.Table.from_pandas(frame)).to_pandas(), frame)
    arr = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(rd.from_numpy(arr).take_batch(3)["data"], arr)
    refs = [rj.put(pa.table({"a": [1, 2]})), rj.put(pa.table({"a": [3]}))]
    assert rd.from_arrow_refs(refs).sum("a") == 6
    prefs = [rj.put(pd.DataFrame({"a": [1, 2]}))]
    assert rd.from_pandas_refs(prefs).take_all() == [{"a": 1}, {"a": 2}]


def test_read_parquet_folder_with_pushdown(tmp_path, frame):
    for i in range(3):
        pq.write_table(
            pa.Table.from_pandas(frame.iloc[i * 100 : (i + 1) * 100], preserve_index=False),
            tmp_path / f"part-{i}.parquet",
            row_group_size=50,
        )
    (tmp_path / "_SUCCESS").write_text("")
    ds = rd.read_parquet(str(tmp_path))
    assert ds.count() == 300
    pd.testing.assert_frame_equal(ds.to_pandas(), frame)
    ds = rd.read_parquet(str(tmp_path), columns=["k", "x"], filter=pc.field("k") == 3)
    expected = frame[frame.k == 3][["k", "x"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(ds.to_pandas(), expected)
    # select_columns after a read is pushed into it, as is an expression filter
    ds2 = rd.read_parquet(str(tmp_path)).select_columns(["x"]).filter(expr=pc.field("x") > 0)
    (spec,) = optimize(ds2._op)
    assert spec.stages == [] and spec.name.startswith("ReadParquet[")
    assert ds2.to_pandas()["x"].tolist() == frame[frame.x > 0]["x"].tolist()
    assert rd.read_parquet(str(tmp_path), override_num_blocks=2).materialize().num_blocks() == 2


def test_read_text_csv_json_numpy_binary(tmp_path, frame):
    (tmp_path / "a.txt").write_text("x\n\ny\n")
    assert rd.read_text(str(tmp_path / "a.txt")).take_all() == [{"text": "x"}, {"text": "y"}]
    frame.to_csv(tmp_path / "f.csv", index=False)
    got = rd.read_csv(str(tmp_path / "f.csv"), override_num_blocks=4)
    pd.testing.assert_frame_equal(got.to_pandas(), pd.read_csv(tmp_path / "f.csv"))
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl").write_text("\n".join(json.dumps({"v": i}) for i in range(5)))
    assert rd.read_json(str(tmp_path / "j")).sum("v") == 10
    np.save(tmp_path / "n.npy", np.arange(8).reshape(4, 2))
    np.testing.assert_array_equal(
        rd.read_numpy(str(tmp_path / "n.npy")).take_batch(4)["data"], np.arange(8).reshape(4, 2)
    )
    rows = rd.read_binary_files([str(tmp_path / "a.txt")], include_paths=True).take_all()
    assert rows[0]["bytes"] == b"x\n\ny\n" and rows[0]["path"].endswith("a.txt")


def test_read_images(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((4, 3, 3), 9, np.uint8)).save(tmp_path / "a.png")
    (img,) = rd.read_images(str(tmp_path)).take_all()
    assert img["image"].shape == (4, 3, 3) and int(img["image"].max()) == 9


def test_row_and_batch_transforms_match_pandas(frame):
    ds = rd.from_pandas(frame, override_num_blocks=4)
    out = (
        ds.map(lambda r: {**r, "y": r["x"] * 2})
        .filter(lambda r: r["k"] != 0)
        .map_batches(
            lambda df, c: df.assign(z=df.y + c), batch_format="pandas", batch_size=7, fn_args=(1.0,)
        )
        .add_column("w", lambda df: df["k"] * 10)
        .drop_columns(["s"])
        .rename_columns({"z": "zz"})
        .to_pandas()
    )
    exp = frame.assign(y=frame.x * 2)[frame.k != 0].reset_index(drop=True)
    exp = exp.assign(z=exp.y + 1.0).assign(w=exp.k * 10).drop(columns=["s"])
    pd.testing.assert_frame_equal(out, exp.rename(columns={"z": "zz"}))
    flat = rd.range(3).flat_map(lambda r: [r, r]).take_all()
    assert [r["id"] for r in flat] == [0, 0, 1, 1, 2, 2]
    fmt = rd.range(4).map_batches(
        lambda t: t.append_column("n", pc.negate(t["id"])), batch_format="pyarrow", batch_size=None
    )
    assert fmt.select_columns(["n"]).take_batch(4)["n"].tolist() == [0, -1, -2, -3]


def test_limit_union_zip_and_splits():
    ds = rd.range(20, override_num_blocks=4)
    assert ds.limit(7).count() == 7 and [r["id"] for r in ds.limit(7).take_all()] == list(range(7))
    assert [r["id"] for r in ds.union(rd.range(2)).take_all()] == [*list(range(20)), 0, 1]
    zipped = ds.zip(rd.range(20, override_num_blocks=3).map(lambda r: {"id": -r["id"]}))
    assert zipped.columns() == ["id", "id_1"]
    assert all(r["id"] == -r["id_1"] for r in zipped.take_all())
    parts = ds.split(3, equal=True)
    assert [p.count() for p in parts] == [6, 6, 6]
    _a, b, c = ds.split_at_indices([5, 12])
    assert [r["id"] for r in b.take_all()] == list(range(5, 12)) and c.count() == 8
    train, test = ds.train_test_split(0.25)
    assert train.count() == 15 and [r["id"] for r in test.take_all()] == list(range(15, 20))
    assert sum(p.count() for p in ds.split(3)) == 20
    assert ds.repartition(3).materialize().num_blocks() == 3
    assert sorted(r["id"] for r in ds.repartition(5, shuffle=True).take_all()) == list(range(20))


def test_shuffles_and_sort(frame):
    ds = rd.from_pandas(frame, override_num_blocks=5)
    a = ds.random_shuffle(seed=3).to_pandas()
    b = ds.random_shuffle(seed=3).to_pandas()
    pd.testing.assert_frame_equal(a, b)
    assert sorted(a.s) == sorted(frame.s) and a.s.tolist() != frame.s.tolist()
    assert sorted(r["id"] for r in rd.range(10).randomize_block_order(seed=1).take_all()) == list(
        range(10)
    )
    got = ds.sort("x", descending=True).to_pandas()
    pd.testing.assert_frame_equal(
        got, frame.sort_values("x", ascending=False).reset_index(drop=True)
    )


def test_groupby_and_aggregates_match_pandas(frame):
    ds = rd.from_pandas(frame, override_num_blocks=4)
    g = frame.groupby("k")
    assert ds.groupby("k").count().to_pandas()["count()"].tolist() == g.size().tolist()
    for name in ("sum", "min", "max", "mean", "std"):
        got = getattr(ds.groupby("k"), name)("x").to_pandas()
        assert got["k"].tolist() == sorted(frame.k.unique())
        np.testing.assert_allclose(got[f"{name}(x)"], getattr(g.x, name)().values)
    assert ds.sum("x") == pytest.approx(frame.x.sum())
    assert ds.std("x") == pytest.approx(frame.x.std())
    assert ds.min(["x", "k"]) == {"min(x)": frame.x.min(), "min(k)": frame.k.min()}
    assert ds.mean("x") == pytest.approx(frame.x.mean())
    assert sorted(ds.unique("k")) == sorted(frame.k.unique())
    custom = rd.AggregateFn(
        init=lambda k: 0, accumulate_row=lambda a, r: a + 1, merge=lambda a, b: a + b, name="n"
    )
    assert ds.aggregate(custom) == {"n": 300}
    sizes = (
        ds.groupby("k")
        .map_groups(
            lambda df: pd.DataFrame({"k": [df.k.iloc[0]], "n": [len(df)]}), batch_format="pandas"
        )
        .to_pandas()
    )
    assert sizes.n.tolist() == g.size().tolist()
    assert ds.groupby("k").aggregate(custom).to_pandas()["n"].tolist() == g.size().tolist()


def test_consumption_apis(frame):
    ds = rd.from_pandas(frame, override_num_blocks=3)
    sizes = [len(b["x"]) for b in ds.iter_batches(batch_size=64, prefetch_batches=2)]
    assert sizes == [64, 64, 64, 64, 44]
    assert len(list(ds.iter_batches(batch_size=64, drop_last=True))) == 4
    shuffled = pd.concat(
        ds.iter_batches(
            batch_size=50,
            batch_format="pandas",
            local_shuffle_buffer_size=100,
            local_shuffle_seed=0,
        )
    )
    assert sorted(shuffled.s) == sorted(frame.s) and shuffled.s.tolist() != frame.s.tolist()
    assert len(list(ds.iter_rows())) == 300
    assert ds.take(2) == frame.head(2).to_dict("records")
    assert isinstance(ds.take_batch(5, batch_format="pandas"), pd.DataFrame)
    assert ds.schema().names == ["k", "x", "s"]
    m = ds.map_batches(lambda b: b).materialize()
    assert m.count() == 300 and "Operator" in m.stats()
    assert "num_rows=300" in repr(m) and "var(--jp-" in m._repr_html_()
    tables = rj.get(ds.to_arrow_refs())
    assert sum(t.num_rows for t in tables) == 300
    arrays = rj.get(ds.to_numpy_refs(column="x"))
    np.testing.assert_allclose(np.concatenate(arrays), frame.x)
    with pytest.raises(ValueError, match="limit"):
        ds.take_all(limit=10)


def test_writers_round_trip(tmp_path, frame):
    ds = rd.from_pandas(frame, override_num_blocks=3)
    ds.write_parquet(str(tmp_path / "pq"))
    assert len(list((tmp_path / "pq").iterdir())) == 3
    pd.testing.assert_frame_equal(
        rd.read_parquet(str(tmp_path / "pq")).sort("s").to_pandas(),
        frame.sort_values("s").reset_index(drop=True),
    )
    ds.write_csv(str(tmp_path / "csv"))
    assert rd.read_csv(str(tmp_path / "csv")).count() == 300
    ds.write_json(str(tmp_path / "json"))
    assert rd.read_json(str(tmp_path / "json")).sum("k") == frame.k.sum()
    rd.range_tensor(6, shape=(2,)).write_numpy(str(tmp_path / "np"), column="data")
    assert rd.read_numpy(str(tmp_path / "np")).count() == 6


def test_a_write_behind_map_batches_makes_a_file_per_block_not_per_batch(tmp_path):
    # fused behind map_batches the writer sees one table per batch: joined into blocks first
    ds = rd.range(3_000, override_num_blocks=3).map_batches(lambda b: b, batch_size=100)
    ds.write_parquet(str(tmp_path / "pq"))
    files = sorted((tmp_path / "pq").iterdir())
    assert len(files) == 3
    assert sorted(rd.read_parquet(str(tmp_path / "pq")).to_pandas()["id"]) == list(range(3_000))


def test_user_error_raises_its_type_naming_the_operator():
    def bad(batch):
        raise ZeroDivisionError("no rows today")

    with pytest.raises(ZeroDivisionError, match="no rows today") as info:
        rd.range(10).map_batches(bad).take_all()
    assert any("MapBatches(bad)" in note for note in getattr(info.value, "__notes__", []))


def test_max_errored_blocks_drops_failing_blocks():
    def flaky(batch):
        if batch["id"][0] == 0:
            raise ValueError("first block")
        return batch

    ctx = rd.DataContext.get_current()
    ctx.max_errored_blocks = 1
    try:
        assert rd.range(10, override_num_blocks=5).map_batches(flaky).count() == 8
    finally:
        ctx.max_errored_blocks = 0


class AddOne:
    def __init__(self, offset: int) -> None:
        import os

        self.pid = os.getpid()
        self.offset = offset

    def __call__(self, batch):
        return {"id": batch["id"] + self.offset, "pid": np.full(len(batch["id"]), self.pid)}


def test_actor_pool_is_created_once_and_reused():
    out = (
        rd.range(40, override_num_blocks=8)
        .map_batches(AddOne, fn_constructor_args=(1,), concurrency=2, batch_size=5, num_cpus=0.5)
        .take_all()
    )
    assert sorted(r["id"] for r in out) == list(range(1, 41))
    assert len({r["pid"] for r in out}) <= 2  # 8 blocks, 2 actors, each made once
    with pytest.raises(ValueError, match="concurrency"):
        rd.range(4).map_batches(AddOne)
    grown = rd.range(40, override_num_blocks=8).map_batches(
        AddOne, fn_constructor_args=(0,), concurrency=(1, 2), batch_size=5, num_cpus=0.5
    )
    rows = grown.take_all()
    assert sorted(r["id"] for r in rows) == list(range(40))
    assert 1 <= len({r["pid"] for r in rows}) <= 2  # from one actor up to two, never more


def test_streaming_split_feeds_every_row_once():
    its = rd.range(30, override_num_blocks=6).streaming_split(2)
    seen = []
    for it in its:  # one consumer after the other: dynamic split hands out all blocks
        seen += [r["id"] for r in it.iter_rows()]
    assert sorted(seen) == list(range(30))
    eq = rd.range(31, override_num_blocks=4).streaming_split(2, equal=True)
    counts = [sum(len(b["id"]) for b in it.iter_batches()) for it in eq]
    assert counts == [15, 15]


def test_rj_data_does_not_import_pandas():
    import subprocess
    import sys

    code = "import sys, rayjupyter as rj; rj.data.range; print('pandas' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


@rj.remote
def _count_in_a_task(ds):
    return ds.filter(lambda r: r["id"] % 2 == 0).count()


def test_a_dataset_can_be_passed_to_a_task():
    assert rj.get(_count_in_a_task.remote(rd.range(10)), timeout=60) == 5


def test_take_stops_a_long_pipeline_early():
    def slow(batch):
        import time

        time.sleep(2)  # every block after the first would take this long
        return batch

    ds = rd.range(1000, override_num_blocks=50).map_batches(slow, batch_size=None)
    assert [r["id"] for r in ds.take(3)] == [0, 1, 2]  # 50 blocks x 2 s on 2 CPUs: 50 s


def test_an_error_in_map_groups_names_its_operator():
    def bad(group):
        raise LookupError("no such group")

    with pytest.raises(LookupError, match="no such group") as info:
        rd.range(10).groupby("id").map_groups(bad).take_all()
    assert any("MapGroups(bad)" in note for note in info.value.__notes__)


def test_iter_torch_batches():
    ds = rd.range(10, override_num_blocks=2)
    try:
        import torch
    except ImportError:
        with pytest.raises(ImportError, match="pip install torch"):
            next(ds.iter_torch_batches(batch_size=4))
        return
    batches = list(ds.iter_torch_batches(batch_size=4))
    assert [len(b["id"]) for b in batches] == [4, 4, 2]
    assert isinstance(batches[0]["id"], torch.Tensor)


def _in_shared_memory(table: pa.Table) -> list[bool]:
    """Whether the first column's data buffer lies in a shared mapping of this process."""
    return [_shared_address(table.column(0).chunk(0).buffers()[1].address)] * table.num_rows


def _shared_address(address: int) -> bool:
    with open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(part, 16) for part in fields[0].split("-"))
            if low <= address < high:
                return fields[1][3] == "s"
    return False


def test_map_batches_output_reaches_the_consumer_without_a_copy():
    # 8 batches per task, joined into one block: one chunk, so batch_size=None maps it as
    # is (a block of 8 chunks was copied into one array in the driver)
    ds = rd.range_tensor(4096, shape=(256,), override_num_blocks=2).map_batches(
        lambda b: {"data": b["data"] * 2}, batch_size=256
    )
    seen = 0
    for batch in ds.iter_batches(batch_size=None):
        data = batch["data"]
        assert data.shape == (2048, 256) and not data.flags.writeable
        assert _shared_address(data.__array_interface__["data"][0])
        np.testing.assert_array_equal(data[:, 0], 2 * np.arange(seen, seen + 2048))
        seen += len(data)
    assert seen == 4096


def test_blocks_cut_from_a_larger_table_carry_only_their_rows():
    from rayjupyter.core import api, queries

    ctx = rd.DataContext.get_current()
    target, ctx.target_max_block_size = ctx.target_max_block_size, 2**20
    try:
        before = queries.store_stats(api._client()).used_bytes
        ds = rd.range_tensor(1024, shape=(1024,), override_num_blocks=1).materialize()
        stored = queries.store_stats(api._client()).used_bytes - before
    finally:
        ctx.target_max_block_size = target
    assert ds.num_blocks() == 8 and ds.count() == 1024
    # 8 MiB of rows in 8 blocks: about 8 MiB stored, not each block with all 8 MiB
    assert stored < 12 * 2**20, stored


def test_the_next_operator_reads_blocks_zero_copy():
    # different num_cpus: two operators, so each block crosses the store between them
    ds = rd.range(200_000, override_num_blocks=2).map_batches(
        lambda t: t.append_column("shared", pa.array(_in_shared_memory(t))),
        batch_format="pyarrow",
        batch_size=None,
        zero_copy_batch=True,
        num_cpus=0.5,
    )
    assert len(optimize(ds._op)) == 2
    assert ds.select_columns(["shared"]).to_pandas()["shared"].all()
