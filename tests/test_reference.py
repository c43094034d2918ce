"""labkit.reference: bands over seeds, the comparison of a run with them, the reference files, the
`labkit reference` command, and the band test that pytest adds after each notebook (conftest.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from labkit import cli, reference as R

from test_runner import labs, make_lab  # noqa: F401 (labs: the tiny-lab fixture)

ROOT = Path(__file__).resolve().parents[1]


def _run(seed: int, records: dict, status: str = "ok", profile: str = "standard") -> dict:
    return {"records": records, "checks": [],
            "meta": {"status": status, "profile": profile, "data": "embedded", "seed": seed, "wall_time_s": 1.0}}


def test_flatten_records_names_every_leaf():
    flat = R.flatten_records({"acc": 0.5, "by_eps": {0.1: [1, 2], "x y": True}, "empty": [], "none": {}})
    assert flat == {"acc": 0.5, 'by_eps["0.1"][0]': 1, 'by_eps["0.1"][1]': 2, 'by_eps["x y"]': True,
                    "empty": [], "none": {}}
    with pytest.raises(TypeError, match="records must be a mapping"):
        R.flatten_records([1, 2])


def test_band_is_a_t_prediction_interval():
    # samples 1, 2, 3: mean 2, sd 1; t(0.995, 2) = 9.9248 (tables), half-width 9.9248 * sqrt(1 + 1/3)
    band = R.band_of([1.0, 2.0, 3.0], alpha=0.01)
    half = 9.9248 * math.sqrt(4 / 3)
    assert band["kind"] == "number" and band["mean"] == 2.0 and band["sd"] == 1.0
    assert band["low"] == pytest.approx(2 - half, abs=1e-3) and band["high"] == pytest.approx(2 + half, abs=1e-3)
    assert (band["min"], band["max"]) == (1.0, 3.0)
    # a looser alpha gives a narrower band
    assert R.band_of([1.0, 2.0, 3.0], alpha=0.1)["high"] < band["high"]


def test_band_of_constant_values():
    exact = R.band_of([7, 7, 7])
    assert (exact["low"], exact["high"]) == (7, 7)  # integers: compared exactly
    floats = R.band_of([0.25, 0.25])
    assert floats["low"] < 0.25 < floats["high"] and floats["high"] - 0.25 == pytest.approx(R.FLOAT_ATOL + R.FLOAT_RTOL * 0.25)
    strings = R.band_of(["a", "b", "a"])
    assert strings == {"kind": "values", "samples": ["a", "b", "a"], "allowed": ["a", "b"]}
    with pytest.raises(ValueError, match="at least one"):
        R.band_of([])


def test_make_reference_validates_its_runs():
    runs = [_run(1, {"a": 1.0}), _run(2, {"a": 2.0})]
    ref = R.make_reference("42_tiny", runs, machine="test CPU")
    assert ref["seeds"] == [1, 2] and ref["command"] == "labkit reference 42_tiny --seeds 2"
    assert ref["values"]["a"]["samples"] == [1.0, 2.0] and ref["machine"] == "test CPU"
    with pytest.raises(ValueError, match="at least 2 seeds"):
        R.make_reference("42_tiny", runs[:1])
    with pytest.raises(ValueError, match="distinct seeds"):
        R.make_reference("42_tiny", [runs[0], runs[0]])
    with pytest.raises(ValueError, match="status='error'"):
        R.make_reference("42_tiny", [runs[0], _run(3, {"a": 1.0}, status="error")])
    with pytest.raises(ValueError, match="profile='smoke'"):
        R.make_reference("42_tiny", [runs[0], _run(3, {"a": 1.0}, profile="smoke")])


def test_compare_finds_values_outside_their_band_and_stale_keys():
    runs = [_run(1, {"acc": 0.80, "n": 3, "name": "x", "rounds": [0.1]}),
            _run(2, {"acc": 0.82, "n": 3, "name": "x", "rounds": [0.1, 0.2]}),
            _run(3, {"acc": 0.81, "n": 3, "name": "x", "rounds": [0.1]})]
    ref = R.make_reference("42_tiny", runs, alpha=0.01)
    assert R.compare_to_reference({"acc": 0.81, "n": 3, "name": "x", "rounds": [0.1]}, ref) == []
    assert ref["values"]["rounds[1]"]["seeds"] == [2]  # recorded by one seed only: may be absent
    problems = R.compare_to_reference({"acc": 0.5, "n": 4, "name": "y", "rounds": [0.1], "new": 1}, ref)
    text = "\n".join(problems)
    assert len(problems) == 4
    assert "acc = 0.5 is outside its band" in text and "over 3 seeds" in text
    assert "n = 4 is outside its band [3, 3]" in text
    assert "name = 'y' is none of the values seen" in text
    assert "records new = 1, which the reference file does not know" in text
    assert "labkit reference 42_tiny --seeds 3" in text
    assert R.make_reference("42_tiny", runs)["alpha"] == R.ALPHA == 1e-6  # the default: a wider band
    missing = R.compare_to_reference({"acc": 0.81, "name": "x", "rounds": [0.1]}, ref)
    assert missing == ["42_tiny: the reference file has n but the run did not record it (stale: the lab no longer "
                       "records it); regenerate it with `labkit reference 42_tiny --seeds 3`"]
    assert R.compare_to_reference({"acc": float("nan"), "n": 3, "name": "x", "rounds": [0.1]}, ref)


def test_load_reference_says_what_to_run(labs: Path):
    with pytest.raises(R.ReferenceFileError, match=r"42_tiny: no reference file at .*labkit reference 42_tiny --seeds 10"):
        R.load_reference("42")
    path = labs / "reference" / "42_tiny.json"
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(R.ReferenceFileError, match="42_tiny: reference file .* is not valid JSON"):
        R.load_reference("42")
    path.write_text(json.dumps({"schema": 1, "values": {"a": {"kind": "number", "low": 0}}}))
    with pytest.raises(R.ReferenceFileError, match="malformed entry for 'a'.*labkit reference 42_tiny"):
        R.load_reference("42_tiny")
    path.write_text(json.dumps({"schema": 0, "values": {}}))
    with pytest.raises(R.ReferenceFileError, match="malformed"):
        R.load_reference("42_tiny")


def test_spread_quotes_the_range_over_seeds(labs: Path):
    ref = R.make_reference("42_tiny", [_run(1, {"acc": 0.80}), _run(2, {"acc": 0.86}), _run(3, {"acc": 0.84})])
    (labs / "reference").mkdir()
    (labs / "reference" / "42_tiny.json").write_text(json.dumps(ref))
    assert R.spread("42_tiny", "acc", 0.8412) == "0.84 (0.80-0.86 over 3 seeds)"
    assert R.spread("42_tiny", "acc", 0.8412, fmt=".0%") == "84% (80%-86% over 3 seeds)"
    assert R.spread("42_tiny", "acc", 0.8412, profile="smoke") == "0.84"  # another profile: no band applies
    assert R.spread("42_tiny", "unknown", 0.5) == "0.50"
    logs = R.make_reference("42_tiny", [_run(1, {"lg": -10.5}), _run(2, {"lg": -5.2}), _run(3, {"lg": -7.0})])
    (labs / "reference" / "42_tiny.json").write_text(json.dumps(logs))
    assert R.spread("42_tiny", "lg", -9.51, fmt=".1f") == "-9.5 (-10.5 to -5.2 over 3 seeds)"
    (labs / "reference" / "42_tiny.json").write_text(json.dumps(ref))
    import labkit as lk

    cfg = lk.setup("standard", "embedded", 0, lab="42_tiny", quiet=True)
    assert cfg.spread("acc", 0.8412) == "0.84 (0.80-0.86 over 3 seeds)"
    assert lk.setup("standard", "embedded", 0, quiet=True).spread("acc", 0.8412) == "0.84"
    with pytest.raises(TypeError, match="lab must be the lab's name"):
        lk.setup("standard", "embedded", 0, lab=42, quiet=True)


@pytest.mark.slow
def test_reference_command_runs_seeds_reuses_them_and_reports(labs: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]):
    work, out = tmp_path / "work", tmp_path / "ref"
    argv = ["reference", "42", "--seeds", "2", "--work-dir", str(work), "--output-dir", str(out)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "42_tiny seed 1: running" in text and "42_tiny seed 2: running" in text
    ref = json.loads((out / "42_tiny.json").read_text())
    assert ref["seeds"] == [1, 2] and ref["values"]["n"]["low"] == ref["values"]["n"]["high"] == 2
    assert (work / "seed1" / "42_tiny.results.json").is_file() and not (work / "seed0").exists()
    assert cli.main(argv) == 0  # the runs are there: nothing is executed again
    assert "42_tiny seed 1: reusing" in capsys.readouterr().out
    shutil.copytree(out, labs / "reference")
    assert cli.main(["reference", "42", "--report"]) == 0
    assert "| 42_tiny | `n` | 2 |" in capsys.readouterr().out
    assert cli.main(["reference", "42", "--seeds", "1"]) == 2
    assert "--seeds must be at least 2" in capsys.readouterr().err


_NBVAL_CONFTEST = (ROOT / "conftest.py").read_text()


@pytest.mark.slow
def test_band_item_follows_each_notebook_and_can_fail(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """nbval runs the tiny lab; the item added after its last cell passes with a band that holds its
    records, and fails, naming the key and its band, with one that does not."""
    pytester.makeconftest(_NBVAL_CONFTEST)
    labs = pytester.path / "labs"
    make_lab(labs)
    monkeypatch.setenv("LABKIT_LABS", str(labs))
    runs = [_run(1, {"n": 2, "size": 3}), _run(2, {"n": 2, "size": 3})]
    (labs / "reference").mkdir()
    (labs / "reference" / "42_tiny.json").write_text(json.dumps(R.make_reference("42_tiny", runs)))
    result = pytester.runpytest_subprocess("--nbval-lax", "-p", "no:cacheprovider", "labs", "-v")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*42_tiny.ipynb::reference bands PASSED*"])
    runs = [_run(1, {"n": 5, "size": 3}), _run(2, {"n": 5, "size": 3})]  # n = 5 exactly
    (labs / "reference" / "42_tiny.json").write_text(json.dumps(R.make_reference("42_tiny", runs)))
    result = pytester.runpytest_subprocess("--nbval-lax", "-p", "no:cacheprovider", "labs")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*42_tiny: n = 2 is outside its band*"])


def test_a_saturated_rate_borrows_the_spread_of_its_siblings():
    """acc[0.2] is 0.0 at every seed while acc[0.1] varies (sd 0.02): 0.0 is a saturated rate, and its
    band is the t interval with the pooled sd; a constant without varying siblings stays tight."""
    runs = [_run(s, {"acc": {"0.1": a, "0.2": 0.0}, "area": 0.25, "grey": {"x": 0.1, "y": 0.1}})
            for s, a in zip((1, 2, 3), (0.30, 0.32, 0.34))]
    ref = R.make_reference("42_tiny", runs, alpha=0.01)
    sat = ref["values"]['acc["0.2"]']
    half = 9.9248 * 0.02 * math.sqrt(4 / 3)
    assert sat["pooled_sd"] == pytest.approx(0.02) and sat["high"] == pytest.approx(half, abs=1e-3)
    assert ref["values"]["area"]["high"] - 0.25 < 1e-4  # no siblings: the float tolerance
    assert ref["values"]['grey["x"]']["high"] - 0.1 < 1e-4  # siblings that do not vary either


def test_a_run_that_moved_as_a_whole_fails_though_every_value_is_in_its_band():
    # ten seeds of twelve values, each value's samples -1, +1 alternating: mean 0, sd 1.054 (hand: sqrt(10/9))
    keys = [f"v{i}" for i in range(12)]
    runs = [_run(s, {k: (1.0 if s % 2 else -1.0) for k in keys}) for s in range(1, 11)]
    ref = R.make_reference("42_tiny", runs)
    sd = math.sqrt(10 / 9)
    assert ref["values"]["v0"]["sd"] == pytest.approx(sd)
    scale = sd * math.sqrt(1 + 1 / 10)
    assert R.shift_score({k: 0.5 * scale for k in keys}, ref["values"]) == (pytest.approx(0.5), 12)
    assert R.compare_to_reference({k: 0.5 * scale for k in keys}, ref) == []
    moved = {k: 5 * scale for k in keys}  # five sd: inside every band (about 12 sd), not as a whole
    assert all(ref["values"][k]["low"] < moved[k] < ref["values"][k]["high"] for k in keys)
    problems = R.compare_to_reference(moved, ref)
    assert len(problems) == 1 and "median 5.00 sd" in problems[0] and "over 12 values" in problems[0]
    assert "labkit reference 42_tiny --seeds 10" in problems[0]
    # a single value far off moves the median little: its band is what judges it
    one_off = {**{k: 0.0 for k in keys}, "v0": 5 * scale}
    assert R.compare_to_reference(one_off, ref) == []
    # fewer than SHIFT_MIN_VALUES varying values: no lab-level judgement
    few = R.make_reference("42_tiny", [_run(s, {k: (1.0 if s % 2 else -1.0) for k in keys[:5]}) for s in range(1, 11)])
    assert R.shift_score({k: 5 * scale for k in keys[:5]}, few["values"]) is None
