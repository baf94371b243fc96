"""rayjupyter.data against the store's limits and across nodes: a dataset three times the
object store streams through map_batches, an actor pool and write_parquet with the store's
use bounded and nothing spilled; on three nodes read tasks spread and the result is exact."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from cluster_helpers import alive_nodes, started_nodes
from helpers import wait_for_condition

import rayjupyter as rj
import rayjupyter.data as rd
from rayjupyter.core import api, queries

pytestmark = pytest.mark.timeout(120)

STORE = 64 << 20
BLOCK = 4 << 20  # 48 blocks of 4 MiB: 192 MiB, three times the store


class _Sampler:
    """Polls the store's use from a second thread while a dataset runs."""

    def __init__(self) -> None:
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = api._client()
        while not self.stop.is_set():
            self.peak = max(self.peak, queries.store_stats(client).used_bytes)
            self.stop.wait(0.02)

    def __enter__(self) -> _Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@pytest.fixture
def small_store() -> Iterator[Any]:
    ctx = rj.init(num_cpus=2, object_store_memory=STORE)
    try:
        yield ctx
    finally:
        rj.shutdown()


def make_block(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(batch["id"])
    return {"id": batch["id"], "data": np.full((n, BLOCK // 8), 1, dtype=np.int64)}


class Halve:
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            "id": batch["id"],
            "data": batch["data"] // 1,
            "pid": np.full(len(batch["id"]), os.getpid()),
        }


def test_three_times_the_store_streams_through_bounded(small_store: Any, tmp_path) -> None:
    ds = (
        rd.range(48, override_num_blocks=48)
        .map_batches(make_block, batch_size=1)
        .map_batches(Halve, concurrency=1, batch_size=None, num_cpus=0.5)
    )
    rows = 0
    with _Sampler() as sampler:
        for batch in ds.iter_batches(batch_size=None):
            rows += len(batch["id"])
            assert int(batch["data"][0, 0]) == 1
    assert rows == 48
    stats = queries.store_stats(api._client())
    assert stats.spill_count == 0, stats
    assert 0 < sampler.peak <= STORE * 0.75, sampler.peak  # budget (half) plus blocks in use

    with _Sampler() as sampler:
        ds.drop_columns(["data"]).write_parquet(str(tmp_path / "out"))
    assert sum(pq.read_metadata(p).num_rows for p in (tmp_path / "out").iterdir()) == 48
    assert queries.store_stats(api._client()).spill_count == 0
    assert sampler.peak <= STORE * 0.75, sampler.peak


def test_three_nodes_spread_reads_and_the_result_is_exact() -> None:
    with started_nodes(num_cpus=1) as started:
        for _ in range(2):
            started.join(num_cpus=1, object_store_memory=256 << 20)
        wait_for_condition(lambda: alive_nodes() == 3, timeout=20)

        def tag(batch: dict[str, np.ndarray]) -> dict[str, Any]:
            import time

            time.sleep(0.2)  # long enough that one node cannot take every block
            node = rj.get_runtime_context().get_node_id()
            return {"id": batch["id"] * 3, "node": [node] * len(batch["id"])}

        ds = rd.range(3000, override_num_blocks=12).map_batches(tag, batch_size=None)
        rows = ds.take_all()
        assert sorted(r["id"] for r in rows) == [3 * i for i in range(3000)]
        assert len({r["node"] for r in rows}) >= 2
        assert ds.sum("id") == 3 * sum(range(3000))
