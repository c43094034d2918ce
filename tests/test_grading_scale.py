"""Grading at course scale (issue 15): bubblewrap's allowlist against a hostile submission that
walks the file system for a second copy of the course, the memory cap by cgroup with its import
probe, and grading on a Dask cluster (a scheduler and two workers as separate processes on the
loopback): results identical to a local run, nothing lost or regraded after a killed worker or
scheduler, one clear message per bad set-up.

Same rule as tests/test_grading.py: nothing skips; bubblewrap and a memory cgroup are required
where this project's tests run (root on a mounted memory controller), the fall-backs are forced.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from labkit.grading import grade as G
from labkit.grading import memory as M
from labkit.grading.memory import ConfigurationError, choose_memory_cap
from labkit.grading.sandbox import allowlist, probe_isolation

sys.path.insert(0, str(Path(__file__).parent))
from test_grading import ADD, HOG, HOG_POINTS, MEAN, TAMPER, _correct, _instructor, _outputs, _replace, _with  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ISO = probe_isolation()
MEM = choose_memory_cap(1024)
ROOT_CGROUP = os.getuid() == 0 and any(":memory:" in ln or ln.startswith("0::")
                                       for ln in Path("/proc/self/cgroup").read_text().splitlines())
TOKEN = uuid.uuid4().hex[:12]
MARKER = f"SECRET-{TOKEN}"  # in the hidden tests of the lab and of its second copies

# Walks the whole file system (less /proc, /sys, /dev): any name holding the token, any notebook
# or text holding the marker, and a few places tried by name. Prints the leaks and what it saw.
WALKER = f'''
import os
token = {TOKEN!r}
marker = ("SECRET" + "-" + token).encode()
found, seen, tops = [], 0, sorted(os.listdir("/"))
for dirpath, dirnames, filenames in os.walk({{walk}}):
    if dirpath in ("/proc", "/sys", "/dev"):
        dirnames[:] = []
        continue
    seen += len(filenames)
    found += [os.path.join(dirpath, n) for n in dirnames + filenames if token in n]
    for n in filenames:
        if n.endswith((".ipynb", ".md", ".txt", ".json")) and "site-packages" not in dirpath or token in n:
            try:
                with open(os.path.join(dirpath, n), "rb") as f:
                    if marker in f.read(4_000_000):
                        found.append(os.path.join(dirpath, n))
            except OSError:
                pass
for t in {{places}}:
    try:
        if os.listdir(t) if os.path.isdir(t) else open(t).read():
            found.append(t)
    except OSError:
        pass
print("WALKED", seen, "TOPS", tops)
print("FOUND", sorted(set(found)))
'''


def _lab_with_marker(root: Path, *, torch: bool = False) -> Path:
    inst = _instructor()
    inst.cells[-1].source += f"\n# {MARKER}"
    if torch:
        inst.cells[2].source = "import torch\n" + inst.cells[2].source
    lab = root / "instructor" / ("99_torch.ipynb" if torch else "99_synthetic.ipynb")
    lab.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(inst, lab)
    return lab


def _second_copies(lab: Path) -> list[Path]:
    """Copies of the course (its labs with the hidden tests, a .git) outside the work folder."""
    copies = []
    for base in ("/tmp", "/var/tmp"):
        copy = Path(base, f"labkit-course-copy-{TOKEN}")
        (copy / "labs").mkdir(parents=True, exist_ok=True)
        (copy / ".git").mkdir(exist_ok=True)
        (copy / ".git" / "HEAD").write_text(f"ref: refs/heads/main {MARKER}\n")
        shutil.copy(lab, copy / "labs" / lab.name)
        copies.append(copy)
    return copies


def _walker(ok, places: list[str], walk: str = "/"):
    return _with(ok, MEAN + 1, WALKER.replace("{places}", repr(places)).replace("{walk}", repr(walk)))


def _found(out: Path, ident: str) -> tuple[int, list[str], list[str]]:
    text = _outputs(out, ident)
    walked = next(ln for ln in text.splitlines() if ln.startswith("WALKED"))
    found = next(ln for ln in text.splitlines() if ln.startswith("FOUND"))
    seen = int(walked.split()[1])
    tops = eval(walked.split("TOPS", 1)[1])  # noqa: S307 - our own printout
    return seen, tops, eval(found.split("FOUND", 1)[1])  # noqa: S307


# --------------------------------------------------------------------------- Dask processes

def _start_scheduler(folder: Path) -> tuple[subprocess.Popen, str]:
    sfile = folder / f"scheduler-{uuid.uuid4().hex[:6]}.json"
    proc = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                             "--no-dashboard", "--scheduler-file", str(sfile)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not sfile.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the Dask scheduler did not start"
        time.sleep(0.2)
    time.sleep(0.2)
    return proc, json.loads(sfile.read_text())["address"]


def _start_worker(address: str, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                             "--nworkers", "1", "--memory-limit", "0", "--no-dashboard", "--host", "127.0.0.1",
                             "--name", name, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_workers(address: str, n: int) -> None:
    from distributed import Client

    with Client(address, timeout="20s", set_as_default=False) as c:
        c.wait_for_workers(n, timeout=90)


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("dask")
    sched, address = _start_scheduler(folder)
    workers = [_start_worker(address, f"w{i}") for i in range(2)]
    _wait_workers(address, 2)
    yield {"address": address, "scheduler": sched, "workers": workers}
    _stop(*workers, sched)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, cluster):
    """One folder of submissions, hostile ones included, graded locally (threads) and on the cluster."""
    root = tmp_path_factory.mktemp("hostile")
    lab = _lab_with_marker(root)
    copies = _second_copies(lab)
    ok = _correct(nbformat.read(lab, as_version=4))
    ok.cells = [c for c in ok.cells if "hidden-test" not in c.metadata.get("tags", [])]
    home_file = Path.home() / f"labkit-course-copy-{TOKEN}.txt"
    home_file.write_text(MARKER)
    places = [str(c) for c in copies] + [str(lab), str(REPO / "labs"), str(REPO / ".git"), str(REPO / "README.md"),
                                         str(home_file), "/srv", "/opt", "/var/tmp",
                                         "/home", str(REPO.parent / "shared")]
    subs = root / "subs"
    subs.mkdir()
    cases = {
        "correct": (ok, "ok", 6),
        "partial": (_replace(ok, MEAN, "sum(xs) / len(xs)", "sum(xs) // len(xs)"), "failed-checks", 3),
        "tamper": (_replace(_with(ok, MEAN + 1, TAMPER), ADD, "return a + b", "return 5"), "failed-checks", 4),
        "hog": (_with(ok, MEAN + 1, HOG), "memory", HOG_POINTS),
        "walker": (_walker(ok, places), "ok", 6),
        "network": (_with(ok, MEAN + 1, "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=3)\n"
                                        "    print('NET-OPEN')\nexcept OSError as e:\n    print('NET-BLOCKED')"), "ok", 6),
        "garbage": ("{not a notebook", "not-a-notebook", 0),
    }
    for ident, (nb, _, _) in cases.items():
        if isinstance(nb, str):
            (subs / f"{ident}.ipynb").write_text(nb)
        else:
            nbformat.write(nb, subs / f"{ident}.ipynb")
    kw = dict(profile="smoke", timeout_cell=120, timeout_total=300, memory_mb=1024, log=None)
    t = time.monotonic()
    remote = G.grade_submissions(lab, subs, root / "out-dask", scheduler=cluster["address"], **kw)
    remote_s = time.monotonic() - t
    local = G.grade_submissions(lab, subs, root / "out-local", executor="threads", jobs=2, **kw)
    yield dict(root=root, lab=lab, subs=subs, cases=cases, remote=remote, local=local, places=places, kw=kw,
               remote_s=remote_s, copies=copies)
    for c in copies:
        shutil.rmtree(c, ignore_errors=True)
    home_file.unlink(missing_ok=True)


def _summary(report) -> dict[str, tuple]:
    return {r.id: (r.status, r.total, r.max, tuple(sorted(r.points.items()))) for r in report.results}


def test_cluster_grades_like_a_local_run(hostile):
    h = hostile
    assert _summary(h["remote"]) == _summary(h["local"])
    got = {r.id: (r.status, r.total) for r in h["remote"].results}
    assert got == {k: (status, total) for k, (_, status, total) in h["cases"].items()}
    assert "Dask cluster at tcp://127.0.0.1:" in h["remote"].executor and "2 worker(s)" in h["remote"].executor
    rows = list(csv.DictReader((h["root"] / "out-dask" / "grades.csv").open()))
    assert sorted(r["id"] for r in rows) == sorted(h["cases"])
    for ident in h["cases"]:
        assert (h["root"] / "out-dask" / ident / "feedback.md").is_file()


def test_hostile_walk_finds_no_second_copy_and_no_hidden_test(hostile):
    """The submission walks the whole file system: the copies of the course in /tmp and /var/tmp,
    the repository's labs and .git, the home, /srv, /opt do not exist for it; it sees the Python
    environment (many files) and its own work folder."""
    # the top folders it may see: the system's, and those holding the allowlist's paths (the venv
    # and labkit live wherever the clone is: /work/..., /check/..., /home/...) and its work folder
    visible = {"usr", "bin", "lib", "lib64", "sbin", "etc", "proc", "dev", "run"}
    visible |= {Path(p).parts[1] for p in allowlist()} | {hostile["root"].resolve().parts[1]}
    for report, folder in ((hostile["remote"], "out-dask"), (hostile["local"], "out-local")):
        seen, tops, found = _found(hostile["root"] / folder, "walker")
        assert found == [], found
        assert seen > 5000, f"the walk saw only {seen} files: it did not really walk"
        assert set(tops) <= visible, (tops, visible)
    for copy in hostile["copies"]:
        assert (copy / "labs" / "99_synthetic.ipynb").read_text().count(MARKER) == 1, "the copies were in place"


def test_hostile_network_blocked(hostile):
    assert "NET-BLOCKED" in _outputs(hostile["root"] / "out-dask", "network")


def test_unshare_fallback_is_weaker_and_says_so(hostile):
    """The blocklist sandbox (no bubblewrap) hides /tmp but not /var/tmp: the walker finds the copy
    there. The batch says so in a WARNING line."""
    h = hostile
    subs = h["root"] / "subs-unshare"
    subs.mkdir()
    ok = nbformat.read(h["subs"] / "correct.ipynb", as_version=4)
    nbformat.write(_walker(ok, [str(c) for c in h["copies"]], walk="/var/tmp"), subs / "walker.ipynb")
    lines: list[str] = []
    report = G.grade_submissions(h["lab"], subs, h["root"] / "out-unshare", isolation="unshare", executor="threads",
                                 **{**h["kw"], "log": lines.append})
    assert report.isolation.kind == "unshare" and "WEAKER" in report.isolation.describe()
    assert any(ln.startswith("WARNING: no bubblewrap allowlist") for ln in lines), lines
    _, _, found = _found(h["root"] / "out-unshare", "walker")
    assert str(h["copies"][1]) in found and not any(f.startswith(str(h["copies"][0])) for f in found), found


def test_killed_worker_loses_nothing_and_resume_grades_nothing_twice(hostile, tmp_path: Path):
    """SIGKILL one of two workers (with its nanny) while submissions run: Dask runs its task again on
    the other worker; every submission gets exactly one result; a second run grades nothing."""
    h = hostile
    sched, address = _start_scheduler(tmp_path)
    workers = [_start_worker(address, f"k{i}") for i in range(2)]
    try:
        _wait_workers(address, 2)
        subs = tmp_path / "subs"
        subs.mkdir()
        ok = nbformat.read(h["subs"] / "correct.ipynb", as_version=4)
        for i in range(4):
            nbformat.write(_with(ok, MEAN + 1, f"import time\ntime.sleep(3)\nprint('slow {i}')"), subs / f"slow{i}.ipynb")
        out = tmp_path / "out"
        killed: list[int] = []

        def killer() -> None:
            deadline = time.monotonic() + 240
            while not list(out.glob("*/result.json")) and time.monotonic() < deadline:
                time.sleep(0.2)
            _stop(workers[0])
            killed.append(1)

        th = threading.Thread(target=killer)
        th.start()
        report = G.grade_submissions(h["lab"], subs, out, scheduler=address, **h["kw"])
        th.join()
        assert killed
        assert {r.id: (r.status, r.total) for r in report.results} == {f"slow{i}": ("ok", 6) for i in range(4)}
        again = G.grade_submissions(h["lab"], subs, out, scheduler=address, **h["kw"])
        assert sorted(again.resumed) == [f"slow{i}" for i in range(4)]
    finally:
        _stop(*workers, sched)


def test_killed_scheduler_loses_nothing_and_the_rerun_resumes(hostile, tmp_path: Path):
    """Kill the scheduler while `labkit grade --scheduler` runs: the results written stay valid, the
    command fails; with a new scheduler the same command grades only what was missing."""
    h = hostile
    subs = tmp_path / "subs"
    subs.mkdir()
    ok = nbformat.read(h["subs"] / "correct.ipynb", as_version=4)
    for i in range(3):
        nbformat.write(_with(ok, MEAN + 1, f"import time\ntime.sleep(2)\nprint('slow {i}')"), subs / f"s{i}.ipynb")
    out = tmp_path / "out"

    def cli(address: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "labkit.cli", "grade", str(h["lab"]), str(subs), "--output-dir",
                                 str(out), "--scheduler", address, "--memory-mb", "1024"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    sched, address = _start_scheduler(tmp_path)
    worker = _start_worker(address, "only")
    try:
        _wait_workers(address, 1)
        proc = cli(address)
        deadline = time.monotonic() + 240
        while not list(out.glob("*/result.json")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else ""
            time.sleep(0.2)
        _stop(sched)
        text, _ = proc.communicate(timeout=120)
        assert proc.returncode != 0, text
        first = sorted(p.parent.name for p in out.glob("*/result.json"))
        assert 1 <= len(first) < 3
        assert [r["id"] for r in csv.DictReader((out / "grades.csv").open())] == first
    finally:
        _stop(worker, sched)
    sched, address = _start_scheduler(tmp_path)
    worker = _start_worker(address, "again")
    try:
        _wait_workers(address, 1)
        proc = cli(address)
        text, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, text
        assert f"{len(first)} already graded" in text
        assert sorted(r["id"] for r in csv.DictReader((out / "grades.csv").open())) == ["s0", "s1", "s2"]
    finally:
        _stop(worker, sched)


# --------------------------------------------------------------------------- bad set-ups, one message each

def _no_results(out: Path) -> bool:
    return not list(out.glob("*/result.json"))


def test_unreachable_scheduler(tmp_path: Path):
    lab = _lab_with_marker(tmp_path)
    subs = tmp_path / "subs"
    subs.mkdir()
    nbformat.write(_correct(_instructor()), subs / "a.ipynb")
    with pytest.raises(ConfigurationError, match=r"cannot reach the Dask scheduler at 'tcp://127.0.0.1:9' within 10 s"):
        G.grade_submissions(lab, subs, tmp_path / "out", scheduler="tcp://127.0.0.1:9", log=None)
    assert _no_results(tmp_path / "out")


def test_worker_without_the_project(tmp_path: Path):
    """A worker that cannot import labkit (the project not installed there)."""
    block = tmp_path / "no_labkit.py"
    block.write_text("import sys\nsys.modules['labkit'] = None  # as if labkit were not installed\n")
    sched, address = _start_scheduler(tmp_path)
    worker = _start_worker(address, "bare", "--preload", str(block))
    try:
        _wait_workers(address, 1)
        lab = _lab_with_marker(tmp_path)
        subs = tmp_path / "subs"
        subs.mkdir()
        nbformat.write(_correct(_instructor()), subs / "a.ipynb")
        with pytest.raises(ConfigurationError, match=r"cannot run labkit's grading code .*install the project on every worker"):
            G.grade_submissions(lab, subs, tmp_path / "out", scheduler=address, log=None)
        assert _no_results(tmp_path / "out")
    finally:
        _stop(worker, sched)


def test_cgroup_that_cannot_be_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(M, "_CHOSEN", {})
    monkeypatch.setattr(M, "_cgroup_candidates", lambda: [("cgroup-v1", tmp_path / "no-such-group")])
    monkeypatch.setattr(M, "_try_systemd", lambda mb: "not here")
    with pytest.raises(ConfigurationError, match=r"memory cgroup cannot be created here: cgroup-v1: .*no-such-group does not exist"):
        choose_memory_cap(1024, mode="cgroup")
    cap = choose_memory_cap(1024, mode="auto")  # falls back to the address-space cap, and says why
    assert cap.mechanism == "rlimit" and "no-such-group does not exist" in cap.note
    assert cap.describe().startswith("ADDRESS SPACE capped at 1024 MB (RLIMIT_AS")


def test_allowlist_path_that_does_not_exist(tmp_path: Path):
    lab = _lab_with_marker(tmp_path)
    subs = tmp_path / "subs"
    subs.mkdir()
    missing = str(tmp_path / "data-that-is-not-there")
    with pytest.raises(ValueError, match=f"allow path '{missing}' does not exist"):
        G.grade_submissions(lab, subs, tmp_path / "out", allow=[missing], log=None)
    with pytest.raises(ValueError, match="allow path"):
        allowlist(extra=[missing])
    with pytest.raises(TypeError, match="allow must be a list of paths"):
        G.grade_submissions(lab, subs, tmp_path / "out", allow=missing, log=None)


def test_allowlist_holds_the_environment_and_nothing_of_the_course():
    paths = allowlist()
    assert sys.prefix in paths and str(REPO / "labkit") in paths
    assert not any(p in (str(REPO), "/", "/tmp", "/var", "/srv", "/opt", "/home", str(Path.home())) for p in paths), paths
    assert not any(p.startswith(str(REPO / "labs")) or p.startswith(str(REPO / ".git")) for p in paths)


# --------------------------------------------------------------------------- memory

def test_memory_cgroup_caps_resident_memory():
    """256 MB cap: 64 MB passes (peak between 64 and 256 MB), 512 MB is killed by the OOM killer."""
    assert ROOT_CGROUP, "these tests need root on a mounted memory controller (see the module's rule)"
    cap = choose_memory_cap(256)
    assert cap.mechanism in ("cgroup-v1", "cgroup-v2"), cap.describe()
    for mb, rc, ooms in ((64, 0, 0), (512, -9, 1)):
        slot = cap.open(f"t{mb}")
        try:
            proc = subprocess.run([*slot.prefix, sys.executable, "-c", f"b = bytearray({mb} << 20); print(len(b))"],
                                  capture_output=True, text=True, timeout=60)
            assert (proc.returncode, slot.oom_kills()) == (rc, ooms), proc.stderr[-500:]
            if mb == 64:
                assert 64 <= slot.peak_mb() <= 256
        finally:
            group = slot.group
            slot.close()
        assert not group.exists(), "the group is removed"


def test_import_probe_stops_a_too_small_address_space_cap(tmp_path: Path):
    """torch's CUDA build cannot be imported under RLIMIT_AS = 1024 MB: the batch stops before
    grading, naming the limit. Under a 1024 MB memory cgroup the same lab grades a correct
    submission with full points."""
    lab = _lab_with_marker(tmp_path, torch=True)
    subs = tmp_path / "subs"
    subs.mkdir()
    ok = _correct(nbformat.read(lab, as_version=4))
    nbformat.write(ok, subs / "correct.ipynb")
    with pytest.raises(ConfigurationError, match=r"cannot import labkit, torch under the memory cap --memory-mb 1024 "
                                                 r"\(ADDRESS SPACE capped at 1024 MB \(RLIMIT_AS.*no submission was graded"):
        G.grade_submissions(lab, subs, tmp_path / "out", memory_mb=1024, memory_cap="rlimit", executor="threads", log=None)
    assert _no_results(tmp_path / "out")
    assert ROOT_CGROUP, "these tests need root on a mounted memory controller (see the module's rule)"
    report = G.grade_submissions(lab, subs, tmp_path / "out2", memory_mb=1024, memory_cap="cgroup", executor="threads",
                                 timeout_cell=120, log=None)
    assert [(r.id, r.status, r.total) for r in report.results] == [("correct", "ok", 6)]
    assert report.memory.mechanism in ("cgroup-v1", "cgroup-v2")


def test_cli_reports_a_configuration_error(tmp_path: Path, capsys: pytest.CaptureFixture):
    from labkit.cli import main

    lab = _lab_with_marker(tmp_path, torch=True)
    subs = tmp_path / "subs"
    subs.mkdir()
    nbformat.write(_correct(nbformat.read(lab, as_version=4)), subs / "a.ipynb")
    rc = main(["grade", str(lab), str(subs), "--output-dir", str(tmp_path / "out"), "--memory-mb", "1024",
               "--memory-cap", "rlimit", "--executor", "threads"])
    err = capsys.readouterr().err
    assert rc == 2 and "labkit grade: configuration error" in err and "--memory-mb 1024" in err, err
