"""Argument checks at ``.remote()``: a call that cannot bind to its function's signature
raises TypeError in the caller, as in Ray, instead of becoming a task that fails later
(a loop of 100,000 bad calls would otherwise all be submitted before the first error).

A check costs one length comparison for the common case (positional arguments only, no
keyword-only parameters) and ``Signature.bind`` otherwise. Signatures are worked out once
per function, method or class and cached; an actor's methods travel in its handle as
plain tuples (``describe``), so a handle got by name or passed to a task checks too.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

#: a parameter as it travels in an actor's method table: (name, kind, has a default)
ParamSpec = tuple[str, int, bool]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_NO_DEFAULT = inspect.Parameter.empty
_HAS_DEFAULT = object()  # stands for a default value: binding never reads it


class ArgumentCheck:
    """One callable's signature, ready to check calls against."""

    __slots__ = ("high", "low", "signature")

    def __init__(self, signature: inspect.Signature) -> None:
        self.signature = signature
        params = list(signature.parameters.values())
        simple = all(p.kind in _POSITIONAL or p.kind is p.VAR_POSITIONAL for p in params)
        # the fast path (positional arguments only): how many may come; None: always bind
        self.low: int | None = None
        self.high: float = 0
        if simple:
            positional = [p for p in params if p.kind in _POSITIONAL]
            self.low = sum(p.default is _NO_DEFAULT for p in positional)
            var = any(p.kind is p.VAR_POSITIONAL for p in params)
            self.high = float("inf") if var else len(positional)

    def check(self, label: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise TypeError, naming the call, if ``label(*args, **kwargs)`` cannot bind."""
        if not kwargs and self.low is not None and self.low <= len(args) <= self.high:
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{label}.remote(): {exc}") from None


def for_callable(target: Callable[..., Any], drop_first: bool = False) -> ArgumentCheck | None:
    """The check for a function (or, ``drop_first``, an unbound method's ``self`` dropped);
    None where Python cannot tell the signature (some builtins): such calls go unchecked."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    if drop_first:
        params = list(signature.parameters.values())
        if not params or params[0].kind not in _POSITIONAL:
            return None
        signature = signature.replace(parameters=params[1:])
    return ArgumentCheck(signature)


def for_method(cls: type, name: str) -> ArgumentCheck | None:
    """The check for ``instance.name(...)`` of an instance of ``cls``."""
    raw = inspect.getattr_static(cls, name, None)
    if isinstance(raw, staticmethod):
        return for_callable(raw.__func__)
    if isinstance(raw, classmethod):
        return for_callable(raw.__func__, drop_first=True)
    if inspect.isfunction(raw):
        return for_callable(raw, drop_first=True)
    return None  # a callable object or a descriptor of its own: unchecked


def describe(check: ArgumentCheck | None) -> tuple[ParamSpec, ...] | None:
    """A picklable form of a check, free of default values (they may not pickle)."""
    if check is None:
        return None
    return tuple(
        (p.name, int(p.kind), p.default is not _NO_DEFAULT)
        for p in check.signature.parameters.values()
    )


@functools.lru_cache(maxsize=4096)
def from_description(spec: tuple[ParamSpec, ...]) -> ArgumentCheck:
    """The check ``describe`` stood for; one per distinct method signature."""
    params = [
        inspect.Parameter(
            name, inspect._ParameterKind(kind), default=_HAS_DEFAULT if has_default else _NO_DEFAULT
        )
        for name, kind, has_default in spec
    ]
    return ArgumentCheck(inspect.Signature(params))


def for_class(cls: type) -> ArgumentCheck | None:
    """The check for ``cls(...)`` (its ``__init__`` or ``__new__``)."""
    return for_callable(cls)
