"""``labkit student`` and ``labkit grade``: registered by ``labkit/cli.py`` through :func:`register`."""

from __future__ import annotations

import argparse
import ast
import sys
from typing import Any

__all__ = ["register"]


def _param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"parameter {text!r} must look like NAME=VALUE")
    key, value = text.split("=", 1)
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"expected a value >= 0, got {text!r}")
        return value

    return parse


def _cmd_student(args: argparse.Namespace) -> int:
    from .student import write_student_versions

    try:
        paths = write_student_versions(args.labs or None, output_dir=args.output_dir)
    except (ValueError, TypeError) as exc:
        print(f"labkit student: {exc}", file=sys.stderr)
        return 2
    if not paths:
        print("labkit student: no labs found (see `labkit list`)", file=sys.stderr)
        return 1
    for p in paths:
        print(f"wrote {p}")
    return 0


def _not_dumpable() -> None:
    """Keep same-user processes (e.g. a submission when namespaces are unavailable) from reading
    the grader's memory, which holds the hidden tests (``prctl(PR_SET_DUMPABLE, 0)``; Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _cmd_grade(args: argparse.Namespace) -> int:
    from .grade import grade_submissions

    _not_dumpable()
    try:
        report = grade_submissions(args.lab, args.submissions, args.output_dir, profile=args.profile,
                                   timeout_cell=args.timeout_cell, timeout_total=args.timeout_total,
                                   memory_mb=args.memory_mb, jobs=args.jobs, force=args.force,
                                   max_output_mb=args.max_output_mb, parameters=dict(args.param or []),
                                   isolation=args.isolation, memory_cap=args.memory_cap, allow=args.allow or [],
                                   scheduler=args.scheduler, executor=args.executor)
    except (ValueError, TypeError, RuntimeError) as exc:
        print(f"labkit grade: {exc}", file=sys.stderr)
        return 2
    return 1 if any(r.status == "grader-error" for r in report.results) else 0


def register(subparsers: Any) -> None:
    """Add the ``student`` and ``grade`` subcommands to ``labkit``'s argument parser."""
    from ..config import PROFILES
    from .grade import DEFAULT_MAX_OUTPUT_MB, DEFAULT_MEMORY_MB
    from .memory import MEMORY_CAP_MODES

    p = subparsers.add_parser("student", help="write the student versions of labs (solutions, answers, hidden tests removed)",
                              description="Write the student version of each lab: solution blocks become "
                                          "'# YOUR CODE HERE' + 'raise NotImplementedError', answer cells a prompt, "
                                          "hidden-test cells are removed, outputs cleared.")
    p.add_argument("labs", nargs="*", metavar="LAB", help="lab names (00, 00_welcome) or notebook paths; none: every lab")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="folder for the student notebooks")
    p.set_defaults(func=_cmd_student)

    p = subparsers.add_parser("grade", help="grade a folder of submissions with the lab's hidden tests",
                              description="Run every submission (NAME.ipynb, or a folder NAME/ holding one) in a "
                                          "sandbox, then the lab's hidden tests in the same kernel. Writes "
                                          "OUT/grades.csv, OUT/<id>/executed.ipynb, OUT/<id>/feedback.md and "
                                          "OUT/<id>/result.json; a re-run skips what is already graded.")
    p.add_argument("lab", metavar="LAB", help="the lab (00, 00_welcome) or the instructor notebook's path")
    p.add_argument("submissions", metavar="SUBMISSIONS_DIR", help="folder of submitted notebooks")
    p.add_argument("--output-dir", required=True, metavar="OUT", help="folder for grades.csv and per-submission files")
    p.add_argument("--profile", choices=PROFILES, default="smoke", help="profile injected into every submission (default smoke)")
    p.add_argument("--timeout-cell", type=_positive(float), default=120, metavar="S",
                   help="per-cell time limit; a cell over it is interrupted (default 120)")
    p.add_argument("--timeout-total", type=_positive(float), default=900, metavar="S",
                   help="time limit for all of a submission's cells; later cells are skipped (default 900). The "
                        "hidden tests get the per-cell limit each; the sandbox is killed at "
                        "total + per-cell x (hidden cells + 3) + 90 s")
    p.add_argument("--memory-mb", type=_positive(int), default=DEFAULT_MEMORY_MB, metavar="M",
                   help=f"memory cap of each sandbox (default {DEFAULT_MEMORY_MB}; 0: none): resident memory "
                        "through a memory cgroup where possible, else address space (RLIMIT_AS)")
    p.add_argument("--memory-cap", choices=MEMORY_CAP_MODES, default="auto",
                   help="auto: cgroup v2/v1, else systemd-run, else RLIMIT_AS (default); cgroup: fail without one; "
                        "systemd-run; rlimit: the address-space cap")
    p.add_argument("--jobs", type=_positive(int), default=1, metavar="N",
                   help="submissions graded in parallel: N local Dask worker processes (default 1)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="grade on an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (--jobs is then ignored)")
    p.add_argument("--executor", choices=("auto", "dask", "threads"), default="auto",
                   help="auto: Dask worker processes when dask is installed, else threads of this process")
    p.add_argument("--allow", action="append", metavar="PATH",
                   help="another path the sandbox may read (bubblewrap allowlist; repeatable; must exist)")
    p.add_argument("--force", action="store_true", help="regrade submissions already graded")
    p.add_argument("--max-output-mb", type=_positive(float), default=DEFAULT_MAX_OUTPUT_MB, metavar="X",
                   help=f"output kept per submission before truncation (default {DEFAULT_MAX_OUTPUT_MB:g})")
    p.add_argument("-p", "--param", action="append", type=_param, metavar="NAME=VALUE",
                   help="another parameter of the lab (e.g. -p WEIGHTS=random)")
    p.add_argument("--isolation", choices=("auto", "bwrap", "namespaces", "unshare", "none"), default="auto",
                   help="auto: bubblewrap's allowlist, else unshare's blocklist (weaker, said loudly), else none "
                        "(default); bwrap: fail without bubblewrap; namespaces: fail without either; unshare: the "
                        "blocklist sandbox; none: do not try")
    p.set_defaults(func=_cmd_grade)
