"""Embedded, procedural data sets: no files, no network, deterministic in ``seed``.

- :func:`shapes` / :func:`scenes`: coloured geometric shapes with pixel masks (labs 00-02, 05, 06, 08).
- :func:`glyph_digits`: MNIST-like digits rendered from matplotlib's fonts, and their
  MNIST-M-like photo domain (labs 03, 04, 07, 09, 10).
- :func:`uci_digits`: scikit-learn's 8x8 handwritten digits, upsampled.
- :func:`photos`: scikit-image's bundled colour photos.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..reproducibility import numpy_rng
from .._checks import check_int
from ._common import PHOTO_LABELS, PHOTO_NAMES, photos
from ._glyphs import GLYPH_FONTS, glyph_digits
from ._shapes import BACKGROUNDS, SHAPE_CLASSES, scenes, shapes
from .base import ImageSet

__all__ = ["SHAPE_CLASSES", "BACKGROUNDS", "PHOTO_NAMES", "PHOTO_LABELS", "GLYPH_FONTS", "shapes", "scenes",
           "glyph_digits", "uci_digits", "photos"]


def uci_digits(*, size: int = 28, seed: int = 0) -> ImageSet:
    """scikit-learn's 1797 handwritten 8x8 digits (UCI, Alpaydin & Kaynak 1998), upsampled.

    Bilinear upsampling to ``size x size``, 1 channel, values in ``[0, 1]``; the order is a
    permutation fixed by ``seed``. A small real handwritten set for labs 03, 07 and 09.
    """
    size = check_int(size, "size", low=8, high=256)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.from_numpy(numpy_rng(seed).permutation(len(y)))
    return ImageSet(x[perm].contiguous(), y[perm].contiguous(), [str(i) for i in range(10)], name="uci_digits")
