"""``lk.record`` and ``lk.check``: what a lab measured and what it verified (every lab).

Records and checks live in this process; when the runner executes a lab it sets
``LABKIT_RESULTS_FILE`` and every call rewrites that JSON file atomically, so a crash
mid-lab still leaves what had been measured so far.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["record", "check", "get_results", "reset_results", "set_meta", "to_jsonable", "CheckResult", "CheckOutcome"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass
class CheckResult:
    """One ``lk.check`` outcome."""

    name: str
    passed: bool
    detail: str = ""
    points: float = 1.0


@dataclass
class _Store:
    records: dict[str, Any] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


_STORE = _Store()


def to_jsonable(value: Any) -> Any:
    """Convert tensors, NumPy values, tuples and dict keys to plain JSON types."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    # Tensors and NumPy values are converted, then converted again so that nan/inf inside
    # them become strings too (json would otherwise write NaN, which is not valid JSON).
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensor
        value = value.detach().cpu()
        return to_jsonable(value.item() if value.dim() == 0 else value.tolist())
    if np is not None and isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if np is not None and isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"lk.record cannot store a value of type {type(value).__name__}; "
        "record numbers, strings, lists, dicts, tensors or arrays"
    )


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{what} name must be a string of letters, digits, '_', '.', '-' starting with a letter or '_', got {name!r}"
        )
    return name


def _flush() -> None:
    path = os.environ.get("LABKIT_RESULTS_FILE")
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".results-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(get_results(), fh, indent=1, sort_keys=True, allow_nan=False)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record(name: str, value: Any) -> None:
    """Record a lab's key result under ``name`` (re-recording overwrites).

    The value is stored in JSON form (tensors and arrays become lists). Nothing is returned, so
    that ``lk.record(...)`` as the last line of a notebook cell does not echo the value again
    below the line that printed it.
    """
    _STORE.records[_check_name(name, "record")] = to_jsonable(value)
    _flush()


class CheckOutcome:
    """What ``lk.check`` returns: truthy when the check passed.

    It behaves as a bool (``if lk.check(...)``, ``== True``) but shows nothing when it is the
    last expression of a notebook cell, so that the printed PASS/FAIL line is all the student
    sees (a bare ``True`` under every check was noise).
    """

    __slots__ = ("passed",)

    def __init__(self, passed: bool) -> None:
        self.passed = bool(passed)

    def __bool__(self) -> bool:
        return self.passed

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CheckOutcome):
            return self.passed == other.passed
        if isinstance(other, (bool, int)):
            return self.passed == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.passed)

    def __repr__(self) -> str:
        return f"CheckOutcome(passed={self.passed})"

    def _ipython_display_(self) -> None:  # IPython: display nothing
        return None


def check(name: str, condition: Any, detail: str = "", *, points: float = 1.0,
          quiet: bool = False) -> CheckOutcome:
    """Verify ``condition`` and print a pass/fail line for the student; recorded for grading.

    ``condition`` may be a bool, a NumPy bool or a one-element tensor. ``detail`` says what
    was compared (e.g. ``f"accuracy {acc:.2f} >= 0.8"``). Never raises on failure, so a lab
    keeps running and the student sees every check.
    """
    _check_name(name, "check")
    if hasattr(condition, "item"):
        size = condition.numel() if hasattr(condition, "numel") else getattr(condition, "size", 1)  # torch / NumPy
        if size != 1:
            raise TypeError(f"check {name!r}: condition must be a single bool, got a tensor/array with "
                            f"{size} elements; reduce it with .all() or .any()")
        condition = condition.item()
    if not isinstance(condition, (bool, int)):
        raise TypeError(f"check {name!r}: condition must be a bool, got {type(condition).__name__}")
    if not isinstance(points, (int, float)) or points < 0:
        raise ValueError(f"check {name!r}: points must be a non-negative number, got {points!r}")
    passed = bool(condition)
    _STORE.checks = [c for c in _STORE.checks if c.name != name]
    _STORE.checks.append(CheckResult(name, passed, str(detail), float(points)))
    _flush()
    if not quiet:
        mark = "PASS" if passed else "FAIL"
        print(f"[{mark}] {name}" + (f": {detail}" if detail else ""))
    return CheckOutcome(passed)


def set_meta(**meta: Any) -> None:
    """Runner/setup information stored beside the records (profile, data, seed ...)."""
    _STORE.meta.update(to_jsonable(meta))
    _flush()


def get_results() -> dict[str, Any]:
    """Everything recorded so far: ``{"records": ..., "checks": [...], "meta": ...}``."""
    return {
        "records": dict(_STORE.records),
        "checks": [asdict(c) for c in _STORE.checks],
        "meta": dict(_STORE.meta),
    }


def reset_results() -> None:
    """Forget all records, checks and metadata (tests use it)."""
    _STORE.records.clear()
    _STORE.checks.clear()
    _STORE.meta.clear()
