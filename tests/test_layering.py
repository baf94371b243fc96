"""The engine's layering: ``rayjupyter/core`` imports nothing from the parts built on it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "rayjupyter" / "core"
FORBIDDEN = (
    "rayjupyter.dashboard",
    "rayjupyter.notebook",
    "rayjupyter.server",
    "rayjupyter.util",
    "rayjupyter.cli",
)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` or ``from ... import`` in the file names (at any depth,
    lazy imports inside functions included), relative imports resolved."""
    package = "rayjupyter.core"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def test_core_modules_import_nothing_built_on_core():
    bad = [
        f"{path.name}:{line}: {module}"
        for path in sorted(CORE.glob("*.py"))
        for line, module in _imports(path)
        if _forbidden(module)
    ]
    assert not bad, "core/ must not import dashboard/notebook/server/util/cli: " + str(bad)


def test_the_import_checker_sees_lazy_and_relative_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f():\n    from rayjupyter.dashboard.launch import start_dashboard\n"
        "from ..util import state\nimport rayjupyter.cli\n"
    )
    assert sorted(m for _, m in _imports(sample) if _forbidden(m)) == [
        "rayjupyter.cli",
        "rayjupyter.dashboard.launch",
        "rayjupyter.dashboard.launch.start_dashboard",
        "rayjupyter.util",
        "rayjupyter.util.state",
    ]


def test_importing_core_loads_none_of_the_parts_built_on_it():
    script = (
        "import importlib, pkgutil, sys\n"
        "import rayjupyter.core\n"
        "for info in pkgutil.iter_modules(rayjupyter.core.__path__):\n"
        "    importlib.import_module('rayjupyter.core.' + info.name)\n"
        f"bad = sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))\n"
        "print(bad)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def _runtime_node_imports(path: Path) -> set[str]:
    """The node modules (``node*.py``) a file imports when it runs (not for types only)."""
    tree = ast.parse(path.read_text(), str(path))
    for_types = {
        id(inner)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
        for inner in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and id(node) not in for_types and node.module:
            name = node.module.rpartition(".")[2]
            if node.module.startswith("rayjupyter.core.node") and name != path.stem:
                found.add(name)
    return found


def test_the_node_parts_import_neither_the_node_nor_each_other_in_a_circle():
    """The node is built of parts given what they need (README: The node's parts): none
    imports node.py, and no chain of imports between node modules comes back to itself."""
    graph = {path.stem: _runtime_node_imports(path) for path in CORE.glob("node*.py")}
    assert not [name for name, imports in graph.items() if "node" in imports]

    def reaches(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo += graph.get(name, ())
        return seen

    assert not [name for name in graph if name in reaches(name)]
