"""Glyph bitmaps from the TrueType fonts that matplotlib ships, for the embedded ``glyph_digits``
generator (labs 00, 07, 09, 10).

The data layer's one use of matplotlib: its FreeType wrapper (``matplotlib.ft2font``) and its font
folder, nothing that draws figures (that is ``labkit.plotting``, a layer above the data).
"""

from __future__ import annotations

import numpy as np


def font_file(name: str) -> str:
    """Path of a TrueType font that matplotlib ships (``mpl-data/fonts/ttf/NAME``).

    Used by the embedded ``glyph_digits`` generator (labs 00, 07, 09, 10); raises
    FileNotFoundError naming the folder when the font is absent.
    """
    import os

    import matplotlib

    folder = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"font {name!r} not found in {folder}; choose one of {sorted(os.listdir(folder))}")
    return path


def render_glyph(font_name: str, text: str, *, size: int = 96) -> np.ndarray:
    """Anti-aliased bitmap of ``text`` in one of matplotlib's fonts, float ``[H, W]`` in [0, 1].

    Rendered by matplotlib's FreeType wrapper (``FT2Font``) at ``size`` points and 72 dpi;
    the embedded ``glyph_digits`` generator redraws these glyphs with a random pen.
    """
    from matplotlib.ft2font import FT2Font

    if not isinstance(text, str) or not text:
        raise ValueError(f"render_glyph: text must be a non-empty str, got {text!r}")
    font = FT2Font(font_file(font_name))
    font.set_size(size, 72)
    font.set_text(text)
    font.draw_glyphs_to_bitmap(antialiased=True)
    return np.asarray(font.get_image(), dtype=np.float32) / 255.0
