"""Batch grading of a folder of submissions with the lab's hidden tests (``labkit grade``).

Design after nbgrader (Jupyter Development Team, JOSE 2019) and otter-grader, made robust for a
2-core machine without Docker: each submission runs in its own sandbox (``sandbox.py``) with
time, memory and output limits; the hidden tests run after the submission's cells in the same
kernel, with check machinery the submission cannot reach (``kernel_code.py``); every result is
written atomically as soon as it is known, so a killed batch resumes where it stopped.
Used for every lab.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .instructor import InstructorLab, load_instructor_lab
from .kernel_code import MARK, collect_cell, guard_cell, restore_cell
from .memory import MEMORY_CAP_MODES, ConfigurationError, MemoryCap, choose_memory_cap
from .sandbox import (ISOLATION_MODES, Isolation, SandboxOutcome, allowlist, bwrap_argv, kernel_argv, probe_isolation,
                      run_sandbox)

__all__ = ["STATUSES", "DEFAULT_MEMORY_MB", "GradeResult", "BatchReport", "grade_submissions",
           "discover_submissions", "suspicious_patterns", "grade_task", "host_context", "probe_imports"]

STATUSES = ("ok", "failed-checks", "error", "timeout", "memory", "kernel-died", "not-a-notebook",
            "missing-parameters", "output-too-large", "grader-error")
DEFAULT_MEMORY_MB = 6144  # resident under a cgroup; lab 00 smoke peaks at ~4.4 GB of address space (RLIMIT_AS)
DEFAULT_MAX_OUTPUT_MB = 16.0
KERNEL_NAME = "labkit-grader"
WORKDIR_MB = 1024  # the work folder is a tmpfs of this size when namespaces are available
RESULT_FILE = "result.json"

# Source patterns an instructor may want to look at (flagged, never penalised).
SUSPICIOUS = {
    "sys.modules": r"\bsys\.modules\b",
    "builtins": r"\b__builtins__\b|\bimport builtins\b|\bbuiltins\.",
    "tracing": r"\bset(trace|profile)\b",
    "gc": r"\bgc\.get_(objects|referrers|referents)\b",
    "ctypes": r"\bctypes\b",
    "ipython-hooks": r"input_transformers|ast_transformers|events\.register|register_magic",
    "grader-internals": r"_labkit_grader|LABKIT-GRADER|labkit\.results|\b_STORE\b|\b_cache\b",
    "redefines-check": r"\b(lk|labkit)\.(check|record)\s*=|\bdef\s+check\s*\(",
    "history": r"\b(In|_ih|_i\d*)\s*\[|history_manager",
    "processes": r"\bsubprocess\b|\bos\.(fork|system|popen|exec\w*|setsid)\b|\bmultiprocessing\b",
    "threads": r"\bthreading\b|\b_thread\b",
    "/proc": r"/proc/",
    "code-objects": r"__code__|__globals__|__closure__",
}
_MEMORY_TEXT = re.compile(r"MemoryError|can't allocate memory|Cannot allocate memory|std::bad_alloc|out of memory"
                          r"|not enough memory|Unable to allocate", re.I)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class GradeResult:
    """The grade of one submission (also ``OUT/<id>/result.json``)."""

    id: str
    status: str
    total: float = 0.0
    max: float = 0.0
    points: dict[str, float] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    flags: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    source: str = ""
    fingerprint: str = ""
    lab: str = ""
    profile: str = ""
    isolation: str = ""
    first_error: dict[str, Any] | None = None
    restored: list[str] = field(default_factory=list)
    graded_at: str = ""

    def row(self, check_names: list[str]) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "status": self.status}
        for name in check_names:
            row[name] = _fmt(self.points.get(name, 0.0))
        row.update(total=_fmt(self.total), max=_fmt(self.max), wall_s=f"{self.wall_s:.1f}",
                   message=self.message, flags="; ".join(self.flags))
        return row


def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass
class BatchReport:
    """What :func:`grade_submissions` did."""

    lab: str
    output_dir: Path
    results: list[GradeResult]
    resumed: list[str]
    isolation: Isolation
    wall_s: float
    memory: MemoryCap | None = None
    executor: str = ""

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def summary(self) -> str:
        n = len(self.results)
        lines = [f"graded {n - len(self.resumed)} submission(s) of {self.lab} in {self.wall_s:.1f} s"
                 + (f"; {len(self.resumed)} already graded (skipped; --force regrades)" if self.resumed else "")]
        for status, count in sorted(self.counts().items(), key=lambda kv: STATUSES.index(kv[0]) if kv[0] in STATUSES else 99):
            lines.append(f"  {status:<19} {count}")
        if self.results:
            mean = sum(r.total for r in self.results) / n
            lines.append(f"  mean points         {mean:.2f} / {self.results[0].max:g}")
        lines.append(f"isolation: {self.isolation.describe()}")
        if self.memory is not None:
            lines.append(f"memory: {self.memory.describe()}")
        if self.executor:
            lines.append(f"executor: {self.executor}")
        lines.append(f"grades: {self.output_dir / 'grades.csv'}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers

def _write_atomic(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _safe_id(name: str) -> str:
    ident = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("._-")[:100]
    return ident or "submission"


def discover_submissions(folder: str | os.PathLike, *, lab_name: str = "") -> list[tuple[str, Path]]:
    """``(id, path)`` of each submission: ``*.ipynb`` files, and folders holding notebooks.

    A folder's id is its name; it should hold one notebook (else the one named like the lab,
    else the first by name). Hidden files are ignored; ids are made file-name safe and unique.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"submissions folder {root} does not exist or is not a folder")
    found: list[tuple[str, Path]] = []
    seen: set[str] = set()
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix == ".ipynb":
            ident, path = _safe_id(entry.stem), entry
        elif entry.is_dir():
            nbs = sorted(p for p in entry.rglob("*.ipynb") if not any(part.startswith(".") for part in p.relative_to(entry).parts))
            if not nbs:
                continue
            named = [p for p in nbs if p.stem == lab_name]
            ident, path = _safe_id(entry.name), (named or nbs)[0]
        else:
            continue
        base, k = ident, 2
        while ident in seen:
            ident, k = f"{base}-{k}", k + 1
        seen.add(ident)
        found.append((ident, path))
    return found


def suspicious_patterns(nb: Any) -> list[str]:
    """Names of :data:`SUSPICIOUS` patterns found in a notebook's code cells."""
    code = "\n".join(c.get("source", "") if isinstance(c.get("source", ""), str) else "".join(c.get("source", []))
                     for c in nb.get("cells", []) if c.get("cell_type") == "code")
    return [name for name, pat in SUSPICIOUS.items() if re.search(pat, code)]


def _tags(cell: Any) -> list[str]:
    tags = cell.get("metadata", {}).get("tags", [])
    return list(tags) if isinstance(tags, list) else []


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def _results_source() -> str:
    from .. import results

    return Path(results.__file__).read_text(encoding="utf-8")


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- one submission

class _Stopped(Exception):
    """The batch was interrupted while this submission ran: nothing is written for it."""


@dataclass
class _Context:
    """What one grading process needs; built on the host that runs the sandboxes (:func:`host_context`)."""

    lab: InstructorLab
    profile: str
    timeout_cell: float
    timeout_total: float
    memory_mb: int
    max_output_bytes: int
    start_timeout: int
    isolation: Isolation
    memcap: MemoryCap
    batch_root: Path
    results_src: str
    threads: int
    hide_dirs: list[str]
    hide_files: list[str]
    keep: list[str]
    allow: list[str]
    python: str
    env_extra: dict[str, str]
    params: dict[str, Any]
    fingerprint_base: str
    stop: threading.Event = field(default_factory=threading.Event)


_HOSTS: dict[str, _Context] = {}


def host_context(spec: dict[str, Any]) -> _Context:
    """The grading context of this process for a batch ``spec`` (picklable; see
    :func:`grade_submissions`): probes the sandbox and the memory cap of this machine once."""
    key = spec["batch_id"]
    if key in _HOSTS:
        return _HOSTS[key]
    iso = probe_isolation(sys.executable, mode=spec["isolation"])
    memcap = choose_memory_cap(spec["memory_mb"], mode=spec["memory_cap"])
    allow = allowlist(extra=spec["allow"]) if iso.allowlist else []
    keep = sorted({str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                                                    Path(sys.executable).resolve().parent, _repo_root() / "labkit",
                                                    *[q for q in sys.path if q and Path(q).is_dir()])})
    env_extra: dict[str, str] = {}
    try:
        from ..storage import data_root

        root = data_root()
        if root.exists():
            env_extra["LABKIT_DATA"] = str(root)
            keep.append(str(root))
    except Exception:  # noqa: BLE001 - no data root: the embedded data needs none
        pass
    for k in ("TORCH_HOME", "LABKIT_DEVICE"):
        if os.environ.get(k):
            env_extra[k] = os.environ[k]
    batch_root = _batch_root()
    threads = int(spec.get("threads") or 0) or max(1, (os.cpu_count() or 1) // max(1, int(spec.get("slots", 1))))
    hide_dirs = list(spec["hide_dirs"]) + [str(Path(tempfile.gettempdir()).resolve()), str(Path.home().resolve())]
    ctx = _Context(lab=spec["lab"], profile=spec["profile"], timeout_cell=float(spec["timeout_cell"]),
                   timeout_total=float(spec["timeout_total"]), memory_mb=int(spec["memory_mb"]),
                   max_output_bytes=int(spec["max_output_bytes"]), start_timeout=int(spec["start_timeout"]),
                   isolation=iso, memcap=memcap, batch_root=batch_root, results_src=spec["results_src"],
                   threads=threads, hide_dirs=hide_dirs, hide_files=list(spec["hide_files"]), keep=keep,
                   allow=allow, python=sys.executable, env_extra=env_extra, params=dict(spec["params"]),
                   fingerprint_base=spec["fingerprint_base"])
    _HOSTS[key] = ctx
    return ctx


def _batch_root() -> Path:
    """The folder of this user's work folders: ``$TMPDIR/labkit-grade-<uid>``, shared by batches and
    Dask workers (each submission's folder is removed when it is graded; a killed worker leaves
    no folder per batch behind), or a fresh temporary folder when it cannot be used safely."""
    import stat

    root = Path(tempfile.gettempdir()) / f"labkit-grade-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(root)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700:
            for old in root.iterdir():  # left by killed graders or workers: '<pid>-<id>-<random>'
                pid = old.name.split("-", 1)[0]
                if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
                    shutil.rmtree(old, ignore_errors=True)
            return root
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="labkit-grade-"))


def _sandbox_prefix(ctx: _Context, workdir: Path) -> list[str]:
    if ctx.isolation.allowlist:
        return bwrap_argv(ctx.isolation.bwrap, workdir=str(workdir), seed=str(workdir), paths=ctx.allow,
                          workdir_mb=WORKDIR_MB)
    return list(ctx.isolation.prefix)


def probe_imports(ctx: _Context) -> str:
    """Import what the lab imports (torch, numpy, labkit, ...) in a sandbox under the memory cap,
    as a correct notebook would; raise :class:`ConfigurationError` naming the limit if it fails.
    Returns a one-line report (peak memory where known)."""
    import importlib.util
    import subprocess

    mods = sorted({m.split(".")[0] for m in ctx.lab.aliases.values()} | {"labkit"})
    mods = [m for m in mods if importlib.util.find_spec(m) is not None]
    snippet = ("import importlib, resource, sys\n"
               "m = int(sys.argv[1])\n"
               "if m > 0:\n"
               "    resource.setrlimit(resource.RLIMIT_AS, (m, m))\n"
               "for name in sys.argv[2:]:\n"
               "    importlib.import_module(name)\n"
               "if 'torch' in sys.modules:\n"
               "    import torch\n"
               "    float(torch.ones(64, 64).matmul(torch.ones(64, 64)).sum())\n"
               "print('LABKIT-PROBE-OK', flush=True)\n")
    jobdir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-probe-", dir=ctx.batch_root))
    workdir = jobdir / "work"
    (workdir / ".tmp").mkdir(parents=True)
    (workdir / ".config" / "matplotlib").mkdir(parents=True)
    slot = ctx.memcap.open("probe")
    try:
        cmd = [*slot.prefix, *_sandbox_prefix(ctx, workdir), ctx.python, "-c", snippet,
               str(ctx.memcap.rlimit_bytes), *mods]
        env = _env(ctx, workdir)
        if ctx.isolation.allowlist:  # the tmpfs work folder starts empty: let python create nothing there
            env["TMPDIR"] = str(workdir)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=workdir,
                                  start_new_session=True)
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired:
            rc, out, err = -1, "", "the import probe ran over 600 s"
        oom, peak = slot.oom_kills(), slot.peak_mb()
    finally:
        slot.close()
        shutil.rmtree(jobdir, ignore_errors=True)
    if rc != 0 or "LABKIT-PROBE-OK" not in out:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        why = "killed by the OOM killer" if oom else (lines[-1][:300] if lines else f"exit code {rc}")
        hint = ("the CUDA build of torch needs about 3000 MB of address space under RLIMIT_AS; raise --memory-mb "
                "or give the grader a memory cgroup" if ctx.memcap.mechanism == "rlimit" else "raise --memory-mb")
        raise ConfigurationError(f"configuration error: a correct notebook cannot import {', '.join(mods)} under the "
                                 f"memory cap --memory-mb {ctx.memory_mb} ({ctx.memcap.describe()}): {why}. {hint}; "
                                 "no submission was graded")
    return f"imported {', '.join(mods)} under the cap" + (f" (peak {peak:.0f} MB resident)" if peak else "")


def _prepare_notebook(nb: Any, n_hidden: int, guard: str) -> Any:
    import nbformat

    cells = []
    for i, cell in enumerate(nb.cells):
        if "injected-parameters" in _tags(cell):
            continue  # a papermill run's leftovers: the grader injects its own
        cell.metadata["labkit_grader"] = {"kind": "student", "index": i}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cells.append(cell)

    def grader(kind: str, src: str, **extra: Any) -> Any:
        c = nbformat.v4.new_code_cell(src)
        c.metadata["labkit_grader"] = {"kind": kind, **extra}
        return c

    nb.cells = [grader("guard", guard), *cells, grader("restore", "# labkit grader: restore"),
                *[grader("hidden", f"# hidden test {j}", hidden=j) for j in range(n_hidden)],
                grader("collect", "# labkit grader: collect")]
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    return nb


def _env(ctx: _Context, workdir: Path) -> dict[str, str]:
    venv_bin = str(Path(ctx.python).parent)
    g = workdir / ".labkit-grader"
    env = {
        "PATH": os.pathsep.join([venv_bin, "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": str(ctx.lab.parameters.get("SEED", 0)) if isinstance(ctx.lab.parameters.get("SEED", 0), int) else "0",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": str(_repo_root()),
        "TMPDIR": str(workdir / ".tmp"),
        "MPLCONFIGDIR": str(workdir / ".config" / "matplotlib"),
        "XDG_CACHE_HOME": str(workdir / ".cache"),
        "XDG_CONFIG_HOME": str(workdir / ".config"),
        "IPYTHONDIR": str(g / "ipython"),
        "JUPYTER_PATH": str(g / "share"),
        "JUPYTER_RUNTIME_DIR": str(g / "runtime"),
        "JUPYTER_CONFIG_DIR": str(g / "config"),
        "JUPYTER_DATA_DIR": str(g / "data"),
        "MALLOC_ARENA_MAX": "2",
        "OMP_NUM_THREADS": str(ctx.threads),
        "MKL_NUM_THREADS": str(ctx.threads),
        # idle OpenMP threads sleep: parallel sandboxes share the cores (measured on 2 busy cores:
        # a lab-00 smoke run took 73 s with 2 spinning threads, 20 s with 1); results are identical
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY") or "PASSIVE",
        "LABKIT_PROGRESS": "plain",
        "LABKIT_WIDGETS": "off",  # no frontend: explorers build nothing (see labkit.widgets)
        "USER": "student",
        "LOGNAME": "student",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    if os.environ.get("LABKIT_GRADER_DEBUG"):
        env["LABKIT_GRADER_DEBUG"] = "1"
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    env.update(ctx.env_extra)
    return env


def _prepare_workdir(ctx: _Context, sub_id: str, path: Path | str, raw: bytes | None = None) -> tuple[Path, Path]:
    jobdir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{sub_id[:40]}-", dir=ctx.batch_root))
    workdir = jobdir / "work"
    g = workdir / ".labkit-grader"
    for d in (workdir / ".tmp", workdir / ".config" / "matplotlib", g / "share" / "kernels" / KERNEL_NAME,
              g / "runtime", g / "ipython", g / "config", g / "data"):
        d.mkdir(parents=True, exist_ok=True)
    target = workdir / (re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).name) or "submission.ipynb")
    if raw is None:
        shutil.copyfile(path, target)
    else:
        target.write_bytes(raw)
    memcap = getattr(ctx, "memcap", None)
    rlimit = memcap.rlimit_bytes if memcap is not None else ctx.memory_mb * 2**20
    spec = {"argv": kernel_argv(ctx.python, rlimit), "display_name": "labkit grader",
            "language": "python", "metadata": {"debugger": False}}
    (g / "share" / "kernels" / KERNEL_NAME / "kernel.json").write_text(json.dumps(spec))
    # matplotlib's font list, so that every kernel does not rebuild it (seconds)
    mpl = Path(os.environ.get("MPLCONFIGDIR") or Path.home() / ".cache" / "matplotlib")
    for f in mpl.glob("fontlist-*.json") if mpl.is_dir() else []:
        shutil.copyfile(f, workdir / ".config" / "matplotlib" / f.name)
    return jobdir, workdir


def _error_outputs(cell: Any) -> list[Any]:
    return [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def _grade_one(ctx: _Context, sub_id: str, path: Path, raw: bytes | None = None) -> tuple[GradeResult, str | None]:
    """Grade one submission on this host; returns its result and the executed notebook's text."""
    import nbformat

    t0 = time.monotonic()
    lab = ctx.lab
    path = Path(path)
    raw = path.read_bytes() if raw is None else raw
    res = GradeResult(id=sub_id, status="ok", max=lab.max_points, source=str(path), lab=lab.name,
                      profile=ctx.profile, isolation=ctx.isolation.mode,
                      fingerprint=hashlib.sha256(raw + ctx.fingerprint_base.encode()).hexdigest(),
                      points={c.name: 0.0 for c in lab.checks},
                      graded_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    try:
        nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
        if not isinstance(nb.get("cells"), list):
            raise ValueError("no list of cells")
        for c in nb.cells:
            if c.get("cell_type") not in ("code", "markdown", "raw") or not isinstance(c.get("source"), str):
                raise ValueError("a cell is not a notebook cell")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is 'not a notebook'
        res.status = "not-a-notebook"
        first = str(exc).strip().splitlines()
        res.message = f"not a readable notebook: {type(exc).__name__}: {first[0][:200] if first else ''}"
        res.checks = _not_run_checks(lab)
        res.wall_s = time.monotonic() - t0
        return res, None
    res.flags = [f"review: {name}" for name in suspicious_patterns(nb)]
    has_params = any(c.cell_type == "code" and "parameters" in _tags(c) for c in nb.cells)
    token = secrets.token_hex(8)
    nonce = secrets.token_hex(16)
    # torch/numpy modules the lab imports: imported and snapshotted before the submission runs
    heavy = tuple(sorted({m for m in lab.aliases.values() if m.split(".")[0] in ("torch", "numpy")}))
    guard = guard_cell(token=token, results_source=ctx.results_src, modules=heavy,
                       aliases=lab.aliases, labkit_names=lab.labkit_names)
    nb = _prepare_notebook(nb, len(lab.hidden_cells), guard)
    jobdir, workdir = _prepare_workdir(ctx, sub_id, path, raw)
    params = {"PROFILE": ctx.profile}
    for key in ("DATA", "SEED"):
        if key in lab.parameters:
            params[key] = lab.parameters[key]
    params.update(ctx.params)
    job = {
        "name": path.name, "workdir": str(workdir), "notebook": nb, "parameters": params,
        "kernel_name": KERNEL_NAME, "timeout_cell": ctx.timeout_cell, "timeout_total": ctx.timeout_total,
        "start_timeout": ctx.start_timeout, "max_output_bytes": ctx.max_output_bytes,
        "max_output_bytes_grader": max(ctx.max_output_bytes, 1 << 20),
        "driver_memory_bytes": (ctx.memory_mb + 2048) * 2**20 if ctx.memcap.mechanism == "rlimit" else 0,
        "max_file_bytes": 1 << 30, "workdir_mb": WORKDIR_MB,
        "namespaces": ctx.isolation.kind == "unshare" and bool(ctx.isolation.prefix),
        "seed_dir": "/run/labkit-seed" if ctx.isolation.allowlist else "",
        "hide_dirs": ctx.hide_dirs + [str(ctx.batch_root)], "hide_files": ctx.hide_files, "keep": ctx.keep,
    }

    def hidden() -> dict[str, Any]:
        return {"restore": restore_cell(token), "hidden": list(lab.hidden_cells), "collect": collect_cell(token, nonce)}

    hard = ctx.timeout_total + ctx.timeout_cell * (len(lab.hidden_cells) + 3) + ctx.start_timeout + 30
    slot = ctx.memcap.open(sub_id)
    try:
        prefix = [*slot.prefix, *_sandbox_prefix(ctx, workdir)]
        outcome = run_sandbox(job, hidden, isolation=ctx.isolation, env=_env(ctx, workdir),
                              hard_timeout=hard, python=ctx.python, stop=ctx.stop, prefix=prefix)
        outcome.oom_kills = slot.oom_kills()
    finally:
        slot.close()
        shutil.rmtree(jobdir, ignore_errors=True)
    if outcome.stopped:
        raise _Stopped(sub_id)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code"
                     and c.metadata.get("labkit_grader", {}).get("kind") == "student")
    _classify(ctx, res, outcome, nonce, has_params, code)
    res.wall_s = time.monotonic() - t0
    executed = None
    if outcome.done and outcome.done.get("nb"):
        executed = nbformat.writes(_executed_notebook(outcome.done["nb"]))
    return res, executed


def grade_task(spec: dict[str, Any], sub_id: str, name: str, raw: bytes) -> dict[str, Any]:
    """One submission, as a task of any executor (threads here, a Dask worker elsewhere): the
    submission travels as bytes, the result comes back as ``{"result": ..., "executed": ...}``;
    only the process that called :func:`grade_submissions` writes files."""
    _not_dumpable()
    ctx = host_context(spec)
    try:
        res, executed = _grade_one(ctx, sub_id, Path(name), raw)
    except _Stopped:
        raise
    except Exception as exc:  # noqa: BLE001 - one submission never stops the batch
        lab = ctx.lab
        res, executed = GradeResult(id=sub_id, status="grader-error", max=lab.max_points, source=name, lab=lab.name,
                                    profile=ctx.profile, message=f"{type(exc).__name__}: {exc}"[:500],
                                    points={c.name: 0.0 for c in lab.checks}), None
    res.source = spec["sources"].get(sub_id, name)
    return {"result": asdict(res), "executed": executed}


def _not_dumpable() -> None:
    """The process holding the hidden tests cannot be read by same-user processes (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _student_index(cell: Any) -> int | None:
    meta = cell.get("metadata", {}).get("labkit_grader", {})
    return meta.get("index") if meta.get("kind") == "student" else None


def _tampered(restored: list[str], code: str) -> list[str]:
    """The restored names the submission's code plausibly changed itself.

    Libraries change a few attributes on their own (``torch._dynamo`` rewraps
    ``torch.manual_seed``); those are restored silently. A name is reported when the code assigns
    to it, or when it uses ``setattr``/``__dict__``/``vars()``/``sys.modules[...] =``.
    """
    generic = re.search(r"\bsetattr\(|__dict__|\bvars\(|sys\.modules\[[^\]]*\]\s*=(?!=)", code) is not None
    shown = []
    for r in restored:
        last = re.split(r"[.\s\[]", r.replace("[:]", "").replace("added ", "").rstrip("]").strip("'\""))[-1].strip("'\"")
        if generic or (last and re.search(rf"\b{re.escape(last)}\s*(\[[^\]]*\]\s*)?[+\-*/|&]?=(?!=)", code)):
            shown.append(r)
    return shown


def _not_run_checks(lab: InstructorLab) -> list[dict[str, Any]]:
    """One 'not run' row with no points for each declared check of ``lab``."""
    return [{"name": c.name, "passed": False, "points": 0.0, "max": c.points, "detail": "not run"}
            for c in lab.checks]


@dataclass
class _Run:
    """The driver's final report on an executed submission, with each cell's grader kind and the
    indexes of the cells that ran over time or were skipped."""

    done: dict[str, Any]
    cells: list[dict[str, Any]]
    kinds: list[str]
    timeouts: list[int]
    skipped: list[int]

    @classmethod
    def of(cls, done: dict[str, Any]) -> _Run:
        """Read the driver's ``done`` message."""
        cells = done["nb"].get("cells", [])
        kinds = [c.get("metadata", {}).get("labkit_grader", {}).get("kind", "student") for c in cells]
        return cls(done=done, cells=cells, kinds=kinds,
                   timeouts=[i for i in done.get("timeouts", []) if i < len(cells)],
                   skipped=[i for i in done.get("skipped", []) if i < len(cells)])

    def where(self, i: int) -> str:
        """Cell ``i`` as the student or instructor knows it (a student cell, a hidden test, a grader cell)."""
        idx = _student_index(self.cells[i])
        if idx is not None:
            return f"cell {idx}"
        kind = self.kinds[i]
        return (f"hidden test {self.cells[i]['metadata']['labkit_grader'].get('hidden', 0)}" if kind == "hidden"
                else f"grader cell ({kind})")


def _classify_fatal(ctx: _Context, res: GradeResult, outcome: SandboxOutcome, done: dict[str, Any]) -> None:
    """Status and message of a run whose driver sent no final notebook (killed, crashed, set-up failed)."""
    if outcome.oom_kills and not outcome.stopped:
        res.status, res.message = "memory", f"the sandbox was killed at the memory cap ({ctx.memory_mb} MB)"
    elif outcome.killed:
        res.status, res.message = "timeout", f"killed at the hard time limit after {outcome.wall_s:.0f} s"
    else:
        why = done.get("fatal") or outcome.protocol_error or f"the sandbox exited with code {outcome.returncode}"
        tail = outcome.log_tail.strip().splitlines()[-3:]
        if not done and not outcome.protocol_error and (outcome.returncode or 0) < 0:
            # the driver never fails this way on its own: something in the sandbox killed it
            res.status = "kernel-died"
            res.message = f"the sandbox was killed by signal {-(outcome.returncode or 0)} (by the submission?)"
            return
        res.status, res.message = "grader-error", f"{why}" + (f" | {' / '.join(tail)}" if tail else "")


def _nonce_payloads(run: _Run, nonce: str) -> tuple[list[dict[str, Any]], int]:
    """The hidden-test payloads carrying ``nonce`` printed by the collect cell, and how many other
    grader-marked lines (forged or unreadable) the notebook printed."""
    payloads, forged = [], 0
    for c, kind in zip(run.cells, run.kinds):
        for o in c.get("outputs", []):
            if o.get("output_type") != "stream":
                continue
            for line in _text(o.get("text")).splitlines():
                if not line.startswith(MARK + " "):
                    continue
                parts = line.split(" ", 2)
                if kind == "collect" and len(parts) == 3 and parts[1] == nonce:
                    try:
                        payload = json.loads(parts[2])
                    except ValueError:
                        forged += 1
                        continue
                    if payload.get("nonce") == nonce:
                        payloads.append(payload)
                        continue
                forged += 1
    return payloads, forged


def _hidden_results(res: GradeResult, run: _Run, nonce: str, code: str) -> tuple[bool, dict[str, dict[str, Any]]]:
    """Whether exactly one genuine hidden-test payload came back, and its checks by name; records
    the names the guard restored and flags forged output and tampering on ``res``."""
    payloads, forged = _nonce_payloads(run, nonce)
    results_ok = len(payloads) == 1 and not forged
    if forged or len(payloads) > 1:
        res.flags.append("tampering: forged grader output")
    reported: dict[str, dict[str, Any]] = {}
    if results_ok:
        payload = payloads[0]
        for ch in payload.get("checks", []):
            if isinstance(ch, dict) and isinstance(ch.get("name"), str):
                reported[ch["name"]] = ch
        res.restored = [r for r in payload.get("restored", []) if isinstance(r, str)]
        shown = _tampered(res.restored, code)
        if shown:
            res.flags.append("restored before the hidden tests: " + ", ".join(shown[:12])
                             + (" ..." if len(shown) > 12 else ""))
    return results_ok, reported


def _hidden_errors(run: _Run) -> dict[int, str]:
    """The first error (``"Name: message"``) raised by each hidden-test cell, by hidden-test index."""
    hidden_errors: dict[int, str] = {}
    for c, kind in zip(run.cells, run.kinds):
        if kind == "hidden":
            errs = _error_outputs(c)
            if errs:
                j = c["metadata"]["labkit_grader"].get("hidden", 0)
                hidden_errors[j] = f"{errs[0].get('ename')}: {_text(errs[0].get('evalue')).splitlines()[0][:200] if _text(errs[0].get('evalue')) else ''}"
    return hidden_errors


def _check_rows(lab: InstructorLab, reported: dict[str, dict[str, Any]], hidden_errors: dict[int, str],
                results_ok: bool) -> list[dict[str, Any]]:
    """One row per check: the declared checks (scored, or why they did not run), then the checks
    the hidden tests reported under run-time names."""
    declared = {c.name: c for c in lab.checks}
    checks = []
    for name, dc in declared.items():
        ch = reported.get(name)
        if ch is not None:
            passed = bool(ch.get("passed"))
            checks.append({"name": name, "passed": passed, "points": dc.points if passed else 0.0,
                           "max": dc.points, "detail": str(ch.get("detail", ""))[:500]})
        else:
            why = "not run"
            if dc.cell in hidden_errors:
                why = f"not run: the hidden test raised {hidden_errors[dc.cell]}"
            elif not results_ok:
                why = "not run: no hidden-test results"
            checks.append({"name": name, "passed": False, "points": 0.0, "max": dc.points, "detail": why})
    for name, ch in reported.items():  # checks with run-time names (dynamic hidden tests)
        if name not in declared:
            pts = float(ch.get("points", 1.0)) if isinstance(ch.get("points", 1.0), (int, float)) else 1.0
            checks.append({"name": name, "passed": bool(ch.get("passed")), "points": pts if ch.get("passed") else 0.0,
                           "max": pts, "detail": str(ch.get("detail", ""))[:500]})
    return checks


def _first_error(run: _Run) -> tuple[dict[str, Any] | None, bool]:
    """The first error of the submission's own cells (timeouts aside), and whether any cell's
    error reads like running out of memory."""
    first_error = None
    memory = False
    for c, kind in zip(run.cells, run.kinds):
        for o in _error_outputs(c):
            text = f"{o.get('ename')}: {_text(o.get('evalue'))}"
            if _MEMORY_TEXT.search(text):
                memory = True
            if kind in ("student", "parameters") and first_error is None and o.get("ename") != "Timeout":
                idx = _student_index(c)
                tb = [_ANSI.sub("", t) for t in o.get("traceback", [])][-6:]
                first_error = {"cell": idx, "execution_count": c.get("execution_count"), "ename": o.get("ename"),
                               "evalue": _text(o.get("evalue"))[:500], "traceback": "\n".join(tb)[-3000:]}
    return first_error, memory


def _killed_for_memory(outcome: SandboxOutcome, done: dict[str, Any]) -> bool:
    """Whether the kernel's failure or the sandbox's OOM kills point at the memory cap."""
    exc = done.get("exception") or {}
    memory = False
    if exc and _MEMORY_TEXT.search(outcome.log_tail or ""):
        memory = True
    if exc.get("type") == "DeadKernelError" and done.get("kernel_exit") in (-9, 137):
        memory = True  # SIGKILL: the kernel's memory cgroup / the OOM killer
    if getattr(outcome, "oom_kills", 0):
        memory = True  # the memory cgroup's OOM killer ended a process of the sandbox
    return memory


def _run_notes(run: _Run, has_params: bool) -> list[str]:
    """The flags that describe how the run went (missing parameters cell, truncation, skipped cells)."""
    notes = []
    if not has_params:
        notes.append("missing-parameters")
    if run.done.get("truncated"):
        notes.append("output-truncated")
    if run.skipped:
        notes.append(f"skipped {len(run.skipped)} cell(s) after the total time limit")
    return notes


def _kernel_verdict(ctx: _Context, run: _Run, memory: bool) -> tuple[str, str]:
    """Status and message when the notebook run raised (a cell that ignored the interrupt, the
    memory cap, a dead or failing kernel)."""
    done = run.done
    exc = done.get("exception") or {}
    if exc.get("type") in ("CellTimeoutError",) or (exc and "Timeout" in exc.get("type", "") and exc.get("type") != "DeadKernelError"):
        return "timeout", (f"a cell did not stop when interrupted after {ctx.timeout_cell:g} s; the kernel was stopped"
                           + (f" ({run.where(run.timeouts[-1])})" if run.timeouts else ""))
    if memory:
        return "memory", f"the kernel died at the memory cap ({ctx.memory_mb} MB)"
    cur = done.get("current")
    at = f" while running {run.where(cur)}" if isinstance(cur, int) and 0 <= cur < len(run.cells) else ""
    if exc.get("type") == "DeadKernelError":
        return "kernel-died", f"the kernel died{at} (exit code {done.get('kernel_exit')})"
    return "kernel-died", f"the kernel failed: {exc.get('type')}: {exc.get('message', '')[:300]}"


def _time_limit_message(ctx: _Context, run: _Run) -> str:
    """Which cells ran over the per-cell limit and how many were skipped at the total limit."""
    parts = []
    if run.timeouts:
        parts.append(", ".join(run.where(i) for i in run.timeouts) + f" ran over {ctx.timeout_cell:g} s and was interrupted")
    if run.skipped:
        parts.append(f"the total time limit ({ctx.timeout_total:g} s) was reached: {len(run.skipped)} later cell(s) skipped")
    return "; ".join(parts)


def _first_error_message(first_error: dict[str, Any]) -> str:
    """``cell N (In [k]): Name: first line of the message`` for the submission's first error."""
    ec = first_error.get("execution_count")
    return (f"cell {first_error['cell']}" + (f" (In [{ec}])" if ec else "") +
            f": {first_error['ename']}: {first_error['evalue'].splitlines()[0][:200] if first_error['evalue'] else ''}")


def _verdict(ctx: _Context, run: _Run, *, memory: bool, first_error: dict[str, Any] | None, results_ok: bool,
             has_params: bool, checks: list[dict[str, Any]]) -> tuple[str, str]:
    """The status and message of an executed submission, the most serious problem first."""
    done = run.done
    if done.get("exception"):
        return _kernel_verdict(ctx, run, memory)
    if run.timeouts or run.skipped:
        return "timeout", _time_limit_message(ctx, run)
    if memory:
        err = first_error or {}
        return "memory", f"out of memory (cap {ctx.memory_mb} MB)" + (f" in cell {err.get('cell')}: {err.get('ename')}" if err else "")
    if first_error is not None:
        return "error", _first_error_message(first_error)
    if not results_ok:
        return "error", ("the hidden-test results are missing or forged: the grader's cells were disturbed"
                         if done.get("hidden_received") else "the hidden tests did not run")
    if done.get("truncated"):
        return "output-too-large", f"the output went over {ctx.max_output_bytes} bytes and was truncated"
    if not has_params:
        return "missing-parameters", "no cell tagged 'parameters': the grader injected the parameters at the top"
    if any(not c["passed"] for c in checks):
        failed = [c["name"] for c in checks if not c["passed"]]
        return "failed-checks", f"{len(failed)} of {len(checks)} hidden checks failed: {', '.join(failed)}"
    return "ok", f"all {len(checks)} hidden checks passed"


def _classify(ctx: _Context, res: GradeResult, outcome: SandboxOutcome, nonce: str, has_params: bool,
              code: str = "") -> None:
    """Fill ``res`` (checks, points, flags, first error, status, message) from a sandbox's outcome."""
    lab = ctx.lab
    done = outcome.done or {}
    res.checks = _not_run_checks(lab)
    if not outcome.done or done.get("fatal"):
        _classify_fatal(ctx, res, outcome, done)
        return
    run = _Run.of(done)
    results_ok, reported = _hidden_results(res, run, nonce, code)
    checks = _check_rows(lab, reported, _hidden_errors(run), results_ok)
    res.checks = checks
    res.points = {c["name"]: float(c["points"]) for c in checks}
    res.total = float(sum(c["points"] for c in checks))
    res.max = float(sum(c["max"] for c in checks))
    first_error, memory = _first_error(run)
    res.first_error = first_error
    memory = _killed_for_memory(outcome, done) or memory
    res.flags = _run_notes(run, has_params) + res.flags
    res.status, res.message = _verdict(ctx, run, memory=memory, first_error=first_error, results_ok=results_ok,
                                       has_params=has_params, checks=checks)
    if res.status not in ("ok",) and not res.message:
        res.message = res.status


def _executed_notebook(nb_dict: dict[str, Any]) -> Any:
    """The executed submission for the instructor: grader cells out, hidden tests kept and tagged."""
    import nbformat

    nb = nbformat.from_dict(nb_dict)
    cells = []
    for c in nb.cells:
        meta = c.metadata.pop("labkit_grader", {})
        c.metadata.pop("papermill", None)
        c.metadata.pop("execution", None)
        kind = meta.get("kind", "student")
        if kind in ("guard", "restore", "collect"):
            continue
        if "skipped_source" in meta:
            c.source = meta["skipped_source"]
            c.metadata["tags"] = [*c.metadata.get("tags", []), "skipped-by-grader"]
        if kind == "hidden":
            c.metadata["tags"] = ["hidden-test"]
        if not c.metadata.get("tags"):
            c.metadata.pop("tags", None)
        cells.append(c)
    nb.cells = cells
    nb.metadata.pop("papermill", None)
    return nb


def _feedback(res: GradeResult, lab: str) -> str:
    lines = [f"# Feedback: {lab}, submission `{res.id}`", "",
             f"**Status: {res.status}**, {res.total:g} / {res.max:g} points", ""]
    if res.message:
        lines += [res.message, ""]
    lines += [f"Graded with the `{res.profile}` profile on {res.graded_at} ({res.wall_s:.1f} s).", ""]
    if res.checks:
        lines += ["| check | result | points | detail |", "|---|---|---|---|"]
        for c in res.checks:
            detail = str(c.get("detail", "")).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {c['name']} | {'passed' if c['passed'] else 'FAILED'} | {c['points']:g} / {c['max']:g} | {detail} |")
        lines.append("")
    if res.first_error:
        e = res.first_error
        lines += ["## First error", "",
                  f"Cell {e.get('cell')} of your notebook" + (f" (In [{e['execution_count']}])" if e.get("execution_count") else "")
                  + f" raised `{e.get('ename')}`: {e.get('evalue', '').splitlines()[0] if e.get('evalue') else ''}", ""]
        if e.get("traceback"):
            lines += ["```", e["traceback"], "```", ""]
    notes = [f for f in res.flags if not f.startswith("review:")]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the batch

def _load_result(path: Path) -> GradeResult | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return GradeResult(**{k: v for k, v in data.items() if k in GradeResult.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None


def _write_csv(out: Path, lab: InstructorLab, lock: threading.Lock) -> None:
    with lock:
        results = [r for r in (_load_result(p) for p in sorted(out.glob(f"*/{RESULT_FILE}")))
                   if r is not None and r.lab == lab.name]
        names = [c.name for c in lab.checks]
        extra = sorted({n for r in results for n in r.points} - set(names))
        names += extra
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["id", "status", *names, "total", "max", "wall_s", "message", "flags"],
                                lineterminator="\n")
        writer.writeheader()
        for r in sorted(results, key=lambda r: r.id):
            writer.writerow(r.row(names))
        _write_atomic(out / "grades.csv", buf.getvalue())


def _check_number(name: str, value: Any, *, minimum: float, integer: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or value < minimum:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} >= {minimum:g}, got {value!r}")


EXECUTORS = ("auto", "dask", "threads")


def _check_options(*, profile: str, timeout_cell: float, timeout_total: float, memory_mb: int, jobs: int,
                   max_output_mb: float, start_timeout: int, isolation: str, memory_cap: str,
                   allow: list[str] | tuple[str, ...], scheduler: str | None, executor: str) -> None:
    """Raise ``ValueError`` (``TypeError`` for ``allow``) for an option of :func:`grade_submissions` that is out of range."""
    from ..config import PROFILES

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    _check_number("timeout_cell", timeout_cell, minimum=1)
    _check_number("timeout_total", timeout_total, minimum=1)
    _check_number("start_timeout", start_timeout, minimum=5, integer=True)
    _check_number("jobs", jobs, minimum=1, integer=True)
    _check_number("memory_mb", memory_mb, minimum=0, integer=True)
    if 0 < memory_mb < 512:
        raise ValueError(f"memory_mb={memory_mb} is too small for a Python kernel; use >= 512 (or 0 for no cap)")
    _check_number("max_output_mb", max_output_mb, minimum=0.001)
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"isolation must be one of {ISOLATION_MODES}, got {isolation!r}")
    if memory_cap not in MEMORY_CAP_MODES:
        raise ValueError(f"memory_cap must be one of {MEMORY_CAP_MODES}, got {memory_cap!r}")
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    if isinstance(allow, (str, os.PathLike)) or not all(isinstance(a, (str, os.PathLike)) for a in allow):
        raise TypeError(f"allow must be a list of paths, got {allow!r}; e.g. allow=['/data/course']")
    for a in allow:
        if not Path(a).exists():
            raise ValueError(f"allow path {str(a)!r} does not exist; give an existing file or folder or drop it")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise ValueError(f"scheduler must be a Dask scheduler address such as 'tcp://10.0.0.5:8786', got {scheduler!r}")
    if scheduler is not None and executor == "threads":
        raise ValueError("scheduler= needs executor='dask' (or 'auto'), got executor='threads'")


def _extra_parameters(info: InstructorLab, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """The lab parameters set by ``parameters=``; ``ValueError`` for one the lab lacks or for ``PROFILE``."""
    extra_params = dict(parameters or {})
    unknown = sorted(set(extra_params) - set(info.parameters))
    if unknown or "PROFILE" in extra_params:
        raise ValueError(f"parameters {unknown or ['PROFILE']} cannot be set: {info.name}'s parameters are "
                         f"{sorted(info.parameters)} and PROFILE comes from profile=")
    return extra_params


def _wants_dask(scheduler: str | None, executor: str, log: Callable[[str], None] | None) -> bool:
    """Whether to grade on Dask: asked for, or ``executor="auto"`` with dask.distributed installed
    (else ``log`` says that threads are used)."""
    use_dask = scheduler is not None or executor == "dask"
    if executor == "auto" and scheduler is None:
        import importlib.util

        use_dask = importlib.util.find_spec("distributed") is not None
        if not use_dask and log:
            log("dask.distributed is not installed: grading with threads of this process "
                "(pip install -e '.[grade]' for worker processes and clusters)")
    return use_dask


def _batch_spec(info: InstructorLab, subs: list[tuple[str, Path]], sub_dir: Path, out: Path, *, profile: str,
                timeout_cell: float, timeout_total: float, memory_mb: int, memory_cap: str, isolation: str,
                allow: list[str] | tuple[str, ...], max_output_mb: float, start_timeout: int,
                extra_params: dict[str, Any], jobs: int) -> dict[str, Any]:
    """The picklable description of a batch that every grading host receives (see :func:`host_context`)."""
    repo = _repo_root()
    from ..runner import labs_dir

    hide_dirs = [str(p) for p in (info.path.parent.resolve(), labs_dir().resolve(), repo / ".git", repo / "_build",
                                  sub_dir, out)]
    return {
        "batch_id": secrets.token_hex(8), "lab": info, "profile": profile, "timeout_cell": float(timeout_cell),
        "timeout_total": float(timeout_total), "memory_mb": int(memory_mb), "memory_cap": memory_cap,
        "isolation": isolation, "allow": [str(Path(a).resolve()) for a in allow],
        "max_output_bytes": int(max_output_mb * 2**20), "start_timeout": int(start_timeout),
        "results_src": _results_source(), "hide_dirs": hide_dirs,
        "hide_files": [str(info.path.resolve())] + [str(p.resolve()) for _, p in subs], "params": extra_params,
        "fingerprint_base": json.dumps([info.digest, profile, timeout_cell, timeout_total, memory_mb,
                                        sorted(extra_params.items())], default=str),
        "slots": jobs, "sources": {sid: str(p) for sid, p in subs},
    }


def _split_graded(subs: list[tuple[str, Path]], out: Path, *, force: bool, fingerprint_base: str
                  ) -> tuple[dict[str, GradeResult], list[str], list[tuple[str, Path]]]:
    """The results and ids of the submissions already graded with the same file, lab and options
    (none when ``force``), and the submissions left to grade."""
    results: dict[str, GradeResult] = {}
    resumed: list[str] = []
    todo: list[tuple[str, Path]] = []
    for sub_id, path in subs:
        prev = _load_result(out / sub_id / RESULT_FILE)
        if prev is not None and not force:
            fp = hashlib.sha256(path.read_bytes() + fingerprint_base.encode()).hexdigest()
            if prev.fingerprint == fp:
                results[sub_id] = prev
                resumed.append(sub_id)
                continue
        todo.append((sub_id, path))
    return results, resumed, todo


def _recorder(out: Path, info: InstructorLab, results: dict[str, GradeResult], lock: threading.Lock,
              log: Callable[[str], None] | None) -> Callable[[dict[str, Any]], GradeResult]:
    """The callback that writes a graded submission's files and ``grades.csv`` as soon as its
    result comes back, adds it to ``results`` and logs one line."""

    def record(payload: dict[str, Any]) -> GradeResult:
        res = GradeResult(**{k: v for k, v in payload["result"].items() if k in GradeResult.__dataclass_fields__})
        sub_out = out / res.id
        if payload.get("executed"):
            _write_atomic(sub_out / "executed.ipynb", payload["executed"])
        _write_atomic(sub_out / "feedback.md", _feedback(res, info.name))
        _write_atomic(sub_out / RESULT_FILE, json.dumps(asdict(res), indent=1, default=str))
        _write_csv(out, info, lock)
        results[res.id] = res
        if log:
            log(f"{res.id:<24} {res.status:<18} {res.total:g}/{res.max:g}  {res.wall_s:5.1f} s  {res.message[:90]}")
        return res

    return record


def grade_submissions(lab: str | os.PathLike, submissions: str | os.PathLike, output_dir: str | os.PathLike, *,
                      profile: str = "smoke", timeout_cell: float = 120, timeout_total: float = 900,
                      memory_mb: int = DEFAULT_MEMORY_MB, jobs: int = 1, force: bool = False,
                      max_output_mb: float = DEFAULT_MAX_OUTPUT_MB, start_timeout: int = 60,
                      parameters: dict[str, Any] | None = None, isolation: str = "auto",
                      memory_cap: str = "auto", allow: list[str] | tuple[str, ...] = (),
                      scheduler: str | None = None, executor: str = "auto",
                      log: Callable[[str], None] | None = print) -> BatchReport:
    """Grade every submission of ``submissions`` against the hidden tests of ``lab``.

    Writes ``OUT/<id>/executed.ipynb``, ``OUT/<id>/feedback.md``, ``OUT/<id>/result.json`` (last,
    atomically: its presence marks a graded submission) and rewrites ``OUT/grades.csv`` after
    each submission. Submissions already graded with the same file, lab and options are skipped
    unless ``force``. ``memory_mb=0`` removes the memory cap; ``memory_cap`` picks how it is
    enforced (``"auto"``: a memory cgroup where possible, else ``RLIMIT_AS``; see
    :mod:`labkit.grading.memory`). ``parameters`` sets other parameters of the lab (e.g.
    ``{"WEIGHTS": "random"}``); ``PROFILE`` is ``profile`` and ``DATA``/``SEED`` are the
    instructor notebook's defaults unless given here. ``allow``: more read-only paths for the
    sandbox (bubblewrap's allowlist).

    Executors: ``scheduler="tcp://host:8786"`` sends each submission as a task to an existing
    Dask cluster; else ``jobs`` local Dask worker processes (``executor="dask"``, the default
    when dask is installed) or ``jobs`` threads of this process (``executor="threads"``). The
    results do not depend on the executor. Before any submission is graded, every host checks
    its sandbox, its memory cap and that the lab's imports work under the cap
    (:func:`probe_imports`); a failure raises ``ConfigurationError`` (a ``RuntimeError``).
    Used by ``labkit grade``.
    """
    _check_options(profile=profile, timeout_cell=timeout_cell, timeout_total=timeout_total, memory_mb=memory_mb,
                   jobs=jobs, max_output_mb=max_output_mb, start_timeout=start_timeout, isolation=isolation,
                   memory_cap=memory_cap, allow=allow, scheduler=scheduler, executor=executor)
    t0 = time.monotonic()
    info = load_instructor_lab(lab)
    extra_params = _extra_parameters(info, parameters)
    sub_dir = Path(submissions).resolve()
    subs = discover_submissions(sub_dir, lab_name=info.name)
    out = Path(output_dir).resolve()
    if _within(out, sub_dir):
        raise ValueError(f"output_dir {out} is inside the submissions folder {sub_dir}; choose another folder")
    use_dask = _wants_dask(scheduler, executor, log)
    spec = _batch_spec(info, subs, sub_dir, out, profile=profile, timeout_cell=timeout_cell,
                       timeout_total=timeout_total, memory_mb=memory_mb, memory_cap=memory_cap, isolation=isolation,
                       allow=allow, max_output_mb=max_output_mb, start_timeout=start_timeout,
                       extra_params=extra_params, jobs=jobs)
    results, resumed, todo = _split_graded(subs, out, force=force, fingerprint_base=spec["fingerprint_base"])
    if log and resumed:
        log(f"{len(resumed)} submission(s) already graded, skipped (use --force to regrade)")
    lock = threading.Lock()
    out.mkdir(parents=True, exist_ok=True)
    record = _recorder(out, info, results, lock, log)
    if use_dask:
        from .distributed import grade_on_dask

        iso, memcap, executor_note = grade_on_dask(spec, todo, jobs=jobs, scheduler=scheduler, record=record, log=log)
    else:
        iso, memcap, executor_note = _grade_on_threads(spec, todo, jobs=jobs, record=record, log=log)
    _write_csv(out, info, lock)
    report = BatchReport(lab=info.name, output_dir=out, results=[results[s] for s, _ in subs if s in results],
                         resumed=resumed, isolation=iso, wall_s=time.monotonic() - t0, memory=memcap,
                         executor=executor_note)
    if log:
        log(report.summary())
    return report


def preflight(spec: dict[str, Any]) -> dict[str, Any]:
    """This host's sandbox, memory cap and import probe for a batch (raises ConfigurationError)."""
    ctx = host_context(spec)
    return {"isolation": ctx.isolation, "memory": ctx.memcap, "probe": probe_imports(ctx),
            "labkit": _grading_digest()}


def _grading_digest() -> str:
    """A digest of labkit's grading code: workers must run the same version as the client."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _grade_on_threads(spec: dict[str, Any], todo: list[tuple[str, Path]], *, jobs: int,
                      record: Callable[[dict[str, Any]], GradeResult],
                      log: Callable[[str], None] | None) -> tuple[Isolation, MemoryCap, str]:
    _not_dumpable()
    info = preflight(spec)
    ctx = host_context(spec)
    if log:
        _warn(info["isolation"], info["memory"], log)
        log(f"probe: {info['probe']}")

    def work(sub_id: str, path: Path) -> dict[str, Any] | None:
        if ctx.stop.is_set():
            return None
        try:
            return grade_task(spec, sub_id, str(path), path.read_bytes())
        except _Stopped:
            return None

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = [pool.submit(work, sid, p) for sid, p in todo]
        for fut in as_completed(futures):
            payload = fut.result()
            if payload is not None:
                record(payload)
    except BaseException:  # Ctrl-C: stop the running sandboxes, keep what is written
        ctx.stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _HOSTS.pop(spec["batch_id"], None)
    return info["isolation"], info["memory"], f"{jobs} thread(s) of this process"


def _warn(iso: Isolation, memcap: MemoryCap, log: Callable[[str], None]) -> None:
    if iso.kind == "none":
        log(f"WARNING: grading without namespaces: {iso.describe()}")
    elif not iso.allowlist:
        log(f"WARNING: no bubblewrap allowlist, a weaker sandbox: {iso.describe()}")
    if memcap.mechanism == "rlimit":
        log(f"WARNING: {memcap.describe()}")


def _within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False
