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


def test_only_plotting_draws_with_matplotlib():
    """Figures are plotting.py's; the data layer may use matplotlib's bundled fonts (datasets/_fonts.py:
    its FreeType wrapper and font folder), never its drawing modules."""
    offenders = []
    for path in (ROOT / "labkit").rglob("*.py"):
        if path.name == "plotting.py":
            continue
        imports = re.findall(r"^\s*(?:import|from) (matplotlib[\w.]*)", path.read_text(), re.M)
        allowed = {"matplotlib", "matplotlib.ft2font"} if path.relative_to(ROOT).as_posix() == \
            "labkit/datasets/_fonts.py" else set()
        if set(imports) - allowed:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(set(imports) - allowed)}")
    assert not offenders, f"only labkit/plotting.py may draw with matplotlib: {offenders}"


# The house, bottom to top: a module may import its own layer and the layers below, never one above.
LAYERS = {
    0: {"_checks", "device", "reproducibility", "storage", "progress", "results"},
    1: {"datasets", "models", "hooks"},
    2: {"training", "attribution", "deconv", "feature_vis", "style", "adversarial", "embeddings", "metrics",
        "transfer", "vae", "gan", "domain_adaptation", "segmentation"},
    3: {"plotting", "widgets"},
    4: {"config", "reference", "runner", "grading", "cli", "__init__"},
}


def _labkit_imports(path: Path) -> set[str]:
    """The labkit modules (first component below labkit) that ``path`` imports, lazily or not."""
    import ast

    rel = path.relative_to(ROOT).with_suffix("").parts  # ("labkit", "datasets", "_glyphs")
    package = rel[:-1] if path.name != "__init__.py" else rel[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
            else:
                target = (node.module or "").split(".")
            names = [target] if len(target) > 1 else [target + [a.name] for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
        else:
            continue
        found |= {t[1] for t in names if t[0] == "labkit" and len(t) > 1}
    return found


def test_no_module_imports_a_layer_above_its_own():
    layer_of = {m: layer for layer, mods in LAYERS.items() for m in mods}
    present = {p.stem if p.parent.name == "labkit" else p.relative_to(ROOT / "labkit").parts[0]
               for p in (ROOT / "labkit").rglob("*.py")}
    assert present <= set(layer_of), f"give these modules a layer in LAYERS: {sorted(present - set(layer_of))}"
    offenders = []
    for path in (ROOT / "labkit").rglob("*.py"):
        rel = path.relative_to(ROOT / "labkit").parts
        own = rel[0] if len(rel) > 1 else path.stem
        for target in _labkit_imports(path) - {own}:
            if layer_of.get(target, -1) > layer_of[own]:
                offenders.append(f"{'/'.join(rel)} ({own}, layer {layer_of[own]}) imports {target} "
                                 f"(layer {layer_of[target]})")
    assert not offenders, "imports from a layer above:\n" + "\n".join(sorted(offenders))
