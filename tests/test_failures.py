"""Task errors, unpicklable values, worker crashes and retries, on real processes."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.exceptions import RayTaskError, SerializationError, WorkerCrashedError

pytestmark = pytest.mark.usefixtures("shared_cluster")


class CustomError(Exception):
    pass


@rj.remote
def fail(message):
    raise CustomError(message)


@rj.remote
def add(a, b):
    return a + b


def test_task_error_is_both_ray_task_error_and_user_type_with_remote_traceback():
    with pytest.raises(CustomError) as info:
        rj.get(fail.remote("boom"), timeout=30)
    error = info.value
    assert isinstance(error, RayTaskError)
    assert "boom" in str(error) and "raise CustomError(message)" in error.traceback_str
    assert error.pid != os.getpid()
    rendered = "\n".join(error._render_traceback_())
    assert "test_failures.py" in rendered and "CustomError: boom" in rendered


def test_builtin_exception_type_is_kept():
    @rj.remote
    def divide(a, b):
        return a / b

    with pytest.raises(ZeroDivisionError):
        rj.get(divide.remote(1, 0), timeout=30)


def test_dependent_of_failed_task_fails_with_the_same_cause():
    failed = fail.remote("root cause")
    downstream = add.remote(add.remote(failed, 1), 2)
    with pytest.raises(CustomError, match="root cause"):
        rj.get(downstream, timeout=30)


def test_unpicklable_argument_names_the_object_and_type():
    lock = threading.Lock()
    with pytest.raises(SerializationError, match=r"argument 1 of task 'add'.*lock") as info:
        add.remote(1, lock)
    assert isinstance(info.value, TypeError)


def test_unpicklable_put_names_the_object_and_type():
    with pytest.raises(SerializationError, match=r"put.*lock"):
        rj.put({"key": threading.Lock()})


def test_unpicklable_return_value_fails_the_task_clearly():
    @rj.remote
    def make_lock():
        return threading.Lock()

    with pytest.raises(TypeError, match=r"return value of task .make_lock.*lock"):
        rj.get(make_lock.remote(), timeout=30)


def _marker(tmp_path, name):
    return str(tmp_path / name)


def test_worker_killed_mid_task_is_retried(tmp_path):
    pid_file = _marker(tmp_path, "pid")

    @rj.remote
    def long_task(path):
        if os.path.exists(path):  # the retry: the first attempt's worker was killed
            return "retried"
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
        time.sleep(60)
        return "first attempt finished"

    ref = long_task.remote(pid_file)
    wait_for_condition(lambda: os.path.exists(pid_file), timeout=30)
    with open(pid_file) as f:
        os.kill(int(f.read()), signal.SIGKILL)
    assert rj.get(ref, timeout=60) == "retried"


def test_worker_crash_after_retries_raises_worker_crashed_error(tmp_path):
    attempts = _marker(tmp_path, "attempts")

    @rj.remote(max_retries=2)
    def crash(path):
        with open(path, "a") as f:
            f.write("x")
        os._exit(1)

    with pytest.raises(WorkerCrashedError, match="max_retries=2"):
        rj.get(crash.remote(attempts), timeout=60)
    with open(attempts) as f:
        assert f.read() == "xxx"  # the first try and two retries


def test_retry_exceptions_retries_application_errors(tmp_path):
    marker = _marker(tmp_path, "flaky")

    @rj.remote
    def flaky(path):
        if not os.path.exists(path):
            open(path, "w").close()
            raise CustomError("first try fails")
        return "second try works"

    with pytest.raises(CustomError):
        rj.get(flaky.remote(marker), timeout=30)
    os.unlink(marker)
    assert rj.get(flaky.options(retry_exceptions=True).remote(marker), timeout=30) == (
        "second try works"
    )
    os.unlink(marker)
    assert rj.get(flaky.options(retry_exceptions=[CustomError]).remote(marker), timeout=30) == (
        "second try works"
    )
    os.unlink(marker)
    with pytest.raises(CustomError):
        rj.get(flaky.options(retry_exceptions=[KeyError]).remote(marker), timeout=30)


def test_worker_output_reaches_the_driver_with_a_prefix(capfd):
    @rj.remote
    def chatty(word):
        import sys

        print("hello", word)
        print("to stderr", file=sys.stderr)
        return os.getpid()

    pid = rj.get(chatty.options(name="chatty_task").remote("world"), timeout=30)

    seen = {"out": "", "err": ""}

    def arrived():
        out, err = capfd.readouterr()
        seen["out"] += out
        seen["err"] += err
        return "hello world" in seen["out"] and "to stderr" in seen["err"]

    wait_for_condition(arrived, timeout=10)
    assert f"(chatty_task pid={pid}) hello world" in seen["out"]
    assert f"(chatty_task pid={pid}) to stderr" in seen["err"]
