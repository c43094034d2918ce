"""environment.yml and pyproject.toml pin the same versions; the layout is the documented one."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_pins() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = data["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    pins = {}
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.\-+]+)", req.strip())
        assert m, f"pyproject requirement {req!r} is not pinned with =="
        pins[m.group(1).lower()] = m.group(2)
    return pins


def _environment_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pins = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for req in dep.get("pip", []):
                name, version = req.split("==")
                pins[name.lower()] = version
        elif dep.split("=")[0] not in ("python", "pip"):
            name, version = dep.split("=", 1)
            pins[name.lower()] = version
    return pins


def test_environment_matches_pyproject():
    py, env = _pyproject_pins(), _environment_pins()
    assert set(py) == set(env), f"only in pyproject: {set(py) - set(env)}; only in environment.yml: {set(env) - set(py)}"
    mismatched = {k: (py[k], env[k]) for k in py if py[k] != env[k]}
    assert not mismatched, f"versions differ (pyproject, environment.yml): {mismatched}"


def test_required_pins_present():
    py = _pyproject_pins()
    assert py["torch"] == "2.14.1" and py["torchvision"] == "0.29.1"
    assert py["jupyter-book"] == "1.0.4.post1"
    for name in ("papermill", "nbval", "ipykernel", "jupyterlab", "ipywidgets", "matplotlib",
                 "scikit-learn", "scikit-image", "tqdm", "captum", "grad-cam"):
        assert name in py, f"{name} must be pinned in pyproject.toml"


def test_installed_versions_match_pins():
    from importlib.metadata import PackageNotFoundError, version

    wrong = {}
    for name, pinned in _pyproject_pins().items():
        try:
            got = version(name)
        except PackageNotFoundError:
            continue  # an extra not installed in this environment
        if got.split("+")[0] != pinned:
            wrong[name] = (pinned, got)
    assert not wrong, f"installed versions differ from the pins (pinned, installed): {wrong}"


def test_top_level_layout():
    """Exactly the documented entries at the top level (of the files git tracks)."""
    import subprocess

    expected = {"book", "labs", "labkit", "tests", "_config.yml", "_toc.yml", "environment.yml",
                "pyproject.toml", "Makefile", "README.md", ".ci", "conftest.py"}
    optional = {"bench", ".gitignore"}
    present = {p.name for p in ROOT.iterdir() if p.name not in {".git", ".venv", "_build"}}
    assert expected <= present, f"missing at the top level: {expected - present}"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode == 0 and tracked.stdout:
        top = {line.split("/")[0] for line in tracked.stdout.splitlines()}
        assert top <= expected | optional, f"unexpected top-level entries: {top - expected - optional}"


def test_only_plotting_imports_matplotlib():
    offenders = []
    for path in (ROOT / "labkit").rglob("*.py"):
        if path.name == "plotting.py":
            continue
        if re.search(r"^\s*(import matplotlib|from matplotlib)", path.read_text(), re.M):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"only labkit/plotting.py may import matplotlib: {offenders}"
