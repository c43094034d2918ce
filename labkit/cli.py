"""The ``labkit`` command: ``list``, ``run``, ``reference``, ``data``, ``student``, ``grade``, ``book``."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .config import DATA_MODES, PROFILES


def _parse_param(text: str) -> tuple[str, object]:
    import ast

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"parameter {text!r} must look like NAME=VALUE")
    key, value = text.split("=", 1)
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _cmd_list(args: argparse.Namespace) -> int:
    from .runner import labs_dir, list_labs

    labs = list_labs()
    if not labs:
        print(f"no labs found in {labs_dir()}", file=sys.stderr)
        return 1
    width = max(len(n) for n, _ in labs)
    for name, title in labs:
        print(f"{name:<{width}}  {title}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import failure_message, lab_path, list_labs, run_lab

    if args.all == bool(args.labs):
        print("labkit run: name the labs to run, or pass --all (not both)", file=sys.stderr)
        return 2
    if (args.output_dir is None) == (not args.in_place):
        print("labkit run: give exactly one of --output-dir DIR and --in-place", file=sys.stderr)
        return 2
    labs = [n for n, _ in list_labs()] if args.all else args.labs
    try:
        paths = [lab_path(lab) for lab in labs]
    except ValueError as exc:
        print(f"labkit run: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for path in paths:
        print(f"running {path.stem} (profile={args.profile}, data={args.data}) ...", flush=True)
        try:
            res = run_lab(path, profile=args.profile, data=args.data, seed=args.seed,
                          parameters=dict(args.param or []), output_dir=args.output_dir,
                          in_place=args.in_place, cell_timeout=args.timeout or None, log_output=args.verbose)
        except Exception as exc:  # report, keep going with the other labs
            failed += 1
            where = path if args.in_place else Path(args.output_dir) / path.name
            print(failure_message(exc, where), file=sys.stderr)
            continue
        checks = res["checks"]
        bad = [c["name"] for c in checks if not c["passed"]]
        print(f"  done in {res['meta']['wall_time_s']:.1f} s; {len(res['records'])} records, "
              f"{len(checks) - len(bad)}/{len(checks)} checks passed" + (f" (failed: {', '.join(bad)})" if bad else ""))
    return 1 if failed else 0


def _cmd_data(args: argparse.Namespace) -> int:
    from .storage import data_root

    root = Path(args.root) if args.root else data_root()
    if args.from_mirror:
        src = Path(args.from_mirror)
        if not src.is_dir():
            print(f"labkit data: mirror folder {src} does not exist", file=sys.stderr)
            return 2
        root.mkdir(parents=True, exist_ok=True)
        for entry in sorted(src.iterdir()):
            if entry.is_dir() and not (root / entry.name).exists():
                print(f"copying {entry.name} -> {root / entry.name}")
                shutil.copytree(entry, root / entry.name)
    expected = {
        "mnist": "MNIST/raw/t10k-images-idx3-ubyte.gz",
        "mnist_m (needs mnist + BSDS500)": "BSDS500/images/train",
        "hymenoptera": "hymenoptera_data/train",
        "imagenet_samples": "imagenet_samples/labels.csv",
        "imagenet weights": "weights",
    }
    print(f"data root: {root}  (set LABKIT_DATA to change it)")
    for name, rel in expected.items():
        status = "present" if (root / rel).exists() else "missing"
        print(f"  {name:<34} {status:<8} {root / rel}")
    return 0


def _cmd_reference(args: argparse.Namespace) -> int:
    """Run each lab's standard profile over seeds 1..N (reusing results already in the work folder)
    and write labs/reference/LAB.json; or, with --report, print the spread table of the files."""
    import json

    from . import reference as R
    from .runner import code_digest, failure_message, lab_path, list_labs, run_lab

    labs = [n for n, _ in list_labs()] if args.all or not args.labs else args.labs
    try:
        paths = [lab_path(lab) for lab in labs]
    except ValueError as exc:
        print(f"labkit reference: {exc}", file=sys.stderr)
        return 2
    if args.report:
        refs = []
        for path in paths:
            try:
                refs.append(R.load_reference(path.stem))
            except R.ReferenceFileError as exc:
                print(f"labkit reference: {exc}", file=sys.stderr)
                return 1
        print(R.spread_table(refs))
        return 0
    if args.seeds < 2:
        print(f"labkit reference: --seeds must be at least 2 (a spread needs two runs), got {args.seeds}", file=sys.stderr)
        return 2
    work = Path(args.work_dir)
    failed = 0
    for path in paths:
        # Seeds 1..N: seed 0, every lab's default, stays out of the reference, so that the tests' run of
        # the committed notebook is a fresh draw against the bands.
        folders = [work / f"seed{s}" for s in range(1, args.seeds + 1)]
        for seed, folder in enumerate(folders, start=1):
            done = R.read_runs(path.stem, [folder])
            if done and done[0]["meta"].get("profile") == "standard" and done[0]["meta"].get("seed") == seed:
                made_by = done[0]["meta"].get("code_sha256")
                note = "" if made_by == code_digest(path) else (
                    " (made by another version of the lab's code: delete it to run it again)" if made_by
                    else " (made before runs recorded their code version)")
                print(f"{path.stem} seed {seed}: reusing {folder / (path.stem + '.results.json')}{note}", flush=True)
                continue
            print(f"{path.stem} seed {seed}: running the standard profile ...", flush=True)
            try:
                res = run_lab(path, profile="standard", data="embedded", seed=seed, output_dir=folder)
            except Exception as exc:  # report, keep going with the other labs
                print(failure_message(exc, folder / path.name), file=sys.stderr)
                failed += 1
                break
            print(f"  done in {res['meta']['wall_time_s']:.1f} s", flush=True)
        else:
            runs = R.read_runs(path.stem, folders)
            ref = R.make_reference(path.stem, runs)
            out = Path(args.output_dir) if args.output_dir else R.reference_dir()
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{path.stem}.json").write_text(json.dumps(ref, indent=1) + "\n")
            numbers = [e for e in ref["values"].values() if e["kind"] == "number"]
            print(f"{path.stem}: {len(ref['values'])} values ({len(numbers)} numbers) over seeds {ref['seeds']} "
                  f"-> {out / (path.stem + '.json')}")
    return 1 if failed else 0


def _cmd_book(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parents[1]
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe), "build", str(root), "--warningiserror", "--keep-going"]
    return subprocess.call(cmd)


# The house of labkit, bottom to top (tests/test_packaging.py holds the same layers and checks that no
# module imports one above its own); the site's API page is written from it and the modules' __all__.
API_LAYERS = (
    ("base", ("results", "device", "reproducibility", "storage"),
     "recording values and checks, device choice, seeds, where files live (argument checks and progress "
     "bars are private: labkit._checks, labkit.progress)"),
    ("data, models, hooks", ("datasets", "models", "hooks"),
     "data sets and augmentations; the model registry and model wrappers; the one hook mechanism and the "
     "eval-mode context"),
    ("mechanisms", ("training", "attribution", "deconv", "feature_vis", "style", "adversarial", "embeddings",
                    "metrics", "transfer", "vae", "gan", "domain_adaptation", "segmentation"),
     "training (one engine under every trainer), explaining, attacking, measuring, and the method of each "
     "lab that has its own (VAE, GAN, DANN, FCN)"),
    ("showing", ("plotting", "widgets"), "figures (the only module that draws) and interactive explorers"),
    ("running", ("config",), "a lab's set-up cell; labkit.runner, labkit.reference and labkit.grading serve the "
     "command line and are not in the namespace"),
)


def _summary(obj: object) -> str:
    """The first sentence-line of an object's docstring, in Markdown (Sphinx roles as code)."""
    import inspect
    import re

    doc = inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else None
    line = (doc or "").strip().split("\n\n")[0].replace("\n", " ")
    line = re.sub(r":(?:func|class|mod|data|meth|attr):`~?([^`]+)`", r"``\1``", line)
    return line.replace("|", "\\|") if line else f"a constant ({type(obj).__name__})"


def api_page() -> str:
    """The site's page on the ``lk`` namespace: the layers, then every public name with its summary."""
    import importlib

    lines = ["# The labkit toolbox", "",
             "Every lab starts with `import labkit as lk`; the names below are everything a lab or a student "
             "calls as `lk.<name>`. This page is written by `labkit api --write book/labkit.md` from the "
             "package itself (a test fails when it is stale).", "",
             "## The house", "",
             "Modules are split by mechanism and stacked in layers; a module imports only its own layer and "
             "the layers below (a test checks it).", "",
             "| layer | modules | what they hold |", "|---|---|---|"]
    for layer, modules, what in API_LAYERS:
        lines.append(f"| {layer} | {', '.join(f'`{m}`' for m in modules)} | {what} |")
    for layer, modules, _ in API_LAYERS:
        for name in modules:
            module = importlib.import_module(f"labkit.{name}")
            lines += ["", f"## `labkit.{name}`", "", _summary(module), ""]
            # "name — summary", not "name: summary": the site's pages must never show "SomeError: ..."
            lines += [f"- `lk.{n}` — {_summary(getattr(module, n))}" for n in module.__all__]
    return "\n".join(lines) + "\n"


def _cmd_api(args: argparse.Namespace) -> int:
    text = api_page()
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
        print(f"wrote {args.write}")
    else:
        print(text, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labkit", description="Run, grade and publish the course's labs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the labs with their titles")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="execute labs with papermill and write NAME.ipynb + NAME.results.json")
    p.add_argument("labs", nargs="*", help="lab names (00, 00_welcome) or notebook paths")
    p.add_argument("--all", action="store_true", help="run every lab")
    p.add_argument("--profile", choices=PROFILES, default="standard")
    p.add_argument("--data", choices=DATA_MODES, default="embedded")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("-p", "--param", action="append", type=_parse_param, metavar="NAME=VALUE",
                   help="another parameter of the lab's parameters cell (e.g. -p WEIGHTS=random)")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--in-place", action="store_true", help="overwrite the lab notebooks with the executed ones")
    p.add_argument("--timeout", type=int, default=900,  # = runner.DEFAULT_CELL_TIMEOUT
                   help="per-cell time limit in seconds (default %(default)s; 0: none)")
    p.add_argument("-v", "--verbose", action="store_true", help="stream the notebook's output")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("data", help="show the data root and which real data sets are present")
    p.add_argument("--root", default=None, help="data root (default: $LABKIT_DATA or the user cache)")
    p.add_argument("--from-mirror", default=None, metavar="DIR", help="copy a data set mirror (e.g. ../shared/datasets) into the data root")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("reference", help="measure each lab's recorded values over seeds and write labs/reference/LAB.json")
    p.add_argument("labs", nargs="*", help="lab names (default: every lab)")
    p.add_argument("--all", action="store_true", help="every lab (the default when none is named)")
    p.add_argument("--seeds", type=int, default=10, help="seeds 1..N of the standard profile (default %(default)s; seed 0, the labs' default, is what the tests run)")
    p.add_argument("--work-dir", default="out/reference",
                   help="where the runs go, one folder per seed; runs already there are reused (default %(default)s)")
    p.add_argument("--output-dir", default=None, help="where the reference files go (default labs/reference)")
    p.add_argument("--report", action="store_true", help="print the spread table of the existing reference files")
    p.set_defaults(func=_cmd_reference)

    p = sub.add_parser("api", help="print (or --write) the site's page on the lk namespace")
    p.add_argument("--write", default=None, metavar="FILE", help="write the page to FILE (e.g. book/labkit.md)")
    p.set_defaults(func=_cmd_api)

    p = sub.add_parser("book", help="build the site from the committed notebooks (same as `make site`)")
    p.set_defaults(func=_cmd_book)

    try:
        from .grading.cli import register
    except ImportError:
        register = None
    if register is not None:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
