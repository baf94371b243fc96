"""The error tree: types, messages and the dual RayTaskError survive real pickling."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import Any

import cloudpickle
import pytest

import rayjupyter.exceptions as public
from rayjupyter.core import exceptions as exc_mod
from rayjupyter.core.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ClusterConnectionError,
    GetTimeoutError,
    ObjectLostError,
    ObjectStoreFullError,
    OwnerDiedError,
    RayActorError,
    RayError,
    RaySystemError,
    RayTaskError,
    SerializationError,
    TaskCancelledError,
    WorkerCrashedError,
)

PICKLERS: list[Callable[[Any], bytes]] = [pickle.dumps, cloudpickle.dumps]
SIMPLE_ERRORS = [
    WorkerCrashedError,
    GetTimeoutError,
    ObjectStoreFullError,
    ObjectLostError,
    OwnerDiedError,
    RaySystemError,
    TaskCancelledError,
    RayActorError,
    ActorDiedError,
    ActorUnavailableError,
    SerializationError,
    ClusterConnectionError,
]


def roundtrip(value: Any, dumps: Callable[[Any], bytes]) -> Any:
    return pickle.loads(dumps(value))


def raised_in_task(error: BaseException, function_name: str = "f") -> RayTaskError:
    """What a worker builds: the error raised inside a function, wrapped with its traceback."""

    def user_function() -> None:
        raise error

    try:
        user_function()
    except BaseException as caught:
        return RayTaskError.from_exception(caught, function_name, pid=4242)
    raise AssertionError("unreachable")


class CustomInitError(Exception):
    """A user error whose __init__ takes other arguments than its args (pickle-hostile)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code


class RefusesSubclassing(Exception):
    """Stands in for a final exception type: no class may derive from it."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("RefusesSubclassing is final")


# --- the tree -------------------------------------------------------------------------


def test_tree_matches_ray() -> None:
    for cls in [*SIMPLE_ERRORS, RayTaskError]:
        assert issubclass(cls, RayError)
    assert issubclass(GetTimeoutError, TimeoutError)
    assert issubclass(SerializationError, TypeError)
    assert issubclass(ClusterConnectionError, ConnectionError)
    assert issubclass(OwnerDiedError, ObjectLostError)
    assert issubclass(ActorDiedError, RayActorError)
    assert issubclass(ActorUnavailableError, RayActorError)


def test_public_module_reexports_everything() -> None:
    assert sorted(public.__all__) == sorted(exc_mod.__all__)
    for name in exc_mod.__all__:
        assert getattr(public, name) is getattr(exc_mod, name)


@pytest.mark.parametrize("dumps", PICKLERS, ids=["pickle", "cloudpickle"])
@pytest.mark.parametrize("cls", SIMPLE_ERRORS, ids=lambda c: c.__name__)
def test_simple_errors_keep_type_and_message(cls: type[RayError], dumps: Any) -> None:
    default = roundtrip(cls(), dumps)
    assert type(default) is cls
    assert str(default) == cls.default_message
    custom = roundtrip(cls("something specific"), dumps)
    assert type(custom) is cls
    assert str(custom) == "something specific"


# --- RayTaskError ---------------------------------------------------------------------


def test_task_error_text_names_function_pid_and_remote_traceback() -> None:
    error = raised_in_task(ValueError("boom"), "my_task")
    text = str(error)
    assert text.splitlines()[0] == "my_task() (pid=4242)"
    assert "Traceback (most recent call last):" in text
    assert "in user_function" in text
    assert text.rstrip().endswith("ValueError: boom")
    assert error.function_name == "my_task"
    assert error.pid == 4242
    assert isinstance(error.cause, ValueError)


@pytest.mark.parametrize("dumps", PICKLERS, ids=["pickle", "cloudpickle"])
def test_dual_error_is_both_types_across_pickling(dumps: Any) -> None:
    dual = raised_in_task(ValueError("boom")).as_instanceof_cause()
    assert isinstance(dual, RayTaskError)
    assert isinstance(dual, ValueError)
    assert type(dual).__name__ == "RayTaskError(ValueError)"
    back = roundtrip(dual, dumps)
    assert isinstance(back, RayTaskError)
    assert isinstance(back, ValueError)
    assert str(back) == str(dual)
    assert back.pid == 4242
    assert back.function_name == "f"
    assert isinstance(back.cause, ValueError)
    assert back.cause.args == ("boom",)
    with pytest.raises(ValueError, match="boom"):
        raise back


@pytest.mark.parametrize("dumps", PICKLERS, ids=["pickle", "cloudpickle"])
def test_plain_task_error_stays_plain_across_pickling(dumps: Any) -> None:
    back = roundtrip(raised_in_task(ValueError("boom")), dumps)
    assert type(back) is RayTaskError
    assert isinstance(back.as_instanceof_cause(), ValueError)


def test_dual_classes_are_cached_per_cause_type() -> None:
    first = raised_in_task(KeyError("a")).as_instanceof_cause()
    second = raised_in_task(KeyError("b")).as_instanceof_cause()
    assert type(first) is type(second)


@pytest.mark.parametrize(
    "error",
    [
        KeyError("k"),
        FileNotFoundError(2, "No such file", "/missing"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        StopIteration(5),
        GetTimeoutError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_builtin_causes_with_their_own_layout(error: BaseException) -> None:
    dual = roundtrip(raised_in_task(error).as_instanceof_cause(), cloudpickle.dumps)
    assert isinstance(dual, type(error))
    assert isinstance(dual, RayTaskError)


def test_oserror_fields_read_like_the_original() -> None:
    dual = raised_in_task(FileNotFoundError(2, "No such file", "/missing")).as_instanceof_cause()
    back = roundtrip(dual, pickle.dumps)
    assert (back.errno, back.strerror, back.filename) == (2, "No such file", "/missing")


def test_user_error_with_custom_init_survives_and_exposes_attributes() -> None:
    dual = raised_in_task(CustomInitError(7, "bad input")).as_instanceof_cause()
    back = roundtrip(dual, cloudpickle.dumps)
    assert isinstance(back, CustomInitError)
    assert back.code == 7  # read through to the cause
    assert str(back.cause) == "code 7: bad input"


def test_error_defined_in_a_worker_main_module_crosses_processes() -> None:
    """A class from the worker's __main__ travels by value (cloudpickle), as from a notebook."""
    script = textwrap.dedent(
        """
        import sys, cloudpickle
        from rayjupyter.core.exceptions import RayTaskError
        class NotebookError(Exception):
            pass
        try:
            raise NotebookError("from the other side")
        except NotebookError as e:
            err = RayTaskError.from_exception(e, "remote_fn").as_instanceof_cause()
        sys.stdout.buffer.write(cloudpickle.dumps(err))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, check=True, timeout=60
    ).stdout
    error = pickle.loads(out)
    assert isinstance(error, RayTaskError)
    assert type(error.cause).__name__ == "NotebookError"
    assert isinstance(error, type(error.cause))
    assert "from the other side" in str(error)
    assert f"pid={error.pid}" in str(error)


def test_unpicklable_attributes_are_dropped_but_type_kept() -> None:
    cause = ValueError("has a lock")
    cause.lock = threading.Lock()  # type: ignore[attr-defined]
    error = raised_in_task(cause)
    assert "attributes could not be pickled" in error.traceback_str
    back = roundtrip(error.as_instanceof_cause(), cloudpickle.dumps)
    assert isinstance(back, ValueError)
    assert not hasattr(back.cause, "lock")


def test_unpicklable_cause_falls_back_to_text() -> None:
    error = raised_in_task(ValueError(threading.Lock()))
    assert error.cause is None
    assert "could not be pickled, so only its text travels" in error.traceback_str
    back = roundtrip(error.as_instanceof_cause(), cloudpickle.dumps)
    assert type(back) is RayTaskError
    assert "ValueError: <unlocked _thread.lock object" in str(back)


def test_cause_type_that_cannot_be_subclassed_falls_back_to_plain() -> None:
    error = raised_in_task(RefusesSubclassing("final"))
    assert type(error.as_instanceof_cause()) is RayTaskError
    back = roundtrip(error, cloudpickle.dumps)
    assert isinstance(back.cause, RefusesSubclassing)


def test_nested_task_error_is_an_instance_of_the_innermost_cause() -> None:
    inner = raised_in_task(ZeroDivisionError("inner"), "leaf").as_instanceof_cause()
    outer = raised_in_task(inner, "parent")
    dual = roundtrip(outer.as_instanceof_cause(), cloudpickle.dumps)
    assert isinstance(dual, ZeroDivisionError)
    assert dual.function_name == "parent"
    assert "leaf() (pid=4242)" in str(dual)


def test_render_traceback_gives_ipython_the_remote_lines() -> None:
    dual = raised_in_task(ValueError("boom"), "g").as_instanceof_cause()
    lines = dual._render_traceback_()
    assert lines[0] == "RayTaskError(ValueError): g() (pid=4242)"
    assert lines[-1] == "ValueError: boom"
    assert any("in user_function" in line for line in lines)


def test_ipython_prints_the_remote_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    shell_mod = pytest.importorskip("IPython.core.interactiveshell")
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    shell = shell_mod.InteractiveShell(config=config)
    shell.user_ns["failure"] = raised_in_task(ValueError("boom"), "g").as_instanceof_cause()
    result = shell.run_cell("raise failure")
    assert isinstance(result.error_in_exec, ValueError)
    out = capsys.readouterr().out
    assert "g() (pid=4242)" in out
    assert "in user_function" in out
    assert "raise failure" not in out  # the local frame is not what the user needs


# --- SerializationError ---------------------------------------------------------------


def test_serialization_error_names_value_type_and_place() -> None:
    lock = threading.Lock()
    with pytest.raises(TypeError) as info:
        pickle.dumps(lock)
    error = SerializationError.for_value(lock, "argument 0 of task 'f'", info.value)
    text = str(error)
    assert text.startswith("Could not serialize argument 0 of task 'f': <unlocked _thread.lock")
    assert "of type _thread.lock: cannot pickle '_thread.lock' object" in text
    assert isinstance(roundtrip(error, pickle.dumps), TypeError)
    assert str(roundtrip(error, pickle.dumps)) == text


def test_serialization_error_shortens_long_and_broken_reprs() -> None:
    long_error = SerializationError.for_value("x" * 500, "the put value", TypeError("no"))
    assert "x" * 100 not in str(long_error)
    assert "..." in str(long_error)

    class BrokenRepr:
        def __repr__(self) -> str:
            raise RuntimeError("repr exploded")

    broken = SerializationError.for_value(BrokenRepr(), "the return value", TypeError("no"))
    assert "repr failed" in str(broken)
    assert "BrokenRepr" in str(broken)
