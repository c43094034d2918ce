"""Speed of the embedded generators (prints to stdout only).

Usage (from the repository root, venv active):

    python bench/datasets.py                 # 5 repeats, 2 torch threads
    python bench/datasets.py --repeats 9 --threads 1

For each generator: the first (cold) call, which builds the in-process caches (photo bank,
glyph distance fields), then the median and min of ``--repeats`` warm calls, as wall-clock
seconds and as CPU seconds of this process (the CPU time is the better figure on a shared,
busy machine). The target of the course: ``shapes(10000, size=32)`` in at most 5 s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

import labkit.datasets as lkd


def measure(fn: Callable[[], object], repeats: int) -> tuple[float, float, float, float]:
    walls, cpus = [], []
    for i in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), min(walls), statistics.median(cpus), min(cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("shapes(10000, size=32)", lambda: lkd.shapes(10000, size=32, seed=1)),
        ("shapes(10000, size=32, distractor=0.5, spurious)",
         lambda: lkd.shapes(10000, size=32, seed=1, distractor=0.5, spurious_class="star")),
        ("shapes(2000, size=64)", lambda: lkd.shapes(2000, size=64, seed=1)),
        ("scenes(1000, size=64)", lambda: lkd.scenes(1000, size=64, seed=1)),
        ("glyph_digits(10000)", lambda: lkd.glyph_digits(10000, seed=1)),
        ("glyph_digits(10000, domain='photo')", lambda: lkd.glyph_digits(10000, seed=1, domain="photo")),
        ("uci_digits()", lambda: lkd.uci_digits()),
    ]
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.repeats} repeats; seconds")
    print(f"{'call':52s} {'cold wall':>9s} {'med wall':>9s} {'min wall':>9s} {'med cpu':>9s} {'min cpu':>9s}")
    for name, fn in cases:
        w, c = time.perf_counter(), time.process_time()
        fn()
        cold = time.perf_counter() - w
        med_w, min_w, med_c, min_c = measure(fn, args.repeats)
        print(f"{name:52s} {cold:9.2f} {med_w:9.2f} {min_w:9.2f} {med_c:9.2f} {min_c:9.2f}", flush=True)


if __name__ == "__main__":
    main()
