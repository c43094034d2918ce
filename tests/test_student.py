"""Student versions: solution blocks, answers, hidden tests and revealing metadata removed; for every
lab, the student version fails at its first exercise and the instructor version gets full marks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nbformat
import pytest

from labkit import runner
from labkit.grading.student import (ANSWER_PROMPT, make_student_notebook, solution_blocks, strip_solutions,
                                    write_student_versions)

v4 = nbformat.v4
LABS = [name for name, _ in runner.list_labs()]


def _code(src, tags=None):
    c = v4.new_code_cell(src)
    if tags:
        c.metadata["tags"] = tags
    return c


def _instructor():
    nb = v4.new_notebook()
    nb.metadata.update(kernelspec={"name": "python3", "display_name": "Python 3", "language": "python"},
                       papermill={"parameters": {"PROFILE": "smoke"}}, widgets={"state": {"x": 1}},
                       nbgrader={"solution": "secret"})
    params = _code('PROFILE = "standard"\nDATA = "embedded"\nSEED = 0', ["parameters"])
    ex = _code("def f(x):\n    y = 1\n    # BEGIN SOLUTION\n    z = x * 41 + y  # distinctive\n    return z\n"
               "    # END SOLUTION\n\nprint(f(1))")
    ex.outputs = [v4.new_output("stream", name="stdout", text="42\n")]
    ex.execution_count = 3
    ex.metadata.update(papermill={"duration": 1.0}, execution={"iopub.execute_input": "t"}, collapsed=True,
                       nbgrader={"grade": True, "solution": True}, tags=["exercise", "solution"])
    answer = v4.new_markdown_cell("*Answer.* the instructor's distinctive answer")
    answer.metadata["tags"] = ["answer"]
    answer.attachments = {"a.png": {"image/png": "AAAA"}}
    hidden = _code("lk.check('h', f(2) == 83, 'secret hidden detail', points=2)", ["hidden-test"])
    nb.cells = [v4.new_markdown_cell("# Lab 98"), params, ex, v4.new_markdown_cell("**Q1.** Why?"), answer, hidden]
    return nb


def test_strip_solutions_keeps_indentation_and_surrounding_code():
    src = ("a = 1\n# BEGIN SOLUTION\nb = 2\n# END SOLUTION\n"
           "for i in range(3):\n    if i:\n        # BEGIN SOLUTION\n        c = i\n        d = c\n        # END SOLUTION\n"
           "    e = 5\n")
    assert strip_solutions(src) == ("a = 1\n# YOUR CODE HERE\nraise NotImplementedError\n"
                                    "for i in range(3):\n    if i:\n        # YOUR CODE HERE\n"
                                    "        raise NotImplementedError\n    e = 5\n")
    assert solution_blocks(src) == ["b = 2", "        c = i\n        d = c"]
    assert strip_solutions("x = 1  # no markers") == "x = 1  # no markers"
    compile(strip_solutions(src), "<student>", "exec")  # still valid Python


@pytest.mark.parametrize("src, message", [
    ("# BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n# END SOLUTION\n", "without a '# BEGIN SOLUTION'"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n", "inside the block"),
    ("x = 1  # BEGIN SOLUTION\n", "not exactly"),
])
def test_bad_markers_raise_with_the_place(src: str, message: str):
    with pytest.raises(ValueError, match=message) as err:
        strip_solutions(src, where="lab 98: cell 2")
    assert "lab 98: cell 2" in str(err.value)
    with pytest.raises(TypeError):
        strip_solutions(None)  # type: ignore[arg-type]


def test_make_student_notebook():
    inst = _instructor()
    before = copy.deepcopy(inst)
    student = make_student_notebook(inst, name="98_test")
    assert inst == before, "the instructor notebook is not modified"
    text = nbformat.writes(student)
    for secret in ("x * 41", "distinctive answer", "secret hidden detail", "lk.check('h'", "BEGIN SOLUTION",
                   "nbgrader", "papermill", "widgets", "AAAA", '"42\\n"'):
        assert secret not in text, secret
    cells = student.cells
    assert len(cells) == 5 and cells[-1].source == ANSWER_PROMPT and cells[-1].metadata["tags"] == ["answer"]
    ex = cells[2]
    assert ex.source == ("def f(x):\n    y = 1\n    # YOUR CODE HERE\n    raise NotImplementedError\n\nprint(f(1))")
    assert ex.outputs == [] and ex.execution_count is None
    assert ex.metadata == {"tags": ["exercise"]}
    assert cells[1].metadata == {"tags": ["parameters"]}
    assert set(student.metadata) == {"kernelspec", "labkit"} and student.metadata["labkit"]["student_version"]
    nbformat.validate(student)
    with pytest.raises(TypeError, match="notebook"):
        make_student_notebook({"cells": "no"})


def test_write_student_versions(tmp_path: Path):
    lab = tmp_path / "98_test.ipynb"
    nbformat.write(_instructor(), lab)
    paths = write_student_versions([lab], output_dir=tmp_path / "student")
    assert paths == [tmp_path / "student" / "98_test.ipynb"]
    assert "x * 41" not in paths[0].read_text()
    assert not list((tmp_path / "student").glob(".*"))  # no temporary file left
    bad = _instructor()
    bad.cells[2].source = bad.cells[2].source.replace("    # END SOLUTION\n", "")
    nbformat.write(bad, tmp_path / "97_bad.ipynb")
    with pytest.raises(ValueError, match="97_bad: cell 2"):
        write_student_versions([tmp_path / "97_bad.ipynb"], output_dir=tmp_path / "student")
    assert not (tmp_path / "student" / "97_bad.ipynb").exists()
    with pytest.raises(ValueError, match="unknown lab"):
        write_student_versions(["no_such_lab"], output_dir=tmp_path / "student")
    with pytest.raises(ValueError, match="output_dir"):
        write_student_versions([lab], output_dir="")


# --------------------------------------------------------------------------- every lab

def test_labs_found():
    if not LABS:
        pytest.fail(f"no labs found in {runner.labs_dir()}", pytrace=False)
    assert all(runner.lab_path(name).is_file() for name in LABS)


@pytest.mark.parametrize("lab", LABS)
def test_student_version_has_no_solution_text(lab: str, tmp_path: Path):
    inst = nbformat.read(runner.lab_path(lab), as_version=4)
    (path,) = write_student_versions([lab], output_dir=tmp_path)
    text = path.read_text()
    student = nbformat.reads(text, as_version=4)
    sources = "\n".join(c.source for c in student.cells)
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    secrets = []
    for c in inst.cells:
        tags = c.metadata.get("tags", [])
        if "answer" in tags or "hidden-test" in tags:
            secrets += [ln.strip() for ln in c.source.splitlines() if len(ln.strip()) >= 20]
        elif c.cell_type == "code":
            for block in solution_blocks(c.source):
                secrets += [ln.strip() for ln in block.splitlines() if len(ln.strip()) >= 20]
                assert block.strip() not in sources
    leaked = [s for s in secrets if s in sources]
    assert not leaked, f"solution/answer/hidden text in the student version of {lab}: {leaked[:3]}"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in student.cells if c.cell_type == "code")
    assert not any("hidden-test" in c.metadata.get("tags", []) for c in student.cells)
    assert sources.count("raise NotImplementedError") == sum(len(solution_blocks(c.source)) for c in inst.cells
                                                             if c.cell_type == "code")


@pytest.mark.slow
@pytest.mark.parametrize("lab", LABS)
def test_grader_on_instructor_and_student_versions(lab: str, tmp_path: Path):
    """The instructor version gets every point (visible checks pass too); the student version runs
    until its first exercise and fails there with NotImplementedError."""
    from labkit.grading.grade import grade_submissions

    path = runner.lab_path(lab)
    inst = nbformat.read(path, as_version=4)
    subs = tmp_path / "subs"
    subs.mkdir()
    nbformat.write(inst, subs / "instructor.ipynb")
    nbformat.write(make_student_notebook(inst, name=lab), subs / "student.ipynb")
    params = runner.read_parameters(path)
    extra = {"WEIGHTS": "random"} if "WEIGHTS" in params else {}
    report = grade_submissions(path, subs, tmp_path / "out", profile="smoke", jobs=2, timeout_cell=300,
                               timeout_total=900, parameters=extra, log=None)
    res = {r.id: r for r in report.results}
    ref = res["instructor"]
    assert ref.status == "ok" and ref.total == ref.max > 0, f"{lab}: {ref.status}: {ref.message}"
    executed = json.loads((tmp_path / "out" / "instructor" / "executed.ipynb").read_text())
    outputs = "".join("".join(o.get("text", "")) for c in executed["cells"] if c["cell_type"] == "code"
                      for o in c["outputs"])
    assert "[FAIL]" not in outputs and "[PASS]" in outputs
    first_exercise = next(i for i, c in enumerate(make_student_notebook(inst, name=lab).cells)
                          if "raise NotImplementedError" in c.source)
    stu = res["student"]
    assert stu.status == "error" and stu.first_error["ename"] == "NotImplementedError", stu.message
    assert stu.first_error["cell"] == first_exercise, stu.message
