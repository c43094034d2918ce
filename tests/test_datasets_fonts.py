"""labkit.datasets._fonts: glyph bitmaps from matplotlib's bundled fonts (the glyph digits' source)."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.datasets import _fonts as P


def test_render_glyph_draws_ink_in_unit_range():
    img = P.render_glyph("DejaVuSans.ttf", "1", size=48)
    assert img.ndim == 2 and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.max() > 0.9
    # a "1" (with its foot serif in DejaVu Sans) is taller than wide
    ys, xs = np.nonzero(img > 0.5)
    assert (ys.max() - ys.min()) > 1.5 * (xs.max() - xs.min())


def test_font_file_errors_name_the_folder():
    with pytest.raises(FileNotFoundError, match="not found in"):
        P.font_file("no_such_font.ttf")
    with pytest.raises(ValueError, match="non-empty"):
        P.render_glyph("DejaVuSans.ttf", "")
