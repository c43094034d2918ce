"""Shared fixtures: a writable copy of the real-data mirror, a fresh results store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("LABKIT_MIRROR", ROOT.parent / "shared" / "datasets"))



def _threads() -> int:
    """OMP_NUM_THREADS when set to a number (`make test` sets 1: one thread per xdist worker), else at most 2."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else max(1, min(2, os.cpu_count() or 1))


torch.set_num_threads(_threads())


def _copy_mirror(dest: Path) -> Path:
    """Copy the mirror's MNIST (torchvision extracts into it) and link the read-only image folders."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in MIRROR.iterdir():
        target = dest / entry.name
        if target.exists():
            continue
        if entry.name == "MNIST":
            shutil.copytree(entry, target)
            for p in target.rglob("*"):
                p.chmod(0o755 if p.is_dir() else 0o644)
            target.chmod(0o755)
        else:
            target.symlink_to(entry)
    return dest


@pytest.fixture(scope="session")
def mirror_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable data root holding the real-data mirror (skips, saying why, when absent)."""
    if not (MIRROR / "MNIST").is_dir():
        pytest.skip(f"real-data mirror not found at {MIRROR} (CI has it as ../shared/datasets)")
    return _copy_mirror(tmp_path_factory.mktemp("labkit-data"))


@pytest.fixture(autouse=True)
def _fresh_results(monkeypatch: pytest.MonkeyPatch):
    """Each test starts with an empty ``lk.record``/``lk.check`` store and no results file."""
    from labkit.results import reset_results

    monkeypatch.delenv("LABKIT_RESULTS_FILE", raising=False)
    reset_results()
    yield
    reset_results()
