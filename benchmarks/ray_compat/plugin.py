"""Ray's test fixtures, written here over the public API; a pytest plugin (``-p``).

The same fixtures run on both sides: ``import ray`` is the shim (rayjupyter) or Ray itself,
whichever is first on the path. Fixtures that need Ray's internals (the GCS error pubsub,
a gRPC proxy) skip on both sides. Defaults follow Ray's conftest: one CPU, a 150 MiB store.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from benchmarks.ray_compat.internals import SKIP_PREFIX

TARGET = os.environ.get("RAY_COMPAT_TARGET", "ray")


def _patch_ray_version_skew() -> None:
    """Ray's own files of other versions name helpers where the installed Ray moved them."""
    if TARGET != "ray":
        return
    import ray._common.test_utils as common
    import ray._private.test_utils as private

    for name in ("SignalActor", "Semaphore", "wait_for_condition", "run_string_as_driver"):
        if not hasattr(private, name) and hasattr(common, name):
            setattr(private, name, getattr(common, name))
    try:  # moved from ray._private to ray._common
        importlib.import_module("ray._private.ray_option_utils")
    except ImportError:
        option_utils = importlib.import_module("ray._common.ray_option_utils")
        sys.modules["ray._private.ray_option_utils"] = option_utils
        setattr(sys.modules["ray._private"], "ray_option_utils", option_utils)  # noqa: B010
    if "ray.tests.client_test_utils" not in sys.modules:  # not in Ray's wheel
        tests = types.ModuleType("ray.tests")
        tests.__path__ = []
        client = types.ModuleType("ray.tests.client_test_utils")
        client.create_remote_signal_actor = lambda _ray: common.SignalActor  # type: ignore[attr-defined]
        tests.client_test_utils = client  # type: ignore[attr-defined]
        sys.modules["ray.tests"] = tests
        sys.modules["ray.tests.client_test_utils"] = client


_patch_ray_version_skew()

DEFAULTS: dict[str, Any] = {"num_cpus": 1, "object_store_memory": 150 * 1024 * 1024}


def _start(request: Any, **defaults: Any) -> Any:
    kwargs = dict(DEFAULTS)
    kwargs.update(defaults)
    kwargs.update(getattr(request, "param", None) or {})
    return ray.init(**kwargs)


RESULTS = os.environ.get("RAY_COMPAT_RESULTS")


def pytest_runtest_logreport(report: Any) -> None:
    """Each test's outcome, appended as it is known: kept even if pytest dies later."""
    if not RESULTS:
        return
    if report.when != "call" and report.outcome == "passed":
        return  # setup/teardown that passed: the call's report says how the test went
    if report.outcome == "skipped":
        outcome = "skipped"
        longrepr = report.longrepr
        message = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
    elif report.outcome == "passed":
        outcome, message = "passed", ""
    else:
        outcome = "failed" if report.when == "call" else "error"
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else report.longreprtext[-500:]
    record = {
        "name": report.nodeid.split("::", 1)[-1],
        "when": report.when,
        "outcome": outcome,
        "message": message[:500],
        "seconds": round(report.duration, 3),
    }
    with open(RESULTS, "a") as out:
        out.write(json.dumps(record) + "\n")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: Any) -> bool | None:
    """Run ``async def`` tests on a fresh event loop (what pytest-asyncio does for Ray's)."""
    function = pyfuncitem.obj
    if not inspect.iscoroutinefunction(function):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(function(**{n: pyfuncitem.funcargs[n] for n in names}))
    return True


#: tests (by name, or by name with its parameters) that reach Ray's internals in a way the
#: shim cannot see (inside a worker, through Ray's environment variables or _system_config):
#: skipped on rayjupyter's side, with the reason
INTERNAL_TESTS = {
    "test_worker_exit_after_parent_raylet_dies": "RAY_RAYLET_PID (the raylet's process id "
    "in each worker's environment)",
    "test_list_named_actors_timeout": "RAY_testing_asio_delay_us (the GCS's fault injection)",
    "test_worker_start_timeout": "RAY_testing_asio_delay_us (the GCS's fault injection)",
    "test_task_failure_when_driver_local_raylet_dies": "ray.experimental.internal_kv in a "
    "task, then kill_raylet",
    "test_object_lost_error[True]": "_system_config record_ref_creation_sites (where each "
    "ref was made, in the error)",
    "test_streaming_object_ref_generator_basic_unit": "a mock of Ray's core worker",
    "test_streaming_object_ref_generator_task_failed_unit": "a mock of Ray's core worker",
    "test_next_sync_timeout_when_generator_ref_unavailable": "RAY_max_direct_call_object_size "
    "(the inlining threshold) and ObjectRefGenerator._next_sync",
    "test_get_correct_node_ip": "ray._private.services' node IP lookup, patched",
}


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if TARGET != "rayjupyter":
        return
    for item in items:
        reason = INTERNAL_TESTS.get(item.name) or INTERNAL_TESTS.get(item.originalname)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=SKIP_PREFIX + reason))


@pytest.fixture
def shutdown_only() -> Iterator[None]:
    yield None
    ray.shutdown()


@pytest.fixture
def ray_start_regular(request: Any) -> Iterator[Any]:
    yield _start(request)
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_start_regular_shared(request: Any) -> Iterator[Any]:
    yield _start(request)
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_start_shared_local_modes(request: Any) -> Iterator[Any]:
    """Ray runs these in local mode too; here only in the normal mode, on both sides."""
    yield _start(request)
    ray.shutdown()


@pytest.fixture
def ray_start_2_cpus(request: Any) -> Iterator[Any]:
    yield _start(request, num_cpus=2)
    ray.shutdown()


@pytest.fixture
def ray_start_10_cpus(request: Any) -> Iterator[Any]:
    yield _start(request, num_cpus=10)
    ray.shutdown()


def _cluster(request: Any, do_init: bool, num_nodes: int) -> Iterator[Any]:
    import ray.cluster_utils

    params = dict(getattr(request, "param", None) or {})
    do_init = params.pop("do_init", do_init)
    num_nodes = params.pop("num_nodes", num_nodes)
    cluster = ray.cluster_utils.Cluster()
    for i in range(num_nodes):
        if i > 0:
            params.pop("_system_config", None)
        cluster.add_node(**params)
        if i == 0 and do_init:
            ray.init(address=cluster.address)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def ray_start_cluster(request: Any) -> Iterator[Any]:
    yield from _cluster(request, do_init=False, num_nodes=0)


@pytest.fixture
def ray_start_cluster_head(request: Any) -> Iterator[Any]:
    yield from _cluster(request, do_init=True, num_nodes=1)


@pytest.fixture
def ray_start_cluster_2_nodes(request: Any) -> Iterator[Any]:
    yield from _cluster(request, do_init=True, num_nodes=2)


@pytest.fixture
def call_ray_start(request: Any) -> Iterator[str]:
    """Ray's ``ray start --head`` for a test: a one-node cluster not connected to, its address."""
    import ray.cluster_utils

    cluster = ray.cluster_utils.Cluster()
    cluster.add_node(num_cpus=1)
    try:
        yield str(cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def ray_start_cluster_enabled(request: Any) -> Iterator[Any]:
    yield from _cluster(request, do_init=False, num_nodes=0)


@pytest.fixture
def set_enable_auto_connect(request: Any, monkeypatch: Any) -> Iterator[str]:
    value = getattr(request, "param", "1")
    monkeypatch.setenv("RAY_ENABLE_AUTO_CONNECT", value)
    yield value


@pytest.fixture
def error_pubsub() -> None:
    pytest.skip("needs Ray internals: the GCS error pubsub (error_pubsub fixture)")


@pytest.fixture
def log_pubsub() -> None:
    pytest.skip("needs Ray internals: the GCS log pubsub (log_pubsub fixture)")


@pytest.fixture
def start_http_proxy() -> None:
    pytest.skip("needs Ray internals: gRPC through an HTTP proxy (start_http_proxy fixture)")


@pytest.fixture
def maybe_setup_external_redis() -> None:
    """Ray's external-Redis GCS mode is not measured here."""
