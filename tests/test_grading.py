"""Batch grading: one sandboxed batch of synthetic submissions (every failure mode of issue 6),
resume, kill, tampering, isolation; lab 00 graded the same way.

Kernel start-up dominates the cost, so the batches run once per module (``--jobs 2``, small
time limits) and the tests read their results.

Rule for what the machine must have: these tests never skip. The sandbox is bubblewrap
(``make test`` installs it with .ci/ensure-bubblewrap.sh) in user namespaces, and the memory cap a
memory cgroup wherever the tests run as root on a mounted memory controller (this project's
machines and CI); a machine without them fails the tests that need them, with the reason. The
weaker fall-backs are tested by forcing them (``isolation="unshare"``/``"none"``,
``memory_cap="rlimit"``).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from labkit.grading import grade as G
from labkit.grading.instructor import declared_checks, import_aliases, load_instructor_lab
from labkit.grading.kernel_code import MARK
from labkit.grading.memory import choose_memory_cap
from labkit.grading.sandbox import SandboxOutcome, probe_isolation
from labkit.grading.student import make_student_notebook

REPO = Path(__file__).resolve().parents[1]
ISO = probe_isolation()
MEM = choose_memory_cap(1024)
v4 = nbformat.v4

# cell indices of the synthetic lab (see _instructor)
PARAMS, SETUP, ADD, MEAN = 1, 2, 3, 4


def _code(src: str, tags: list[str] | None = None):
    c = v4.new_code_cell(src)
    if tags:
        c.metadata["tags"] = tags
    return c


def _md(src: str, tags: list[str] | None = None):
    c = v4.new_markdown_cell(src)
    if tags:
        c.metadata["tags"] = tags
    return c


def _instructor():
    """A tiny lab following the course conventions; hidden checks worth 2 + 3 + 1 = 6 points."""
    nb = v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        _md("# Lab 99 - synthetic"),
        _code('PROFILE = "standard"\nDATA = "embedded"\nSEED = 0', ["parameters"]),
        _code("import labkit as lk\nprint('profile', PROFILE)"),
        _code("def add(a, b):\n    # BEGIN SOLUTION\n    return a + b\n    # END SOLUTION\n\n"
              "lk.check('ex1_add', add(2, 3) == 5, 'add(2, 3) == 5')"),
        _code("def mean(xs):\n    # BEGIN SOLUTION\n    return sum(xs) / len(xs)\n    # END SOLUTION\n\n"
              "lk.check('ex2_mean', mean([1, 2, 3]) == 2, 'mean([1, 2, 3]) == 2')"),
        _md("**Q1.** Why is the mean of integers a float?"),
        _md("*Answer.* Because true division returns a float (instructor's answer).", ["answer"]),
        _code("lk.check('hidden_add', add(-1, 1) == 0 and add(10, 5) == 15, 'add on more inputs', points=2)",
              ["hidden-test"]),
        _code("lk.check('hidden_mean', abs(mean([1.0, 2.0]) - 1.5) < 1e-9, 'mean of floats', points=3)\n"
              "lk.check('hidden_profile', PROFILE == 'smoke', f'profile {PROFILE}', points=1)", ["hidden-test"]),
    ]
    return nb


def _correct(inst):
    nb = copy.deepcopy(inst)
    nb.cells = [c for c in nb.cells if "hidden-test" not in c.metadata.get("tags", [])]
    return nb


def _with(nb, index: int, src: str):
    nb = copy.deepcopy(nb)
    nb.cells.insert(index, _code(src))
    return nb


def _replace(nb, index: int, old: str, new: str):
    nb = copy.deepcopy(nb)
    assert old in nb.cells[index].source
    nb.cells[index].source = nb.cells[index].source.replace(old, new)
    return nb


HOG = """
import numpy as np
def hog():
    chunks = []
    for _ in range(12):  # 3 GB, written to: resident, over the 1024 MB cap of these tests
        chunks.append(np.ones((256, 2**20), dtype=np.uint8))
    return len(chunks)
print('allocated', hog())
"""
# under RLIMIT_AS the allocation fails (MemoryError) and the hidden tests still run; under a memory
# cgroup the OOM killer ends the kernel and no hidden test runs
HOG_POINTS = 6 if MEM.mechanism == "rlimit" else 0
UNINTERRUPTIBLE = """
while True:
    try:
        while True:
            pass
    except KeyboardInterrupt:
        pass
"""
TAMPER = """
import builtins
import labkit.results
lk.check = lambda *a, **k: True
labkit.results.check = lambda *a, **k: True
builtins.abs = lambda x: 0
lk.check('hidden_add', True, 'self-reported', points=2)
"""


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("grading")
    inst = _instructor()
    lab = root / "instructor" / "99_synthetic.ipynb"
    lab.parent.mkdir()
    nbformat.write(inst, lab)
    subs = root / "subs"
    subs.mkdir()
    out = root / "out"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    token = uuid.uuid4().hex[:8]
    escape = [str(root / "escape.txt"), str(REPO / f"escape-{token}.txt"), str(Path.home() / f"escape-{token}.txt")]
    ok = _correct(inst)
    no_params = copy.deepcopy(ok)
    no_params.cells.pop(PARAMS)
    cases = {
        # id: (notebook or raw text, expected status, expected total)
        "correct": (ok, "ok", 6),
        "partial": (_replace(ok, MEAN, "sum(xs) / len(xs)", "sum(xs) // len(xs)"), "failed-checks", 3),
        "syntax": (_replace(ok, ADD, "def add(a, b):", "def add(a, b)"), "error", 4),
        "exception": (_with(ok, MEAN + 1, "raise ValueError('boom')"), "error", 6),
        "loop": (_with(ok, MEAN + 1, "while True:\n    pass"), "timeout", 6),
        "stubborn": (_with(ok, MEAN + 1, UNINTERRUPTIBLE), "timeout", 0),
        "hog": (_with(ok, MEAN + 1, HOG), "memory", HOG_POINTS),
        "exit": (_with(ok, MEAN + 1, "import os\nos._exit(1)"), "kernel-died", 0),
        "chatty": (_with(ok, MEAN + 1, "for i in range(3000):\n    print('x' * 1000)"), "output-too-large", 6),
        "network": (_with(ok, MEAN + 1,
                          "import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', %d), timeout=3)\n"
                          "    s.sendall(b'hello')\n    print('NET-OPEN')\nexcept OSError as e:\n"
                          "    print('NET-BLOCKED', type(e).__name__)" % port), "ok", 6),
        "snoop": (_with(ok, MEAN + 1,
                        "import os, pathlib\n"
                        f"for t in {[str(lab), str(subs / 'correct.ipynb'), str(out), str(subs), str(REPO / 'labs')]!r}:\n"
                        "    p = pathlib.Path(t)\n    try:\n"
                        "        data = p.read_text() if p.is_file() else ' '.join(os.listdir(p))\n"
                        "    except OSError as e:\n        print('DENIED', t, type(e).__name__)\n        continue\n"
                        "    print('LEAKED' if data.strip() else 'EMPTY', t)"), "ok", 6),
        "tamper": (_replace(_with(ok, MEAN + 1, TAMPER), ADD, "return a + b", "return 5"), "failed-checks", 4),
        "noparams": (no_params, "missing-parameters", 6),
        "garbage": ("this is not JSON {", "not-a-notebook", 0),
    }
    assert ISO.filesystem, f"no file-system sandbox here ({ISO.note}): the escape case would write into the repository"
    cases["escape"] = (_with(ok, MEAN + 1,
                             f"for t in {escape!r}:\n    try:\n        open(t, 'w').write('x')\n"
                             "        print('WROTE', t)\n    except OSError as e:\n"
                             "        print('BLOCKED', t, type(e).__name__)"), "ok", 6)
    for ident, (nb, _, _) in cases.items():
        path = subs / f"{ident}.ipynb"
        if isinstance(nb, str):
            path.write_text(nb)
        else:
            nbformat.write(nb, path)
    kw = dict(profile="smoke", timeout_cell=6, timeout_total=60, memory_mb=1024, jobs=2, max_output_mb=1, log=None)
    report = G.grade_submissions(lab, subs, out, **kw)
    results = {r.id: r for r in report.results}
    accepted = []
    try:
        while True:
            accepted.append(listener.accept()[0])
    except BlockingIOError:
        pass
    yield dict(root=root, lab=lab, subs=subs, out=out, cases=cases, report=report, results=results, kw=kw,
               accepted=accepted, escape=escape)
    listener.close()
    for s in accepted:
        s.close()
    for p in escape:
        Path(p).unlink(missing_ok=True)


def _outputs(out: Path, ident: str) -> str:
    nb = json.loads((out / ident / "executed.ipynb").read_text())
    return "\n".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"])


CASE_IDS = ["correct", "partial", "syntax", "exception", "loop", "stubborn", "hog", "exit", "chatty", "network",
            "snoop", "tamper", "noparams", "garbage", "escape"]


@pytest.mark.parametrize("ident", CASE_IDS)
def test_status_and_points(synthetic, ident: str):
    _, status, total = synthetic["cases"][ident]
    r = synthetic["results"][ident]
    assert (r.status, r.total, r.max) == (status, total, 6), f"{ident}: {r.status} {r.total}/{r.max}: {r.message}"


def test_batch_outputs(synthetic):
    out, results = synthetic["out"], synthetic["results"]
    assert set(results) == set(synthetic["cases"])
    rows = list(csv.DictReader((out / "grades.csv").open()))
    assert [r["id"] for r in rows] == sorted(results)
    assert list(rows[0])[:5] == ["id", "status", "hidden_add", "hidden_mean", "hidden_profile"]
    assert {"total", "max", "wall_s", "message", "flags"} <= set(rows[0])
    by_id = {r["id"]: r for r in rows}
    assert by_id["partial"]["hidden_add"] == "2" and by_id["partial"]["hidden_mean"] == "0"
    assert by_id["partial"]["total"] == "3" and by_id["partial"]["max"] == "6"
    for ident in results:
        assert (out / ident / "feedback.md").is_file() and (out / ident / "result.json").is_file()
        assert (out / ident / "executed.ipynb").is_file() == (ident != "garbage")
    assert not list(out.rglob("*.tmp")), "no temporary files left behind"


def test_messages_and_feedback(synthetic):
    r, out = synthetic["results"], synthetic["out"]
    assert r["exception"].message.startswith(f"cell {MEAN + 1}") and "ValueError: boom" in r["exception"].message
    assert "SyntaxError" in r["syntax"].message and r["syntax"].first_error["cell"] == ADD
    assert "interrupted" in r["loop"].message and "did not stop" in r["stubborn"].message
    assert r["exit"].message == f"the kernel died while running cell {MEAN + 1} (exit code 1)"
    assert "NotJSONError" in r["garbage"].message or "JSON" in r["garbage"].message
    assert "output-truncated" in r["chatty"].flags
    fb = (out / "syntax" / "feedback.md").read_text()
    assert "**Status: error**, 4 / 6 points" in fb and "## First error" in fb and "SyntaxError" in fb
    assert "| hidden_add | FAILED | 0 / 2 | not run: the hidden test raised NameError" in fb
    assert "| hidden_mean | FAILED | 0 / 3 | mean of floats |" in (out / "partial" / "feedback.md").read_text()


def test_output_truncated(synthetic):
    text = _outputs(synthetic["out"], "chatty")
    assert "output truncated" in text and len(text) < 1.2 * 2**20


def test_executed_notebook_has_no_grader_internals(synthetic):
    nb = json.loads((synthetic["out"] / "correct" / "executed.ipynb").read_text())
    text = json.dumps(nb)
    assert MARK not in text and "_labkit_grader" not in text
    hidden = [c for c in nb["cells"] if "hidden-test" in c["metadata"].get("tags", [])]
    assert len(hidden) == 2 and "[PASS] hidden_mean" in "".join("".join(o.get("text", "")) for o in hidden[1]["outputs"])
    assert len(nb["cells"]) == len(_correct(_instructor()).cells) + 1 + 2  # + injected parameters + hidden


def test_tampering_is_restored_and_flagged(synthetic):
    r = synthetic["results"]["tamper"]
    assert r.points == {"hidden_add": 0.0, "hidden_mean": 3.0, "hidden_profile": 1.0}
    flags = "; ".join(r.flags)
    assert "restored before the hidden tests" in flags and "check" in flags and "builtins.abs" in flags
    assert "review: redefines-check" in flags
    assert not any("restored" in f for f in synthetic["results"]["correct"].flags), "no false alarm"


def test_sandbox_is_bubblewrap_and_memory_is_a_cgroup(synthetic):
    """The machines of this project have bubblewrap and a memory cgroup (see the module's rule)."""
    assert ISO.kind == "bwrap", f"bubblewrap does not work here ({ISO.note}): run bash .ci/ensure-bubblewrap.sh"
    report = synthetic["report"]
    assert report.isolation.allowlist and "allowlist (bubblewrap)" in report.summary()
    if os.getuid() == 0 and any(":memory:" in ln or ln.startswith("0::") for ln in Path("/proc/self/cgroup").read_text().splitlines()):
        assert MEM.mechanism in ("cgroup-v1", "cgroup-v2"), MEM.describe()
    assert report.memory == MEM and "capped at 1024 MB" in report.summary()


def test_network_is_blocked(synthetic):
    assert synthetic["accepted"] == [], "a submission reached a port on the host"
    assert "NET-BLOCKED" in _outputs(synthetic["out"], "network")


def test_no_read_access(synthetic):
    text = _outputs(synthetic["out"], "snoop")
    assert "LEAKED" not in text, text
    assert text.count("DENIED") + text.count("EMPTY") == 5


def test_no_writes_outside_the_work_folder(synthetic):
    assert not [p for p in synthetic["escape"] if Path(p).exists()]
    assert _outputs(synthetic["out"], "escape").count("BLOCKED") == 3


def test_second_run_resumes(synthetic):
    s = synthetic
    (s["subs"] / "garbage.ipynb").write_text("still not JSON")  # a changed file is regraded
    report = G.grade_submissions(s["lab"], s["subs"], s["out"], **s["kw"])
    assert set(report.resumed) == set(s["cases"]) - {"garbage"}
    again = {r.id: r for r in report.results}
    assert {k: (v.status, v.total) for k, v in again.items()} == {k: (v.status, v.total) for k, v in s["results"].items()}
    assert len(list(csv.DictReader((s["out"] / "grades.csv").open()))) == len(s["cases"])


def test_classify_rejects_forged_or_missing_results(synthetic):
    """The parent accepts exactly one results line bearing the nonce, printed by the collect cell."""
    s = synthetic
    ctx = type("Ctx", (), {"lab": load_instructor_lab(s["lab"]), "timeout_cell": 5.0, "timeout_total": 60.0,
                           "memory_mb": 1024, "max_output_bytes": 2**20})()
    payload = {"nonce": "n1", "checks": [{"name": "hidden_add", "passed": True, "points": 2, "detail": ""}],
               "restored": [], "restore_ran": True}

    def run(lines_by_kind):
        cells = []
        for kind, text in lines_by_kind:
            cells.append({"cell_type": "code", "source": "", "execution_count": 1,
                          "metadata": {"labkit_grader": {"kind": kind, "index": 0}},
                          "outputs": [{"output_type": "stream", "name": "stdout", "text": text}]})
        outcome = SandboxOutcome(done={"nb": {"cells": cells}, "hidden_received": True})
        res = G.GradeResult(id="x", status="ok")
        G._classify(ctx, res, outcome, "n1", True)
        return res

    good = f"{MARK} n1 {json.dumps(payload)}\n"
    assert run([("collect", good)]).points["hidden_add"] == 2
    forged_elsewhere = run([("student", good), ("collect", good)])
    assert forged_elsewhere.total == 0 and forged_elsewhere.status == "error"
    assert "tampering: forged grader output" in forged_elsewhere.flags
    assert run([("collect", good + good)]).total == 0
    assert run([("collect", good.replace(" n1 ", " n2 "))]).total == 0
    missing = run([("collect", "nothing\n")])
    assert missing.status == "error" and "missing or forged" in missing.message


def test_guard_restores_tampering_without_a_kernel():
    """The guard/restore/collect code in a plain interpreter (no IPython): what it puts back."""
    from labkit.grading.kernel_code import collect_cell, guard_cell, restore_cell

    results_src = (REPO / "labkit" / "results.py").read_text()
    script = "\n".join([
        guard_cell(token="t0k", results_source=results_src, aliases={"lk": "labkit", "json": "json"}),
        "import builtins, json, sys, types, labkit, labkit.results",
        "lk = labkit",
        "lk.check('visible', True, quiet=True)",
        "fake = lambda *a, **k: True",
        "lk.check = fake; labkit.results.check = fake; builtins.abs = lambda x: 0",
        "json.dumps = lambda *a, **k: 'forged'; sys.modules['labkit'] = types.ModuleType('labkit')",
        restore_cell("t0k"),
        "import labkit as lk2",
        "assert lk2 is labkit and lk2.check is not fake and abs(-2) == 2, 'restored'",
        "lk2.check('hidden_a', 1 + 1 == 2, 'two', points=2)",
        "lk2.check('hidden_b', False, 'no')",
        collect_cell("t0k", "nonce123"),
    ])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(MARK))
    _, nonce, payload = line.split(" ", 2)
    payload = json.loads(payload)
    assert nonce == "nonce123" and payload["nonce"] == "nonce123" and payload["restore_ran"]
    assert [(c["name"], c["passed"], c["points"]) for c in payload["checks"]] == [("hidden_a", True, 2.0),
                                                                                ("hidden_b", False, 1.0)]
    restored = set(payload["restored"])
    assert {"added labkit.check", "labkit.results.check", "builtins.abs", "json.dumps",
            "sys.modules['labkit']"} <= restored, restored


def test_discover_and_validation(tmp_path: Path):
    (tmp_path / "b b.ipynb").write_text("{}")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.ipynb").write_text("{}")
    (tmp_path / "carol").mkdir()
    (tmp_path / "carol" / "99_synthetic.ipynb").write_text("{}")
    (tmp_path / "carol" / "other.ipynb").write_text("{}")
    found = G.discover_submissions(tmp_path, lab_name="99_synthetic")
    assert [(i, p.name) for i, p in found] == [("b_b", "b b.ipynb"), ("carol", "99_synthetic.ipynb")]
    with pytest.raises(ValueError, match="submissions folder"):
        G.discover_submissions(tmp_path / "missing")
    lab = tmp_path / "lab.ipynb"
    nbformat.write(_instructor(), lab)
    for kw, word in [({"jobs": 0}, "jobs"), ({"profile": "huge"}, "profile"), ({"timeout_cell": 0}, "timeout_cell"),
                     ({"memory_mb": 100}, "memory_mb"), ({"parameters": {"WEIGHTS": "x"}}, "WEIGHTS")]:
        with pytest.raises(ValueError, match=word):
            G.grade_submissions(lab, tmp_path, tmp_path / "out", log=None, **kw)
    with pytest.raises(ValueError, match="inside the submissions folder"):
        G.grade_submissions(lab, tmp_path, tmp_path / "out", log=None)


def test_instructor_parsing(tmp_path: Path):
    lab = tmp_path / "lab.ipynb"
    nbformat.write(_instructor(), lab)
    info = load_instructor_lab(lab)
    assert [(c.name, c.points, c.cell) for c in info.checks] == [("hidden_add", 2.0, 0), ("hidden_mean", 3.0, 1),
                                                                 ("hidden_profile", 1.0, 1)]
    assert info.max_points == 6 and not info.dynamic and info.aliases == {"lk": "labkit"}
    assert info.parameters == {"PROFILE": "standard", "DATA": "embedded", "SEED": 0}
    checks, dynamic = declared_checks("for n in names:\n    lk.check(n, True)\nlk.check('a', 1, points=k)")
    assert dynamic and [c.name for c in checks] == ["a"]
    assert import_aliases(["import torch.nn.functional as F\nfrom torch import nn\nimport numpy"]) == \
        {"F": "torch.nn.functional", "nn": "torch.nn", "numpy": "numpy"}
    nb = _instructor()
    nb.cells = [c for c in nb.cells if "hidden-test" not in c.metadata.get("tags", [])]
    nbformat.write(nb, lab)
    with pytest.raises(ValueError, match="hidden-test"):
        load_instructor_lab(lab)


def test_cli_grade_and_student(tmp_path: Path):
    from labkit.cli import main

    lab = tmp_path / "lab" / "99_synthetic.ipynb"
    lab.parent.mkdir()
    nbformat.write(_instructor(), lab)
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "junk.ipynb").write_text("[1, 2")  # no kernel needed: fast
    assert main(["grade", str(lab), str(subs), "--output-dir", str(tmp_path / "out"), "--jobs", "2"]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "grades.csv").open()))
    assert [(r["id"], r["status"], r["total"]) for r in rows] == [("junk", "not-a-notebook", "0")]
    assert main(["grade", str(lab), str(subs), "--output-dir", str(tmp_path / "o2"), "-p", "NOPE=1"]) == 2
    assert main(["student", str(lab), "--output-dir", str(tmp_path / "student")]) == 0
    student = nbformat.read(tmp_path / "student" / lab.name, as_version=4)
    assert "return a + b" not in nbformat.writes(student)


def test_killed_batch_loses_nothing(tmp_path: Path):
    """SIGKILL the grader while a submission runs: what was written stays valid, the sandbox dies."""
    lab = tmp_path / "lab" / "99_synthetic.ipynb"
    lab.parent.mkdir()
    inst = _instructor()
    nbformat.write(inst, lab)
    subs = tmp_path / "subs"
    subs.mkdir()
    nbformat.write(_correct(inst), subs / "a_first.ipynb")
    nbformat.write(_with(_correct(inst), MEAN + 1, "import time\ntime.sleep(600)"), subs / "b_sleeper.ipynb")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-m", "labkit.cli", "grade", str(lab), str(subs), "--output-dir", str(out),
           "--jobs", "1", "--timeout-cell", "300", "--memory-mb", "1024"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "a_first" / "result.json").exists() or not _running_in(tmp):
            assert proc.poll() is None and time.monotonic() < deadline, "the grader did not get to the second submission"
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = json.loads((out / "a_first" / "result.json").read_text())
    assert first["status"] == "ok" and first["total"] == 6
    assert [r["id"] for r in csv.DictReader((out / "grades.csv").open())] == ["a_first"]
    assert not (out / "b_sleeper" / "result.json").exists()
    deadline = time.monotonic() + 30
    while _running_in(tmp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _running_in(tmp), "sandbox processes survived the grader"


def test_without_namespaces(tmp_path: Path):
    """isolation='none' (machines without user namespaces): limits and tamper-resistance still hold."""
    inst = _instructor()
    lab = tmp_path / "lab" / "99_synthetic.ipynb"
    lab.parent.mkdir()
    nbformat.write(inst, lab)
    subs = tmp_path / "subs"
    subs.mkdir()
    ok = _correct(inst)
    nbformat.write(ok, subs / "correct.ipynb")
    nbformat.write(_replace(_with(ok, MEAN + 1, TAMPER), ADD, "return a + b", "return 5"), subs / "tamper.ipynb")
    nbformat.write(_with(ok, MEAN + 1, "while True:\n    pass"), subs / "loop.ipynb")
    report = G.grade_submissions(lab, subs, tmp_path / "out", profile="smoke", timeout_cell=6, timeout_total=60,
                                 memory_mb=1024, jobs=2, isolation="none", executor="threads", log=None)
    assert report.isolation.mode == "none" and "NOT blocked" in report.isolation.describe()
    got = {r.id: (r.status, r.total) for r in report.results}
    assert got == {"correct": ("ok", 6), "tamper": ("failed-checks", 4), "loop": ("timeout", 6)}
    assert all(r.isolation == "none" for r in report.results)


def test_total_time_limit_skips_cells_and_still_grades(tmp_path: Path):
    inst = _instructor()
    lab = tmp_path / "lab" / "99_synthetic.ipynb"
    lab.parent.mkdir()
    nbformat.write(inst, lab)
    subs = tmp_path / "subs"
    subs.mkdir()
    slow = _correct(inst)
    for k in range(3):
        slow = _with(slow, MEAN + 1 + k, f"import time\ntime.sleep(3)\nprint('slept {k}')")
    nbformat.write(slow, subs / "slow.ipynb")
    (r,) = G.grade_submissions(lab, subs, tmp_path / "out", timeout_cell=30, timeout_total=4, memory_mb=1024,
                               log=None).results
    assert (r.status, r.total) == ("timeout", 6), r.message
    assert "total time limit (4 s)" in r.message or "interrupted" in r.message
    executed = nbformat.read(tmp_path / "out" / "slow" / "executed.ipynb", as_version=4)
    skipped = [c for c in executed.cells if "skipped-by-grader" in c.metadata.get("tags", [])]
    assert skipped and all("time.sleep(3)" in c.source for c in skipped)


def test_hard_limit_kills_the_whole_sandbox(tmp_path: Path):
    """run_sandbox kills the sandbox at the hard limit (here before the kernel even answers)."""
    from types import SimpleNamespace

    from labkit.grading.sandbox import allowlist, bwrap_argv, run_sandbox

    inst = tmp_path / "lab.ipynb"
    nbformat.write(_instructor(), inst)
    nb = G._prepare_notebook(_with(_correct(_instructor()), MEAN + 1, "import time\ntime.sleep(600)"), 2, "pass")
    batch = tmp_path / "batch"
    batch.mkdir()
    ctx = SimpleNamespace(batch_root=batch, python=sys.executable, memory_mb=1024, threads=1, env_extra={},
                          lab=load_instructor_lab(inst))
    jobdir, workdir = G._prepare_workdir(ctx, "sleeper", inst)
    job = {"name": "x.ipynb", "workdir": str(workdir), "notebook": nb, "parameters": {"PROFILE": "smoke"},
           "kernel_name": G.KERNEL_NAME, "timeout_cell": 600, "timeout_total": 600, "start_timeout": 60,
           "max_output_bytes": 2**20, "max_output_bytes_grader": 2**20, "driver_memory_bytes": 0,
           "max_file_bytes": 2**20, "workdir_mb": 16, "namespaces": False, "hide_dirs": [str(batch)],
           "hide_files": [], "keep": [sys.prefix], "seed_dir": "/run/labkit-seed"}
    prefix = bwrap_argv(ISO.bwrap, workdir=str(workdir), seed=str(workdir), paths=allowlist(), workdir_mb=16)
    out = run_sandbox(job, lambda: {}, isolation=ISO, env=G._env(ctx, workdir), hard_timeout=8, prefix=prefix)
    assert out.killed and out.done is None and 7 < out.wall_s < 60
    deadline = time.monotonic() + 20
    while _running_in(batch) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _running_in(batch), "processes of the killed sandbox are still running"


def _running_in(folder: Path) -> list[int]:
    """Processes whose working directory lies under ``folder`` (the sandboxes of a batch)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd").startswith(str(folder)):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


# --------------------------------------------------------------------------- lab 00

LAB00 = [p for p in (REPO / "labs").glob("00_*.ipynb")]


@pytest.fixture(scope="module")
def lab00(tmp_path_factory: pytest.TempPathFactory):
    if not LAB00:
        pytest.fail("lab 00 is missing (labs/00_*.ipynb): the grading tests run on it", pytrace=False)
    path = LAB00[0]
    inst = nbformat.read(path, as_version=4)
    root = tmp_path_factory.mktemp("lab00")
    subs = root / "subs"
    subs.mkdir()
    reference = _correct(inst)
    nbformat.write(reference, subs / "reference.ipynb")
    # wrong confusion matrix, then tampering with the checks and with torch.equal
    bad = copy.deepcopy(reference)
    cell = next(c for c in bad.cells if "def confusion(" in c.source)
    cell.source = cell.source.replace("accumulate=True", "accumulate=False")
    cell.source += "\n\nlk.check = lambda *a, **k: True\ntorch.equal = lambda *a, **k: True\n"
    nbformat.write(bad, subs / "tamper.ipynb")
    nbformat.write(make_student_notebook(inst, name=path.stem), subs / "blank.ipynb")
    report = G.grade_submissions(path, subs, root / "out", profile="smoke", jobs=2, timeout_cell=300,
                                 timeout_total=600, log=None)
    return {r.id: r for r in report.results}


def test_lab00_reference_and_tampering(lab00):
    ref, bad = lab00["reference"], lab00["tamper"]
    assert ref.status in ("ok", "failed-checks"), ref.message
    assert ref.points["hidden_confusion_random"] == 2, "the reference solution passes the confusion check"
    assert bad.points["hidden_confusion_random"] == 0, "a wrong confusion matrix cannot pass by patching"
    assert bad.total == ref.total - 2
    assert any("torch.equal" in f for f in bad.flags) and any("check" in f for f in bad.flags)


def test_lab00_student_version_fails_at_the_first_exercise(lab00):
    blank = lab00["blank"]
    assert blank.status == "error" and blank.first_error["ename"] == "NotImplementedError", blank.message
    assert blank.points["hidden_confusion_random"] == 0 and blank.points["hidden_mask_fraction_random"] == 0
