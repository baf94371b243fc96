"""IPython's helpers that ship without usable annotations, given types once.

``IPython.display.display`` and the ``magic_arguments`` decorators have no annotations, so
every call of them is an untyped call under mypy's strict mode; ``line_magic`` and
``cell_magic`` are annotated to return a union (they also take a name), which loses the
method's type. They are called through these wrappers instead: the one ``type: ignore``
or ``cast`` per helper lives here, and the magics keep their types. Importing this module
imports IPython (only the notebook side does).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from IPython.core import magic as _magic
from IPython.core import magic_arguments as _arguments
from IPython.display import display as _display

F = TypeVar("F", bound=Callable[..., Any])


class Decorator(Protocol):
    """A decorator that returns the function it is given (as IPython's argument ones do)."""

    def __call__(self, func: F, /) -> F: ...


def display(*objects: Any, **kwargs: Any) -> None:
    """``IPython.display.display``: show objects in the current cell's output."""
    _display(*objects, **kwargs)  # type: ignore[no-untyped-call]


def magic_arguments() -> Decorator:
    """Mark a magic as taking ``argument`` declarations (``%magic?`` shows them)."""
    decorate: Decorator = _arguments.magic_arguments()  # type: ignore[no-untyped-call]
    return decorate


def argument(*args: Any, **kwargs: Any) -> Decorator:
    """Declare one argument of a magic, as ``ArgumentParser.add_argument`` takes it."""
    decorate: Decorator = _arguments.argument(*args, **kwargs)  # type: ignore[no-untyped-call]
    return decorate


def parse_argstring(magic: Callable[..., Any], line: str) -> argparse.Namespace:
    """Parse a magic's line with its declared arguments (UsageError when they are wrong)."""
    parsed: argparse.Namespace = _arguments.parse_argstring(magic, line)  # type: ignore[no-untyped-call]
    return parsed


def line_magic(func: F) -> F:
    """Mark a method of a ``Magics`` class as a line magic (used bare: ``@line_magic``)."""
    return cast(F, _magic.line_magic(func))


def cell_magic(func: F) -> F:
    """Mark a method of a ``Magics`` class as a cell magic (used bare: ``@cell_magic``)."""
    return cast(F, _magic.cell_magic(func))
