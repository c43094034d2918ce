"""What the grader needs from an instructor notebook: hidden tests, their points, parameters, imports.

Used by ``labkit grade`` (every lab). Hidden-test cells are the code cells tagged
``hidden-test``; the points of each check are the ``points=`` of its ``lk.check`` call
(default 1), read statically so that a check that never ran still counts in the maximum.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DeclaredCheck", "InstructorLab", "load_instructor_lab", "declared_checks", "import_aliases",
           "labkit_names"]


@dataclass(frozen=True)
class DeclaredCheck:
    """A hidden ``lk.check`` found in the instructor notebook."""

    name: str
    points: float
    cell: int  # index among the hidden-test cells


@dataclass(frozen=True)
class InstructorLab:
    """The grading view of one lab."""

    name: str
    path: Path
    hidden_cells: tuple[str, ...]
    checks: tuple[DeclaredCheck, ...]
    dynamic: bool  # some check names or points are computed at run time
    parameters: dict[str, Any] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    labkit_names: tuple[str, ...] = ()
    digest: str = ""

    @property
    def max_points(self) -> float:
        return float(sum(c.points for c in self.checks))


def _is_check_call(node: ast.Call) -> bool:
    f = node.func
    return (isinstance(f, ast.Attribute) and f.attr == "check") or (isinstance(f, ast.Name) and f.id == "check")


def declared_checks(source: str, *, cell: int = 0) -> tuple[list[DeclaredCheck], bool]:
    """The ``check(name, ..., points=...)`` calls of a hidden-test cell and whether any is dynamic.

    A call whose name is not a string literal, or whose ``points`` is not a number literal, is
    dynamic: its points are only known when it runs.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"hidden-test cell {cell} is not valid Python: {exc}") from None
    found: dict[str, DeclaredCheck] = {}
    dynamic = False
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and _is_check_call(node)):
            continue
        name_node = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
        points_node = next((k.value for k in node.keywords if k.arg == "points"), None)
        if not (isinstance(name_node, ast.Constant) and isinstance(name_node.value, str)):
            dynamic = True
            continue
        points = 1.0
        if points_node is not None:
            if isinstance(points_node, ast.Constant) and isinstance(points_node.value, (int, float)) \
                    and not isinstance(points_node.value, bool):
                points = float(points_node.value)
            else:
                dynamic = True
        found[name_node.value] = DeclaredCheck(name_node.value, points, cell)
    return list(found.values()), dynamic


def import_aliases(sources: list[str]) -> dict[str, str]:
    """Names bound by top-level imports (``import labkit as lk`` -> ``{"lk": "labkit"}``)."""
    aliases: dict[str, str] = {}
    for src in sources:
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        aliases[top] = top
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    if a.name != "*":
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def labkit_names(sources: list[str], aliases: dict[str, str]) -> tuple[str, ...]:
    """The ``lk.NAME`` attributes used in ``sources`` (``lk`` = any alias of ``labkit``)."""
    lk_aliases = {a for a, m in aliases.items() if m == "labkit"} | {"labkit"}
    names: set[str] = set()
    for src in sources:
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in lk_aliases:
                names.add(node.attr)
    return tuple(sorted(names))


def _tags(cell: Any) -> list[str]:
    tags = cell.get("metadata", {}).get("tags", [])
    return list(tags) if isinstance(tags, (list, tuple)) else []


def load_instructor_lab(lab: str | os.PathLike) -> InstructorLab:
    """Read the instructor notebook of ``lab`` (a name such as ``"00"`` or a path)."""
    import nbformat

    from ..runner import notebook_parameters
    from .student import resolve_lab

    path = resolve_lab(lab)
    nb = nbformat.read(path, as_version=4)
    parameters = notebook_parameters(nb, path.name)
    hidden = tuple(c.source for c in nb.cells if c.cell_type == "code" and "hidden-test" in _tags(c))
    if not hidden:
        raise ValueError(f"{path.name} has no code cell tagged 'hidden-test': nothing to grade with")
    checks: dict[str, DeclaredCheck] = {}
    dynamic = False
    for i, src in enumerate(hidden):
        found, dyn = declared_checks(src, cell=i)
        dynamic |= dyn
        for c in found:
            checks.pop(c.name, None)
            checks[c.name] = c
    if not checks and not dynamic:
        raise ValueError(f"{path.name}: its hidden-test cells call no lk.check(...)")
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    aliases = import_aliases(code)
    digest = hashlib.sha256(json.dumps([hidden, parameters], sort_keys=True, default=str).encode()).hexdigest()
    return InstructorLab(name=path.stem, path=path, hidden_cells=hidden, checks=tuple(checks.values()),
                         dynamic=dynamic, parameters=parameters, aliases=aliases,
                         labkit_names=labkit_names(list(hidden), aliases), digest=digest)
