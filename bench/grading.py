"""Time to grade N correct smoke submissions of a lab with ``--jobs J`` (default: 20 of lab 00, 2 jobs).

    python bench/grading.py [--lab 00] [-n 20] [--jobs 2] [--baseline] [--isolation auto]

The submissions are the instructor notebook without its hidden-test cells (a correct solution).
Prints the batch's wall time, the per-submission wall times (median, min, max), the statuses and
the sandbox in use; with ``--baseline``, also one plain ``labkit run LAB --profile smoke`` for
comparison (same machine, same moment). A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab", default="00")
    parser.add_argument("-n", type=int, default=20, help="number of submissions")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--memory-mb", type=int, default=None)
    parser.add_argument("--isolation", default="auto", choices=("auto", "namespaces", "none"))
    parser.add_argument("--baseline", action="store_true", help="also time one plain `labkit run` of the lab")
    parser.add_argument("--keep", default=None, help="keep the output in this folder")
    args = parser.parse_args(argv)

    import nbformat

    from labkit.grading.grade import DEFAULT_MEMORY_MB, grade_submissions
    from labkit.runner import lab_path, read_parameters, run_lab

    path = lab_path(args.lab)
    inst = nbformat.read(path, as_version=4)
    sub = copy.deepcopy(inst)
    sub.cells = [c for c in sub.cells if "hidden-test" not in c.metadata.get("tags", [])]
    extra = {"WEIGHTS": "random"} if "WEIGHTS" in read_parameters(path) else {}
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as tmp:
        subs = Path(tmp, "subs")
        subs.mkdir()
        for i in range(args.n):
            nbformat.write(sub, subs / f"student{i:02d}.ipynb")
        out = Path(args.keep) if args.keep else Path(tmp, "out")
        if args.baseline:
            t = time.perf_counter()
            try:
                run_lab(path, profile="smoke", parameters=extra, output_dir=Path(tmp, "baseline"))
                note = ""
            except Exception as exc:  # noqa: BLE001 - report, keep benchmarking
                note = f" (failed: {type(exc).__name__})"
            print(f"baseline: one `labkit run {path.stem} --profile smoke`: {time.perf_counter() - t:.1f} s{note}")
        t = time.perf_counter()
        report = grade_submissions(path, subs, out, profile="smoke", jobs=args.jobs, force=True,
                                   memory_mb=args.memory_mb or DEFAULT_MEMORY_MB, parameters=extra,
                                   isolation=args.isolation, log=None)
        wall = time.perf_counter() - t
    times = [r.wall_s for r in report.results]
    print(f"graded {len(times)} correct smoke submissions of {path.stem} with --jobs {args.jobs}: {wall:.1f} s "
          f"({wall / max(1, len(times)):.1f} s per submission)")
    if times:
        print(f"per submission: median {statistics.median(times):.1f} s, min {min(times):.1f} s, max {max(times):.1f} s")
    print("statuses:", report.counts(), f"points: {sorted({r.total for r in report.results})} of {report.results[0].max if report.results else 0:g}")
    print(f"sandbox: {report.isolation.describe()}")
    print(f"machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the end; python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
