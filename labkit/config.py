"""``lk.setup``: validate a lab's parameters cell, seed, pick the device (every lab's first code cell)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from .device import get_device
from .reproducibility import seed_everything
from .results import set_meta

__all__ = ["setup", "LabConfig", "PROFILES", "DATA_MODES"]

PROFILES = ("smoke", "standard", "full")
DATA_MODES = ("embedded", "real")
T = TypeVar("T")


@dataclass(frozen=True)
class LabConfig:
    """The validated parameters of one lab run."""

    profile: str
    data: str
    seed: int
    device: torch.device

    def pick(self, *, smoke: T, standard: T, full: T | None = None) -> T:
        """The value for the current profile (``full`` defaults to ``standard``)."""
        if self.profile == "smoke":
            return smoke
        if self.profile == "full" and full is not None:
            return full
        return standard

    @property
    def real(self) -> bool:
        return self.data == "real"


def setup(profile: str = "standard", data: str = "embedded", seed: int = 0, *,
          device: str | torch.device = "auto", threads: int | None = None, quiet: bool = False,
          **extra: Any) -> LabConfig:
    """Check the parameters, seed everything and choose the device; returns a :class:`LabConfig`.

    ``extra`` parameters (e.g. ``weights="random"``) are stored with the run's metadata.
    """
    if profile not in PROFILES:
        raise ValueError(f"PROFILE must be one of {PROFILES}, got {profile!r}")
    if data not in DATA_MODES:
        raise ValueError(f"DATA must be one of {DATA_MODES}, got {data!r}")
    seed = seed_everything(seed)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int (or None to keep torch's default), got {threads!r}")
        torch.set_num_threads(threads)
    dev = get_device(device)
    set_meta(profile=profile, data=data, seed=seed, device=str(dev), **extra)
    if not quiet:
        print(f"profile={profile}  data={data}  seed={seed}  device={dev}  torch threads={torch.get_num_threads()}")
    return LabConfig(profile, data, seed, dev)
