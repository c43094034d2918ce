"""How well the reference bands hold new runs: leave-one-seed-out, and fresh runs against the files.

Usage:
    python bench/reference_check.py                      # leave-one-seed-out on labs/reference/*.json
    python bench/reference_check.py --runs DIR [DIR...]  # also: each DIR/LAB.results.json against the files

Leave-one-seed-out: for each lab and each of its n reference seeds, the band is rebuilt from the
other n - 1 seeds (same rule, same alpha) and the left-out seed's values are checked against it.
A band rule that is too tight shows here as misses; the test suite's runs (seed 0, another CPU)
are fresh draws of the same kind. Prints one line per lab and the values that missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labkit import reference as R  # noqa: E402
from labkit.runner import list_labs  # noqa: E402


def leave_one_out(ref: dict, alpha: float | None = None) -> tuple[int, int, list[str]]:
    """(values checked, values outside, descriptions) over every left-out seed."""
    seeds = ref["seeds"]
    checked, missed, notes = 0, 0, []
    for i, seed in enumerate(seeds):
        for key, entry in ref["values"].items():
            owners = entry.get("seeds", seeds)
            samples = dict(zip(owners, entry["samples"]))
            if seed not in samples:
                continue
            others = [v for s, v in samples.items() if s != seed]
            if len(others) < 2:
                continue
            band = R.band_of(others, alpha=alpha or ref["alpha"])
            checked += 1
            v = samples[seed]
            if band["kind"] == "number":
                ok = band["low"] <= v <= band["high"]
            else:
                ok = v in band["allowed"]
            if not ok:
                missed += 1
                where = f"[{band['low']:.4g}, {band['high']:.4g}]" if band["kind"] == "number" else str(band["allowed"])
                notes.append(f"seed {seed}: {key} = {v!r} outside {where}")
    return checked, missed, notes


def leave_one_out_shift(ref: dict) -> list[float]:
    """The lab-level shift score (median |z|, ``R.shift_score``) of each left-out seed against the others."""
    seeds, scores = ref["seeds"], []
    for seed in seeds:
        values, flat = {}, {}
        for key, entry in ref["values"].items():
            owners = entry.get("seeds", seeds)
            samples = dict(zip(owners, entry["samples"]))
            others = [v for s, v in samples.items() if s != seed]
            if seed not in samples or len(others) < 2:
                continue
            values[key] = R.band_of(others, alpha=ref["alpha"])
            flat[key] = samples[seed]
        score = R.shift_score(flat, values)
        if score is not None:
            scores.append(score[0])
    return scores


def unit_wide(ref: dict) -> tuple[int, int]:
    """(numbers that vary over the seeds, those of them whose band spans all of [0, 1] while every sample lies in
    it): a rate or share whose band alone cannot fail; only the lab-level shift check and the hidden checks judge it."""
    varying = [e for e in ref["values"].values() if e["kind"] == "number" and e["sd"] > 0]
    wide = [e for e in varying if all(0 <= v <= 1 for v in e["samples"]) and e["low"] <= 0 and e["high"] >= 1]
    return len(varying), len(wide)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=[], help="folders holding LAB.results.json of fresh runs")
    parser.add_argument("--alpha", type=float, default=None, help="leave-one-out with another alpha than the files'")
    args = parser.parse_args(argv)
    total_checked = total_missed = 0
    print("| lab | seeds | values | varying / of them with a band spanning [0, 1] | leave-one-seed-out misses | "
          "largest left-out shift score | fresh runs: problems (shift score) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    details, all_shifts = [], []
    total_varying = total_wide = 0
    for lab, _ in list_labs():
        try:
            ref = R.load_reference(lab)
        except R.ReferenceFileError as exc:
            print(f"| {lab} | - | - | - | {exc} |")
            continue
        checked, missed, notes = leave_one_out(ref, args.alpha)
        shifts = leave_one_out_shift(ref)
        varying, wide = unit_wide(ref)
        total_varying, total_wide = total_varying + varying, total_wide + wide
        all_shifts += shifts
        total_checked += checked
        total_missed += missed
        details += [f"{lab}: {n}" for n in notes]
        fresh = []
        for folder in args.runs:
            p = Path(folder) / f"{lab}.results.json"
            if p.is_file():
                res = json.loads(p.read_text())
                problems = R.compare_to_reference(res["records"], ref)
                score = R.shift_score(R.flatten_records(res["records"]), ref["values"])
                fresh.append(f"seed {res['meta'].get('seed')}: {len(problems)}"
                             + (f" ({score[0]:.2f})" if score else ""))
                details += [f"fresh run {p}: {q}" for q in problems]
        print(f"| {lab} | {len(ref['seeds'])} | {len(ref['values'])} | {varying} / {wide} | {missed} of {checked} | "
              f"{max(shifts) if shifts else float('nan'):.2f} | {', '.join(fresh) or '-'} |")
    rate = total_missed / max(total_checked, 1)
    print(f"\nleave-one-seed-out: {total_missed} of {total_checked} values outside the band of the other seeds "
          f"({rate:.2%}; the rule's nominal rate is {args.alpha or R.ALPHA:g})")
    print(f"bands that span all of [0, 1] (every sample in it): {total_wide} of the {total_varying} values that vary")
    if all_shifts:
        print(f"lab-level shift score of a left-out seed: median {statistics.median(all_shifts):.2f}, "
              f"largest {max(all_shifts):.2f} over {len(all_shifts)} draws (the test's limit: {R.SHIFT_MEDIAN_Z:g})")
    for line in details:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
