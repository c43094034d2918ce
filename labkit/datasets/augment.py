"""Batch augmentations for training (``lk.fit(augment=...)``): functions ``[B, C, H, W] -> [B, C, H, W]``
with their own seeded generator."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import check_int

__all__ = ["make_augment"]


def make_augment(*, flips: bool = True, rot90: bool = True, shift: float = 0.1, seed: int = 0) -> Callable[[Tensor], Tensor]:
    """A batch augmentation for ``lk.fit(augment=...)``: random flips, quarter turns and circular shifts.

    ``shift``: the largest translation as a fraction of the image side. Each call draws new random
    transforms from the function's own generator (seeded; the global RNG is untouched); the input
    batch is not modified. Meant for small synthetic images whose class does not depend on the
    orientation (lab 01's shapes).
    """
    if not isinstance(flips, bool) or not isinstance(rot90, bool):
        raise TypeError(f"flips and rot90 must be True or False, got {flips!r} and {rot90!r}")
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 <= shift < 0.5:
        raise ValueError(f"shift must be a fraction in [0, 0.5), got {shift!r}")
    check_int(seed, "seed", "make_augment", low=0)
    g = torch.Generator().manual_seed(seed)

    def augment(x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"augment expects a batch [B, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")
        out = x.clone()
        b, _, h, w = x.shape
        if flips:
            flip = torch.rand(b, generator=g) < 0.5
            out[flip.to(x.device)] = out[flip.to(x.device)].flip(-1)
        turns = torch.randint(0, 4, (b,), generator=g) if rot90 and h == w else torch.zeros(b, dtype=torch.long)
        max_dy, max_dx = int(shift * h), int(shift * w)
        dy = torch.randint(-max_dy, max_dy + 1, (b,), generator=g)
        dx = torch.randint(-max_dx, max_dx + 1, (b,), generator=g)
        for i in range(b):
            img = out[i]
            if turns[i]:
                img = torch.rot90(img, int(turns[i]), dims=(-2, -1))
            if dy[i] or dx[i]:
                img = torch.roll(img, shifts=(int(dy[i]), int(dx[i])), dims=(-2, -1))
            out[i] = img
        return out

    return augment
