"""Every lab follows the course conventions and runs: smoke profile on embedded and on real data.

The standard-profile outputs committed in ``labs/`` are re-executed and compared by nbval
(``# NBVAL_CHECK_OUTPUT`` cells; see ``tests/sanitize.cfg``), which pytest collects from ``labs/``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from labkit import runner

LABS = [name for name, _ in runner.list_labs()]
IMAGENET_LABS = {"01", "02", "03", "04", "05", "06", "08"}  # labs with a WEIGHTS parameter


def _nb(name: str):
    return nbformat.read(runner.lab_path(name), as_version=4)


def _tagged(nb, tag: str):
    return [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]


def test_labs_exist():
    assert LABS and LABS[0] == "00_welcome", f"labs found: {LABS}"


@pytest.mark.parametrize("lab", LABS)
def test_structure(lab: str):
    nb = _nb(lab)
    params = runner.read_parameters(runner.lab_path(lab))
    assert {"PROFILE", "DATA", "SEED"} <= set(params), f"parameters cell has {sorted(params)}"
    assert params["PROFILE"] == "standard" and params["DATA"] == "embedded"
    if lab[:2] in IMAGENET_LABS:
        assert params["WEIGHTS"] == "imagenet", "labs on an ImageNet model default to WEIGHTS='imagenet'"
    else:
        assert "WEIGHTS" not in params, "a lab with a WEIGHTS parameter belongs in IMAGENET_LABS"
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# Lab ")
    assert "Objectives" in markdown and "## Summary" in markdown and "References" in markdown
    assert sum("# NBVAL_CHECK_OUTPUT" in s for s in code) >= 3, "at least three nbval-checked cells"
    exercises = [s for s in code if "# BEGIN SOLUTION" in s]
    assert len(exercises) >= 2, "at least two exercises"
    for s in exercises:
        assert s.count("# BEGIN SOLUTION") == s.count("# END SOLUTION")
        assert "lk.check(" in s.split("# END SOLUTION")[-1], "each exercise is followed by a visible lk.check"
    answers = _tagged(nb, "answer")
    assert len(answers) >= 2 and all(c.cell_type == "markdown" for c in answers)
    hidden = _tagged(nb, "hidden-test")
    assert hidden and all("lk.check(" in c.source for c in hidden)
    assert any("lk.explorer(" in s for s in code), "an ipywidgets explorer"
    assert "footbibliography" in markdown or "{bibliography}" in markdown


@pytest.mark.parametrize("lab", LABS)
def test_committed_outputs_are_clean(lab: str):
    """The committed notebook holds standard-profile outputs, no errors, no volatile metadata."""
    nb = _nb(lab)
    assert "papermill" not in nb.metadata and "widgets" not in nb.metadata
    counts = []
    for cell in nb.cells:
        assert "execution" not in cell.metadata and "papermill" not in cell.metadata
        if cell.cell_type != "code":
            continue
        counts.append(cell.execution_count)
        for out in cell.outputs:
            assert out.output_type != "error", f"error output in {lab}: {out.get('ename')}"
            assert runner.WIDGET_MIME not in out.get("data", {}), "widget views must be stripped"
            text = out.get("text", "") if out.output_type == "stream" else ""
            assert "Traceback" not in text
    assert counts == list(range(1, len(counts) + 1)), "executed top to bottom exactly once"
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 3, "the committed lab shows its figures"


def _run(lab: str, tmp_path: Path, **kw):
    res = runner.run_lab(lab, profile="smoke", output_dir=tmp_path, **kw)
    failed = [c for c in res["checks"] if not c["passed"]]
    assert not failed, f"{lab}: failed checks {failed}"
    assert res["checks"], "the lab ran its checks"
    return res


@pytest.mark.parametrize("lab", LABS)
def test_smoke_embedded(lab: str, tmp_path: Path):
    res = _run(lab, tmp_path)
    assert res["meta"]["status"] == "ok" and res["records"]
    saved = json.loads((tmp_path / f"{lab}.results.json").read_text())
    assert saved["meta"]["profile"] == "smoke"


@pytest.mark.parametrize("lab", LABS)
def test_smoke_real_data(lab: str, tmp_path: Path, mirror_root: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LABKIT_DATA", str(mirror_root))
    params = runner.read_parameters(runner.lab_path(lab))
    extra = {"WEIGHTS": "random"} if "WEIGHTS" in params else {}
    res = _run(lab, tmp_path, data="real", parameters=extra)
    assert res["meta"]["data"] == "real"


@pytest.mark.parametrize("lab", [lab for lab in LABS if lab[:2] in IMAGENET_LABS])
def test_real_data_without_imagenet_weights_stops_with_one_message(
        lab: str, tmp_path: Path, mirror_root: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]):
    """DATA="real" with the default WEIGHTS="imagenet" and nothing cached: the lab stops at the
    first cell that needs the weights with WeightsNotFoundError, whose message says what to do."""
    from labkit import cli

    assert runner.read_parameters(runner.lab_path(lab))["WEIGHTS"] == "imagenet"
    monkeypatch.setenv("LABKIT_DATA", str(mirror_root))  # the mirror holds no weights/ folder
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    out = tmp_path / "out"
    assert cli.main(["run", lab, "--profile", "smoke", "--data", "real", "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "FAILED at cell" in err and "WeightsNotFoundError" in err
    for part in ("ImageNet weights for", "not found: no file", "curl -L", 'WEIGHTS = "random"',
                 str(tmp_path / "torch-home")):
        assert part in err, f"{part!r} missing from what labkit run printed:\n{err}"
    nb = nbformat.read(out / runner.lab_path(lab).name, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert [e.ename for e in errors] == ["WeightsNotFoundError"]
    res = json.loads((out / f"{lab}.results.json").read_text())
    assert res["meta"]["status"] == "error" and res["meta"]["parameters"]["WEIGHTS"] == "imagenet"


def test_sanitize_file_covers_volatile_text():
    text = (Path(__file__).parent / "sanitize.cfg").read_text()
    assert re.search(r"regex:", text)
