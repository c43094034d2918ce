"""labkit.datasets.augment: seeded batch augmentations for lk.fit(augment=...)."""

from __future__ import annotations

import pytest
import torch

import labkit as lk


def test_make_augment_preserves_content_and_input():
    aug = lk.make_augment(seed=0, shift=0.25)
    x = torch.rand(6, 3, 8, 8)
    x0 = x.clone()
    y = aug(x)
    assert torch.equal(x, x0) and y.shape == x.shape
    # flips, quarter turns and circular shifts only permute pixels
    assert torch.allclose(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    assert not torch.equal(y, x)
    assert torch.equal(lk.make_augment(seed=0, shift=0.25)(x), y)  # reproducible
    ident = lk.make_augment(flips=False, rot90=False, shift=0.0)
    assert torch.equal(ident(x), x)
    with pytest.raises(ValueError, match="shift"):
        lk.make_augment(shift=0.7)
