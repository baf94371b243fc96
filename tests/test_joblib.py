"""The joblib backend on a real cluster: scikit-learn's search, task events, shared arrays,
errors and cancellation."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import wait_for_condition

joblib = pytest.importorskip("joblib")
sklearn = pytest.importorskip("sklearn")

import rayjupyter as rj  # noqa: E402
from rayjupyter.util import state  # noqa: E402
from rayjupyter.util.joblib import SHARE_THRESHOLD, register_rayjupyter  # noqa: E402

pytestmark = [pytest.mark.usefixtures("shared_cluster"), pytest.mark.timeout(120)]

register_rayjupyter()


def square(i):
    return i * i


def _tasks(name):
    return state.list_tasks(filters=[("name", "=", name)], limit=10_000)


def test_plain_parallel_returns_results_in_order_on_the_cluster_cpus():
    with joblib.parallel_backend("rayjupyter"):
        assert joblib.effective_n_jobs(-1) == rj.cluster_resources()["CPU"] == 2
        results = joblib.Parallel(n_jobs=-1)(joblib.delayed(square)(i) for i in range(40))
    assert results == [i * i for i in range(40)]
    assert _tasks("square"), "the batches ran as tasks named after their function"


def _digits_search(n_jobs):
    from scipy.stats import loguniform
    from sklearn.datasets import load_digits
    from sklearn.model_selection import RandomizedSearchCV
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    space = {"C": loguniform(1e-2, 1e2), "gamma": loguniform(1e-4, 1e-1)}
    search = RandomizedSearchCV(SVC(), space, n_iter=6, cv=3, random_state=0, n_jobs=n_jobs)
    return search.fit(X, y)


def test_sklearn_search_finds_the_same_parameters_and_its_fits_are_tasks():
    sequential = _digits_search(n_jobs=1)
    before = len(_tasks("_fit_and_score"))
    with joblib.parallel_backend("rayjupyter"):
        parallel = _digits_search(n_jobs=-1)
    assert parallel.best_params_ == sequential.best_params_
    assert parallel.best_score_ == pytest.approx(sequential.best_score_)
    fits = _tasks("_fit_and_score")
    assert len(fits) > before
    assert {row["state"] for row in fits} == {"FINISHED"}


def wait_then_look(X, i, gate):
    """Hold the batch until the test has counted the store's objects; then report what the
    task received: a read-only array is a zero-copy view of the shared-memory object."""
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return float(X[i].sum()), bool(X.flags.writeable)


def _big_objects(nbytes):
    return [row for row in state.list_objects(limit=10_000) if row["object_size"] >= nbytes]


def test_a_large_argument_is_stored_once_for_all_batches(tmp_path):
    X = np.random.default_rng(0).random((1000, 1000))  # 8 MB: out of line, in shared memory
    assert X.nbytes > SHARE_THRESHOLD
    gate = str(tmp_path / "go")
    with joblib.parallel_backend("rayjupyter"):
        outputs = joblib.Parallel(
            n_jobs=2, batch_size=1, pre_dispatch="all", return_as="generator"
        )(joblib.delayed(wait_then_look)(X, i, gate) for i in range(8))
        # all eight batches are submitted now, every one holding X: the store has one copy
        big = _big_objects(X.nbytes)
        assert len(big) == 1, big
        assert big[0]["where"] == "shared memory"
        open(gate, "w").close()
        results = list(outputs)
    assert [total for total, _ in results] == pytest.approx(X[:8].sum(axis=1).tolist())
    assert not any(writeable for _, writeable in results), "tasks got a zero-copy view"
    # the call is over: its shared copy is freed
    wait_for_condition(lambda: not _big_objects(X.nbytes), timeout=10)


def fail_or_sleep(i, marker_dir):
    if i == 0:
        raise KeyError(f"item {i} is bad")
    open(os.path.join(marker_dir, str(i)), "w").close()
    time.sleep(60)
    return i


def test_an_error_raises_its_type_in_the_caller_and_cancels_the_rest(tmp_path):
    started = time.monotonic()
    with (
        joblib.parallel_backend("rayjupyter"),
        pytest.raises(KeyError, match="item 0 is bad") as caught,
    ):
        joblib.Parallel(n_jobs=2, batch_size=1, pre_dispatch="all")(
            joblib.delayed(fail_or_sleep)(i, str(tmp_path)) for i in range(6)
        )
    assert isinstance(caught.value, rj.exceptions.RayTaskError)
    # the 60 s sleepers were cancelled: both CPUs are free again long before they would end
    wait_for_condition(lambda: rj.available_resources().get("CPU", 0) == 2.0, timeout=20)
    assert time.monotonic() - started < 50
    assert len(os.listdir(tmp_path)) < 5, "queued batches never started"


def test_importing_rayjupyter_util_does_not_import_joblib():
    code = "import sys, rayjupyter.util; print('joblib' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False"]
