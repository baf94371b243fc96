"""``%%remote``: run a notebook cell as one task, shipping what it reads, bringing back what
it defines, with its output under the cell and its errors on the cell's own lines."""

from __future__ import annotations

import inspect
import linecache
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from rayjupyter.notebook import engines, templates
from rayjupyter.notebook.cell_names import analyze
from rayjupyter.notebook.cell_runner import CellResult, CellSpec, run_cell
from rayjupyter.notebook.kernel import in_kernel
from rayjupyter.notebook.output_routing import ROUTER, CellSink, WidgetSink
from rayjupyter.notebook.ticker import TICKER

REFRESH_S = 0.2
#: how long a finished cell waits for the last of its output on an engine that delivers it
#: after the result (Ray prints worker lines as its log monitor reads them)
OUTPUT_DRAIN_S = 5.0
# names IPython puts in the user namespace: history and output caches, never shipped
_IPYTHON_NAME = re.compile(r"_+|_i+|_i?\d+|_[iod]h|In|Out|exit|quit|get_ipython")
_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+)(?P<rest>.*)$')


class RemoteCellError(RuntimeError):
    """A ``%%remote`` cell could not run as asked; shown as one line, not a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


@dataclass
class RemoteOptions:
    """The options of one ``%%remote`` call (see magics.py for their flags)."""

    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: dict[str, float] | None = None
    max_retries: int | None = None
    block: bool = True
    push: list[str] = field(default_factory=list)
    pull: list[str] | None = None
    timeout: float | None = None

    def task_options(self, name: str) -> dict[str, Any]:
        options: dict[str, Any] = {"name": name}
        for key in ("num_cpus", "num_gpus", "resources", "max_retries"):
            value = getattr(self, key)
            if value is not None:
                options[key] = value
        return options


_names_lock = threading.Lock()


def _cell_number(shell: Any) -> int:
    """The running cell's number, as its In[n] prompt shows it."""
    hook = getattr(shell, "displayhook", None)
    running = getattr(hook, "exec_result", None)  # set by IPython while a cell runs
    count = getattr(running, "execution_count", None)
    if count is None:
        count = getattr(hook, "prompt_count", None)
    return int(count or 0)


def _task_name(count: int) -> str:
    with _names_lock:
        base = f"remote In[{count}]"
        name, n = base, 1
        while ROUTER.routed(name):
            n += 1
            name = f"{base}#{n}"
        return name


def run_remote_cell(shell: Any, magic_line: str, cell: str, options: RemoteOptions) -> Any:
    """Run the cell remotely; returns its last value (shown as the cell's result) or None."""
    if not cell.strip():
        raise RemoteCellError("the %%remote cell is empty: put the code to run below the magic")
    count = _cell_number(shell)
    name = _task_name(count)
    filename = f"<{name}>"
    padded = "\n" + cell  # line 1 is the %%remote line: numbers match what the user sees
    try:
        names = analyze(padded, filename)
    except SyntaxError as exc:
        raise _syntax_error(exc) from None
    user_ns = shell.user_ns
    missing = [n for n in options.push if n not in user_ns]
    if missing:
        raise RemoteCellError(
            f"--push names {', '.join(map(repr, missing))}, which the notebook does not define"
        )
    shipped_names = [n for n in names.reads if n in user_ns and not _is_ipython_name(n)]
    shipped_names += [n for n in options.push if n not in shipped_names]
    shipped = {n: user_ns[n] for n in shipped_names}
    engine = engines.active()
    spec = CellSpec(
        task_name=name,
        filename=filename,
        source=padded,
        lines=f"%%remote {magic_line}".rstrip() + "\n" + cell,
        bring_back=tuple(options.pull if options.pull is not None else names.writes),
        display_last=names.ends_with_expression,
        sources=_notebook_sources(shell, shipped),
        end_marker=engine.name == "ray",
    )
    if options.block:
        sink: Any = CellSink()
        background = None
    else:
        background = BackgroundCell(shell, spec, options, count, engine)
        sink = background.sink
    ROUTER.route(name, sink)
    try:
        ref = engine.submit_cell(run_cell, (spec, shipped), options.task_options(name))
    except Exception as exc:
        ROUTER.unroute(name)
        raise _shipping_error(shipped, exc) from None
    if background is not None:
        background.start(ref)
        return None
    drain = spec.end_marker
    try:
        result = _wait(engine, ref, options.timeout, name)
    except Exception as err:
        if engine.task_traceback(err) is None:
            drain = False  # cancelled or lost: no more output is coming
            raise
        raise clean_task_error(engine, err, shell, spec) from None
    except BaseException:  # Ctrl-C: the task was cancelled
        drain = False
        raise
    finally:
        if drain:
            ROUTER.wait_end(name, OUTPUT_DRAIN_S)
        ROUTER.unroute(name)
    for line in templates.skipped_lines(result.skipped, result.missing if options.pull else []):
        print(line, file=sys.stderr)
    user_ns.update(result.values)
    return _shown_value(result)


def _wait(engine: engines.Engine, ref: Any, timeout: float | None, name: str) -> CellResult:
    try:
        result: CellResult = engine.get(ref, timeout=timeout)
    except Exception as err:
        if not engine.is_timeout(err):
            raise
        engine.cancel(ref, force=True)
        raise RemoteCellError(
            f"{name} did not finish within --timeout {timeout:g} s and was cancelled; "
            f"raise --timeout or use --no-block"
        ) from None
    return result


class _Shown:
    """A last value that could not travel back: shown from the bundle the worker made."""

    def __init__(self, bundle: dict[str, Any]) -> None:
        self.bundle = bundle

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return self.bundle

    def __repr__(self) -> str:
        return str(self.bundle.get("text/plain", ""))


def _shown_value(result: CellResult) -> Any:
    if result.value_bundle is not None:
        return _Shown(result.value_bundle)
    return result.value


def _is_ipython_name(name: str) -> bool:
    return bool(_IPYTHON_NAME.fullmatch(name))


def _notebook_sources(shell: Any, shipped: dict[str, Any]) -> dict[str, str]:
    """Source of the notebook cells that defined shipped functions: remote tracebacks quote it."""
    known = getattr(getattr(shell, "compile", None), "_filename_map", {})
    sources: dict[str, str] = {}
    for value in shipped.values():
        for filename in _code_files(getattr(value, "_function", value)):
            if filename in known and filename not in sources:
                sources[filename] = "".join(linecache.getlines(filename))
    return sources


def _code_files(value: Any) -> set[str]:
    """Files the code of a function, or of a class's methods, was compiled from."""
    if inspect.isclass(value):
        members = [m for m in vars(value).values() if inspect.isfunction(m)]
    elif inspect.isfunction(value):
        members = [value]
    else:
        return set()
    return {m.__code__.co_filename for m in members}


def _syntax_error(exc: SyntaxError) -> RemoteCellError:
    text = (exc.text or "").strip()
    hint = ""
    if text.startswith(("%", "!")):
        hint = " (a %%remote cell holds plain Python: no %magics or !shell lines)"
    return RemoteCellError(f"SyntaxError on line {exc.lineno} of the cell: {exc.msg}{hint}")


def _shipping_error(shipped: dict[str, Any], exc: Exception) -> Exception:
    """Name the variable that cannot be sent to the cluster, instead of a pickling error."""
    for name, value in shipped.items():
        try:
            cloudpickle.dumps(value, protocol=5, buffer_callback=lambda _buffer: False)
        except Exception as why:
            return RemoteCellError(
                f"cannot send {name!r} ({type(value).__name__}) to the cluster: {why}. "
                f"Create it inside the cell, or --pull/rename so the cell does not read it"
            )
    return exc


def clean_task_error(
    engine: engines.Engine, err: BaseException, shell: Any, spec: CellSpec
) -> BaseException:
    """The remote traceback without our runner's frames, its cells named as IPython does."""
    engine.set_task_traceback(err, rewrite_traceback(engine.task_traceback(err) or "", shell, spec))
    return err


def rewrite_traceback(text: str, shell: Any, spec: CellSpec) -> str:
    compiler = getattr(shell, "compile", None)
    runner_file = inspect.getfile(run_cell)
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        match = _FRAME.match(line)
        if match:
            filename = match["file"]
            skipping = filename == runner_file
            if skipping:
                continue
            label = _cell_label(filename, compiler, spec)
            if label:
                line = f"  {label}, line {match['line']}{match['rest']}"
        elif skipping and line.startswith("    "):
            continue
        else:
            skipping = False
        out.append(line)
    return "\n".join(out) + "\n"


def _cell_label(filename: str, compiler: Any, spec: CellSpec) -> str | None:
    if filename == spec.filename:
        return f"Cell {spec.task_name.removeprefix('remote ').split('#')[0]}"
    formatted = compiler.format_code_name(filename) if compiler is not None else None
    return f"{formatted[0]} {formatted[1]}" if formatted else None


class BackgroundCell:
    """A ``--no-block`` cell: a live widget with the task's state and output; its names
    arrive in the namespace when it finishes, with a note under the cell."""

    def __init__(
        self,
        shell: Any,
        spec: CellSpec,
        options: RemoteOptions,
        count: int,
        engine: engines.Engine,
    ) -> None:
        self.shell = shell
        self.engine = engine
        self.spec = spec
        self.timeout = options.timeout
        self.show_missing = options.pull is not None
        self.state = "queued"
        self.detail = ""
        self.ref: Any = None
        self.started = time.monotonic()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.kernel = in_kernel()
        if self.kernel:
            import ipywidgets as w

            self.status = w.HTML(value=self._status_html())
            self.output = w.Output()
            self.widget = w.VBox([self.status, self.output])
            self.widget.add_class("rayjupyter-remote-cell")
            self.sink: Any = WidgetSink(self.output)
        else:
            self.sink = CellSink()

    def _status_html(self) -> str:
        elapsed = time.monotonic() - self.started
        return templates.cell_state(self.spec.task_name, self.state, elapsed, self.detail)

    def start(self, ref: Any) -> None:
        self.ref = ref
        self.state = "running"
        if self.kernel:
            from rayjupyter.notebook.ipython_typed import display

            display(self.widget)
        TICKER.every(REFRESH_S, self._tick)

    def _tick(self) -> bool:
        assert self.ref is not None
        if not self.engine.connected:
            self._end("cancelled", "disconnected from the cluster")
            return False
        if self.engine.is_ready(self.ref):
            self._collect()
            return False
        if self.timeout is not None and time.monotonic() - self.started > self.timeout:
            self.engine.cancel(self.ref, force=True)
            self._end("timed out", f"cancelled after --timeout {self.timeout:g} s")
            return False
        self._refresh()
        return True

    def _collect(self) -> None:
        assert self.ref is not None  # collected only after start() submitted the cell
        engine = self.engine
        try:
            result: CellResult = engine.get(self.ref, timeout=30)
        except Exception as err:
            if self.spec.end_marker and engine.task_traceback(err) is not None:
                ROUTER.wait_end(self.spec.task_name, OUTPUT_DRAIN_S)
            self._failed(err)
            return
        if self.spec.end_marker:
            ROUTER.wait_end(self.spec.task_name, OUTPUT_DRAIN_S)
        self.shell.user_ns.update(result.values)
        missing = result.missing if self.show_missing else []
        note = templates.arrival_note(list(result.values), result.skipped, missing)
        self._write("stdout", note + "\n")
        shown = _shown_value(result)
        if shown is not None:
            self._show(shown)
        self._end("finished", f"{len(result.values)} names back")

    def _failed(self, err: Exception) -> None:
        engine = self.engine
        self.error = err
        if engine.is_cancelled(err):
            self._end("cancelled", "rj.cancel" if engine.name == "rayjupyter" else "ray.cancel")
        elif engine.task_traceback(err) is not None:
            clean_task_error(engine, err, self.shell, self.spec)
            render = getattr(err, "_render_traceback_", None)
            lines = render() if callable(render) else [str(err)]
            self._write("stderr", "\n".join(lines) + "\n")
            cause = getattr(err, "cause", None)
            self._end("failed", type(cause).__name__ if cause is not None else "error")
        else:  # lost connection, store trouble: say so under the cell
            self._write("stderr", f"{type(err).__name__}: {err}\n")
            self._end("failed", type(err).__name__)

    def _show(self, value: Any) -> None:
        from rayjupyter.notebook.cell_runner import format_display

        data, metadata = format_display(value)
        self.sink.display(data, metadata)

    def _write(self, stream: str, text: str) -> None:
        self.sink.write(stream, text)

    def _refresh(self) -> None:
        if self.kernel:
            self.status.value = self._status_html()

    def _end(self, state: str, detail: str) -> None:
        self.state = state
        self.detail = detail
        ROUTER.unroute(self.spec.task_name)
        self._refresh()
        self.finished.set()
