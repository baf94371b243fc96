"""The actor a trial runs in: one request, one result.

``next_result()`` lets the trial run up to its next report and returns it, so the driver
decides on every result before the trial goes on (a paused or stopped trial has not run
past the result that paused it). A function trainable runs in a thread of the actor that
blocks inside ``tune.report`` between calls; a class trainable's ``step`` is called
directly. The same actor can take another trial (``reuse_actors``) after ``stop``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import socket
import threading
import time
import traceback
from typing import Any

from rayjupyter.tune import session as session_mod
from rayjupyter.tune.checkpoint import Checkpoint
from rayjupyter.tune.trainable import Trainable, is_class_trainable

_PICKLED_STATE = "trainable_state.pkl"
_DONE = "done"
_RESULT = "result"


class _FunctionRun:
    """A function trainable in its thread; reports travel through a one-slot handoff."""

    def __init__(self, fn: Any, config: dict[str, Any], session: session_mod.Session) -> None:
        self._results: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
        self._go = threading.Semaphore(0)
        self._stopping = False
        self._session = session
        session._deliver = self._deliver
        self._thread = threading.Thread(
            target=self._main, args=(fn, config), name="tune-trial", daemon=True
        )
        self._started = False

    def _deliver(self, metrics: dict[str, Any], checkpoint: str | None) -> None:
        self._results.put((_RESULT, (metrics, checkpoint)))
        self._go.acquire()
        if self._stopping:
            raise session_mod.StopTrial()

    def _main(self, fn: Any, config: dict[str, Any]) -> None:
        session_mod.install(self._session)
        try:
            final = fn(config)
            if isinstance(final, dict):  # a returned dict is the trial's last result
                self._deliver(final, None)
        except session_mod.StopTrial:
            return
        except BaseException as exc:
            self._results.put(("error", (exc, traceback.format_exc())))
            return
        self._results.put((_DONE, None))

    def next(self) -> tuple[str, Any]:
        if not self._started:
            self._started = True
            self._thread.start()
        else:
            self._go.release()
        return self._results.get()

    def stop(self) -> None:
        if self._started and self._thread.is_alive():
            self._stopping = True
            self._go.release()
            self._thread.join(timeout=30)


class TrialRunner:
    """The actor class (made remote by the controller with the trial's resources)."""

    def __init__(self) -> None:
        self._run: _FunctionRun | None = None
        self._instance: Trainable | None = None
        self._info: dict[str, Any] = {}
        self._last: dict[str, Any] = {}

    def start(
        self,
        trainable: Any,
        config: dict[str, Any],
        info: dict[str, Any],
        checkpoint_path: str | None,
        restored: dict[str, Any],
        checkpoint_frequency: int = 0,
    ) -> int:
        """Begin a trial (restoring ``checkpoint_path`` if given); returns this pid."""
        self.stop()
        os.makedirs(info["trial_dir"], exist_ok=True)
        checkpoint = Checkpoint(checkpoint_path) if checkpoint_path else None
        self._info = info
        self._iteration = int(restored.get("training_iteration", 0))
        self._time_total = float(restored.get("time_total_s", 0.0))
        self._since_restore = 0
        self._start_time = time.time()
        self._last_time = self._start_time
        self._frequency = checkpoint_frequency
        sess = session_mod.Session(
            info, checkpoint, int(restored.get("checkpoint_index", 0)), lambda m, c: None
        )
        self._session = sess
        if is_class_trainable(trainable):
            session_mod.install(sess)
            self._instance = trainable(config)
            if checkpoint_path:
                self._instance.load_checkpoint(self._load_state(checkpoint_path))
            self._instance.iteration = self._iteration
        else:
            self._run = _FunctionRun(trainable, config, sess)
        return os.getpid()

    def begin(self, *args: Any) -> tuple[str, dict[str, Any] | None, str | None]:
        """``start`` then ``next_result``: a trial's first result in one call."""
        self.start(*args)
        return self.next_result()

    @staticmethod
    def _load_state(path: str) -> Any:
        pickled = os.path.join(path, _PICKLED_STATE)
        if os.path.exists(pickled):
            with open(pickled, "rb") as f:
                return pickle.load(f)
        return path

    def _decorate(self, metrics: dict[str, Any], checkpoint: str | None) -> dict[str, Any]:
        now = time.time()
        self._iteration += 1
        self._since_restore += 1
        this_iter = now - self._last_time
        self._last_time = now
        self._time_total += this_iter
        result = dict(metrics)
        result.update(
            training_iteration=self._iteration,
            trial_id=self._info["trial_id"],
            time_this_iter_s=this_iter,
            time_total_s=self._time_total,
            time_since_restore=now - self._start_time,
            iterations_since_restore=self._since_restore,
            timestamp=int(now),
            pid=os.getpid(),
            hostname=socket.gethostname(),
            done=bool(metrics.get("done", False)),
            checkpoint_dir_name=os.path.basename(checkpoint) if checkpoint else None,
        )
        return result

    def next_result(self) -> tuple[str, dict[str, Any] | None, str | None]:
        """(``"result"``, metrics, checkpoint path) or (``"done"``, None, None); a trial's
        exception is raised here, as the user's own type."""
        if self._instance is not None:
            metrics = self._instance.step()
            if not isinstance(metrics, dict):
                raise TypeError(f"step() must return a dict, got {type(metrics).__name__}")
            checkpoint = None
            if self._frequency and (self._iteration + 1) % self._frequency == 0:
                checkpoint = self.save_now()
            self._instance.iteration = self._iteration + 1
            return _RESULT, self._decorate(metrics, checkpoint), checkpoint
        if self._run is None:
            raise RuntimeError("next_result() before start()")
        kind, payload = self._run.next()
        if kind == _DONE:
            return _DONE, None, None
        if kind == "error":
            exc, text = payload
            with contextlib.suppress(Exception):  # the remote traceback, as a note
                exc.__notes__ = [*getattr(exc, "__notes__", []), text]
            raise exc
        metrics, checkpoint = payload
        return _RESULT, self._decorate(metrics, checkpoint), checkpoint

    def save_now(self) -> str | None:
        """A class trainable's checkpoint now, under the trial directory (None for
        function trainables, whose checkpoints are what they report)."""
        if self._instance is None:
            return None
        target = os.path.join(
            self._info["trial_dir"], f"checkpoint_{self._session._next_index:06d}"
        )
        self._session._next_index += 1
        os.makedirs(target, exist_ok=True)
        state = self._instance.save_checkpoint(target)
        if state is not None:
            with open(os.path.join(target, _PICKLED_STATE), "wb") as f:
                pickle.dump(state, f)
        return target

    def checkpoint_index(self) -> int:
        return self._session._next_index

    def stop(self) -> None:
        """End the current trial and leave the actor ready for another."""
        if self._run is not None:
            self._run.stop()
            self._run = None
        if self._instance is not None:
            try:
                self._instance.cleanup()
            finally:
                self._instance = None
        session_mod.install(None)
