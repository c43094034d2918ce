"""labkit.runner and the `labkit` CLI on a tiny synthetic lab (fast: no training)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from labkit import cli, runner

LAB_CELLS = [
    ("markdown", "# Lab 42 — A tiny lab\n\nFor the runner tests.", []),
    ("code", 'PROFILE = "standard"\nDATA = "embedded"\nSEED = 0\nSIZE = 3', ["parameters"]),
    ("code", "import labkit as lk\ncfg = lk.setup(PROFILE, DATA, SEED)\n"
             "n = cfg.pick(smoke=1, standard=2)\nlk.record('n', n)\nlk.record('size', SIZE)\n"
             "lk.check('positive', n > 0, f'n={n}')", []),
    ("code", "import ipywidgets as w\nw.IntSlider()", []),
    ("code", "print('done')", []),
]


def make_lab(folder: Path, name: str = "42_tiny", cells=LAB_CELLS, fail: bool = False) -> Path:
    nb = nbformat.v4.new_notebook()
    for kind, src, tags in cells:
        cell = nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    if fail:
        nb.cells.append(nbformat.v4.new_code_cell("raise RuntimeError('boom')"))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def labs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "labs"
    make_lab(folder)
    monkeypatch.setenv("LABKIT_LABS", str(folder))
    return folder


def test_list_and_resolve(labs: Path):
    assert runner.list_labs() == [("42_tiny", "Lab 42 — A tiny lab")]
    for name in ("42", "42_tiny", "42_tiny.ipynb", str(labs / "42_tiny.ipynb")):
        assert runner.lab_path(name) == labs / "42_tiny.ipynb"
    with pytest.raises(ValueError, match="unknown lab '7'.*42_tiny"):
        runner.lab_path("7")


def test_read_parameters(labs: Path):
    assert runner.read_parameters(labs / "42_tiny.ipynb") == {"PROFILE": "standard", "DATA": "embedded", "SEED": 0, "SIZE": 3}


def test_run_writes_notebook_and_results(labs: Path, tmp_path: Path):
    out = tmp_path / "out"
    res = runner.run_lab("42", profile="smoke", seed=5, parameters={"SIZE": 7}, output_dir=out)
    saved = json.loads((out / "42_tiny.results.json").read_text())
    assert saved == res
    assert res["records"] == {"n": 1, "size": 7}
    assert res["checks"] == [{"name": "positive", "passed": True, "detail": "n=1", "points": 1.0}]
    meta = res["meta"]
    assert (meta["profile"], meta["data"], meta["seed"], meta["status"]) == ("smoke", "embedded", 5, "ok")
    assert meta["wall_time_s"] > 0 and meta["labkit"] and meta["torch"]
    nb = nbformat.read(out / "42_tiny.ipynb", as_version=4)
    assert "papermill" not in nb.metadata
    assert all("execution" not in c.metadata and "papermill" not in c.metadata for c in nb.cells)
    # the widget view is stripped (no empty box on the site), plain outputs stay
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not any(runner.WIDGET_MIME in o.get("data", {}) for o in outputs)
    assert any("done" in o.get("text", "") for o in outputs)
    assert not list(out.glob(".*partial*"))


def test_in_place_standard_run_injects_nothing_and_is_stable(labs: Path):
    path = labs / "42_tiny.ipynb"
    runner.run_lab("42", in_place=True)
    first = path.read_text()
    nb = nbformat.read(path, as_version=4)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    runner.run_lab("42", in_place=True)
    assert path.read_text() == first, "a re-run with the same code must not change the notebook"


def test_run_errors(labs: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="profile must be one of"):
        runner.run_lab("42", profile="fast", output_dir=tmp_path)
    with pytest.raises(ValueError, match="exactly one of"):
        runner.run_lab("42")
    with pytest.raises(ValueError, match="no parameter.*WEIGHTS"):
        runner.run_lab("42", parameters={"WEIGHTS": "random"}, output_dir=tmp_path)


def test_failing_lab_still_writes_results(labs: Path, tmp_path: Path):
    import papermill as pm

    make_lab(labs, "43_broken", fail=True)
    with pytest.raises(pm.PapermillExecutionError):
        runner.run_lab("43", profile="smoke", output_dir=tmp_path)
    res = json.loads((tmp_path / "43_broken.results.json").read_text())
    assert res["meta"]["status"] == "error" and res["records"]["n"] == 1
    assert (tmp_path / "43_broken.ipynb").exists()


def test_cli_list_and_run(labs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert cli.main(["list"]) == 0
    assert "42_tiny  Lab 42" in capsys.readouterr().out
    assert cli.main(["run", "42", "--profile", "smoke", "--output-dir", str(tmp_path / "o"), "-p", "SIZE=9"]) == 0
    assert json.loads((tmp_path / "o" / "42_tiny.results.json").read_text())["records"]["size"] == 9
    assert "1/1 checks passed" in capsys.readouterr().out


def test_cli_usage_errors(labs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert cli.main(["run", "42"]) == 2
    assert "exactly one of --output-dir" in capsys.readouterr().err
    assert cli.main(["run", "nope", "--output-dir", str(tmp_path)]) == 2
    assert "unknown lab 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", "42", "--profile", "turbo", "--output-dir", str(tmp_path)])


def test_cli_prints_the_whole_error_of_a_failing_lab(labs: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]):
    cells = LAB_CELLS + [("code", "raise FileNotFoundError('no file x.pth in /a, /b\\n  run: curl x\\nor use WEIGHTS=1')", [])]
    make_lab(labs, "44_stops", cells=cells)
    assert cli.main(["run", "44", "42", "--profile", "smoke", "--output-dir", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "  FAILED at cell In [6] with FileNotFoundError:",  # 4 cells + the injected parameters
        "    no file x.pth in /a, /b",
        "      run: curl x",
        "    or use WEIGHTS=1",
        f"  (the notebook as far as it ran: {tmp_path / 'o' / '44_stops.ipynb'})",
    ]
    assert "1/1 checks passed" in captured.out  # the other lab still ran
    assert runner.failure_message(ValueError("bad\nvalue")) == "  FAILED with ValueError:\n    bad\n    value"


def test_cli_data_reports_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert cli.main(["data", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"data root: {tmp_path}" in out and "missing" in out


def test_console_script_installed():
    exe = Path(sys.executable).with_name("labkit")
    assert exe.exists(), "the labkit console script is not installed (pip install -e .)"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "run" in proc.stdout


def test_clean_notebook_merges_split_streams():
    """A cell's prints may arrive as one or several stream messages; the committed form is one."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('a'); print('b')")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="a\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="b\n"),
                    nbformat.v4.new_output("stream", name="stderr", text="w\n"),
                    nbformat.v4.new_output("execute_result", data={"text/plain": "1"}, execution_count=1),
                    nbformat.v4.new_output("stream", name="stdout", text="c\n")]
    nb.cells = [cell]
    out = runner.clean_notebook(nb).cells[0].outputs
    assert [(o.output_type, o.get("name"), o.get("text")) for o in out] == [
        ("stream", "stdout", "a\nb\n"), ("stream", "stderr", "w\n"), ("execute_result", None, None),
        ("stream", "stdout", "c\n")]


def test_a_run_builds_no_widget_and_does_not_draw_explorers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """labkit run sets LABKIT_WIDGETS=off in the kernel: lk.explorer returns None without drawing
    (a widget needs a live frontend; see labkit.widgets), and the environment is restored after."""
    cells = [LAB_CELLS[1], ("code", "import labkit as lk\ncalls = []\n"
                                    "view = lk.explorer(lambda k: calls.append(k), k=(1, 9, 2))\n"
                                    "print(view, calls)", [])]
    folder = tmp_path / "labs"
    make_lab(folder, "43_explorer", cells=cells)
    monkeypatch.setenv("LABKIT_LABS", str(folder))
    monkeypatch.delenv("LABKIT_WIDGETS", raising=False)
    runner.run_lab("43", profile="smoke", output_dir=tmp_path / "out")
    nb = nbformat.read(tmp_path / "out" / "43_explorer.ipynb", as_version=4)
    assert [o.get("text") for o in nb.cells[-1].outputs] == ["None []\n"]
    import os

    assert "LABKIT_WIDGETS" not in os.environ


def test_a_run_does_not_print_the_kernels_log(labs: Path, tmp_path: Path, capfd: pytest.CaptureFixture):
    """ipykernel warns at every start that it runs over TCP without encryption: nothing a student can
    act on, so labkit run starts the kernel with its log level at ERROR."""
    runner.run_lab("42", profile="smoke", output_dir=tmp_path / "out")
    err = capfd.readouterr().err
    assert "without encryption" not in err and "IPKernelApp" not in err
