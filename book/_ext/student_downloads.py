"""Sphinx extension of the course site: the student version of every lab, for download.

``{student-downloads}`` (a MyST directive, used on book/labs.md) lists one link per lab to
``_static/student/NN_name.ipynb``; when an HTML build finishes, those notebooks are written
there by ``labkit.grading.student.write_student_versions`` (solutions replaced by
``# YOUR CODE HERE``, answers by a prompt, hidden tests removed, outputs cleared). Nothing is
committed: the files are regenerated from the instructor notebooks at every build.
"""

from __future__ import annotations

import json
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

FOLDER = "_static/student"


def lab_notebooks(srcdir: str | Path) -> list[Path]:
    """The labs of the course (``labs/NN_name.ipynb``), in order."""
    return sorted((Path(srcdir) / "labs").glob("[0-9][0-9]_*.ipynb"))


def _title(path: Path) -> str:
    """The lab's first heading (``# Lab NN — title``), or its file name."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        first = "".join(cells[0]["source"]).strip().splitlines()[0]
        return first.lstrip("#").strip() or path.stem
    except (OSError, ValueError, KeyError, IndexError):
        return path.stem


class StudentDownloads(SphinxDirective):
    """A bullet list of links to the student notebooks."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        prefix = "../" * self.env.docname.count("/")
        items = nodes.bullet_list()
        for path in lab_notebooks(self.env.srcdir):
            self.env.note_dependency(str(path))
            link = nodes.reference("", "", internal=False, refuri=f"{prefix}{FOLDER}/{path.name}")
            link += nodes.literal(path.name, path.name)
            para = nodes.paragraph()
            para += link
            para += nodes.Text(f" ({_title(path)})")
            items += nodes.list_item("", para)
        return [items]


def _write_student_versions(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    from labkit.grading.student import write_student_versions

    labs = lab_notebooks(app.srcdir)
    written = write_student_versions(labs, output_dir=Path(app.outdir) / FOLDER)
    logging.getLogger(__name__).info(f"student versions: {len(written)} notebooks in {FOLDER}/")


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("student-downloads", StudentDownloads)
    app.connect("build-finished", _write_student_versions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
