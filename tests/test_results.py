"""lk.record / lk.check: JSON forms, pass/fail lines, and the results file the runner reads."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from labkit import results
from labkit.results import check, get_results, record, reset_results, set_meta, to_jsonable


# --- record -------------------------------------------------------------------------------------

def test_record_stores_json_forms_and_returns_nothing() -> None:
    t = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert record("matrix", t) is None  # a cell ending in lk.record(...) must not echo the value
    record("scalar_tensor", torch.tensor(0.25))
    record("one_element_vector", torch.tensor([7]))
    record("array", np.arange(3, dtype=np.int64))
    record("np_float", np.float32(0.5))
    record("np_int", np.int64(3))
    record("np_bool", np.bool_(True))
    record("tuple", (1, (2, 3)))
    record("int_keys", {1: "a", 2: {3: 4.5}})
    record("none", None)
    rec = get_results()["records"]
    assert rec["matrix"] == [[1.0, 2.0], [3.0, 4.0]]
    assert rec["scalar_tensor"] == 0.25 and isinstance(rec["scalar_tensor"], float)
    assert rec["one_element_vector"] == [7]  # a 1-D tensor stays a list
    assert rec["array"] == [0, 1, 2] and all(type(v) is int for v in rec["array"])
    assert rec["np_float"] == 0.5 and type(rec["np_float"]) is float
    assert rec["np_int"] == 3 and type(rec["np_int"]) is int
    assert rec["np_bool"] is True
    assert rec["tuple"] == [1, [2, 3]]
    assert rec["int_keys"] == {"1": "a", "2": {"3": 4.5}}
    assert rec["none"] is None
    json.dumps(rec, allow_nan=False)  # everything is strict JSON


def test_record_does_not_modify_the_callers_tensor() -> None:
    t = torch.tensor([1.0, 2.0], requires_grad=True)
    record("t", t * 1)
    record("t2", t)
    assert t.requires_grad and t.tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    "value, expected",
    [
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (-math.inf, "-inf"),
        (torch.tensor(float("nan")), "nan"),
        (np.float64("nan"), "nan"),
        (torch.tensor([1.0, float("inf")]), [1.0, "inf"]),
        (np.array([float("nan"), 2.0]), ["nan", 2.0]),
        ({"a": [float("nan")]}, {"a": ["nan"]}),
    ],
)
def test_non_finite_numbers_become_strings(value, expected) -> None:
    assert to_jsonable(value) == expected
    record("v", value)
    json.dumps(get_results(), allow_nan=False)  # would raise on a bare NaN / Infinity


def test_re_record_overwrites() -> None:
    record("acc", 0.5)
    record("acc", 0.75)
    assert get_results()["records"] == {"acc": 0.75}


@pytest.mark.parametrize("name", ["", "1abc", "has space", "a/b", None, 3, "é"])
def test_bad_record_names_raise_naming_the_rule(name) -> None:
    with pytest.raises(ValueError, match="record name must be a string of letters"):
        record(name, 1)
    assert get_results()["records"] == {}


@pytest.mark.parametrize("name", ["acc", "_private", "val.acc", "lab-00.acc_1"])
def test_good_record_names(name: str) -> None:
    record(name, 1)
    assert get_results()["records"][name] == 1


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", torch.nn.Linear(1, 1), [1, object()]])
def test_unsupported_values_raise_a_helpful_type_error(value) -> None:
    with pytest.raises(TypeError, match="record numbers, strings, lists, dicts, tensors or arrays"):
        record("x", value)
    assert "x" not in get_results()["records"]  # nothing half-stored


# --- check --------------------------------------------------------------------------------------

def test_check_prints_pass_and_fail_lines(capsys) -> None:
    assert check("acc_high", True, "accuracy 0.97 >= 0.9") == True  # noqa: E712 (bool-like outcome)
    assert not check("loss_low", False)
    out = capsys.readouterr().out.splitlines()
    assert out == ["[PASS] acc_high: accuracy 0.97 >= 0.9", "[FAIL] loss_low"]
    checks = get_results()["checks"]
    assert [(c["name"], c["passed"], c["detail"], c["points"]) for c in checks] == [
        ("acc_high", True, "accuracy 0.97 >= 0.9", 1.0),
        ("loss_low", False, "", 1.0),
    ]


def test_check_quiet_prints_nothing_but_records(capsys) -> None:
    check("silent", True, quiet=True, points=2)
    assert capsys.readouterr().out == ""
    assert get_results()["checks"] == [{"name": "silent", "passed": True, "detail": "", "points": 2.0}]


@pytest.mark.parametrize(
    "condition, expected",
    [
        (torch.tensor(True), True),
        (torch.tensor([False]), False),
        (torch.tensor(3.0) > 2, True),
        (np.bool_(False), False),
        (np.array([True]), True),
        (1, True),
        (0, False),
    ],
)
def test_check_accepts_bool_like_values(condition, expected: bool) -> None:
    assert bool(check("c", condition, quiet=True)) is expected
    assert get_results()["checks"][0]["passed"] is expected


@pytest.mark.parametrize("condition", [0.9, "yes", None, [True]])
def test_check_rejects_non_bool(condition) -> None:
    with pytest.raises(TypeError, match="condition must be a bool"):
        check("c", condition)
    assert get_results()["checks"] == []


@pytest.mark.parametrize("condition", [torch.tensor([True, False]), np.array([True, True])])
def test_check_rejects_many_element_tensors_saying_how_to_reduce(condition) -> None:
    with pytest.raises(TypeError, match=r"2 elements; reduce it with \.all\(\) or \.any\(\)"):
        check("c", condition)


def test_check_rejects_negative_points_and_bad_names() -> None:
    with pytest.raises(ValueError, match="points must be a non-negative number"):
        check("c", True, points=-1)
    with pytest.raises(ValueError, match="check name"):
        check("bad name", True)
    assert get_results()["checks"] == []


def test_re_check_replaces_the_earlier_outcome(capsys) -> None:
    check("a", False, quiet=True)
    check("b", True, quiet=True)
    check("a", True, "second try", quiet=True)
    checks = get_results()["checks"]
    assert [(c["name"], c["passed"]) for c in checks] == [("b", True), ("a", True)]
    assert checks[1]["detail"] == "second try"


def test_set_meta_and_reset() -> None:
    set_meta(profile="smoke", seed=np.int64(3), tensor=torch.tensor([1, 2]))
    record("r", 1)
    check("c", True, quiet=True)
    assert get_results()["meta"] == {"profile": "smoke", "seed": 3, "tensor": [1, 2]}
    reset_results()
    assert get_results() == {"records": {}, "checks": [], "meta": {}}


def test_get_results_is_a_copy() -> None:
    record("a", 1)
    got = get_results()
    got["records"]["a"] = 99
    got["checks"].append("junk")
    assert get_results()["records"]["a"] == 1 and get_results()["checks"] == []


# --- the results file ---------------------------------------------------------------------------

def test_results_file_is_rewritten_after_each_call(tmp_path, monkeypatch) -> None:
    target = tmp_path / "sub" / "lab.results.json"  # the parent folder is created
    monkeypatch.setenv("LABKIT_RESULTS_FILE", str(target))

    def load() -> dict:
        with open(target) as fh:
            return json.load(fh)

    record("acc", torch.tensor(0.5))
    assert load()["records"] == {"acc": 0.5}
    check("ok", True, quiet=True)
    assert load()["checks"][0]["name"] == "ok"
    record("acc", float("nan"))
    text = target.read_text()
    assert "NaN" not in text and json.loads(text)["records"]["acc"] == "nan"
    set_meta(profile="smoke")
    assert load() == get_results()
    # atomic writes: only the results file, no temp files left behind
    assert sorted(p.name for p in target.parent.iterdir()) == ["lab.results.json"]


def test_no_file_is_written_without_the_variable(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    record("a", 1)
    check("c", True, quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_failed_flush_leaves_no_temp_file(tmp_path, monkeypatch) -> None:
    target = tmp_path / "r.json"
    monkeypatch.setenv("LABKIT_RESULTS_FILE", str(target))
    record("a", 1)

    def broken_results() -> dict:
        raise RuntimeError("disk full")

    monkeypatch.setattr(results, "get_results", broken_results)
    with pytest.raises(RuntimeError, match="disk full"):
        record("b", 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    assert json.loads(target.read_text())["records"] == {"a": 1}  # the last good file is intact


def test_check_outcome_is_bool_like_and_silent_in_notebooks(capsys):
    ok, bad = check("a", True), check("b", False, quiet=True)
    assert bool(ok) is True and bool(bad) is False
    assert ok == True and bad == False and ok != bad  # noqa: E712
    assert ok._ipython_display_() is None  # IPython shows nothing for a cell ending in lk.check
    assert "PASS" in capsys.readouterr().out
