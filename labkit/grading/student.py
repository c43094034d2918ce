"""Student versions of the labs: solutions, answers and hidden tests removed (``labkit student``).

The course's notebook conventions (COURSE.md section 7) are those of nbgrader
(Jupyter Development Team, *nbgrader: a tool for creating and grading assignments in the
Jupyter notebook*, JOSE 2019): a solution sits between ``# BEGIN SOLUTION`` and
``# END SOLUTION`` lines, markdown cells tagged ``answer`` hold the instructor's answer, code
cells tagged ``hidden-test`` hold the grader's checks. Used for every lab (instructors, the site's
downloads, the grading tests).
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = [
    "BEGIN_SOLUTION",
    "END_SOLUTION",
    "ANSWER_PROMPT",
    "strip_solutions",
    "solution_blocks",
    "make_student_notebook",
    "write_student_versions",
    "resolve_lab",
    "all_labs",
]

BEGIN_SOLUTION = "# BEGIN SOLUTION"
END_SOLUTION = "# END SOLUTION"
ANSWER_PROMPT = "*Your answer here.*"
STUDENT_STUB = ("# YOUR CODE HERE", "raise NotImplementedError")

_BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION[ \t]*$")
_END = re.compile(r"^[ \t]*# END SOLUTION[ \t]*$")

# Metadata that a student version keeps; everything else (papermill timings, widget state,
# nbgrader/otter blocks, execution timings, collapsed/hidden flags of answer cells...) goes.
_NB_METADATA_KEPT = ("kernelspec", "language_info", "title", "authors")
_CELL_METADATA_KEPT = ("tags",)
_TAGS_DROPPED = {"hidden-test", "solution", "papermill-error-cell-tag", "injected-parameters"}


def _blocks(source: str, where: str) -> list[tuple[int, int, str]]:
    """``(begin_line, end_line, indent)`` of each solution block; ValueError when unbalanced."""
    lines = source.split("\n")
    blocks: list[tuple[int, int, str]] = []
    open_at: int | None = None
    indent = ""
    for i, line in enumerate(lines):
        m = _BEGIN.match(line)
        if m:
            if open_at is not None:
                raise ValueError(f"{where}: '{BEGIN_SOLUTION}' on line {i + 1} inside the block opened on "
                                 f"line {open_at + 1}; close it with '{END_SOLUTION}' first")
            open_at, indent = i, m.group("indent")
        elif _END.match(line):
            if open_at is None:
                raise ValueError(f"{where}: '{END_SOLUTION}' on line {i + 1} without a '{BEGIN_SOLUTION}' before it")
            blocks.append((open_at, i, indent))
            open_at = None
        elif "BEGIN SOLUTION" in line or "END SOLUTION" in line:
            raise ValueError(f"{where}: line {i + 1} mentions a solution marker but is not exactly "
                             f"'{BEGIN_SOLUTION}' / '{END_SOLUTION}' on a line of its own: {line.strip()!r}")
    if open_at is not None:
        raise ValueError(f"{where}: '{BEGIN_SOLUTION}' on line {open_at + 1} is never closed by '{END_SOLUTION}'")
    return blocks


def solution_blocks(source: str, *, where: str = "cell") -> list[str]:
    """The text of every solution block of a cell source (markers excluded). Used by the tests."""
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    lines = source.split("\n")
    return ["\n".join(lines[b + 1:e]) for b, e, _ in _blocks(source, where)]


def strip_solutions(source: str, *, where: str = "cell") -> str:
    """Replace each ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` block by a stub at its indentation.

    The stub is ``# YOUR CODE HERE`` followed by ``raise NotImplementedError``; the code around
    the block is kept. Unbalanced or nested markers raise ``ValueError`` naming ``where``.
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    blocks = _blocks(source, where)
    if not blocks:
        return source
    lines = source.split("\n")
    out: list[str] = []
    pos = 0
    for begin, end, indent in blocks:
        out.extend(lines[pos:begin])
        out.extend(indent + s for s in STUDENT_STUB)
        pos = end + 1
    out.extend(lines[pos:])
    return "\n".join(out)


def _tags(cell: Any) -> list[str]:
    tags = cell.get("metadata", {}).get("tags", [])
    return list(tags) if isinstance(tags, (list, tuple)) else []


def make_student_notebook(nb: Any, *, name: str = "notebook") -> Any:
    """The student version of an instructor notebook (a new ``NotebookNode``; ``nb`` is not modified).

    Solution blocks become stubs, ``answer`` cells a prompt, ``hidden-test`` cells are removed,
    outputs, execution counts, attachments of answers and revealing metadata are cleared.
    """
    import nbformat

    if not hasattr(nb, "cells"):
        raise TypeError(f"nb must be a notebook (nbformat.NotebookNode), got {type(nb).__name__}")
    src = nbformat.from_dict(copy.deepcopy(dict(nb)))
    cells = []
    for index, cell in enumerate(src.cells):
        tags = _tags(cell)
        if "hidden-test" in tags:
            continue
        where = f"{name}: cell {index}"
        if cell.cell_type == "markdown" and "answer" in tags:
            new = nbformat.v4.new_markdown_cell(ANSWER_PROMPT)
            new.metadata["tags"] = ["answer"]
            if "id" in cell:
                new["id"] = cell["id"]
            cells.append(new)
            continue
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source, where=where)
            cell.outputs = []
            cell.execution_count = None
        elif BEGIN_SOLUTION in cell.source:
            cell.source = strip_solutions(cell.source, where=where)
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in _CELL_METADATA_KEPT}
        kept_tags = [t for t in tags if t not in _TAGS_DROPPED]
        if kept_tags:
            cell.metadata["tags"] = kept_tags
        else:
            cell.metadata.pop("tags", None)
        cells.append(cell)
    src.cells = cells
    src.metadata = {k: v for k, v in src.metadata.items() if k in _NB_METADATA_KEPT}
    src.metadata["labkit"] = {"student_version": True, "lab": name}
    return src


def all_labs() -> list[Path]:
    """Every lab notebook of the course (``labkit.runner.list_labs``)."""
    from labkit.runner import lab_path, list_labs

    return [lab_path(name) for name, _ in list_labs()]


def resolve_lab(lab: str | os.PathLike) -> Path:
    """A lab name (``"00"``, ``"00_welcome"``) or a notebook path, as ``labkit.runner.lab_path``."""
    from labkit.runner import lab_path

    path = lab_path(lab)
    if not path.is_file():
        raise ValueError(f"lab notebook {path} does not exist; see `labkit list`")
    return path


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_student_versions(labs: Sequence[str | os.PathLike] | None = None, *,
                           output_dir: str | os.PathLike) -> list[Path]:
    """Write ``output_dir/<lab>.ipynb`` for each lab (``None``: every lab); returns the paths.

    Files are written atomically; a lab with unbalanced solution markers raises ``ValueError``
    before anything of it is written.
    """
    import nbformat

    if output_dir is None or str(output_dir) == "":
        raise ValueError("output_dir must be a folder path, e.g. output_dir='student'")
    paths: Iterable[Path] = all_labs() if not labs else [resolve_lab(lab) for lab in labs]
    out = Path(output_dir)
    written = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        student = make_student_notebook(nb, name=path.stem)
        nbformat.validate(student)
        target = out / path.name
        _write_atomic(target, nbformat.writes(student))
        written.append(target)
    return written
