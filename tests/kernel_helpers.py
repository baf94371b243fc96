"""Drive a real IPython kernel (jupyter_client) from tests: run code, read what it sent.

Every wait is bounded. A Kernel kills its own process tree if a polite shutdown fails, so a
stuck test cannot leave a kernel or its cluster behind.
"""

from __future__ import annotations

import contextlib
import queue
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
from helpers import wait_for_pids_gone

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Reply:
    """Everything the kernel published for one execute request, in order."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    status: str = ""
    seconds: float = 0.0

    def of(self, *types: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] in types]

    def stream(self, name: str = "stdout") -> str:
        return "".join(
            m["content"]["text"] for m in self.of("stream") if m["content"]["name"] == name
        )

    @property
    def stdout(self) -> str:
        return self.stream("stdout")

    @property
    def stderr(self) -> str:
        return self.stream("stderr")

    @property
    def result(self) -> dict[str, Any] | None:
        """The execute_result's data (the cell's shown value), or None."""
        found = self.of("execute_result")
        return found[-1]["content"]["data"] if found else None

    @property
    def displays(self) -> list[dict[str, Any]]:
        return [m["content"]["data"] for m in self.of("display_data")]

    @property
    def error(self) -> dict[str, Any] | None:
        found = self.of("error")
        return found[-1]["content"] if found else None

    @property
    def traceback(self) -> str:
        error = self.error
        return ANSI.sub("", "\n".join(error["traceback"])) if error else ""

    def comm_updates(self, comm_id: str | None = None) -> list[dict[str, Any]]:
        """The state dicts of widget updates (comm_msg 'update'), optionally for one widget."""
        out = []
        for message in self.of("comm_msg"):
            data = message["content"]["data"]
            if data.get("method") == "update" and comm_id in (None, message["content"]["comm_id"]):
                out.append(data["state"])
        return out

    def widget_states(self, model_name: str) -> list[dict[str, Any]]:
        """Initial states of widgets of one model class opened by this request."""
        return [
            m["content"]["data"]["state"] | {"comm_id": m["content"]["comm_id"]}
            for m in self.of("comm_open")
            if m["content"]["data"]["state"].get("_model_name") == model_name
        ]


def current_env_kernel_manager() -> Any:
    """A KernelManager for an IPython kernel on this very Python (this venv), whatever
    kernels named "python3" other Jupyter installs on the machine may have registered."""
    import ipykernel.kernelspec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    class ThisPython(KernelSpecManager):  # type: ignore[misc]
        def get_kernel_spec(self, kernel_name: str) -> Any:
            return self.kernel_spec_class(
                resource_dir=ipykernel.kernelspec.RESOURCES,
                **ipykernel.kernelspec.get_kernel_dict(),
            )

    return KernelManager(kernel_name="this-python", kernel_spec_manager=ThisPython())


class Kernel:
    """A kernel started in its own process; ``execute`` runs a cell and waits for idle."""

    def __init__(self, startup_timeout: float = 60.0) -> None:
        self.manager = current_env_kernel_manager()
        self.manager.start_kernel()
        self.client = self.manager.client()
        self.client.start_channels()
        try:
            self.client.wait_for_ready(timeout=startup_timeout)
        except RuntimeError:
            self.client.stop_channels()
            self.manager.shutdown_kernel(now=True)
            raise
        self.pid: int = self.manager.provisioner.process.pid  # type: ignore[union-attr]
        self.pending: list[dict[str, Any]] = []  # iopub messages of no awaited cell
        self.history: list[dict[str, Any]] = []  # every iopub message read, in order

    # ------------------------------------------------------------------ running code

    def submit(self, code: str) -> str:
        """Start a cell without waiting; returns its msg_id (see ``collect``)."""
        return self.client.execute(code)

    def collect(
        self,
        msg_id: str,
        timeout: float = 60.0,
        until: Callable[[dict[str, Any]], bool] | None = None,
    ) -> Reply:
        """Messages of msg_id until the kernel is idle again (or ``until`` one matches)."""
        reply = Reply()
        started = time.monotonic()
        deadline = started + timeout
        for message in self._messages(deadline):
            if message["parent_header"].get("msg_id") != msg_id:
                self.pending.append(message)
                continue
            reply.messages.append(message)
            if until is not None and until(message):
                reply.seconds = time.monotonic() - started
                return reply
            content = message["content"]
            if message["msg_type"] == "status" and content["execution_state"] == "idle":
                reply.seconds = time.monotonic() - started
                reply.status = "idle"
                self._shell_reply(msg_id, deadline)
                return reply
        raise AssertionError(
            f"the kernel did not finish the cell within {timeout} s; it sent: "
            + ", ".join(m["msg_type"] for m in reply.messages)
        )

    def execute(self, code: str, timeout: float = 60.0) -> Reply:
        return self.collect(self.submit(code), timeout)

    def ok(self, code: str, timeout: float = 60.0) -> Reply:
        """Execute and fail the test with the kernel's traceback if the cell raised."""
        reply = self.execute(code, timeout)
        assert reply.error is None, f"cell failed:\n{reply.traceback}\n{reply.stderr}"
        return reply

    def value(self, expression: str, timeout: float = 60.0) -> str:
        """The text/plain of an expression evaluated in the kernel."""
        reply = self.ok(expression, timeout)
        assert reply.result is not None, f"{expression!r} showed no value: {reply.stderr}"
        return str(reply.result["text/plain"])

    def wait_in_kernel(self, condition: str, timeout: float = 20.0) -> None:
        """Wait (inside the kernel, on a condition expression) without fixed sleeps here."""
        code = (
            "import time as _t\n"
            f"_deadline = _t.monotonic() + {timeout}\n"
            f"while not ({condition}) and _t.monotonic() < _deadline:\n"
            "    _t.sleep(0.02)\n"
            f"assert ({condition}), 'condition not met in the kernel: ' + {condition!r}"
        )
        self.ok(code, timeout + 10)

    def wait_for_message(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0, since: int = 0
    ) -> list[dict[str, Any]]:
        """Wait until a published message matches, whichever cell it went to; returns every
        message from ``since`` (an index into ``history``) to the match.

        For what a kernel sends in the background: widget updates after a cell returned.
        """
        for index in range(since, len(self.history)):
            if predicate(self.history[index]):
                return self.history[since : index + 1]
        for message in self._messages(time.monotonic() + timeout):
            self.pending.append(message)
            if predicate(message):
                return self.history[since:]
        raise AssertionError(
            f"no matching message within {timeout} s; saw: "
            + ", ".join(m["msg_type"] for m in self.history[since:][-20:])
        )

    def _messages(self, deadline: float) -> Iterator[dict[str, Any]]:
        while time.monotonic() < deadline:
            try:
                message = self.client.get_iopub_msg(timeout=min(1.0, deadline - time.monotonic()))
            except queue.Empty:
                continue
            self.history.append(message)
            yield message

    def _shell_reply(self, msg_id: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                reply = self.client.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if reply["parent_header"].get("msg_id") == msg_id:
                return

    # ------------------------------------------------------------------ processes

    def tree(self) -> set[int]:
        """The kernel and every process under it (its cluster included)."""
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.pid)
            return {self.pid} | {child.pid for child in root.children(recursive=True)}
        return set()

    def interrupt(self) -> None:
        self.manager.interrupt_kernel()

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop the kernel and wait until its whole tree (its cluster too) is gone."""
        pids = self.tree()
        with contextlib.suppress(Exception):
            self.client.stop_channels()
        try:
            self.manager.shutdown_kernel(now=False)
        except Exception:
            self.manager.shutdown_kernel(now=True)
        try:
            wait_for_pids_gone(pids, timeout=timeout)
        finally:
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()


@contextlib.contextmanager
def running_kernel(*setup: str) -> Iterator[Kernel]:
    """A kernel that ran the setup cells; shut down (tree and all) afterwards."""
    kernel = Kernel()
    try:
        for code in setup:
            kernel.ok(code)
        yield kernel
    finally:
        kernel.shutdown()
