"""Every lab follows the course conventions and runs: smoke profile on real data, no typed results.

The committed notebooks in ``labs/`` are re-executed once each (standard profile, embedded data)
by nbval, which pytest collects from ``labs/``: the ``# NBVAL_CHECK_OUTPUT`` cells (outputs that do
not depend on training) are compared exactly, and the item that ``conftest.py`` adds after each
notebook checks its lk.check results and its recorded values against ``labs/reference/LAB.json``.
That run also covers what a smoke run on embedded data would (the same code, the same checks), and
the grading tests run every lab's smoke profile on embedded data once more, in the sandbox.
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
# of those, the labs whose real-data mode still loads torchvision's ImageNet weights (not shipped) by
# default: none any more; the others use EfficientNet-Lite0, whose weights come with the pip requirements
# (lab 05 trains its max-pooling networks on MNIST-M: a deconvnet needs switches, which EfficientNet lacks)
TORCHVISION_LABS: set[str] = set()
# labs whose real-data mode takes a torchvision network on request (the option below), for a machine
# where its weights are cached
TORCHVISION_OPTION = {"01": {"IMAGENET_NET": "resnet18"}, "02": {"IMAGENET_NET": "resnet18"},
                      "04": {"IMAGENET_NET": "resnet18"}, "05": {"REAL_NET": "alexnet"},
                      "06": {"IMAGENET_NET": "resnet18"}, "08": {"REAL_ENCODERS": ["vgg16"]}}


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
def test_smoke_real_data(lab: str, tmp_path: Path, mirror_root: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LABKIT_DATA", str(mirror_root))
    params = runner.read_parameters(runner.lab_path(lab))
    extra = {"WEIGHTS": "random"} if "WEIGHTS" in params else {}
    res = _run(lab, tmp_path, data="real", parameters=extra)
    assert res["meta"]["data"] == "real" and res["records"]
    saved = json.loads((tmp_path / f"{lab}.results.json").read_text())
    assert saved["meta"]["profile"] == "smoke"


@pytest.mark.parametrize("lab", [lab for lab in LABS if lab[:2] in IMAGENET_LABS - TORCHVISION_LABS])
def test_real_data_with_the_shipped_imagenet_network_runs_offline(lab: str, tmp_path: Path, mirror_root: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    """DATA="real" with the default WEIGHTS="imagenet": EfficientNet-Lite0's weights are installed, nothing
    is downloaded (an empty TORCH_HOME), and every check passes."""
    monkeypatch.setenv("LABKIT_DATA", str(mirror_root))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    res = _run(lab, tmp_path, data="real")
    assert res["meta"]["status"] == "ok" and res["meta"]["parameters"].get("WEIGHTS", "imagenet") == "imagenet"
    assert all(c["passed"] for c in res["checks"]), [c for c in res["checks"] if not c["passed"]]


@pytest.mark.parametrize("lab", [lab for lab in LABS if lab[:2] in TORCHVISION_LABS | set(TORCHVISION_OPTION)])
def test_real_data_without_imagenet_weights_stops_with_one_message(
        lab: str, tmp_path: Path, mirror_root: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]):
    """DATA="real" with the default WEIGHTS="imagenet", torchvision's network (the default of the
    labs in TORCHVISION_LABS, the option of those in TORCHVISION_OPTION) and nothing cached: the lab
    stops at the first cell that needs the weights with WeightsNotFoundError, whose message says what to do."""
    from labkit import cli

    assert runner.read_parameters(runner.lab_path(lab))["WEIGHTS"] == "imagenet"
    monkeypatch.setenv("LABKIT_DATA", str(mirror_root))  # the mirror holds no weights/ folder
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    out = tmp_path / "out"
    params = [a for k, v in TORCHVISION_OPTION.get(lab[:2], {}).items() for a in ("-p", f"{k}={v}")]
    for k in TORCHVISION_OPTION.get(lab[:2], {}):
        assert k in runner.read_parameters(runner.lab_path(lab)), f"{lab}: no parameter {k}"
    assert cli.main(["run", lab, "--profile", "smoke", "--data", "real", "--output-dir", str(out), *params]) == 1
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


@pytest.mark.parametrize("lab", LABS)
def test_lab_names_itself_and_has_a_reference(lab: str):
    """``lk.setup(..., lab=NAME)`` lets narration quote spreads; the reference file loads and was
    made from the standard profile on embedded data (the band check itself runs after nbval's run)."""
    from labkit import reference

    setup = [c.source for c in _nb(lab).cells if c.cell_type == "code" and "lk.setup(" in c.source]
    assert setup and f'lab="{lab}"' in setup[0], f"{lab}: the setup call must pass lab=\"{lab}\""
    ref = reference.load_reference(lab)
    assert ref["lab"] == lab and ref["profile"] == "standard" and ref["data"] == "embedded"
    assert len(ref["seeds"]) >= 5 and 0 not in ref["seeds"], "seed 0 (what the tests run) stays out of the reference"


# Decimal literals that markdown cells may contain: settings and published figures, never a result
# of the run (results are printed, or written into Markdown by the code that computes them).
ALLOWED_DECIMALS: dict[str, dict[str, str]] = {
    "01_transfer": {"0.5": "dropout probability", "2.4": "512 * 512 * 9 weights of a VGG16 conv layer, in millions"},
    "02_saliency": {"1.5": "blur sigma of the maps (pixels)"},
    "03_adversarial": {"0.2": "largest epsilon", "0.02": "L2 step of the targeted attack", "2.5": "PGD step factor",
                       "0.1": "epsilon of the transfer / explorer settings", "0.15": "epsilon of adversarial training"},
    "04_class_visualization": {"0.25": "high-frequency cutoff (cycles per pixel)", "0.5": "Nyquist / grey / blur sigma"},
    "06_gradcam": {"1.0": "distractor probability argument", "0.5": "hit rate of a class-blind map"},
    "07_vae": {"1.44": "1/ln 2, bits per nat", "0.1": "pixel error of the worked example",
               "0.01": "its cost in nats", "0.4": "noise level of the denoising VAE"},
    "09_dann": {"52.25": "Ganin & Lempitsky 2015, source only", "76.66": "Ganin & Lempitsky 2015, DANN",
                "95.96": "Ganin & Lempitsky 2015, train on target", "0.9": "momentum / pseudo-label confidence",
                "0.3": "lambda_max", "0.02": "initial learning rate", "10.0": "gamma / alpha of the schedules",
                "0.01": "mu0 of the schedule", "0.75": "beta of the schedule"},
    "10_gan": {"0.5": "Adam beta1", "0.999": "Adam beta2", "0.1": "chance accuracy of ten classes"},
}
_DECIMAL = re.compile(r"(?<![\w.\-/])\d*\.\d+(?![\w.])")


def decimals_in_markdown(nb) -> dict[str, list[int]]:
    """Decimal literals of the notebook's markdown cells (URLs left out), with the cells they are in."""
    found: dict[str, list[int]] = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for m in _DECIMAL.finditer(re.sub(r"https?://\S+", "", cell.source)):
                found.setdefault(m.group(), []).append(i)
    return found


def test_decimal_pattern_finds_numbers_and_skips_urls():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        "accuracy 0.91 and .5, in 2.5 s; see https://arxiv.org/abs/1312.6034 and v1.2.3")])
    assert decimals_in_markdown(nb) == {"0.91": [0], ".5": [0], "2.5": [0]}


@pytest.mark.parametrize("lab", LABS)
def test_markdown_types_no_result(lab: str):
    """No markdown cell states a number that the run computes: every decimal there is a setting or a
    published figure listed in ALLOWED_DECIMALS, and every listed literal is still used."""
    found = decimals_in_markdown(_nb(lab))
    allowed = ALLOWED_DECIMALS.get(lab, {})
    typed = {v: cells for v, cells in found.items() if v not in allowed}
    assert not typed, (f"{lab}: decimal numbers in markdown cells {typed}: print results from code "
                       "(display(Markdown(...)) with cfg.spread) or, for a setting, add it to ALLOWED_DECIMALS")
    assert not set(allowed) - set(found), f"{lab}: ALLOWED_DECIMALS lists unused literals {set(allowed) - set(found)}"
