"""TypeScript declarations generated from the REST API's models and the node's read models.

``python -m rayjupyter.server.typescript > labextension/src/models.ts`` writes the lab
extension's types from the TypedDicts of ``server/models.py`` and the dataclasses of
``core/read_models.py`` (the node's status and state rows, which the panel's models are
built from); a test fails when the committed file differs from this output, so the
TypeScript side cannot drift from the Python models. Comments travel as doc comments:
a class's docstring, a field's trailing ``# comment``, a ``#:`` comment above an alias.
Only fields are declared: a dataclass's properties and methods stay on the Python side.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints, is_typeddict

DEFAULT_MODULES = ("rayjupyter.server.models", "rayjupyter.core.read_models")
_FIELD_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+?)\s*$")


def generate(module_names: typing.Sequence[str] = DEFAULT_MODULES) -> str:
    """The declarations of every public TypedDict, dataclass and Literal alias of the
    modules, in order."""
    out = [
        "// Generated from "
        + ", ".join(module_names)
        + " by `python -m rayjupyter.server.typescript`.",
        "// Do not edit: change the Python models and regenerate (a test checks this file).",
        "",
    ]
    for name in module_names:
        out.extend(_module(importlib.import_module(name)))
    return "\n".join(out).rstrip() + "\n"


def _module(module: types.ModuleType) -> list[str]:
    source = inspect.getsource(module)
    aliases = {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_") and get_origin(value) is Literal
    }
    out: list[str] = []
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        if name in aliases:
            out.extend(_doc(_alias_comment(source, name)))
            out.append(f"export type {name} = {_literal(value)};")
            out.append("")
        elif _is_own_model(value, module):
            out.extend(_interface(value, aliases))
            out.append("")
    return out


def _is_model(value: Any) -> bool:
    """A TypedDict or a dataclass: a JSON object of named fields."""
    return isinstance(value, type) and (is_typeddict(value) or dataclasses.is_dataclass(value))


def _is_own_model(value: Any, module: types.ModuleType) -> bool:
    return _is_model(value) and value.__module__ == module.__name__


def _interface(cls: type, aliases: dict[str, Any]) -> list[str]:
    hints = get_type_hints(cls)
    comments = _field_comments(cls)
    optional: frozenset[str] = getattr(cls, "__optional_keys__", frozenset())
    out = _doc(inspect.getdoc(cls) or "")
    out.append(f"export interface {cls.__name__} {{")
    for field, hint in hints.items():
        for line in _doc(comments.get(field, "")):
            out.append("  " + line)
        mark = "?" if field in optional else ""
        out.append(f"  {field}{mark}: {_ts(hint, aliases)};")
    out.append("}")
    return out


def _ts(hint: Any, aliases: dict[str, Any]) -> str:
    """The TypeScript type of a Python annotation."""
    for name, value in aliases.items():
        if hint == value:
            return name
    origin = get_origin(hint)
    if hint is str:
        return "string"
    if hint in (int, float):
        return "number"
    if hint is bool:
        return "boolean"
    if hint is None or hint is type(None):
        return "null"
    if hint is Any:
        return "unknown"
    if _is_model(hint):
        return str(hint.__name__)
    if origin is Literal:
        return _literal(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_ts(arg, aliases) for arg in get_args(hint))
    if origin is tuple:
        items = get_args(hint)
        if len(items) == 2 and items[1] is Ellipsis:
            inner = _ts(items[0], aliases)
            return f"({inner})[]" if " | " in inner else f"{inner}[]"
        return "[" + ", ".join(_ts(item, aliases) for item in items) + "]"
    if origin is list:
        (item,) = get_args(hint)
        inner = _ts(item, aliases)
        return f"({inner})[]" if " | " in inner else f"{inner}[]"
    if origin is dict:
        key, value = get_args(hint)
        if key is not str:
            raise TypeError(f"JSON object keys are strings, not {key!r}")
        return f"{{ [key: string]: {_ts(value, aliases)} }}"
    raise TypeError(f"no TypeScript type for {hint!r}: use JSON types in the models")


def _literal(hint: Any) -> str:
    return " | ".join(_json_literal(arg) for arg in get_args(hint))


def _json_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _field_comments(cls: type) -> dict[str, str]:
    comments: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        match = _FIELD_COMMENT.match(line)
        if match:
            comments[match.group(1)] = match.group(2)
    return comments


def _alias_comment(source: str, name: str) -> str:
    """The ``#:`` lines right above ``name = ...``."""
    lines = source.splitlines()
    for index, line in enumerate(lines):
        if line.startswith(f"{name} ="):
            comment: list[str] = []
            back = index - 1
            while back >= 0 and lines[back].startswith("#:"):
                comment.insert(0, lines[back][2:].strip())
                back -= 1
            return " ".join(comment)
    return ""


def _doc(text: str) -> list[str]:
    text = " ".join(text.split())
    return [f"/** {text} */"] if text else []


def main(argv: list[str]) -> int:
    sys.stdout.write(generate(argv or DEFAULT_MODULES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
