"""The grading sandbox: run one submission with papermill, isolated as far as the system allows.

Used by ``labkit grade``. The parent (``grade.py``) starts ``python -m labkit.grading.sandbox
driver JOB_FD MSG_FD`` in a new session, under ``unshare`` when user namespaces work:

- ``unshare --user --map-root-user --net --mount --pid --fork --kill-child --mount-proc``: no
  network (a fresh network namespace with only its own loopback), a private mount table and a
  private ``/proc`` (the kernel sees no process outside the sandbox), and when the driver dies
  every process of the sandbox dies with it (end of the PID namespace).
- In the mount namespace the driver covers with empty tmpfs the instructor notebooks, the
  submissions folder, the output folder, the repository's ``.git``/``labs``/``_build``, the
  system temp folder (other submissions' work folders) and the user's home, binds the work
  folder back, then remounts *every* mount read-only except the work folder: the submission can
  write only there.
- The kernel is started through a small launcher that sets ``RLIMIT_AS`` (the memory cap) and
  ``RLIMIT_CORE=0`` and then execs ``ipykernel``; the driver itself has a looser cap.

Where ``unshare`` fails (no user namespaces), the driver runs without those namespaces: time
and memory limits, the scrubbed environment, process-group clean-up and the tamper-resistant
hidden tests still hold; network, file-system and process isolation do not, and the grader says
so. The hidden tests and the nonce reach the driver only after the submission's cells have
run (it asks for them over a private pipe), so they exist in no file the submission can read.

Preferred over all of the above where it works: **bubblewrap** (``bwrap``, Debian's
``bubblewrap``, Flatpak's sandbox), an allowlist. The sandbox's file system is built from
nothing: the Python environment, the labkit package, the lab's data and a few system folders
(:func:`allowlist`), all read-only, plus the submission's work folder (a size-capped tmpfs
seeded from the grader's copy); no other path of the machine exists inside. New user, network,
PID, IPC, UTS and cgroup namespaces, all capabilities dropped, its own session, and
``--die-with-parent``. See :func:`bwrap_argv`.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["ISOLATION_MODES", "Isolation", "SandboxOutcome", "allowlist", "bwrap_argv", "probe_isolation",
           "run_sandbox", "kernel_argv", "main"]

ISOLATION_MODES = ("auto", "bwrap", "namespaces", "unshare", "none")

UNSHARE_VARIANTS = (
    ("--user", "--map-root-user", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"),
    ("--user", "--map-root-user", "--net", "--mount"),
)
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND = 32, 1024, 2048, 4096
_MS_REC, _MS_PRIVATE, _MS_RELATIME, _MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24


# --------------------------------------------------------------------------- parent side

@dataclass(frozen=True)
class Isolation:
    """What the sandbox enforces on this machine (found by :func:`probe_isolation`).

    ``kind``: ``"bwrap"`` (allowlist: only the listed paths exist inside), ``"unshare"`` (a
    blocklist: the instructor's files are hidden, the rest of the file system is readable) or
    ``"none"``. ``prefix`` is the ``unshare`` command (empty for bwrap, whose command is built per
    submission by :func:`bwrap_argv`).
    """

    prefix: tuple[str, ...] = ()
    network: bool = False
    filesystem: bool = False
    processes: bool = False
    note: str = ""
    kind: str = ""
    bwrap: str = ""

    @property
    def mode(self) -> str:
        if self.kind == "bwrap":
            return "bwrap"
        return "namespaces" if self.prefix else "none"

    @property
    def allowlist(self) -> bool:
        return self.kind == "bwrap"

    def describe(self) -> str:
        if self.allowlist:
            fs = ("file system: an allowlist (bubblewrap): the Python environment, labkit and the lab's data "
                  "read-only and the submission's own work folder; no other path exists")
        elif self.filesystem:
            fs = ("file system read-only outside the work folder, instructor files hidden by a BLOCKLIST: "
                  "WEAKER isolation, other copies of the course on this machine stay readable (install "
                  "bubblewrap: apt-get install bubblewrap)")
        else:
            fs = "file system NOT isolated"
        parts = [f"network {'blocked' if self.network else 'NOT blocked'}", fs,
                 f"processes {'in a private PID namespace' if self.processes else 'in a process group only'}"]
        return "; ".join(parts) + (f" ({self.note})" if self.note else "")


_PROBE_CACHE: dict[tuple[str, str], Isolation] = {}

# System folders a Python kernel needs (read-only). /usr/local, /usr/src, /opt, /srv, /home, /root,
# /tmp, /var are not among them: the Python environment is added by its own paths.
SYSTEM_PATHS = ("/usr/bin", "/usr/lib", "/usr/lib64", "/usr/libexec", "/usr/share/fonts", "/usr/share/zoneinfo",
                "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/fonts", "/etc/localtime",
                "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts")


def allowlist(*, extra: tuple[str, ...] | list[str] = (), python: str | None = None) -> list[str]:
    """The paths a submission sees read-only under bubblewrap: :data:`SYSTEM_PATHS`, the Python
    environment (the venv, the base interpreter's ``bin`` and ``lib``), the labkit package, the
    lab's data root when it exists, and ``extra`` (each must exist: ``ValueError`` otherwise)."""
    for p in extra:
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"allow paths must be strings, got {p!r}")
        if not Path(p).exists():
            raise ValueError(f"allow path {str(p)!r} does not exist; give an existing file or folder "
                             "(--allow PATH) or drop it")
    import labkit

    paths = [p for p in SYSTEM_PATHS if os.path.lexists(p)]
    prefixes = {sys.prefix, sys.exec_prefix}
    for base in {sys.base_prefix, sys.base_exec_prefix}:
        prefixes.update(str(Path(base, sub)) for sub in ("bin", "lib", "lib64"))
    exe = Path(python or sys.executable)
    prefixes.update({str(exe.parent), str(exe.resolve().parent.parent / "lib")})
    prefixes.add(str(Path(labkit.__file__).resolve().parent))
    try:
        from ..storage import data_root

        root = data_root()
        if root.is_dir():
            prefixes.add(str(root))
    except Exception:  # noqa: BLE001 - no data root: the embedded data needs none
        pass
    prefixes.update(str(Path(p).resolve()) for p in extra)
    kept: list[str] = []  # parents before children, nested paths dropped
    for p in sorted(set(paths) | {p for p in prefixes if os.path.exists(p)}, key=lambda q: (q.count("/"), q)):
        if not any(_within(p, k) for k in kept):
            kept.append(p)
    return kept


def bwrap_argv(bwrap: str, *, workdir: str, seed: str, paths: list[str], workdir_mb: int = 0) -> list[str]:
    """The ``bwrap`` command for one submission: ``paths`` read-only, an empty tmpfs at ``workdir``
    (capped at ``workdir_mb`` MB; the driver copies ``seed`` into it) and nothing else."""
    argv = [bwrap, "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL",
            "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    for link, target in (("/bin", "usr/bin"), ("/lib", "usr/lib"), ("/lib64", "usr/lib64"), ("/sbin", "usr/sbin")):
        if os.path.islink(link) and os.readlink(link).lstrip("/") == target:
            argv += ["--symlink", target, link]
        elif os.path.isdir(link) and link != "/sbin":
            argv += ["--ro-bind", link, link]
    for p in paths:
        argv += ["--ro-bind", p, p]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(64 * 2**20), "--tmpfs", "/dev/shm",
             "--size", str(2**20), "--tmpfs", "/tmp"]
    nvidia = sorted(str(p) for p in Path("/dev").glob("nvidia*"))
    if nvidia:  # GPU grading: the devices and the sysfs CUDA reads (untested on this course's CI)
        for d in nvidia:
            argv += ["--dev-bind", d, d]
        argv += ["--ro-bind-try", "/sys", "/sys"]
    argv += ["--ro-bind", seed, "/run/labkit-seed"]
    if workdir_mb > 0:
        argv += ["--size", str(int(workdir_mb) * 2**20)]
    argv += ["--perms", "0700", "--tmpfs", workdir, "--remount-ro", "/tmp", "--remount-ro", "/", "--chdir",
             workdir]
    return argv


def probe_isolation(python: str | None = None, *, mode: str = "auto") -> Isolation:
    """Find the strongest sandbox that works here by running a tiny probe in it (cached).

    ``mode="auto"``: bubblewrap (allowlist), else ``unshare`` (blocklist, said loudly), else
    none. ``"bwrap"`` and ``"namespaces"`` raise ``RuntimeError`` when bubblewrap / any namespace
    sandbox does not work; ``"unshare"`` uses the blocklist sandbox even where bubblewrap works
    (and fails without it); ``"none"`` skips the probe.
    """
    if mode not in ISOLATION_MODES:
        raise ValueError(f"isolation mode must be one of {ISOLATION_MODES}, got {mode!r}")
    python = python or sys.executable
    if mode == "none":
        return Isolation(note="namespaces switched off (isolation='none')", kind="none")
    key = (python, mode)
    if key in _PROBE_CACHE:
        return _PROBE_CACHE[key]
    import shutil

    bw_reason = ""
    bwrap = shutil.which("bwrap")
    if mode == "unshare":
        bw_reason = "isolation='unshare' asked for"
    elif bwrap is None:
        bw_reason = "bubblewrap is not installed (apt-get install bubblewrap)"
    else:
        bw_reason = _probe_bwrap(bwrap, python)
        if not bw_reason:
            result = Isolation(network=True, filesystem=True, processes=True, kind="bwrap", bwrap=bwrap)
            _PROBE_CACHE[key] = result
            return result
    if mode == "bwrap":
        raise RuntimeError(f"isolation='bwrap' asked for, but bubblewrap does not work here: {bw_reason}")
    result = _probe_unshare(python, mode)
    if result.prefix:
        result = Isolation(prefix=result.prefix, network=True, filesystem=True, processes=result.processes,
                           kind="unshare", note="; ".join(x for x in (f"no allowlist: {bw_reason}", result.note) if x))
    _PROBE_CACHE[key] = result
    return result


def _probe_bwrap(bwrap: str, python: str) -> str:
    """'' when bubblewrap runs a sandbox with the allowlist here, else why not."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="labkit-probe-") as tmp:
        seed, secret = Path(tmp, "seed"), Path(tmp, "secret")
        seed.mkdir()
        secret.mkdir()
        (seed / "in.txt").write_text("in")
        (secret / "s.txt").write_text("s")
        work = str(Path(tmp, "work"))
        try:
            argv = bwrap_argv(bwrap, workdir=work, seed=str(seed), paths=allowlist(python=python), workdir_mb=4)
            proc = subprocess.run([*argv, python, "-m", "labkit.grading.sandbox", "probe-allowlist", work, str(secret)],
                                  capture_output=True, text=True, timeout=60, start_new_session=True,
                                  env=_probe_env())
        except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        report = json.loads(lines[-1]) if lines else {}
        if proc.returncode == 0 and report.get("ok"):
            return ""
        err = (proc.stderr.strip().splitlines() or [""])[-1]
        return f"bwrap: {report.get('error') or err or 'rc=' + str(proc.returncode)}"


def _probe_unshare(python: str, mode: str) -> Isolation:
    import shutil
    import tempfile

    unshare = shutil.which("unshare")
    reasons = []
    result = None
    if unshare is None:
        reasons.append("the unshare command is not installed (util-linux)")
    else:
        with tempfile.TemporaryDirectory(prefix="labkit-probe-") as tmp:
            work = Path(tmp, "work")
            secret = Path(tmp, "secret")
            work.mkdir()
            secret.mkdir()
            (secret / "s.txt").write_text("s")
            for variant in UNSHARE_VARIANTS:
                cmd = [unshare, *variant, python, "-m", "labkit.grading.sandbox", "probe", str(work), str(secret)]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                                          start_new_session=True, env=_probe_env())
                except (OSError, subprocess.TimeoutExpired) as exc:
                    reasons.append(f"{' '.join(variant)}: {exc}")
                    continue
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                report = json.loads(lines[-1]) if lines else {}
                if proc.returncode == 0 and report.get("ok"):
                    result = Isolation(prefix=(unshare, *variant), network=True, filesystem=True,
                                       processes="--pid" in variant)
                    break
                err = (proc.stderr.strip().splitlines() or [""])[-1]
                reasons.append(f"{' '.join(variant)}: {report.get('error') or err or 'rc=' + str(proc.returncode)}")
    if result is None:
        if mode in ("namespaces", "unshare"):
            raise RuntimeError(f"isolation={mode!r} asked for, but user namespaces do not work here: " + "; ".join(reasons))
        return Isolation(note="unshare failed: " + "; ".join(reasons)[:500], kind="none")
    if reasons:
        return Isolation(prefix=result.prefix, network=True, filesystem=True, processes=result.processes,
                         note="no PID namespace: " + "; ".join(reasons)[:300])
    return result


def _probe_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "HOME", "PYTHONPATH", "VIRTUAL_ENV")}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def kernel_argv(python: str, memory_bytes: int) -> list[str]:
    """The kernelspec argv: set the memory cap, then exec ``ipykernel_launcher``."""
    snippet = ("import os, resource, sys\n"
               "m = int(sys.argv[1])\n"
               "if m > 0:\n"
               "    resource.setrlimit(resource.RLIMIT_AS, (m, m))\n"
               "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
               "os.execv(sys.executable, [sys.executable, '-m', 'ipykernel_launcher', *sys.argv[2:]])\n")
    return [python, "-c", snippet, str(int(memory_bytes)), "-f", "{connection_file}"]


@dataclass
class SandboxOutcome:
    """What came back from one sandboxed run."""

    done: dict[str, Any] | None = None  # the driver's final report (None: it never sent one)
    killed: bool = False  # hit the hard time limit (or was stopped) and was killed
    stopped: bool = False  # the batch was interrupted
    returncode: int | None = None
    log_tail: str = ""
    wall_s: float = 0.0
    isolation: dict[str, Any] = field(default_factory=dict)
    protocol_error: str = ""
    oom_kills: int = 0  # processes of the sandbox the memory cgroup's OOM killer ended


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _on_event(msg: dict[str, Any], out: SandboxOutcome, kernel_pgids: set[int], job_file: Any,
              hidden: Callable[[], dict[str, Any]]) -> None:
    """Act on one message of the driver: note the kernel's process group or the isolation report,
    send the hidden tests when asked, keep the final report."""
    event = msg.get("event")
    if event == "kernel" and isinstance(msg.get("pgid"), int):
        kernel_pgids.add(msg["pgid"])
    elif event == "isolation":
        out.isolation = msg
    elif event == "need-hidden":
        try:
            _write_all(job_file, (json.dumps(hidden()) + "\n").encode())
        except OSError:
            pass
    elif event == "done":
        out.done = msg


def _on_messages(buf: bytearray, out: SandboxOutcome, kernel_pgids: set[int], job_file: Any,
                 hidden: Callable[[], dict[str, Any]]) -> bytearray:
    """Handle every complete line of ``buf`` as a JSON message of the driver; returns the rest."""
    while b"\n" in buf:
        line, _, rest = bytes(buf).partition(b"\n")
        buf = bytearray(rest)
        try:
            msg = json.loads(line)
        except ValueError:
            out.protocol_error = "unreadable message from the driver"
            continue
        _on_event(msg, out, kernel_pgids, job_file, hidden)
    return buf


def _relay(proc: subprocess.Popen, msg_r: int, job_file: Any, hidden: Callable[[], dict[str, Any]],
           out: SandboxOutcome, kernel_pgids: set[int], tail: bytearray, *, deadline: float, stop: Any,
           tail_bytes: int) -> None:
    """Read the driver's log (its last ``tail_bytes`` kept in ``tail``) and messages until it is done,
    ``deadline`` passes or ``stop`` is set (then ``out.killed``, and ``out.stopped`` for ``stop``)."""
    buf = bytearray()
    streams = {proc.stdout.fileno(): "log", msg_r: "msg"}
    while streams:
        left = deadline - time.monotonic()
        if left <= 0 or (stop is not None and stop.is_set()):
            out.killed = True
            out.stopped = stop is not None and stop.is_set()
            return
        ready, _, _ = select.select(list(streams), [], [], min(left, 1.0))
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                streams.pop(fd)
                continue
            if streams[fd] == "log":
                tail += chunk
                if len(tail) > tail_bytes:
                    del tail[:len(tail) - tail_bytes]
                continue
            buf += chunk
            buf = _on_messages(buf, out, kernel_pgids, job_file, hidden)
        if proc.poll() is not None and msg_r not in streams:
            return


def _end_sandbox(proc: subprocess.Popen, kernel_pgids: set[int], isolation: Isolation, job_file: Any,
                 msg_r: int) -> None:
    """Kill the driver's process group and the kernels' groups, reap the driver, close the pipes."""
    _kill_group(proc.pid)
    for pg in kernel_pgids:
        if pg > 1 and not isolation.processes:
            _kill_group(pg)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    for f in (job_file, proc.stdout):
        try:
            f.close()
        except OSError:
            pass
    os.close(msg_r)


def run_sandbox(job: dict[str, Any], hidden: Callable[[], dict[str, Any]], *, isolation: Isolation,
                env: dict[str, str], hard_timeout: float, python: str | None = None,
                tail_bytes: int = 20000, stop: Any = None, prefix: list[str] | None = None) -> SandboxOutcome:
    """Run the driver on ``job``; ``hidden()`` gives the hidden-test payload when the driver asks.

    Kills the whole sandbox (process group, PID namespace, the kernel's group) when
    ``hard_timeout`` seconds have passed or ``stop`` (a ``threading.Event``) is set, and in
    every case before returning. ``prefix`` replaces ``isolation.prefix`` (the bwrap command,
    the memory cgroup's wrapper).
    """
    python = python or sys.executable
    job_r, job_w = os.pipe()
    msg_r, msg_w = os.pipe()
    cmd = [*(isolation.prefix if prefix is None else prefix), python, "-m", "labkit.grading.sandbox", "driver",
           str(job_r), str(msg_w)]
    out = SandboxOutcome()
    start = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, cwd=job["workdir"], pass_fds=(job_r, msg_w), start_new_session=True)
    except OSError as exc:
        for fd in (job_r, job_w, msg_r, msg_w):
            os.close(fd)
        out.protocol_error = f"could not start the sandbox: {exc}"
        return out
    os.close(job_r)
    os.close(msg_w)
    kernel_pgids: set[int] = set()
    tail = bytearray()
    job_file = os.fdopen(job_w, "wb", buffering=0)
    try:
        _write_all(job_file, (json.dumps(job) + "\n").encode())
        deadline = start + hard_timeout
        _relay(proc, msg_r, job_file, hidden, out, kernel_pgids, tail, deadline=deadline, stop=stop,
               tail_bytes=tail_bytes)
        if not out.killed:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                out.killed = True
    finally:
        _end_sandbox(proc, kernel_pgids, isolation, job_file, msg_r)
    out.returncode = proc.returncode
    out.log_tail = tail.decode("utf-8", "replace")
    out.wall_s = time.monotonic() - start
    return out


def _write_all(f: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = f.write(view)
        view = view[n:]


# --------------------------------------------------------------------------- inside the sandbox

def _libc_mount():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

    def mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        enc = (lambda s: s.encode() if s is not None else None)
        if libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount {src} on {target}: {os.strerror(err)}")

    return mount


def _loopback_up() -> None:
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sh14x", fcntl.ioctl(s, 0x8913, struct.pack("16sh14x", b"lo", 0)))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sh14x", b"lo", flags | 1))


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _within(path: str, folder: str) -> bool:
    path, folder = os.path.normpath(path), os.path.normpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _isolate_files(workdir: str, hide_dirs: list[str], hide_files: list[str], keep: list[str],
                   workdir_mb: int = 0) -> list[str]:
    """Hide folders/files, give the work folder back (a size-capped tmpfs holding a copy of it when
    ``workdir_mb`` > 0, else a bind mount), make every other mount read-only; returns notes."""
    mount = _libc_mount()
    notes = []
    mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    wfd = os.open(workdir, os.O_PATH | os.O_DIRECTORY)
    covered: list[str] = []
    for d in sorted({os.path.normpath(p) for p in hide_dirs}, key=lambda p: (p.count("/"), p)):
        if any(_within(d, c) for c in covered) or not os.path.isdir(d) or d == "/":
            continue
        if any(_within(k, d) for k in keep):
            notes.append(f"not hidden (holds the Python environment): {d}")
            continue
        mount("tmpfs", d, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=64k,mode=0755")
        covered.append(d)
    os.makedirs(workdir, exist_ok=True)
    if workdir_mb > 0:  # RAM-backed and capped: a submission cannot fill the grader's disk
        import shutil

        mount("tmpfs", workdir, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={int(workdir_mb)}m,mode=0700")
        shutil.copytree(f"/proc/self/fd/{wfd}", workdir, symlinks=True, dirs_exist_ok=True)
    else:
        mount(f"/proc/self/fd/{wfd}", workdir, None, _MS_BIND)
    os.close(wfd)
    for f in hide_files:
        if os.path.isfile(f) and not any(_within(f, c) for c in covered):
            mount("/dev/null", f, None, _MS_BIND)
    if os.path.isdir("/dev/shm"):
        try:
            mount("tmpfs", "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, "size=64m,mode=1777")
        except OSError as exc:
            notes.append(f"/dev/shm kept: {exc.strerror}")
    keep_rw = {os.path.normpath(workdir), "/dev/shm"}
    with open("/proc/self/mountinfo") as fh:
        mounts = [ln.split() for ln in fh]
    for parts in mounts:
        target = _unescape(parts[4])
        opts = parts[5].split(",")
        if target in keep_rw or "ro" in opts:
            continue
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
        for name, bit in (("nosuid", _MS_NOSUID), ("nodev", _MS_NODEV), ("noexec", _MS_NOEXEC),
                          ("noatime", _MS_NOATIME), ("nodiratime", _MS_NODIRATIME), ("relatime", _MS_RELATIME)):
            if name in opts:
                flags |= bit
        try:
            mount(None, target, None, flags)
        except OSError as exc:
            notes.append(f"could not make {target} read-only: {exc.strerror}")
    return notes


def _probe(work: str, secret: str) -> int:
    """Check, inside ``unshare``, that the mounts and the loopback can be set up as graders need."""
    report: dict[str, Any] = {"ok": False}
    try:
        _loopback_up()
        Path(work, "in.txt").write_text("in")
        notes = _isolate_files(work, [secret, os.path.dirname(work)], [], keep=[sys.prefix], workdir_mb=4)
        if Path(work, "in.txt").read_text() != "in":
            raise RuntimeError("the work folder was not copied")
        Path(work, "w.txt").write_text("w")
        try:
            Path(secret, "s.txt").read_text()
            raise RuntimeError("a hidden folder is still readable")
        except FileNotFoundError:
            pass
        try:
            Path(os.path.dirname(work), "x.txt").write_text("x")
            raise RuntimeError("could write outside the work folder")
        except OSError:
            pass
        report.update(ok=True, notes=notes)
    except Exception as exc:  # report why; the parent falls back
        report["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


def _probe_allowlist(work: str, secret: str) -> int:
    """Inside bubblewrap: the work folder is seeded and writable, nothing else is, the secret
    folder (outside the allowlist) does not exist, no network."""
    import shutil
    import socket

    report: dict[str, Any] = {"ok": False}
    try:
        shutil.copytree("/run/labkit-seed", work, dirs_exist_ok=True)
        if Path(work, "in.txt").read_text() != "in":
            raise RuntimeError("the work folder was not seeded")
        Path(work, "w.txt").write_text("w")
        if os.path.exists(secret):
            raise RuntimeError("a path outside the allowlist exists in the sandbox")
        for target in ("/tmp/x.txt", "/x.txt", os.path.join(sys.prefix, "x.txt")):
            try:
                Path(target).write_text("x")
                raise RuntimeError(f"could write {target}")
            except OSError:
                pass
        with socket.socket() as s:
            s.settimeout(2)
            try:
                s.connect(("1.1.1.1", 53))
                raise RuntimeError("the network is reachable")
            except OSError:
                pass
        report.update(ok=True)
    except Exception as exc:  # report why; the parent falls back
        report["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


class _Driver:
    """Runs the submission with papermill and reports back over the message pipe."""

    def __init__(self, job_fd: int, msg_fd: int):
        self.job = os.fdopen(job_fd, "rb", buffering=0)
        self.msg = os.fdopen(msg_fd, "wb", buffering=0)
        self.timeouts: list[int] = []
        self.skipped: list[int] = []
        self.truncated = False
        self.out_bytes = {"student": 0, "grader": 0}
        self.truncated_cells: set[int] = set()
        self.kernel_proc: Any = None
        self.hidden_received = False
        self.client: Any = None
        self.current: int | None = None

    def send(self, **msg: Any) -> None:
        if os.environ.get("LABKIT_GRADER_DEBUG"):
            print(f"[driver {time.monotonic() - _T0:.2f}s] {msg.get('event')}", file=sys.stderr, flush=True)
        data = (json.dumps(msg) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[self.msg.write(view):]

    def read_line(self) -> dict[str, Any]:
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = self.job.read(1 << 16)
            if not chunk:
                break
            buf += chunk
        return json.loads(bytes(buf))

    def run(self) -> int:
        import resource

        job = self.read_line()
        self.spec = job
        self._watch_parent()
        for fd in (self.job.fileno(), self.msg.fileno()):
            os.set_inheritable(fd, False)
        cap = int(job.get("driver_memory_bytes") or 0)
        if cap > 0:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        fsize = int(job.get("max_file_bytes") or 0)
        if fsize > 0:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        notes: list[str] = []
        if job.get("namespaces"):
            try:
                _loopback_up()
                notes = _isolate_files(job["workdir"], job.get("hide_dirs", []), job.get("hide_files", []),
                                       keep=job.get("keep", []), workdir_mb=int(job.get("workdir_mb") or 0))
            except Exception as exc:
                self.send(event="done", fatal=f"sandbox set-up failed: {type(exc).__name__}: {exc}")
                return 3
        if job.get("seed_dir"):  # bubblewrap: the work folder is an empty tmpfs, filled from the seed
            import shutil

            try:
                shutil.copytree(job["seed_dir"], job["workdir"], symlinks=True, dirs_exist_ok=True)
            except Exception as exc:
                self.send(event="done", fatal=f"sandbox set-up failed: {type(exc).__name__}: {exc}")
                return 3
        self.send(event="isolation", namespaces=bool(job.get("namespaces")), notes=notes)
        os.chdir(job["workdir"])
        try:
            self.execute()
        except BaseException as exc:  # noqa: BLE001 - report anything, the parent classifies it
            self.send(event="done", fatal=f"{type(exc).__name__}: {exc}")
            return 4
        return 0

    def _watch_parent(self) -> None:
        """Exit at once when the grader dies (its end of the message pipe closes): as PID 1 of
        the sandbox's PID namespace, the driver takes every sandboxed process with it."""
        import threading

        def watch() -> None:
            poller = select.poll()
            poller.register(self.msg.fileno(), select.POLLERR | select.POLLHUP)
            while True:
                if poller.poll():
                    os._exit(6)

        threading.Thread(target=watch, daemon=True, name="labkit-grader-watchdog").start()

    # -- papermill hooks
    def _kind(self, cell_index: int) -> str:
        try:
            return self.nb.cells[cell_index].metadata.get("labkit_grader", {}).get("kind", "student")
        except (IndexError, AttributeError):
            return "student"

    def on_cell_start(self, cell: Any, cell_index: int, **_: Any) -> None:
        self.current = cell_index
        kind = cell.metadata.get("labkit_grader", {}).get("kind", "student")
        if kind == "restore" and not self.hidden_received:
            self.send(event="need-hidden")
            payload = self.read_line()
            self.hidden_received = True
            grader_cells = [c for c in self.nb.cells if c.metadata.get("labkit_grader", {}).get("kind") == "hidden"]
            if len(payload["hidden"]) != len(grader_cells):
                raise RuntimeError("hidden-test payload does not match the placeholders")
            cell.source = payload["restore"]
            for c, src in zip(grader_cells, payload["hidden"]):
                c.source = src
            for c in self.nb.cells:
                if c.metadata.get("labkit_grader", {}).get("kind") == "collect":
                    c.source = payload["collect"]
        if kind in ("student", "parameters") and cell.cell_type == "code" and cell.source.strip() \
                and time.monotonic() > self.student_deadline:
            cell.metadata.setdefault("labkit_grader", {})["skipped_source"] = cell.source
            cell.source = ""
            self.skipped.append(cell_index)

    def timeout_func(self, cell: Any) -> int:
        kind = cell.metadata.get("labkit_grader", {}).get("kind", "student")
        per_cell = int(self.spec["timeout_cell"])
        if kind in ("student", "parameters", "guard"):
            left = int(self.student_deadline - time.monotonic()) + 1
            return max(1, min(per_cell, left))
        return per_cell

    def _patch_client(self) -> None:
        """Hook nbclient's ``NotebookClient``: cap each bucket's output, note the cells interrupted at
        their time limit, report the kernel's process group to the grader."""
        import nbformat
        from nbclient import NotebookClient

        job = self.spec
        driver = self
        orig_output = NotebookClient.output
        orig_timeout = NotebookClient._async_handle_timeout
        orig_client = NotebookClient.start_new_kernel_client

        def output(client: Any, outs: list, msg: dict, display_id: Any, cell_index: int) -> Any:
            kind = driver._kind(cell_index)
            bucket = "student" if kind in ("student", "parameters", "guard") else "grader"
            limit = int(job["max_output_bytes"]) if bucket == "student" else int(job["max_output_bytes_grader"])
            content = msg.get("content", {})
            size = len(content.get("text", "")) + sum(len(str(v)) for v in content.get("data", {}).values()) \
                + sum(len(t) for t in content.get("traceback", []))
            if kind != "collect" and driver.out_bytes[bucket] + size > limit:
                driver.truncated = driver.truncated or bucket == "student"
                if cell_index not in driver.truncated_cells:
                    driver.truncated_cells.add(cell_index)
                    note = nbformat.v4.new_output("stream", name="stderr",
                                                  text=f"\n[labkit grader: output truncated, more than {limit} bytes]\n")
                    outs.append(note)
                return None
            driver.out_bytes[bucket] += size
            return orig_output(client, outs, msg, display_id, cell_index)

        async def handle_timeout(client: Any, timeout: int, cell: Any = None) -> Any:
            for i, c in enumerate(client.nb.cells):
                if c is cell:
                    driver.timeouts.append(i)
            return await orig_timeout(client, timeout, cell)

        def start_client(client: Any) -> Any:
            driver.client = client
            kc = orig_client(client)
            proc = getattr(getattr(client.km, "provisioner", None), "process", None)
            if proc is not None:
                driver.kernel_proc = proc
                try:
                    driver.send(event="kernel", pid=proc.pid, pgid=os.getpgid(proc.pid))
                except OSError:
                    pass
            return kc

        NotebookClient.output = output
        NotebookClient._async_handle_timeout = handle_timeout
        NotebookClient.start_new_kernel_client = start_client

    def _parameterize(self, nb: Any) -> Any:
        """Inject the job's parameters with papermill; the injected cell is tagged as the grader's."""
        from papermill.parameterize import parameterize_notebook

        job = self.spec
        nb.metadata["papermill"] = {"default_parameters": {}, "parameters": {}, "environment_variables": {},
                                    "version": "labkit-grader"}
        for c in nb.cells:
            c.metadata.setdefault("tags", [])
            c.metadata.setdefault("papermill", {})
        nb = parameterize_notebook(nb, job["parameters"], kernel_name=job["kernel_name"], language="python")
        for c in nb.cells:
            if "injected-parameters" in c.metadata.get("tags", []):
                c.metadata["labkit_grader"] = {"kind": "parameters"}
        return nb

    def _run_papermill(self, nb: Any) -> dict[str, Any] | None:
        """Execute ``nb`` with papermill's engine and this driver's hooks; returns what it raised, if anything."""
        from papermill.engines import papermill_engines

        job = self.spec
        try:
            papermill_engines.execute_notebook_with_engine(
                None, nb, kernel_name=job["kernel_name"], input_path=job.get("name", "submission.ipynb"),
                output_path=None, progress_bar=False, log_output=False, start_timeout=int(job.get("start_timeout", 60)),
                execution_timeout=int(job["timeout_cell"]), timeout_func=self.timeout_func,
                allow_errors=True, interrupt_on_timeout=True,
                error_on_timeout={"ename": "Timeout", "evalue": "the cell ran out of time and was interrupted",
                                  "traceback": []},
                on_cell_start=self.on_cell_start, shutdown_kernel="immediate",
                # after an interrupt, how long to wait for the kernel to come back before stopping it
                iopub_timeout=int(min(60, max(10, float(job["timeout_cell"]) / 2))))
        except BaseException as exc:  # noqa: BLE001 - DeadKernelError, CellTimeoutError, start failures
            return {"type": type(exc).__name__, "message": str(exc)[:2000]}
        return None

    def _kernel_exit(self) -> int | None:
        """The kernel's exit code (waiting up to 5 s for it), or None when it is unknown or still running."""
        kernel_exit = None
        if self.kernel_proc is not None:
            try:
                kernel_exit = self.kernel_proc.wait(timeout=5)
            except Exception:  # noqa: BLE001
                kernel_exit = self.kernel_proc.poll()
        return kernel_exit

    def execute(self) -> None:
        import nbformat

        job = self.spec
        nb = nbformat.from_dict(job["notebook"])
        self.nb = nb
        self._patch_client()
        nb = self._parameterize(nb)
        self.nb = nb
        self.student_deadline = time.monotonic() + float(job["timeout_total"])
        error = self._run_papermill(nb)
        kernel_exit = self._kernel_exit()
        self.send(event="done", nb=self.nb, exception=error, timeouts=sorted(set(self.timeouts)),
                  skipped=self.skipped, truncated=self.truncated, kernel_exit=kernel_exit,
                  hidden_received=self.hidden_received, current=self.current)


_T0 = time.monotonic()


def main(argv: list[str] | None = None) -> int:
    """``driver JOB_FD MSG_FD`` (run by the grader) or ``probe WORK SECRET`` (isolation probe)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 3 and argv[0] == "driver":
        # jsonschema (imported by nbformat) optionally imports rfc3987_syntax, which builds lark
        # grammars at import time: 4-9 s per submission on a busy 2-core machine. The driver
        # never validates IRIs, so it skips that optional module.
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
        signal.signal(signal.SIGTERM, lambda *_: os._exit(5))
        return _Driver(int(argv[1]), int(argv[2])).run()
    if len(argv) == 3 and argv[0] == "probe":
        return _probe(argv[1], argv[2])
    if len(argv) == 3 and argv[0] == "probe-allowlist":
        return _probe_allowlist(argv[1], argv[2])
    print("usage: python -m labkit.grading.sandbox driver JOB_FD MSG_FD | probe WORK SECRET", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
