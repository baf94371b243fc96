"""A real cluster on a machine whose /dev/shm is Docker's default 64 MB.

The driver runs in a mount namespace of its own (``unshare -rm``: a user namespace, so no
root is needed) with a 64 MB tmpfs on /dev/shm: the store falls back to files in the
session's folder, a 229 MB array goes in and comes back zero-copy, a task reads it, the
driver hears why once, the status and the cluster repr show it, and the folder is gone
after shutdown. Skips where user namespaces are not permitted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rayjupyter.core.store_placement import SHM_DIR

_REPO = Path(__file__).resolve().parents[1]
_MOUNT = "mount -t tmpfs -o size=64m tmpfs /dev/shm"


def _unshare_reason() -> str:
    """Why a private 64 MB /dev/shm cannot be made here ("" when it can)."""
    if shutil.which("unshare") is None:
        return "the unshare command is not installed"
    try:
        done = subprocess.run(
            ["unshare", "-rm", "sh", "-c", f"{_MOUNT} && echo ok"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if done.stdout.strip() != "ok":
        return f"user and mount namespaces not permitted: {done.stderr.strip()[:200]}"
    return ""


_REASON = _unshare_reason()
pytestmark = [
    pytest.mark.skipif(bool(_REASON), reason=_REASON),
    pytest.mark.timeout(120),
]

_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import rayjupyter as rj
    from rayjupyter.core import api, cluster_repr
    from rayjupyter.core.object_files import shm_path

    shm = os.statvfs("/dev/shm")
    assert shm.f_blocks * shm.f_frsize == 64 << 20, "not in the 64 MB namespace"
    ctx = rj.init(num_cpus=2)
    array = np.arange(229 * 2**20 // 8, dtype=np.int64)  # 229 MB: more than /dev/shm holds
    ref = rj.put(array)
    value = rj.get(ref)
    path = shm_path(api._client().session, ref.binary())

    @rj.remote
    def check(x):
        return int(x.sum()), x.flags.writeable

    @rj.remote
    def make(n):
        import numpy as np
        return np.full(n, 7, dtype=np.uint8)

    made = rj.get(make.remote(100 << 20))  # a worker writes a value larger than /dev/shm
    status = ctx._live_status()
    out = {
        "read_only": not value.flags.writeable,
        "equal": bool(np.array_equal(value, array)),
        "zero_copy": value.base is not None and not value.flags.owndata,
        "path": path,
        "path_exists": os.path.exists(path),
        "task": list(rj.get(check.remote(ref))),
        "sum": int(array.sum()),
        "made": [int(made.size), int(made[-1]), bool(made.flags.writeable)],
        "directory": status.store.directory,
        "capacity": status.store.capacity,
        "status": cluster_repr.status_text(status),
        "summary": cluster_repr.summary_text(ctx.address, True, status),
        "shm_files": os.listdir("/dev/shm"),
    }
    del value, made
    rj.shutdown()
    print(json.dumps(out))
    """
)


def test_a_229mb_array_with_dockers_64mb_dev_shm(tmp_path: Path) -> None:
    script = tmp_path / "small_shm.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_REPO), *sys.path]))
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f'{_MOUNT} && exec "$0" "$1"', sys.executable, script],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    folder = out["directory"]
    assert folder != SHM_DIR and folder.endswith("/objects"), out
    assert out["path"].startswith(folder + "/") and out["path_exists"]
    assert out["read_only"] and out["equal"] and out["zero_copy"]
    assert out["task"] == [out["sum"], False]  # the task mapped it read-only too
    assert out["made"] == [100 << 20, 7, False]
    assert out["capacity"] > 229 * 2**20  # sized from memory, not from the 64 MB
    assert out["shm_files"] == []  # nothing of ours in the small /dev/shm
    # said once, with the reason and the fix
    assert done.stderr.count("rayjupyter: the object store") == 1, done.stderr
    assert "/dev/shm has 64 MiB free" in done.stderr and "--shm-size=" in done.stderr
    assert "Object store: the object store" in out["status"] and folder in out["status"]
    assert f"in files under {folder} (/dev/shm too small)" in out["summary"]
    # the node's exit removed the fallback folder with the session's
    assert not os.path.exists(folder)
