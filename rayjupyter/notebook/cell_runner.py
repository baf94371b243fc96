"""What runs on the worker for a ``%%remote`` cell: exec the cell in a namespace made of the
names shipped from the notebook, then hand back the names it defined and its last value.

Imported on workers, so it imports nothing from Jupyter: display calls are formatted here
from the objects' own ``_repr_*_`` methods and travel to the notebook as marked stdout lines.
On Ray it is shipped by value (with ``output_routing``), so a Ray cluster runs ``%%remote``
cells without rayjupyter installed: it imports nothing at the top but the standard library.
"""

from __future__ import annotations

import ast
import base64
import builtins
import contextlib
import linecache
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rayjupyter.notebook.output_routing import END_MARKER, encode_display

# _repr_*_ method -> MIME type, as IPython's formatters use them
_REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
)


@dataclass(frozen=True)
class CellSpec:
    """A ``%%remote`` cell as the worker needs it."""

    task_name: str
    filename: str  # the name tracebacks show for the cell (mapped back to "Cell In[n]")
    source: str  # the cell's body, with blank lines in front so line numbers match the cell
    lines: str  # the cell as the user sees it (line 1 is the %%remote line), for tracebacks
    bring_back: tuple[str, ...]  # names to send back when defined after the cell
    display_last: bool  # show the last expression's value, as a cell does
    sources: dict[str, str] = field(default_factory=dict)  # other notebook cells, by filename
    # print a last line saying the output is complete: Ray's driver prints worker lines
    # from log files, after the result may have arrived
    end_marker: bool = False


@dataclass
class CellResult:
    """What comes back: picklable defined names, why others did not, the last value."""

    values: dict[str, Any]
    skipped: dict[str, str]
    missing: list[str]
    value: Any = None
    value_bundle: dict[str, Any] | None = None  # when the last value could not be pickled


def run_cell(spec: CellSpec, shipped: dict[str, Any]) -> CellResult:
    """Execute the cell; an exception propagates (its traceback shows the cell's lines)."""
    _register_sources(spec)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    namespace["display"] = display
    namespace.update(shipped)
    tree = ast.parse(spec.source, spec.filename)
    last: ast.expr | None = None
    if spec.display_last and tree.body and isinstance(tree.body[-1], ast.Expr):
        statement = tree.body.pop()
        assert isinstance(statement, ast.Expr)
        last = statement.value
    value = None
    try:
        with _line_buffered_output(), _rich_display(spec.source):
            exec(compile(tree, spec.filename, "exec"), namespace)
            if last is not None:
                value = eval(compile(ast.Expression(last), spec.filename, "eval"), namespace)
    finally:
        if spec.end_marker:
            sys.stdout.write(END_MARKER)
            sys.stdout.flush()
    return _result(spec, namespace, value)


def _result(spec: CellSpec, namespace: dict[str, Any], value: Any) -> CellResult:
    values: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    missing: list[str] = []
    for name in spec.bring_back:
        if name not in namespace:
            missing.append(name)
            continue
        problem = _unpicklable(namespace[name])
        if problem:
            skipped[name] = problem
        else:
            values[name] = namespace[name]
    result = CellResult(values, skipped, missing)
    if value is not None:
        if _unpicklable(value):
            result.value_bundle = format_display(value)[0]
        else:
            result.value = value
    return result


def _unpicklable(value: Any) -> str | None:
    """Why value cannot travel back, or None. Large buffers are not copied to find out."""
    try:
        _pickler().dumps(value, protocol=5, buffer_callback=lambda _buffer: False)
    except Exception as exc:
        return f"{type(value).__name__} cannot be pickled ({exc})"
    return None


def _pickler() -> Any:
    """cloudpickle, or Ray's copy of it on a Ray worker that has no other."""
    try:
        import cloudpickle
    except ImportError:
        from ray import cloudpickle
    return cloudpickle


def _register_sources(spec: CellSpec) -> None:
    """Let tracebacks on this worker quote the cell's lines (and the notebook's cells)."""
    for filename, text in {**spec.sources, spec.filename: spec.lines}.items():
        lines = text.splitlines(keepends=True)
        linecache.cache[filename] = (len(text), None, lines, filename)


@contextlib.contextmanager
def _line_buffered_output() -> Iterator[None]:
    """Print lines reach the notebook as they are printed, not when the task ends."""
    previous = []
    for stream in (sys.stdout, sys.stderr):
        buffered = getattr(stream, "line_buffering", True)
        if not buffered and hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
            previous.append(stream)
    try:
        yield
    finally:
        for stream in previous:
            with contextlib.suppress(Exception):
                stream.flush()
                stream.reconfigure(line_buffering=False)


@contextlib.contextmanager
def _rich_display(source: str) -> Iterator[None]:
    """While the cell runs, IPython's display() (if the cell imports it) is ours."""
    if "IPython" not in source:
        yield
        return
    try:
        import IPython.core.display_functions as functions
        import IPython.display as public
    except ImportError:
        yield
        return
    saved = (functions.display, public.display)
    functions.display = public.display = display
    try:
        yield
    finally:
        functions.display, public.display = saved


def format_display(obj: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(data, metadata) of obj from its own _repr_*_ methods, as IPython would build them."""
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    method = getattr(obj, "_repr_mimebundle_", None)
    if callable(method) and not isinstance(obj, type):
        with contextlib.suppress(Exception):
            bundle = method(include=None, exclude=None)
            if isinstance(bundle, tuple):
                bundle, metadata = bundle[0], dict(bundle[1] or {})
            if isinstance(bundle, dict):
                data.update(bundle)
    for name, mime in _REPR_METHODS:
        method = getattr(obj, name, None)
        if mime in data or not callable(method) or isinstance(obj, type):
            continue
        with contextlib.suppress(Exception):
            value = method()
            if isinstance(value, tuple):
                value, extra = value
                metadata[mime] = extra
            if value is None:
                continue
            if isinstance(value, bytes):
                value = base64.b64encode(value).decode()
            data[mime] = value
    data.setdefault("text/plain", repr(obj))
    return data, metadata


def display(*objs: Any, **_kwargs: Any) -> None:
    """display() inside a ``%%remote`` cell: rich output under the notebook cell."""
    for obj in objs:
        data, metadata = format_display(obj)
        sys.stdout.write(encode_display(data, metadata))
        sys.stdout.flush()
