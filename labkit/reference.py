"""Reference bands: what each recorded value of a lab is over several seeds, and whether a run holds it.

Trained numbers depend on the seed and on the CPU: an Intel AVX-512 and an AMD AVX2 machine sum
floating-point numbers in different orders, and a few epochs of training amplify the difference.
So the tests do not compare trained numbers as text. Each lab has a committed reference file,
``labs/reference/LAB.json``, made by ``labkit reference LAB --seeds 10``: the standard profile on
embedded data is run once per seed, and every value that ``lk.record`` saw gets a band.

The band of a number is a prediction interval for one new run (Student's t, two-sided, level
``1 - ALPHA``): ``mean +- t(1 - ALPHA/2, n - 1) * sd * sqrt(1 + 1/n)`` over the ``n`` seeds. A
value identical over the seeds is compared exactly when every sample is an integer, else to
``FLOAT_RTOL`` (the same computation on another CPU), unless its siblings in the same record vary:
then it is a saturated rate and its band uses their pooled standard deviation. Strings and booleans must be one of the values
seen. Nothing is widened by hand: a value whose band is too wide to say anything is a lab whose
claim rests on a lucky seed, and the lab is what must change.

The bands are wide (about 12 sd at 10 seeds; a rate's band often spans all of [0, 1]), so one more check
judges the run as a whole: the median over its varying values of their distance from the reference mean,
in sd, must stay under ``SHIFT_MEDIAN_Z``. A change that moves most of a lab's values together fails there
even when each value stays inside its own band.

Used by ``labkit reference`` (instructors, maintainers), the tests (each lab's standard run is
checked against its file) and the labs' narration (:func:`spread`: "0.89 (0.86-0.91 over 5 seeds)").
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["flatten_records", "make_reference", "compare_to_reference", "shift_score", "load_reference",
           "reference_path", "spread", "ReferenceFileError", "ALPHA", "FLOAT_RTOL", "SHIFT_MEDIAN_Z"]

SCHEMA = 1
# Two-sided level of the t interval. Calibrated, not assumed: trained values have heavier tails than
# a normal model (a GAN's FID after a short run, a gradient norm, a class a collapsed run lands on),
# and in the leave-one-seed-out check over 10 seeds (bench/reference_check.py, bench/REFERENCE.md)
# alpha 1e-3 missed 0.46 % of the values, 4.6 times its nominal rate, so that nearly every fresh run
# of the eleven labs (about 600 values) would have failed somewhere; at 1e-6 the measured miss rate
# is about 1 in 5000 values. The bands are then wide (about 12 sd with 10 seeds): they say what a run
# may show; each lab's hidden checks (lk.check) state its claims.
ALPHA = 1e-6
FLOAT_RTOL = 1e-4  # values equal over every seed: the same arithmetic on another CPU
FLOAT_ATOL = 1e-7
# The lab-level shift check: each band alone is wide (about 12 sd), so a change that moves most of a lab's
# values by several sd at once (a broken trainer, a changed default) could pass every band. The median over a
# lab's varying values of |value - mean| / (sd * sqrt(1 + 1/n)) is about 0.7 for a new seed; in the
# leave-one-seed-out check over the ten seeds of all twelve labs (120 draws, bench/reference_check.py) its
# largest value was 1.66 (lab 00, 11 values). A run above SHIFT_MEDIAN_Z fails as a whole.
SHIFT_MEDIAN_Z = 3.0
SHIFT_MIN_VALUES = 8  # fewer varying values: a median too noisy to judge
SEEDS = 10  # reference seeds 1..SEEDS: with 5, a band's sd came from 4 degrees of freedom and heavy-tailed
#            values (FIDs of short GAN runs) left their band in 4 of 3025 leave-one-seed-out checks
PROFILE, DATA = "standard", "embedded"


class ReferenceFileError(ValueError):
    """A reference file that is missing, malformed, or made for other records (stale)."""


def _command(lab: str, n: int) -> str:
    return f"labkit reference {lab} --seeds {n}"


def reference_dir() -> Path:
    from .runner import labs_dir

    return labs_dir() / "reference"


def reference_path(lab: str) -> Path:
    """``labs/reference/LAB.json`` for a lab name such as ``"00_welcome"`` (or ``"00"``)."""
    from .runner import lab_path

    return reference_dir() / f"{lab_path(lab).stem}.json"


def _key(prefix: str, part: object) -> str:
    return f"{prefix}[{part}]" if isinstance(part, int) else f"{prefix}[{json.dumps(str(part))}]"


def flatten_records(records: Mapping[str, Any]) -> dict[str, Any]:
    """``{"acc": {"0.1": [0.5, 0.6]}}`` -> ``{'acc["0.1"][0]': 0.5, 'acc["0.1"][1]': 0.6}``.

    Leaves are numbers, strings, booleans or None (empty lists and dicts become one ``[]`` / ``{}``
    leaf, so that their presence is still compared).
    """
    if not isinstance(records, Mapping):
        raise TypeError(f"records must be a mapping of record names to values, got {type(records).__name__}")
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            if not value:
                flat[prefix] = {}
            for k, v in value.items():
                walk(_key(prefix, str(k)), v)
        elif isinstance(value, (list, tuple)):
            if not value:
                flat[prefix] = []
            for i, v in enumerate(value):
                walk(_key(prefix, i), v)
        else:
            flat[prefix] = value

    for name, value in records.items():
        walk(str(name), value)
    return flat


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _t_quantile(q: float, dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, dof))


def band_of(samples: Sequence[Any], *, alpha: float = ALPHA) -> dict[str, Any]:
    """The band of one flattened value from its samples over seeds (see the module's docstring)."""
    samples = list(samples)
    if not samples:
        raise ValueError("samples must hold at least one value")
    if all(_is_number(v) for v in samples):
        n = len(samples)
        mean = sum(samples) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in samples) / (n - 1)) if n > 1 else 0.0
        lo_seen, hi_seen = min(samples), max(samples)
        if lo_seen == hi_seen:
            if all(isinstance(v, int) for v in samples):
                low = high = lo_seen
            else:
                tol = FLOAT_ATOL + FLOAT_RTOL * abs(mean)
                low, high = mean - tol, mean + tol
        else:
            half = _t_quantile(1 - alpha / 2, n - 1) * sd * math.sqrt(1 + 1 / n) if n > 1 else 0.0
            low, high = min(mean - half, lo_seen), max(mean + half, hi_seen)
        return {"kind": "number", "samples": samples, "mean": mean, "sd": sd, "min": lo_seen, "max": hi_seen,
                "low": low, "high": high}
    seen: list[Any] = []
    for v in samples:
        if v not in seen:
            seen.append(v)
    return {"kind": "values", "samples": samples, "allowed": seen}


def _parent(key: str) -> str | None:
    return key[:key.rindex("[")] if key.endswith("]") else None


def _pool_saturated(values: dict[str, Any], alpha: float) -> None:
    """A float identical over every seed while its siblings (the other entries of the same dict or
    list) vary is a saturated rate (an accuracy of 0, a probability of 1), not a constant: its band
    uses the siblings' pooled standard deviation, as a prediction interval around the seen value."""
    groups: dict[str, list[str]] = {}
    for key, e in values.items():
        parent = _parent(key)
        if parent is not None and e["kind"] == "number":
            groups.setdefault(parent, []).append(key)
    for members in groups.values():
        varying = [values[k] for k in members if values[k]["sd"] > 0]
        if not varying:
            continue
        pooled = math.sqrt(sum(e["sd"] ** 2 for e in varying) / len(varying))
        for k in members:
            e = values[k]
            n = len(e["samples"])
            if e["sd"] == 0 and n > 1 and not all(isinstance(v, int) for v in e["samples"]):
                half = _t_quantile(1 - alpha / 2, n - 1) * pooled * math.sqrt(1 + 1 / n)
                e.update(low=e["mean"] - half, high=e["mean"] + half, pooled_sd=pooled)


def make_reference(lab: str, runs: Sequence[Mapping[str, Any]], *, alpha: float = ALPHA,
                   machine: str | None = None) -> dict[str, Any]:
    """Build a lab's reference from the results of its standard runs over several seeds.

    ``runs`` are results dicts as written by ``labkit run`` (``records`` and ``meta``); each must be
    an ``ok`` run of the standard profile on embedded data, with a distinct seed.
    """
    if len(runs) < 2:
        raise ValueError(f"{lab}: a reference needs runs of at least 2 seeds, got {len(runs)}")
    seeds = []
    for r in runs:
        meta = r.get("meta", {})
        if meta.get("status") != "ok" or meta.get("profile") != PROFILE or meta.get("data") != DATA:
            raise ValueError(f"{lab}: reference runs must be ok standard runs on embedded data, got "
                             f"status={meta.get('status')!r} profile={meta.get('profile')!r} data={meta.get('data')!r}")
        seeds.append(meta.get("seed"))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{lab}: reference runs must have distinct seeds, got {seeds}")
    flats = [flatten_records(r["records"]) for r in runs]
    keys: list[str] = []
    for f in flats:
        keys += [k for k in f if k not in keys]
    values = {}
    for k in keys:
        samples = [f[k] for f in flats if k in f]
        entry = band_of(samples, alpha=alpha)
        if len(samples) < len(flats):
            entry["seeds"] = [s for s, f in zip(seeds, flats) if k in f]  # recorded for these seeds only
        values[k] = entry
    _pool_saturated(values, alpha)
    import torch

    return {
        "schema": SCHEMA, "lab": lab, "profile": PROFILE, "data": DATA, "seeds": seeds, "alpha": alpha,
        "command": _command(lab, len(seeds)),
        "machine": machine or _machine(), "torch": torch.__version__,
        "wall_time_s": [r.get("meta", {}).get("wall_time_s") for r in runs],
        "values": values,
    }


def _machine() -> str:
    """The CPU model and its widest vector unit (what decides the floating-point sums)."""
    name = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
        isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
        name = f"{name} ({isa})"
    except OSError:
        pass
    return name


def load_reference(lab: str, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read and validate a lab's reference file; :class:`ReferenceFileError` says what to run."""
    from .runner import lab_path

    stem = lab_path(lab).stem if path is None else str(lab)
    p = Path(path) if path is not None else reference_path(lab)
    redo = f"make it with `{_command(stem, SEEDS)}`"
    if not p.is_file():
        raise ReferenceFileError(f"{stem}: no reference file at {p}; {redo}")
    try:
        ref = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ReferenceFileError(f"{stem}: reference file {p} is not valid JSON ({exc}); {redo}") from None
    if not isinstance(ref, dict) or ref.get("schema") != SCHEMA or not isinstance(ref.get("values"), dict):
        raise ReferenceFileError(f"{stem}: reference file {p} is malformed (expected schema {SCHEMA} with "
                                 f"a 'values' mapping); {redo}")
    for key, entry in ref["values"].items():
        ok = isinstance(entry, dict) and (
            (entry.get("kind") == "number" and all(_is_number(entry.get(f)) for f in ("low", "high", "mean")))
            or (entry.get("kind") == "values" and isinstance(entry.get("allowed"), list)))
        if not ok:
            raise ReferenceFileError(f"{stem}: reference file {p} has a malformed entry for {key!r}; {redo}")
    return ref


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else repr(v)


def compare_to_reference(records: Mapping[str, Any], reference: Mapping[str, Any]) -> list[str]:
    """Every way a run's records disagree with the reference, one sentence each (empty: it holds).

    A value outside its band, a value the reference does not know (the lab records something new:
    the file is stale), and a value the reference has for every seed but the run lacks.
    """
    lab = reference.get("lab", "?")
    redo = f"`{reference.get('command') or _command(lab, SEEDS)}`"
    flat = flatten_records(records)
    values = reference["values"]
    problems = []
    for key, v in flat.items():
        entry = values.get(key)
        if entry is None:
            problems.append(f"{lab}: the run records {key} = {_fmt(v)}, which the reference file does not know "
                            f"(stale: the lab records something new); regenerate it with {redo}")
            continue
        if entry["kind"] == "number":
            if not _is_number(v) or not entry["low"] <= v <= entry["high"]:
                n = len(entry["samples"])
                problems.append(f"{lab}: {key} = {_fmt(v)} is outside its band [{_fmt(entry['low'])}, "
                                f"{_fmt(entry['high'])}] (mean {_fmt(entry['mean'])}, sd {_fmt(entry['sd'])}, "
                                f"seen {_fmt(entry['min'])}..{_fmt(entry['max'])} over {n} seeds)")
        elif v not in entry["allowed"]:
            problems.append(f"{lab}: {key} = {_fmt(v)} is none of the values seen over the seeds "
                            f"({', '.join(map(_fmt, entry['allowed']))})")
    missing = [k for k, e in values.items() if k not in flat and "seeds" not in e]
    for key in missing:
        problems.append(f"{lab}: the reference file has {key} but the run did not record it "
                        f"(stale: the lab no longer records it); regenerate it with {redo}")
    shift = shift_score(flat, values)
    if shift is not None and shift[0] > SHIFT_MEDIAN_Z:
        problems.append(f"{lab}: the run's values sit a median {shift[0]:.2f} sd from their reference means over "
                        f"{shift[1]} values (a new seed gives about 0.7; the limit is {SHIFT_MEDIAN_Z:g}): the lab's "
                        f"results moved as a whole. If the change is intended, regenerate the file with {redo}")
    return problems


def shift_score(flat: Mapping[str, Any], values: Mapping[str, Any]) -> tuple[float, int] | None:
    """(median |z|, how many values) of a run's flattened records against a reference's ``values``.

    ``z = (value - mean) / (sd * sqrt(1 + 1/n))`` over the numbers that vary between the seeds (an sd above
    the float tolerance of :data:`FLOAT_RTOL`) and were seen for at least 3 seeds. ``None`` with fewer than
    :data:`SHIFT_MIN_VALUES` of them.
    """
    zs = []
    for key, e in values.items():
        v = flat.get(key)
        n = len(e.get("samples", ()))
        if e["kind"] != "number" or not _is_number(v) or n < 3:
            continue
        if e["sd"] <= FLOAT_ATOL + FLOAT_RTOL * abs(e["mean"]):
            continue
        zs.append(abs(v - e["mean"]) / (e["sd"] * math.sqrt(1 + 1 / n)))
    if len(zs) < SHIFT_MIN_VALUES:
        return None
    return statistics.median(zs), len(zs)


def spread(lab: str, name: str, value: float, *, fmt: str = ".2f", profile: str = PROFILE,
           data: str = DATA) -> str:
    """``value`` with the range seen over the reference seeds: ``"0.89 (0.86-0.91 over 5 seeds)"``.

    For narration that quotes a trained number. Outside the standard profile on embedded data, or
    without a reference entry for ``name`` (a plain number record), the value alone.
    """
    text = format(value, fmt)
    if profile != PROFILE or data != DATA:
        return text
    try:
        entry = load_reference(lab)["values"].get(name)
    except (ReferenceFileError, ValueError):
        return text
    if not entry or entry.get("kind") != "number" or entry["min"] == entry["max"]:
        return text
    dash = " to " if entry["min"] < 0 or entry["max"] < 0 else "-"  # "-10.5 to -5.2", not "-10.5--5.2"
    return f"{text} ({format(entry['min'], fmt)}{dash}{format(entry['max'], fmt)} over {len(entry['samples'])} seeds)"


def read_runs(lab: str, folders: Iterable[Path]) -> list[dict[str, Any]]:
    """The results of ``lab`` found in ``folders`` (``FOLDER/LAB.results.json``), ok runs only."""
    runs = []
    for folder in folders:
        p = Path(folder) / f"{lab}.results.json"
        if p.is_file():
            res = json.loads(p.read_text())
            if res.get("meta", {}).get("status") == "ok":
                runs.append(res)
    return runs


def spread_table(references: Sequence[Mapping[str, Any]], *, max_rows_per_lab: int = 12) -> str:
    """A Markdown table of the widest bands (relative to the mean) of each lab, for ``bench/``."""
    lines = ["| lab | value | mean | sd | seen over seeds | band |", "|---|---|---:|---:|---|---|"]
    for ref in references:
        numbers = [(k, e) for k, e in ref["values"].items() if e["kind"] == "number" and "[" not in k]
        numbers += [(k, e) for k, e in ref["values"].items() if e["kind"] == "number" and "[" in k]
        for key, e in numbers[:max_rows_per_lab]:
            lines.append(f"| {ref['lab']} | `{key}` | {e['mean']:.4g} | {e['sd']:.2g} | {e['min']:.4g} .. {e['max']:.4g} "
                         f"| {e['low']:.4g} .. {e['high']:.4g} |")
    return "\n".join(lines)
