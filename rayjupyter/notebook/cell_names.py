"""Which names a cell reads from the notebook and which it defines: what ``%%remote`` ships
and what it brings back.

Python's own symbol tables decide scoping (a name read inside a function defined in the
cell is a global read; a comprehension's loop variable is not). Statements are taken in
order, so a name the cell assigns before reading it is not shipped.
"""

from __future__ import annotations

import ast
import symtable
from dataclasses import dataclass

# Statements after which their names are certainly bound for the statements that follow.
_BINDING = (
    ast.Assign,
    ast.AnnAssign,
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


@dataclass(frozen=True)
class CellNames:
    """reads: names to look up in the notebook; writes: names the cell defines."""

    reads: tuple[str, ...]
    writes: tuple[str, ...]
    ends_with_expression: bool


def analyze(source: str, filename: str = "<cell>") -> CellNames:
    """Names read before being bound, names bound, and whether the last statement is an
    expression (whose value a cell displays). SyntaxError propagates."""
    tree = ast.parse(source, filename)
    bound: set[str] = set()
    reads: dict[str, None] = {}
    writes: dict[str, None] = {}
    for stmt in tree.body:
        table = symtable.symtable(ast.unparse(stmt), filename, "exec")
        stmt_reads, stmt_writes = _top_names(table)
        stmt_reads |= _implicit_reads(stmt)
        for name in sorted(stmt_reads - bound):
            reads.setdefault(name)
        for name in sorted(stmt_writes):
            writes.setdefault(name)
        if isinstance(stmt, _BINDING):
            bound |= stmt_writes
    last_is_expr = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
    return CellNames(tuple(reads), tuple(writes), last_is_expr)


def _top_names(table: symtable.SymbolTable) -> tuple[set[str], set[str]]:
    reads: set[str] = set()
    writes: set[str] = set()
    for sym in table.get_symbols():
        if sym.is_referenced():
            reads.add(sym.get_name())
        if sym.is_assigned() or sym.is_imported():
            writes.add(sym.get_name())
    for child in table.get_children():
        _nested_names(child, reads, writes)
    return reads, writes


def _nested_names(table: symtable.SymbolTable, reads: set[str], writes: set[str]) -> None:
    """Globals used inside functions, classes, lambdas and comprehensions of the cell."""
    for sym in table.get_symbols():
        if not sym.is_global():
            continue
        if sym.is_referenced():
            reads.add(sym.get_name())
        if sym.is_declared_global() and sym.is_assigned():
            reads.add(sym.get_name())  # `global x; x += 1` needs the current value
            writes.add(sym.get_name())
    for child in table.get_children():
        _nested_names(child, reads, writes)


def _implicit_reads(stmt: ast.stmt) -> set[str]:
    """Module-level `x += 1` and `del x` read x, which symbol tables do not count as a use."""
    found: set[str] = set()
    todo: list[ast.AST] = [stmt]
    while todo:
        node = todo.pop()
        if isinstance(node, _SCOPES):
            continue  # their own scope: symbol tables already tell what they read
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            found.add(node.target.id)
        elif isinstance(node, ast.Delete):
            found.update(t.id for t in node.targets if isinstance(t, ast.Name))
        todo.extend(ast.iter_child_nodes(node))
    return found
