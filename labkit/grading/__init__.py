"""Instructor tooling: student versions of the labs and sandboxed batch grading (``labkit student``,
``labkit grade``). See the instructors page of the site (``book/instructors.md``).

Not part of the ``lk.`` namespace: import from here, e.g.
``from labkit.grading import grade_submissions, write_student_versions``. Names are imported
lazily, so that ``python -m labkit.grading.sandbox`` (the grading sandbox) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "STATUSES": "grade", "BatchReport": "grade", "GradeResult": "grade", "discover_submissions": "grade",
    "grade_submissions": "grade", "InstructorLab": "instructor", "load_instructor_lab": "instructor",
    "Isolation": "sandbox", "probe_isolation": "sandbox", "make_student_notebook": "student",
    "strip_solutions": "student", "write_student_versions": "student", "MemoryCap": "memory",
    "choose_memory_cap": "memory", "ConfigurationError": "memory", "allowlist": "sandbox",
}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"labkit.grading has no attribute {name!r}")
