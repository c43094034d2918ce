"""Seeding and determinism (used by every lab's setup cell and by the data generators)."""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

__all__ = ["seed_everything", "make_generator", "numpy_rng", "seed_worker", "deterministic"]


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    return int(seed)


def seed_everything(seed: int, *, deterministic_algorithms: bool = False) -> int:
    """Seed Python, NumPy and torch (CPU and CUDA); optionally ask torch for deterministic kernels.

    Returns the seed, so a lab can write ``SEED = lk.seed_everything(SEED)``.
    """
    seed = _check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic_algorithms:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return seed


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded with ``seed``: pass it to DataLoaders and random ops."""
    g = torch.Generator(device=device)
    g.manual_seed(_check_seed(seed))
    return g


def numpy_rng(seed: int) -> np.random.Generator:
    """A NumPy ``Generator`` (PCG64) seeded with ``seed``; used by the embedded data sets."""
    return np.random.default_rng(_check_seed(seed))


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: derive NumPy/random seeds from torch's worker seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


@contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Temporarily switch torch to deterministic algorithms; restores the previous setting."""
    old = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_bench = torch.backends.cudnn.benchmark
    old_det = torch.backends.cudnn.deterministic
    try:
        torch.use_deterministic_algorithms(enabled, warn_only=True)
        torch.backends.cudnn.deterministic = enabled
        torch.backends.cudnn.benchmark = not enabled and old_bench
        yield
    finally:
        torch.use_deterministic_algorithms(old, warn_only=old_warn)
        torch.backends.cudnn.benchmark = old_bench
        torch.backends.cudnn.deterministic = old_det
