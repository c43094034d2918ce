"""Write back the per-seed runs that a reference file was made from, to add seeds without rerunning.

Usage (from the repository root, venv active):

    python bench/reference_seed_runs.py --work-dir out/reference 00 01 02
    labkit reference 00 01 02 --seeds 10 --work-dir out/reference   # runs seeds 6-10 only

For each lab, ``labs/reference/LAB.json`` holds every recorded value of every reference seed (its
``samples``). This writes ``WORK/seedS/LAB.results.json`` for each of those seeds with the values as
flat records (``'acc["0.1"][2]': 0.31``, which ``labkit reference`` flattens to the same keys), so
that ``labkit reference --seeds N`` reuses them and runs only the missing seeds. Only valid when the
lab's code has not changed since the file was made: the runs carry no ``code_sha256``, and
``labkit reference`` says so ("made before runs recorded their code version"). An existing results
file is never overwritten.

    python bench/reference_seed_runs.py --rebuild 00 01 ...   # no run: new bands from the same samples

``--rebuild`` rewrites each file's bands from its own samples with the current rule (after a change
of ``labkit.reference.ALPHA``), keeping its seeds, machine, torch version and wall times.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labkit import reference as R  # noqa: E402
from labkit.runner import lab_path  # noqa: E402


def seed_runs(ref: dict) -> dict[int, dict]:
    """``{seed: results}`` rebuilt from a reference file's samples."""
    runs: dict[int, dict] = {}
    for i, seed in enumerate(ref["seeds"]):
        runs[seed] = {"records": {}, "checks": [], "meta": {
            "profile": ref["profile"], "data": ref["data"], "seed": seed, "status": "ok",
            "wall_time_s": ref["wall_time_s"][i], "rebuilt_from": f"labs/reference/{ref['lab']}.json"}}
    for key, entry in ref["values"].items():
        for seed, value in zip(entry.get("seeds", ref["seeds"]), entry["samples"]):
            runs[seed]["records"][key] = value
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labs", nargs="+")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--rebuild", action="store_true", help="rewrite the bands of each file from its samples")
    args = parser.parse_args(argv)
    if not args.rebuild and args.work_dir is None:
        parser.error("give --work-dir (to write the runs) or --rebuild")
    for lab in args.labs:
        name = lab_path(lab).stem
        ref = R.load_reference(name)
        if args.rebuild:
            new = R.make_reference(name, list(seed_runs(ref).values()), machine=ref["machine"])
            new.update(torch=ref["torch"], wall_time_s=ref["wall_time_s"], command=ref["command"])
            R.reference_path(name).write_text(json.dumps(new, indent=1) + "\n")
            print(f"{name}: bands at alpha {new['alpha']:g} over seeds {new['seeds']}")
            continue
        for seed, results in seed_runs(ref).items():
            out = Path(args.work_dir) / f"seed{seed}" / f"{name}.results.json"
            if out.exists():
                print(f"{name} seed {seed}: {out} exists, kept")
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1) + "\n")
            print(f"{name} seed {seed}: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
