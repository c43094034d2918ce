"""Execute labs with papermill: profiles, output folders, in-place mode, results JSON.

Used by ``labkit run`` (instructors, CI, ``make labs``) and by the tests. Each run writes the
executed notebook and ``LAB.results.json``: everything ``lk.record``/``lk.check`` saw, plus the
profile, data mode, seed, wall time and versions.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["labs_dir", "list_labs", "lab_path", "run_lab", "clean_notebook", "read_parameters", "code_digest"]

_LAB_FILE = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def labs_dir() -> Path:
    """The folder holding ``NN_name.ipynb`` (``$LABKIT_LABS``, else the repository's ``labs/``)."""
    env = os.environ.get("LABKIT_LABS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "labs"


def _title(path: Path) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def list_labs() -> list[tuple[str, str]]:
    """``[(name, title), ...]`` for every lab notebook, in order."""
    folder = labs_dir()
    if not folder.is_dir():
        return []
    return [(p.stem, _title(p)) for p in sorted(folder.glob("*.ipynb")) if _LAB_FILE.match(p.name)]


def _lab_names() -> list[str]:
    """The labs' names from their file names only (``list_labs`` also reads every notebook's title)."""
    folder = labs_dir()
    return [p.stem for p in sorted(folder.glob("*.ipynb")) if _LAB_FILE.match(p.name)] if folder.is_dir() else []


def lab_path(lab: str | os.PathLike) -> Path:
    """Resolve ``"00"``, ``"00_welcome"``, ``"00_welcome.ipynb"`` or a path to a notebook file."""
    if not isinstance(lab, (str, os.PathLike)):
        raise TypeError(f"lab must be a name or a path, got {type(lab).__name__}")
    p = Path(lab)
    if p.suffix == ".ipynb" and p.is_file():
        return p
    name = p.name.removesuffix(".ipynb")
    names = _lab_names()  # not list_labs: cfg.spread resolves the lab at every call, and reading every
    # notebook took up to 5 s on a loaded machine (and failed on a notebook being written)
    matches = [n for n in names if n == name or n.split("_", 1)[0] == name]
    if len(matches) != 1:
        raise ValueError(f"unknown lab {str(lab)!r}; valid labs: {', '.join(names) or '(none found in ' + str(labs_dir()) + ')'}")
    return labs_dir() / f"{matches[0]}.ipynb"


def read_parameters(path: Path) -> dict[str, Any]:
    """The defaults of the notebook's ``parameters`` cell (simple ``NAME = literal`` lines)."""
    import nbformat

    return notebook_parameters(nbformat.read(path, as_version=4), Path(path).name)


def notebook_parameters(nb: Any, name: str) -> dict[str, Any]:
    """The ``NAME = literal`` lines of the one code cell of ``nb`` tagged ``parameters`` (``name``:
    the notebook, for the error). Used by the runner and by the grader."""
    import ast

    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{name}: expected exactly one code cell tagged 'parameters', found {len(cells)}")
    values: dict[str, Any] = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return values


def code_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a notebook's code cells (sources only): which version of a lab produced a run."""
    import hashlib

    import nbformat

    nb = nbformat.read(path, as_version=4)
    code = "\n\x00".join(c.source for c in nb.cells if c.cell_type == "code")
    return hashlib.sha256(code.encode()).hexdigest()


def clean_notebook(nb: Any) -> Any:
    """Drop volatile metadata (papermill timings, widget state) and widget views without a static form.

    ``hidden-test`` cells get the ``remove-cell`` tag, so the site does not show them.

    Consecutive stream outputs of one cell (stdout, or stderr) are merged: how the kernel's
    prints are split into messages depends on timing, and re-runs must not churn.
    Execution counts stay (they are 1..n for a top-to-bottom run, hence stable).
    """
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        tags = cell.metadata.get("tags", [])
        if "hidden-test" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]  # graders' checks stay off the site
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_MIME in data:
                continue  # the lab shows a static figure beside every widget
            if (out.get("output_type") == "stream" and kept and kept[-1].get("output_type") == "stream"
                    and kept[-1].get("name") == out.get("name")):
                kept[-1]["text"] = "".join(kept[-1]["text"]) + "".join(out["text"])
                continue
            kept.append(out)
        cell.outputs = kept
    return nb


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# No cell of a lab needs more than a few minutes, even on a loaded 2-core machine.
DEFAULT_CELL_TIMEOUT = 900


def failure_message(exc: BaseException, notebook: str | os.PathLike | None = None) -> str:
    """What ``labkit run`` prints when a lab stops: the error's whole message, not a traceback.

    A lab that stops on purpose (missing weights or data) raises an error whose message says
    what to do over several lines; all of them are kept, indented under a ``FAILED`` line that
    names the failing cell. Used by the command line (all labs).
    """
    import papermill as pm

    if isinstance(exc, pm.PapermillExecutionError):
        head = f"  FAILED at cell In [{exc.exec_count}] with {exc.ename}:"
        body = str(exc.evalue).strip()
    else:
        head = f"  FAILED with {type(exc).__name__}:"
        body = str(exc).strip()
    lines = [head] + ["    " + line for line in body.splitlines()]
    if notebook is not None:
        lines.append(f"  (the notebook as far as it ran: {notebook})")
    return "\n".join(lines)


def run_lab(lab: str | os.PathLike, *, profile: str = "standard", data: str = "embedded",
            seed: int | None = None, parameters: dict[str, Any] | None = None,
            output_dir: str | os.PathLike | None = None, in_place: bool = False,
            cell_timeout: int | None = DEFAULT_CELL_TIMEOUT, kernel: str = "python3",
            progress: str = "plain", log_output: bool = False) -> dict[str, Any]:
    """Execute one lab with papermill; returns the results dict also written to ``LAB.results.json``.

    Exactly one of ``output_dir`` and ``in_place`` must be given. Parameters equal to the
    notebook's defaults are not injected, so an in-place standard run leaves no injected cell.
    A failing lab raises ``papermill.PapermillExecutionError`` after writing what it produced.
    ``cell_timeout`` (seconds, ``None`` for no limit) bounds every cell: two runs under heavy
    load were seen waiting forever at a widget cell with an idle kernel, and a bounded wait
    turns such a stall into an error that names the cell.
    """
    import nbformat
    import papermill as pm
    import torch

    from . import __version__
    from .config import DATA_MODES, PROFILES

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if data not in DATA_MODES:
        raise ValueError(f"data must be one of {DATA_MODES}, got {data!r}")
    if (output_dir is None) == (not in_place):
        raise ValueError("give exactly one of output_dir=... and in_place=True")
    src = lab_path(lab)
    defaults = read_parameters(src)
    wanted = {"PROFILE": profile, "DATA": data, **({"SEED": seed} if seed is not None else {}), **(parameters or {})}
    unknown = sorted(set(wanted) - set(defaults))
    if unknown:
        raise ValueError(f"{src.name} has no parameter(s) {unknown}; its parameters are {sorted(defaults)}")
    inject = {k: v for k, v in wanted.items() if defaults.get(k) != v}
    out_dir = src.parent if in_place else Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_nb = out_dir / src.name
    results_file = out_dir / f"{src.stem}.results.json"
    tmp_results = out_dir / f".{src.stem}.partial.json"
    tmp_results.unlink(missing_ok=True)
    start = time.perf_counter()
    error: BaseException | None = None
    with _env(LABKIT_RESULTS_FILE=str(tmp_results.resolve()), LABKIT_PROGRESS=progress, LABKIT_WIDGETS="off",
              PYTHONHASHSEED=str(wanted.get("SEED", defaults.get("SEED", 0)))):
        try:
            # The kernel is killed once the last cell has run: a graceful shutdown of a kernel with
            # torch loaded took 2-3 s more (measured on the 2-core CPU, out of a ~20 s smoke run),
            # and nothing is lost, since lk.record rewrites its file at every call.
            pm.execute_notebook(str(src), str(out_nb), parameters=inject, kernel_name=kernel,
                                cwd=str(src.parent), execution_timeout=cell_timeout,
                                progress_bar=False, log_output=log_output, shutdown_kernel="immediate",
                                # the kernel's own log (ipykernel's "running over TCP without
                                # encryption" at every start) says nothing a student can act on
                                extra_arguments=["--IPKernelApp.log_level=ERROR"])
        except pm.PapermillExecutionError as exc:
            error = exc  # papermill has written the notebook up to the failing cell
    wall = time.perf_counter() - start
    nbformat.write(clean_notebook(nbformat.read(out_nb, as_version=4)), out_nb)
    results: dict[str, Any] = {"records": {}, "checks": [], "meta": {}}
    if tmp_results.exists():
        results = json.loads(tmp_results.read_text())
        tmp_results.unlink()
    params = {**defaults, **wanted}
    results["meta"].update({
        "lab": src.stem, "profile": profile, "data": data, "seed": params.get("SEED"),
        "parameters": {k: v for k, v in params.items() if isinstance(v, (str, int, float, bool))},
        "wall_time_s": round(wall, 2), "labkit": __version__, "torch": torch.__version__,
        "code_sha256": code_digest(src),
        "status": "error" if error else "ok",
    })
    tmp = results_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, results_file)
    if error is not None:
        raise error
    return results
