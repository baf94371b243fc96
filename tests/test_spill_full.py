"""A node whose store is full and whose spill directory cannot take more: results, puts and
restores end with a clear ObjectStoreFullError (or the value), never a hang or a node error.

The spill directory is made unusable by putting a file where it goes (works as root too,
unlike permissions); tests/chaos/test_chaos_spill.py does the same with a full tmpfs.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rayjupyter as rj
from rayjupyter.core import discovery
from rayjupyter.core.config import session_dir
from rayjupyter.core.exceptions import ObjectStoreFullError

MIB = 1 << 20


@rj.remote(max_retries=0)
def block(i: int) -> np.ndarray:
    return np.full(MIB // 8, i, dtype=np.int64)


@rj.remote(max_retries=0)
def first(a: np.ndarray) -> int:
    return int(a[0])


@pytest.fixture
def no_spill() -> Iterator[Any]:
    """A 4 MiB store whose spill directory is a plain file: every spill fails."""
    ctx = rj.init(num_cpus=1, object_store_memory=4 * MIB)
    try:
        record = next(r for r in discovery.list_local_clusters() if r["address"] == ctx.address)
        spill = Path(session_dir(str(record["session"]))) / "spill"
        shutil.rmtree(spill, ignore_errors=True)
        spill.write_bytes(b"")
        yield ctx
    finally:
        rj.shutdown()


def test_results_that_cannot_be_stored_fail_clearly_and_the_node_recovers(
    no_spill: Any,
) -> None:
    refs = [block.remote(i) for i in range(8)]  # 8 MiB kept in a 4 MiB store
    ok, full, lost = 0, [], []
    for i, ref in enumerate(refs):
        try:
            value = rj.get(ref, timeout=20)  # a hang is a GetTimeoutError: the test fails
        except ObjectStoreFullError as exc:
            full.append(str(exc))
            lost.append(ref)
            continue
        assert int(value[0]) == i
        ok += 1
        del value
    assert ok >= 2 and full, (ok, full)
    assert all("object_store_memory" in text and "spill" in text for text in full), full[0]
    # a task that depends on a result that could not be stored fails with the same error
    with pytest.raises(ObjectStoreFullError):
        rj.get(first.remote(lost[0]), timeout=20)
    # a driver's puts the node has no room for: a task reading one fails the same way
    # (the driver itself may still read its own, mapped before the node refused it)
    puts = [rj.put(np.full(MIB // 8, 7, dtype=np.int64)) for _ in range(4)]
    refused = 0
    for ref in puts:
        try:
            assert rj.get(first.remote(ref), timeout=20) == 7
        except ObjectStoreFullError:
            refused += 1
    assert refused, "the puts should not fit"
    del refs, lost, puts
    assert [int(a[0]) for a in rj.get([block.remote(100), block.remote(101)], timeout=30)] == [
        100,
        101,
    ]  # with the refs dropped there is room again
