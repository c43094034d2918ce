"""pytest hooks for the lab notebooks that nbval collects from ``labs/`` (``make test``).

nbval executes each committed notebook (standard profile, embedded data, its default seed) in one
kernel and compares exactly the outputs of the ``# NBVAL_CHECK_OUTPUT`` cells: the cells whose
output does not depend on training noise. Trained numbers differ between CPU kinds, so they are
checked here instead: the kernel writes what ``lk.record`` / ``lk.check`` saw to a results file,
and one more test item after the notebook's last cell checks that every check passed and that
every recorded value lies in its reference band (``labs/reference/LAB.json``, see
``labkit/reference.py``). The lab is executed once for both.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from labkit.runner import _env

_RESULTS_DIR = Path(tempfile.mkdtemp(prefix="labkit-nbval-results-"))


def _notebook_collector(item: pytest.Item):
    parent = item.parent
    return parent if type(parent).__name__ == "IPyNbFile" else None


class LabReferenceItem(pytest.Item):
    """Runs after the notebook's last cell: its checks passed, its records lie in their bands."""

    def runtest(self) -> None:
        from labkit import reference

        lab = self.path.stem
        results_file = _RESULTS_DIR / f"{lab}.results.json"
        if not results_file.is_file():
            raise AssertionError(f"{lab}: the notebook's kernel wrote no results file ({results_file}): "
                                 "did its first cells fail?")
        results = json.loads(results_file.read_text())
        failed = [f"{c['name']}: {c['detail']}" for c in results["checks"] if not c["passed"]]
        problems = [f"{lab}: check failed: {f}" for f in failed]
        problems += reference.compare_to_reference(results["records"], reference.load_reference(lab))
        if problems:
            raise AssertionError("\n".join(problems))

    def repr_failure(self, excinfo, style=None):  # noqa: ANN001 - pytest's signature
        if isinstance(excinfo.value, (AssertionError, ValueError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"{self.path.stem}: checks pass, records within their reference bands"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    """Before nbval starts a notebook's kernel, point the kernel's results file at our folder."""
    nbfile = _notebook_collector(item)
    if nbfile is None or getattr(nbfile, "kernel", None) is not None:
        yield
        return
    results_file = _RESULTS_DIR / f"{item.path.stem}.results.json"
    results_file.unlink(missing_ok=True)
    values = {"LABKIT_RESULTS_FILE": str(results_file), "LABKIT_PROGRESS": "plain", "LABKIT_WIDGETS": "off",
              "PYTHONHASHSEED": "0"}
    with _env(**values):  # the kernel inherits the environment when nbval starts it
        yield


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Insert one LabReferenceItem right after each collected notebook's last cell (with
    `--dist loadfile` it runs on the worker that ran the notebook's cells)."""
    last: dict[object, int] = {}
    for i, item in enumerate(items):
        nbfile = _notebook_collector(item)
        if nbfile is not None:
            last[nbfile] = i
    for nbfile, i in sorted(last.items(), key=lambda kv: -kv[1]):
        items.insert(i + 1, LabReferenceItem.from_parent(nbfile, name="reference bands"))


# Files whose tests are independent lab runs of a minute or more each: `make test` (`--dist loadfile`)
# shares them out test by test, so that one worker does not run the whole file while the other idles.
# Every other file, and each
# notebook (its cells share one kernel), still goes to one worker as a whole.
SPREAD_FILES = ("tests/test_labs.py",)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile`, except that the tests of :data:`SPREAD_FILES` are scheduled one by one."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesButSpread(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if path in SPREAD_FILES else path

    return FilesButSpread(config, log)
