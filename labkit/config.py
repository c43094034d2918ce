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
    lab: str | None = None

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

    def spread(self, key: str, value: float, fmt: str = ".2f") -> str:
        """``value`` formatted, with the range its reference run saw over seeds when this run is the
        reference's (standard profile, embedded data): ``"0.89 (0.86-0.91 over 5 seeds)"``.

        ``key`` is the recorded value's name as the reference file spells it (``"test_accuracy"``,
        ``'acc_fgsm["0.1"]'``); see :mod:`labkit.reference`.
        """
        if self.lab is None:
            return format(value, fmt)
        from .reference import spread

        return spread(self.lab, key, value, fmt=fmt, profile=self.profile, data=self.data)


def setup(profile: str = "standard", data: str = "embedded", seed: int = 0, *,
          device: str | torch.device = "auto", threads: int | None = None, quiet: bool = False,
          lab: str | None = None, **extra: Any) -> LabConfig:
    """Check the parameters, seed everything and choose the device; returns a :class:`LabConfig`.

    ``extra`` parameters (e.g. ``weights="random"``) are stored with the run's metadata. ``lab``
    (``"00_welcome"``) names the lab whose reference bands :meth:`LabConfig.spread` quotes.
    """
    if lab is not None and not isinstance(lab, str):
        raise TypeError(f"lab must be the lab's name as a string (e.g. '00_welcome'), got {type(lab).__name__}")
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
    return LabConfig(profile, data, seed, dev, lab)
