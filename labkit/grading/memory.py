"""The memory cap of a grading sandbox: resident memory through a memory cgroup where the system
offers one, else the address space (``RLIMIT_AS``).

Mechanisms, tried in this order by ``mode="auto"`` (see :func:`choose_memory_cap`):

- ``cgroup-v2``: a child group ``labkit-*`` of the grader's own cgroup with ``memory.max`` (and
  ``memory.swap.max = 0``); needs ``memory`` in the parent's ``cgroup.subtree_control`` and write
  access (root, or a delegated subtree);
- ``cgroup-v1``: the same with ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes``
  where swap accounting exists) under the ``memory`` controller's mount;
- ``systemd-run``: ``systemd-run [--user] --scope -p MemoryMax=...`` where systemd runs;
- ``rlimit``: ``RLIMIT_AS`` on the kernel. It caps address space, not memory: the CUDA build of
  torch maps ~3 GB of libraries and CUDA reserves tens of GB, so this is a last resort (the
  import probe of :func:`probe_imports` catches a cap too small for torch).

The whole sandbox (driver, kernel, anything they start) goes into the cgroup: the command is
prefixed with ``sh -c 'echo $$ > GROUP/cgroup.procs && exec "$@"'``, so that it is inside before
anything forks. A submission over the cap is killed by the kernel's OOM killer; the grader reads
``oom_kill`` from ``memory.events`` (v2) or ``memory.oom_control`` (v1) and reports ``memory``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MEMORY_CAP_MODES", "MemoryCap", "MemorySlot", "choose_memory_cap", "ConfigurationError"]

MEMORY_CAP_MODES = ("auto", "cgroup", "systemd-run", "rlimit")


class ConfigurationError(RuntimeError):
    """The grading set-up cannot work on this machine (found before any submission is graded)."""


@dataclass(frozen=True)
class MemoryCap:
    """How the per-submission memory cap is enforced here (``mechanism``) and at what limit."""

    mechanism: str  # "cgroup-v2" | "cgroup-v1" | "systemd-run" | "rlimit" | "none"
    limit_mb: int
    parent: str = ""  # the cgroup folder under which each submission gets its group
    note: str = ""

    @property
    def rlimit_bytes(self) -> int:
        """``RLIMIT_AS`` for the kernel: the cap under ``rlimit``, else none (0)."""
        return self.limit_mb * 2**20 if self.mechanism == "rlimit" else 0

    def describe(self) -> str:
        if self.mechanism == "none":
            return "memory NOT capped (--memory-mb 0)"
        what = {"cgroup-v2": f"resident memory capped at {self.limit_mb} MB (cgroup v2 memory.max under {self.parent})",
                "cgroup-v1": f"resident memory capped at {self.limit_mb} MB (cgroup v1 memory.limit_in_bytes under {self.parent})",
                "systemd-run": f"resident memory capped at {self.limit_mb} MB (systemd-run --scope MemoryMax)",
                "rlimit": f"ADDRESS SPACE capped at {self.limit_mb} MB (RLIMIT_AS, not resident memory)"}[self.mechanism]
        return what + (f" ({self.note})" if self.note else "")

    def open(self, name: str) -> "MemorySlot":
        """A fresh cap for one sandbox (its own cgroup where cgroups are used)."""
        return MemorySlot(self, name)


class MemorySlot:
    """One sandbox's share: ``prefix`` to run its command under, ``oom_kills()``, ``close()``."""

    def __init__(self, cap: MemoryCap, name: str):
        self.cap = cap
        self.group: Path | None = None
        self.prefix: list[str] = []
        limit = cap.limit_mb * 2**20
        if cap.mechanism in ("cgroup-v1", "cgroup-v2"):
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:40]
            self.group = Path(cap.parent, f"labkit-{os.getpid()}-{safe}-{secrets.token_hex(3)}")
            _make_group(self.group, cap.mechanism, limit)
            self.prefix = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.group / "cgroup.procs")]
        elif cap.mechanism == "systemd-run":
            self.prefix = _systemd_prefix(limit)

    def oom_kills(self) -> int:
        """Processes the OOM killer ended in this group (0 where it cannot be known)."""
        if self.group is None:
            return 0
        name = "memory.events" if self.cap.mechanism == "cgroup-v2" else "memory.oom_control"
        try:
            for line in (self.group / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def peak_mb(self) -> float | None:
        """The group's peak memory use in MB (None where unknown)."""
        if self.group is None:
            return None
        for name in ("memory.peak", "memory.max_usage_in_bytes"):
            try:
                return int((self.group / name).read_text()) / 2**20
            except (OSError, ValueError):
                continue
        return None

    def close(self) -> None:
        """Kill what is left in the group and remove it."""
        if self.group is None:
            return
        _remove_group(self.group)
        self.group = None


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _make_group(group: Path, mechanism: str, limit: int) -> None:
    group.mkdir()
    try:
        if mechanism == "cgroup-v2":
            _write(group / "memory.max", str(limit))
            if (group / "memory.swap.max").exists():
                _write(group / "memory.swap.max", "0")
            try:
                _write(group / "memory.oom.group", "0")
            except OSError:
                pass
        else:
            _write(group / "memory.limit_in_bytes", str(limit))
            if (group / "memory.memsw.limit_in_bytes").exists():
                try:  # no escape into swap where swap is accounted
                    _write(group / "memory.memsw.limit_in_bytes", str(limit))
                except OSError:
                    pass
    except BaseException:
        _remove_group(group)
        raise


def _remove_group(group: Path) -> None:
    kill = group / "cgroup.kill"
    deadline = time.monotonic() + 10
    while group.exists():
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            pids = []
        if pids:
            if kill.exists():
                try:
                    _write(kill, "1")
                except OSError:
                    pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            group.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)


def _remove_stale(parent: Path) -> None:
    """Remove the groups left by graders that were killed (``labkit-<pid>-*`` of a dead pid)."""
    for group in parent.glob("labkit-*-*"):
        try:
            pid = int(group.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            _remove_group(group)


def _systemd_prefix(limit: int) -> list[str]:
    user = ["--user"] if os.getuid() != 0 else []
    return ["systemd-run", *user, "--scope", "--quiet", "--collect", "-p", f"MemoryMax={limit}",
            "-p", "MemorySwapMax=0", "--"]


def _mounts(fstype: str) -> list[tuple[str, str, list[str]]]:
    """``(root, mount point, super options)`` of the mounts of ``fstype``."""
    found = []
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                parts, rparts = left.split(), right.split()
                if rparts and rparts[0] == fstype:
                    found.append((parts[3], parts[4], rparts[2].split(",") if len(rparts) > 2 else []))
    except OSError:
        pass
    return found


def _own_group(controller: str) -> str | None:
    """This process's cgroup path for a v1 controller, or for v2 (``controller=""``)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            if (controller == "" and ctrls == "") or controller in ctrls.split(","):
                return path
    except (OSError, ValueError):
        pass
    return None


def _group_dir(root: str, mount: str, own: str) -> Path:
    rel = own[len(root):] if root != "/" and own.startswith(root) else own
    return Path(mount, rel.lstrip("/"))


def _try_group(parent: Path, mechanism: str) -> str:
    """Create and remove a test group under ``parent``; '' when it works, else why not."""
    if not parent.is_dir():
        return f"{parent} does not exist"
    if mechanism == "cgroup-v2":
        try:
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                try:
                    _write(parent / "cgroup.subtree_control", "+memory")
                except OSError as exc:
                    return (f"the memory controller is not enabled for children of {parent} and cannot be "
                            f"({exc.strerror})")
        except OSError as exc:
            return f"cannot read {parent}/cgroup.subtree_control ({exc.strerror})"
    probe = parent / f"labkit-probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        _make_group(probe, mechanism, 256 * 2**20)
    except OSError as exc:
        return f"cannot create a memory cgroup under {parent} ({exc.strerror or exc})"
    _remove_group(probe)
    return ""


def _cgroup_candidates() -> list[tuple[str, Path]]:
    out = []
    own2 = _own_group("")
    for root, mount, _ in _mounts("cgroup2"):
        if own2 is not None and (Path(mount) / "cgroup.controllers").exists():
            try:
                if "memory" in (Path(mount) / "cgroup.controllers").read_text().split():
                    out.append(("cgroup-v2", _group_dir(root, mount, own2)))
            except OSError:
                pass
    own1 = _own_group("memory")
    for root, mount, opts in _mounts("cgroup"):
        if "memory" in opts and own1 is not None:
            out.append(("cgroup-v1", _group_dir(root, mount, own1)))
    return out


_CHOSEN: dict[tuple[int, str], MemoryCap] = {}


def choose_memory_cap(memory_mb: int, *, mode: str = "auto") -> MemoryCap:
    """The memory cap for ``memory_mb`` MB (0: none) on this machine (cached per process).

    ``mode``: ``"auto"`` (cgroup v2, v1, systemd-run, else RLIMIT_AS), ``"cgroup"`` (fail with
    :class:`ConfigurationError` unless a memory cgroup can be created), ``"systemd-run"`` or
    ``"rlimit"``.
    """
    if mode not in MEMORY_CAP_MODES:
        raise ValueError(f"memory_cap must be one of {MEMORY_CAP_MODES}, got {mode!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 0:
        raise ValueError(f"memory_mb must be an integer >= 0 (0: no cap), got {memory_mb!r}")
    if memory_mb == 0:
        return MemoryCap("none", 0)
    key = (memory_mb, mode)
    if key in _CHOSEN:
        return _CHOSEN[key]
    reasons: list[str] = []
    cap = None
    if mode == "rlimit":
        cap = MemoryCap("rlimit", memory_mb, note="asked for with --memory-cap rlimit")
    if cap is None and mode in ("auto", "cgroup"):
        candidates = _cgroup_candidates()
        if not candidates:
            reasons.append("no cgroup file system with the memory controller is mounted")
        for mechanism, parent in candidates:
            why = _try_group(parent, mechanism)
            if not why:
                _remove_stale(parent)
                cap = MemoryCap(mechanism, memory_mb, parent=str(parent))
                break
            reasons.append(f"{mechanism}: {why}")
        if cap is None and mode == "cgroup":
            raise ConfigurationError("--memory-cap cgroup: a memory cgroup cannot be created here: "
                                     + "; ".join(reasons) + ". Run as root, delegate a cgroup subtree to this "
                                     "user, or use --memory-cap systemd-run / rlimit")
    if cap is None and mode in ("auto", "systemd-run"):
        why = _try_systemd(memory_mb)
        if not why:
            cap = MemoryCap("systemd-run", memory_mb)
        else:
            reasons.append(f"systemd-run: {why}")
            if mode == "systemd-run":
                raise ConfigurationError(f"--memory-cap systemd-run does not work here: {why}")
    if cap is None:
        cap = MemoryCap("rlimit", memory_mb, note="no memory cgroup: " + "; ".join(reasons)[:400])
    _CHOSEN[key] = cap
    return cap


def _try_systemd(memory_mb: int) -> str:
    exe = shutil.which("systemd-run")
    if exe is None:
        return "not installed"
    if not Path("/run/systemd/system").is_dir():
        return "systemd is not running (no /run/systemd/system)"
    try:
        proc = subprocess.run([*_systemd_prefix(memory_mb * 2**20), "true"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return ""
