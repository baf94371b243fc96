"""Fixtures that start real clusters and fail any test that leaves a process behind."""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
from helpers import assert_no_new_processes, child_pids


@dataclass
class _SharedCluster:
    """The module-scoped cluster, if one is up: its process trees may outlive single tests."""

    active: bool = False
    roots: set[int] = field(default_factory=set)


_SHARED = _SharedCluster()
# attached drivers that go silent are let go after this long (30 s by default): short here so a
# test can watch a killed driver's actors end
os.environ.setdefault("RAYJUPYTER_CLIENT_TIMEOUT_S", "6")
# every node started by a test checks its state machine's invariants after each loop turn
# (NodeState.validate) and stops, saying which one broke, if one does
os.environ.setdefault("RAYJUPYTER_VALIDATE", "1")
# rj.init() with no address attaches to the head this user started with `rayjupyter start
# --head` (named by $RAYJUPYTER_HOME/cluster.json), or to RAYJUPYTER_ADDRESS / RAY_ADDRESS,
# and a HOST:PORT finds its secret in RAYJUPYTER_SECRET: tests start clusters of their own,
# so a developer's running head, environment and home stay out of them (kernels and
# scripts started by tests inherit this)
_TEST_HOME = tempfile.mkdtemp(prefix="rj-test-home-")
os.environ["RAYJUPYTER_HOME"] = _TEST_HOME
for _name in ("RAYJUPYTER_ADDRESS", "RAY_ADDRESS", "RAYJUPYTER_SECRET"):
    os.environ.pop(_name, None)
_PR_SET_CHILD_SUBREAPER = 36


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_TEST_HOME, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    """Adopt orphans: a process whose parent died re-parents to pytest, not to init.

    Without this, a cluster left behind by a killed driver would escape the leak check.
    A test that waits for such orphans to die should use helpers.wait_for_pids_gone,
    which treats zombies as gone and reaps them.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _test_timeout(request: pytest.FixtureRequest) -> float | None:
    """The pytest-timeout limit for this test: marker, then --timeout, then the ini value."""
    marker = request.node.get_closest_marker("timeout")
    value: Any = None
    if marker is not None:
        value = marker.args[0] if marker.args else marker.kwargs.get("timeout")
    if value is None:
        value = request.config.getoption("timeout", None)
    if value is None:
        value = request.config.getini("timeout")
    try:
        timeout = float(value)
    except (TypeError, ValueError):
        return None
    return timeout if timeout > 0 else None


def _rayjupyter_initialized() -> bool:
    rj = sys.modules.get("rayjupyter")
    is_initialized = getattr(rj, "is_initialized", None)
    return bool(is_initialized and is_initialized())


@pytest.fixture(autouse=True)
def _no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test: dump stacks shortly before the timeout, and fail on leftover processes."""
    timeout = _test_timeout(request)
    stream = sys.__stderr__
    if timeout is not None and stream is not None:
        faulthandler.dump_traceback_later(timeout - min(5.0, timeout * 0.1), file=stream)
    before = child_pids()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
    if not _SHARED.active and _rayjupyter_initialized():
        import rayjupyter as rj

        rj.shutdown()
        assert_no_new_processes(before)
        pytest.fail(
            "the test left rayjupyter initialized: use the cluster fixture or rj.shutdown()"
        )
    assert_no_new_processes(before, ignore_roots=_SHARED.roots)


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A fresh local 2-CPU cluster for one test, shut down (and leak-checked) after it."""
    import rayjupyter as rj

    ctx = rj.init(num_cpus=2)
    try:
        yield ctx
    finally:
        rj.shutdown()


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[Any]:
    """One local 2-CPU cluster for a whole module of cheap tests.

    Do not mix it with `cluster` in one module: there is one cluster per driver.
    """
    import rayjupyter as rj

    before = child_pids()
    direct_before = {proc.pid for proc in psutil.Process().children()}
    ctx = rj.init(num_cpus=2)
    _SHARED.roots = {proc.pid for proc in psutil.Process().children()} - direct_before
    _SHARED.active = True
    try:
        yield ctx
    finally:
        _SHARED.active = False
        _SHARED.roots = set()
        rj.shutdown()
        assert_no_new_processes(before)


@contextlib.contextmanager
def shared_notebook_kernel(*setup: str) -> Iterator[Any]:
    """A kernel with the extension loaded and a 2-CPU local cluster, shared by a module.

    Its processes may change between tests (the cluster replaces workers), so the
    per-test leak check ignores them; running_kernel checks they are gone at the end.
    """
    from kernel_helpers import running_kernel

    with running_kernel("%load_ext rayjupyter", "%ray_connect --num-cpus 2", *setup) as kernel:
        _SHARED.roots, _SHARED.active = {kernel.pid}, True
        try:
            yield kernel
        finally:
            _SHARED.roots, _SHARED.active = set(), False


# Notebooks that need an optional package, skipped where it is not installed: torch is the
# `train` extra, which CI does not install (a conftest.py in notebooks/ would shadow this one
# as the `conftest` module that tests import from, so the skip lives here).
_NOTEBOOK_NEEDS = {"train_lenet.ipynb": "torch"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import importlib.util

    for item in items:
        module = _NOTEBOOK_NEEDS.get(item.path.name)
        if module and importlib.util.find_spec(module) is None:
            item.add_marker(pytest.mark.skip(reason=f"needs {module} (not installed)"))
