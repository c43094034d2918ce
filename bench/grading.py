"""Grading throughput: N correct smoke submissions of a lab with 1 and 2 Dask workers (issue 15).

    python bench/grading.py [--lab 00] [-n 50] [--workers 1,2] [--no-baseline] [--scheduler ADDRESS]

The submissions are the instructor notebook without its hidden-test cells (a correct solution).
For each worker count the batch runs through ``labkit grade``'s default executor (``--jobs J``:
J local Dask worker processes; ``--scheduler``: an existing cluster, run once) and prints the
batch's wall time, submissions per minute and the per-submission wall times. Before each batch,
the baseline is one plain ``labkit run LAB --profile smoke`` with the threads a sandbox gets with
J workers (the notebook's own run, same machine, same moment): the overhead per submission is
the median per-submission time minus that baseline, i.e. the sandbox, the kernel start in it,
the guard and the hidden tests. ``--lab`` also takes a notebook's path. A benchmark, not a test: it
asserts nothing. Results of the course's machines are in book/instructors.md (Grading at scale).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab", default="00")
    parser.add_argument("-n", type=int, default=50, help="number of submissions (default 50)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, e.g. 1,2 (default)")
    parser.add_argument("--scheduler", default=None, help="grade on this Dask cluster instead (run once)")
    parser.add_argument("--memory-mb", type=int, default=None)
    parser.add_argument("--isolation", default="auto", choices=("auto", "bwrap", "namespaces", "unshare", "none"))
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain `labkit run` of the lab")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"-n must be >= 1, got {args.n}")
    try:
        counts = [int(x) for x in args.workers.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--workers must be a comma-separated list of integers, got {args.workers!r}")
    if not counts or min(counts) < 1:
        parser.error(f"--workers must list counts >= 1, got {args.workers!r}")

    import nbformat

    from labkit.grading.grade import DEFAULT_MEMORY_MB, grade_submissions
    from labkit.runner import lab_path, read_parameters, run_lab

    path = lab_path(args.lab)
    inst = nbformat.read(path, as_version=4)
    sub = copy.deepcopy(inst)
    sub.cells = [c for c in sub.cells if "hidden-test" not in c.metadata.get("tags", [])]
    extra = {"WEIGHTS": "random"} if "WEIGHTS" in read_parameters(path) else {}
    print(f"machine: {_cpu()}, {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as tmp:
        subs = Path(tmp, "subs")
        subs.mkdir()
        for i in range(args.n):
            nbformat.write(sub, subs / f"student{i:02d}.ipynb")
        runs = [("scheduler", None)] if args.scheduler else [("jobs", j) for j in counts]
        for kind, j in runs:
            baseline = None
            if not args.no_baseline:  # the notebook's own run, with the threads a sandbox gets with J workers
                threads = str(max(1, (os.cpu_count() or 1) // (j or 1)))
                os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                                  OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY") or "PASSIVE")
                t = time.perf_counter()
                try:
                    run_lab(path, profile="smoke", parameters=extra, output_dir=Path(tmp, f"baseline-{j}"))
                    baseline = time.perf_counter() - t
                    print(f"baseline: one `labkit run {path.stem} --profile smoke` with {threads} thread(s): "
                          f"{baseline:.1f} s")
                except Exception as exc:  # noqa: BLE001 - report, keep benchmarking
                    print(f"baseline failed: {type(exc).__name__}: {exc}")
            t = time.perf_counter()
            report = grade_submissions(path, subs, Path(tmp, f"out-{j}"), profile="smoke", jobs=j or 1, force=True,
                                       memory_mb=args.memory_mb or DEFAULT_MEMORY_MB, parameters=extra,
                                       isolation=args.isolation, scheduler=args.scheduler, log=None)
            wall = time.perf_counter() - t
            times = [r.wall_s for r in report.results]
            med = statistics.median(times)
            over = f"{med - baseline:.1f} s" if baseline is not None else "n/a"
            label = f"--scheduler {args.scheduler}" if kind == "scheduler" else f"--jobs {j}"
            base = f"{baseline:.1f} s" if baseline is not None else "n/a"
            rows.append((label, wall, len(times), 60 * len(times) / wall, med, min(times), max(times), base, over))
            print(f"{label}: {len(times)} submissions in {wall:.1f} s; statuses {report.counts()}; "
                  f"points {sorted({r.total for r in report.results})} of {report.results[0].max:g}")
            print(f"  sandbox: {report.isolation.describe()}")
            print(f"  memory: {report.memory.describe() if report.memory else 'n/a'}; executor: {report.executor}")
    print()
    print("| run | batch wall | submissions | per minute | per submission (median, min-max) | plain run | "
          "overhead per submission |")
    print("|---|---|---|---|---|---|---|")
    for label, wall, n, per_min, med, lo, hi, base, over in rows:
        print(f"| `{label}` | {wall:.1f} s | {n} | {per_min:.1f} | {med:.1f} s ({lo:.1f}-{hi:.1f}) | {base} | {over} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
