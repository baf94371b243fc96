"""Chaos: the spill directory's disk is full.

A node with a small object store spills its least recently used objects to
``/tmp/rayjupyter/<session>/spill``; here that directory is a 2 MiB tmpfs (mounted over it
once the node runs: root only, skipped elsewhere), so spilling fails with ENOSPC. Tasks
return 1 MiB arrays that the driver keeps: each must come back right or fail with a clear
``ObjectStoreFullError``, none may hang (lost), and once the driver lets go of them the node
serves new work again (recovery).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from chaos_cluster import chaos_seconds, chaos_seed
from chaos_report import reporter

import rayjupyter as rj
from rayjupyter.core import discovery
from rayjupyter.core.config import session_dir
from rayjupyter.core.exceptions import ObjectStoreFullError

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]
MIB = 1 << 20


def _can_mount() -> str:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "mounting a tmpfs needs root and mount(8)"
    return ""


@rj.remote(max_retries=0)
def block(i: int) -> np.ndarray:
    return np.full(MIB // 8, i, dtype=np.int64)


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[Any]:
    why = _can_mount()
    if why:
        pytest.skip(why)
    ctx = rj.init(num_cpus=2, object_store_memory=4 * MIB)
    record = next(r for r in discovery.list_local_clusters() if r["address"] == ctx.address)
    spill = Path(session_dir(str(record["session"]))) / "spill"
    spill.mkdir(mode=0o700, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(spill)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        rj.shutdown()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield ctx
    finally:
        with contextlib.suppress(Exception):
            rj.shutdown()
        subprocess.run(["umount", "-l", str(spill)], capture_output=True, check=False)
        shutil.rmtree(spill.parent, ignore_errors=True)


def test_spill_disk_full(small_store: Any, request: pytest.FixtureRequest) -> None:
    report = reporter(request.config)
    report.seed = chaos_seed()
    row = report.fault(request.node.nodeid, "spill_disk_full", "loopback")
    row.duplicates_allowed = False
    began = time.monotonic()
    while True:
        fault_at = time.monotonic()
        refs = [block.remote(i) for i in range(12)]  # 12 MiB kept: 4 in memory, 2 on disk
        first_error: float | None = None
        deadline = time.monotonic() + 8
        for i, ref in enumerate(refs):
            try:
                value = rj.get(ref, timeout=max(0.1, deadline - time.monotonic()))
            except ObjectStoreFullError:
                row.clear_errors += 1
                first_error = first_error or time.monotonic()
                continue
            except Exception as exc:  # a hang (GetTimeoutError) or an unclear error: lost
                row.lost += 1
                row.notes.append(f"task {i}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            if int(value[0]) == i and value.shape == (MIB // 8,):
                row.ok += 1
            else:
                row.lost += 1
            del value
        row.tasks += len(refs)
        row.runs += 1
        row.faults += 1
        if first_error is not None:
            row.detect_s.append(first_error - fault_at)
        del refs
        if row.lost:
            break
        healed = time.monotonic()
        again = rj.get([block.remote(100 + i) for i in range(2)], timeout=30)  # room again
        assert [int(a[0]) for a in again] == [100, 101]
        row.recover_s.append(time.monotonic() - healed)
        del again
        if row.lost or time.monotonic() - began >= chaos_seconds():
            break
    row.seconds += time.monotonic() - began
    assert row.lost == 0, row.notes
    assert row.clear_errors > 0, "the tmpfs never filled: the fault did not happen"
