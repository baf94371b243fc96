"""Route worker output to where it belongs: a ``%%remote`` cell's own lines, unprefixed.

The core writes every worker line to this process's sys.stdout/sys.stderr as
``(task_name pid=N) text``; a Ray driver writes ``(task_name pid=N, ip=H) text``, the prefix
in colour codes, and the line's end in a second write (``print``). A ``%%remote`` cell's
task has a unique name, so wrapping the two streams lets its lines go to the cell that ran
it (or to its live widget), without the prefix; display calls made in the cell travel as
marked lines (see cell_runner) and become rich output. Every other line passes through untouched.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import threading
from typing import Any, Protocol

# then base64 JSON {"data": ..., "metadata": ...}; \x02 is no line break to str.splitlines
DISPLAY_MARKER = "\x02rayjupyter-display:"
#: the last line of a cell's output when its engine delivers output after the result (Ray)
END_MARKER = "\x02rayjupyter-end\n"
# a worker line's prefix: "(name pid=12) ", Ray's "(name pid=12, ip=10.0.0.2) ", either in
# colour codes; group 1 is what the routes are keyed by
_PREFIX = re.compile(r"(?:\x1b\[[0-9;]*m)*(\(.+? pid=)\d+(?:, ip=[^)\s]+)?\)(?:\x1b\[[0-9;]*m)* ")


class Sink(Protocol):
    """Where a routed task's output goes."""

    def write(self, stream: str, text: str) -> None: ...

    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None: ...


def encode_display(data: dict[str, Any], metadata: dict[str, Any]) -> str:
    """One line that carries a display call through the worker's stdout."""
    payload = json.dumps({"data": data, "metadata": metadata}, default=str)
    return DISPLAY_MARKER + base64.b64encode(payload.encode()).decode() + "\n"


def decode_display(line: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    if not line.startswith(DISPLAY_MARKER):
        return None
    try:
        payload = json.loads(base64.b64decode(line[len(DISPLAY_MARKER) :].strip()))
    except ValueError:
        return None
    return dict(payload.get("data", {})), dict(payload.get("metadata", {}))


class Router:
    """Task name -> sink; installs the stream wrappers on first use."""

    def __init__(self) -> None:
        self._routes: dict[str, Sink] = {}
        self._lock = threading.Lock()
        #: route key -> set when its task's END_MARKER line arrived (engines that send one)
        self._ended: dict[str, threading.Event] = {}

    def route(self, task_name: str, sink: Sink) -> None:
        self.install()
        with self._lock:
            self._routes = {**self._routes, f"({task_name} pid=": sink}
            self._ended[f"({task_name} pid="] = threading.Event()

    def unroute(self, task_name: str) -> None:
        """Stop routing a task's lines; the streams are unwrapped once nothing is routed."""
        with self._lock:
            routes = dict(self._routes)
            routes.pop(f"({task_name} pid=", None)
            self._ended.pop(f"({task_name} pid=", None)
            self._routes = routes
            if not routes:
                self.uninstall()

    def wait_end(self, task_name: str, timeout: float) -> bool:
        """Wait until the task's END_MARKER line has come through (True), or timeout."""
        event = self._ended.get(f"({task_name} pid=")
        return event is not None and event.wait(timeout)

    def ended(self, sink: Sink) -> None:
        for key, routed in list(self._routes.items()):
            if routed is sink and key in self._ended:
                self._ended[key].set()

    def routed(self, task_name: str) -> bool:
        return f"({task_name} pid=" in self._routes

    def install(self) -> None:
        """Wrap sys.stdout and sys.stderr while cells are routed (a wrapped one is kept)."""
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if not isinstance(stream, RoutingStream):
                setattr(sys, name, RoutingStream(stream, name, self))

    def uninstall(self) -> None:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if isinstance(stream, RoutingStream) and stream._router is self:
                setattr(sys, name, stream._inner)

    def split(self, text: str) -> list[tuple[Sink | None, str]]:
        """Pieces of text with their sink (None: pass through), in order."""
        routes = self._routes  # replaced, never mutated: safe to read without the lock
        out: list[tuple[Sink | None, str]] = []
        for line in text.splitlines(keepends=True):
            sink = None
            if "(" in line[:16]:
                match = _PREFIX.match(line)
                if match is not None and match[1] in routes:
                    sink, line = routes[match[1]], line[match.end() :]
            if out and out[-1][0] is sink and sink is None:
                out[-1] = (None, out[-1][1] + line)
            else:
                out.append((sink, line))
        return out


class RoutingStream:
    """A text stream that hands routed task lines to their sink and passes the rest on."""

    def __init__(self, inner: Any, name: str, router: Router) -> None:
        self._inner = inner
        self._name = name
        self._router = router
        #: thread -> (sink, was a display) of a routed line whose end has not been written yet
        self._continued: dict[int, tuple[Sink, bool]] = {}

    def write(self, text: str) -> int:
        continued = self._continued.pop(threading.get_ident(), None)
        if continued is not None:  # the rest of a routed line that print() wrote in two
            sink, was_display = continued
            head, newline, text = text.partition("\n")
            if not was_display and head + newline:
                sink.write(self._name, head + newline)
            if not newline:  # still no line end: keep following this line
                self._continued[threading.get_ident()] = continued
                return len(head)
            if not text:
                return len(head) + 1
        if not self._router._routes or "(" not in text:
            return int(self._inner.write(text) or 0)
        for target, piece in self._router.split(text):
            if target is None:
                self._inner.write(piece)
                continue
            quiet = True  # a control line: its line end, written apart, is not output
            if piece.startswith(END_MARKER[:-1]):
                self._router.ended(target)
            elif (shown := decode_display(piece)) is not None:
                target.display(*shown)
            else:
                target.write(self._name, piece)
                quiet = False
            if not piece.endswith("\n"):
                self._continued[threading.get_ident()] = (target, quiet)
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class CellSink:
    """Output under the cell that was running when the sink was made (blocking %%remote)."""

    def __init__(self) -> None:
        from rayjupyter.notebook.kernel import cell_context

        self._context = cell_context()

    def write(self, stream: str, text: str) -> None:
        target = getattr(sys, stream)
        inner = target._inner if isinstance(target, RoutingStream) else target
        self._context.run(inner.write, text)
        self._context.run(inner.flush)

    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        from IPython.display import publish_display_data

        self._context.run(publish_display_data, data, metadata)


class WidgetSink:
    """Output into an ipywidgets Output (a ``--no-block`` cell's live widget)."""

    def __init__(self, output: Any) -> None:
        self.output = output

    def write(self, stream: str, text: str) -> None:
        outputs = self.output.outputs
        last = outputs[-1] if outputs else None
        if last and last.get("output_type") == "stream" and last.get("name") == stream:
            merged = {**last, "text": last["text"] + text}  # one block per stream, as a cell
            self.output.outputs = (*outputs[:-1], merged)
        else:
            entry = {"output_type": "stream", "name": stream, "text": text}
            self.output.outputs = (*outputs, entry)

    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        entry = {"output_type": "display_data", "data": data, "metadata": metadata}
        self.output.outputs = (*self.output.outputs, entry)


ROUTER = Router()
