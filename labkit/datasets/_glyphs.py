"""MNIST-like digits rendered from the fonts that matplotlib ships, redrawn with a random pen.

Per font and digit, a base glyph is rendered once (matplotlib's ``FT2Font``) and turned into two
distance fields on a canonical grid where the glyph is one unit tall: the signed distance to its
outline, and the distance to its skeleton (its centre line, ``skimage.morphology.skeletonize``).
A sample warps one field with a random affine map (rotation, slant, width) and a smooth elastic
displacement, then inks every pixel closer than a pen radius that varies along the strokes: the
skeleton field redraws the digit with a round pen (handwriting-like strokes of even width),
the outline field keeps the font's own contrast, made bolder or thinner. Handwritten forms that
fonts lack are redrawn from the skeletons (a 1 without base or flag, a 2 with a loop, an open 4,
a 6 / 9 with a straight stroke, a crossed 7, an 8 left open). Finally the digit is
fitted into a 20 x 20 box and centred by its centre of mass in 28 x 28, as MNIST was made
(LeCun et al. 1998). The photo domain blends the digits with photo crops like MNIST-M
(Ganin & Lempitsky 2015): ``out = |crop - digit|``.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..reproducibility import numpy_rng
from .._checks import check_int
from ._common import photo_crops
from .base import ImageSet

__all__ = ["GLYPH_FONTS", "glyph_digits"]

# Fonts of matplotlib's mpl-data/fonts/ttf with lining digits (cmmi10 has old-style figures).
GLYPH_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf",
)
DOMAINS = ("plain", "photo")
_RES = 96           # base fields: [-1.5, 1.5]^2 glyph units on a _RES x _RES grid
_UNIT = 32          # grid pixels per glyph height
_RENDER = 64        # first render of a sample: [-1, 1]^2 glyph units
_COARSE = 16        # grid of the smooth deformation, upsampled to the render
_CHUNK = 1024
# Relative weights of the base glyph styles (per digit, summed over the fonts).
_W_OUTLINE = 0.15   # the font's outline, bolder or thinner
_W_SKELETON = 0.85  # the font's skeleton redrawn with a round pen; split with the digit's variants
# Handwriting forms that the fonts lack, redrawn from a font's skeleton (see ``_variants``):
# digit -> {variant: share of the skeleton weight}; the unmodified skeleton keeps the rest.
_VARIANTS = {1: {"no_base": 0.35, "stem": 0.45}, 2: {"loop": 0.4}, 4: {"open": 0.55},
             6: {"straight": 0.45}, 7: {"crossbar": 0.25}, 8: {"open": 0.35}, 9: {"straight": 0.6}}
# Calibration against the MNIST *training* set (never the test set): width factors per digit
# (fonts draw 0, 2 and 5 narrower than handwriting: median bounding-box aspect 0.90, 0.95, 1.00 in
# MNIST against 0.71, 0.80, 0.80 before), and slant offsets (shear) per digit matching the median
# second-moment slant of MNIST's digits (7s and 3s are written more upright, 1s and 5s lean more).
_WIDTH = np.array([1.3, 0.9, 1.15, 1.03, 1.1, 1.22, 1.0, 1.0, 1.0, 0.97])
_SLANT = np.array([0.03, 0.13, -0.01, -0.11, -0.1, 0.07, -0.08, -0.2, 0.02, -0.04])


def _glyph_bitmap(font_name: str, digit: int) -> np.ndarray:
    """The digit's anti-aliased bitmap, cropped to its ink, as float in [0, 1]."""
    from ._fonts import render_glyph  # matplotlib's FreeType renderer, not its figures

    img = render_glyph(font_name, str(digit), size=96)
    ys, xs = np.nonzero(img > 0.5)
    return img[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


_NB = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _neighbours(sk: np.ndarray, y: int, x: int) -> list[tuple[int, int]]:
    h, w = sk.shape
    return [(y + dy, x + dx) for dy, dx in _NB if 0 <= y + dy < h and 0 <= x + dx < w and sk[y + dy, x + dx]]


def _prune(sk: np.ndarray, min_len: int) -> np.ndarray:
    """Remove skeleton spurs (end branches shorter than ``min_len`` pixels: serifs) and specks."""
    from scipy.ndimage import label

    sk = sk.copy()
    lab, k = label(sk, structure=np.ones((3, 3)))
    for i in range(1, k + 1):
        if (lab == i).sum() < min_len:
            sk[lab == i] = False
    for _ in range(2):
        ends = [(y, x) for y, x in zip(*np.nonzero(sk)) if len(_neighbours(sk, y, x)) == 1]
        for y, x in ends:
            path, prev, cur = [(y, x)], None, (y, x)
            while True:
                nxt = [p for p in _neighbours(sk, *cur) if p != prev and p not in path]
                if len(nxt) != 1 or len(_neighbours(sk, *nxt[0])) >= 3 or len(path) >= min_len:
                    break
                prev, cur = cur, nxt[0]
                path.append(cur)
            reached_junction = len(nxt) >= 1 and (len(nxt) > 1 or len(_neighbours(sk, *nxt[0])) >= 3)
            if reached_junction and len(path) < min_len:
                for p in path:
                    sk[p] = False
    return sk


def _line(sk: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> None:
    from skimage.draw import line

    h, w = sk.shape
    rr, cc = line(int(round(y0)), int(round(x0)), int(round(y1)), int(round(x1)))
    ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    sk[rr[ok], cc[ok]] = True


def _fit_stem(sk: np.ndarray, y0: int, y1: int) -> tuple[float, float] | None:
    """Least-squares line ``x = a * y + b`` through the skeleton's mean x of rows ``y0..y1``."""
    ys = [y for y in range(max(0, y0), min(sk.shape[0], y1 + 1)) if sk[y].any()]
    if len(ys) < 3:
        return None
    xs = [np.nonzero(sk[y])[0].mean() for y in ys]
    a, b = np.polyfit(np.asarray(ys, float), np.asarray(xs, float), 1)
    return float(a), float(b)


_Box = tuple[int, int, int, int]  # top, bottom, left, right: the glyph's bounding box on the base grid


def _one_stem(digit: int, sk: np.ndarray, ink: np.ndarray, box: _Box) -> dict[str, np.ndarray]:
    """A 1 as a bare straight stem (``stem``), and without its base (``no_base``)."""
    top, bottom, left, right = box
    h = bottom - top
    out: dict[str, np.ndarray] = {}
    stem = _fit_stem(sk, top + int(0.35 * h), top + int(0.75 * h))
    if stem is not None:
        yy, xx = np.mgrid[:sk.shape[0], :sk.shape[1]]
        a, b = stem
        s = np.zeros_like(sk)
        _line(s, a * top + b, top, a * bottom + b, bottom)
        out["stem"] = s
        near = np.abs(xx - (a * yy + b)) <= 2
        keep = sk & ((yy < top + 0.7 * h) | near)
        out["no_base"] = keep | s
    return out


def _two_loop(digit: int, sk: np.ndarray, ink: np.ndarray, box: _Box) -> dict[str, np.ndarray]:
    """A 2 with a small loop where the diagonal meets the base (``loop``)."""
    top, bottom, left, right = box
    h = bottom - top
    yy = np.mgrid[:sk.shape[0], :sk.shape[1]][0]
    low = sk & (yy >= top + 0.75 * h)
    if not low.any():
        return {}
    ys, xs = np.nonzero(low)
    i = xs.argmin()
    r = 0.14 * h
    s = sk.copy()
    ang = np.linspace(0, 2 * np.pi, 64)
    cx, cy = xs[i] + 0.7 * r, ys[i] - 0.9 * r
    px, py = cx + r * np.cos(ang), cy + r * np.sin(ang)
    for k in range(len(ang) - 1):
        _line(s, px[k], py[k], px[k + 1], py[k + 1])
    return {"loop": s}


def _four_open(digit: int, sk: np.ndarray, ink: np.ndarray, box: _Box) -> dict[str, np.ndarray]:
    """An open 4 of three straight strokes: stem, crossbar and a diagonal left open at the top (``open``)."""
    top, bottom, left, right = box
    h, w = bottom - top, right - left
    rows = [(sk[y].sum(), y) for y in range(top + int(0.5 * h), top + int(0.9 * h))]
    cross_y = max(rows)[1]
    xs = np.nonzero(sk[cross_y])[0]
    stem = _fit_stem(sk, cross_y + 3, bottom - 2)
    if not xs.size or stem is None:
        return {}
    a, b = stem
    lx, rx = xs.min(), xs.max()
    s = np.zeros_like(sk)
    _line(s, a * top + b, top, a * bottom + b, bottom)
    _line(s, lx, cross_y, rx, cross_y)
    _line(s, lx + 0.12 * w + a * (top - cross_y), top + 0.05 * h, lx, cross_y)
    return {"open": s}


def _straight_six_nine(digit: int, sk: np.ndarray, ink: np.ndarray, box: _Box) -> dict[str, np.ndarray]:
    """A 6 or a 9 as its loop and one straight stroke (``straight``)."""
    from scipy.ndimage import binary_fill_holes

    top, bottom, left, right = box
    w = right - left
    counter = binary_fill_holes(ink) & ~ink
    if not counter.any():
        return {}
    cy = np.nonzero(counter.any(1))[0]
    c_top, c_bot = cy.min(), cy.max()
    mid = (c_top + c_bot) // 2
    sxs = np.nonzero(sk[mid])[0]
    if not sxs.size:
        return {}
    yy = np.mgrid[:sk.shape[0], :sk.shape[1]][0]
    pad = max(2, (c_bot - c_top) // 4)
    if digit == 9:  # keep the loop, then a straight tail down from its right side
        s = sk & (yy <= c_bot + pad)
        x0 = sxs.max()
        _line(s, x0, mid, x0 - 0.08 * w, bottom)
    else:  # keep the loop, then a straight upstroke from its left side
        s = sk & (yy >= c_top - pad)
        x0 = sxs.min()
        _line(s, x0, mid, x0 + 0.45 * w, top)
    return {"straight": s}


def _eight_open(digit: int, sk: np.ndarray, ink: np.ndarray, box: _Box) -> dict[str, np.ndarray]:
    """An 8 whose upper loop is left open at its top right, where the pen starts (``open``)."""
    from scipy.ndimage import binary_fill_holes, label

    top, bottom, left, right = box
    h = bottom - top
    holes, k = label(binary_fill_holes(ink) & ~ink)
    if k != 2:
        return {}
    upper = min((1, 2), key=lambda i: np.nonzero(holes == i)[0].mean())
    ys, xs = np.nonzero(holes == upper)
    cx, cy = xs.mean(), ys.mean()
    ry, rx = (np.ptp(ys) + 1) / 2, (np.ptp(xs) + 1) / 2
    # the skeleton point in the direction of the top right of the counter
    yy, xx = np.mgrid[:sk.shape[0], :sk.shape[1]]
    d = np.hypot((xx - cx) / max(rx, 1), (yy - cy) / max(ry, 1))
    ang = np.arctan2(yy - cy, xx - cx)
    cand = sk & (np.abs(ang + np.pi / 4) < 0.3) & (d > 1)
    if not cand.any():
        return {}
    py, px = np.nonzero(cand)
    j = np.argmin(np.hypot(px - cx, py - cy))
    return {"open": sk & (np.hypot(xx - px[j], yy - py[j]) > 0.09 * h)}


def _seven_crossbar(digit: int, sk: np.ndarray, ink: np.ndarray, box: _Box) -> dict[str, np.ndarray]:
    """A 7 crossed at half height (``crossbar``)."""
    top, bottom, left, right = box
    h, w = bottom - top, right - left
    mid = top + h // 2
    xs = np.nonzero(sk[mid])[0]
    if not xs.size:
        return {}
    s = sk.copy()
    c = xs.mean()
    _line(s, c - 0.3 * w, mid, c + 0.3 * w, mid)
    return {"crossbar": s}


# digit -> the function that redraws its handwriting forms (the keys of ``_VARIANTS[digit]``); all take
# (digit, skeleton, ink, box) and return {variant name: skeleton}
_VARIANT_DRAWERS: dict[int, Callable[[int, np.ndarray, np.ndarray, _Box], dict[str, np.ndarray]]] = {
    1: _one_stem, 2: _two_loop, 4: _four_open, 6: _straight_six_nine, 7: _seven_crossbar, 8: _eight_open,
    9: _straight_six_nine,
}


def _drop_degenerate(digit: int, out: dict[str, np.ndarray], box: _Box) -> dict[str, np.ndarray]:
    """``out`` without the redrawings too short or too narrow for the glyph's box (e.g. an already open 4)."""
    top, bottom, left, right = box
    h, w = bottom - top, right - left
    for name, s in list(out.items()):
        ys, xs = np.nonzero(s)
        if ys.size == 0 or np.ptp(ys) < 0.8 * h or (digit != 1 and np.ptp(xs) < 0.5 * w):
            del out[name]
    return out


def _variants(digit: int, sk: np.ndarray, ink: np.ndarray, box: _Box) -> dict[str, np.ndarray]:
    """Handwriting forms of ``digit`` redrawn from a font's skeleton ``sk`` (see ``_VARIANTS``)."""
    draw = _VARIANT_DRAWERS.get(digit)
    if draw is None:
        return {}
    return _drop_degenerate(digit, draw(digit, sk, ink, box), box)


@lru_cache(maxsize=None)
def _font_bases(font_name: str) -> tuple[Tensor, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Base distance fields of the ten digits of one font (cached for the life of the process).

    Returns ``fields`` ``[B, _RES, _RES]`` float32 in glyph-height units (the glyph is one unit
    tall, centred on its bounding box), the digit of each field, its sampling weight, whether it
    is an outline field, and the glyph's width (in glyph heights):
    signed distances to the outline, distances to the (pruned) skeleton, and to the skeletons of
    the handwriting variants of ``_VARIANTS``.
    """
    from PIL import Image
    from scipy.ndimage import distance_transform_edt
    from skimage.morphology import skeletonize

    fields, digits, weights, outline, widths = [], [], [], [], []
    n_fonts = len(GLYPH_FONTS)
    for d in range(10):
        bmp = _glyph_bitmap(font_name, d)
        h, w = bmp.shape
        th = _UNIT
        tw = max(1, int(round(w * _UNIT / h)))
        img = np.asarray(Image.fromarray((bmp * 255).astype(np.uint8)).resize((tw, th), Image.LANCZOS),
                         dtype=np.float32) / 255.0
        canvas = np.zeros((_RES, _RES), dtype=np.float32)
        top, left = (_RES - th) // 2, (_RES - tw) // 2
        canvas[top:top + th, left:left + tw] = img
        ink = canvas > 0.5
        sk = _prune(skeletonize(ink), min_len=max(3, _UNIT // 6))
        # outline style: the font's shape, with hairlines widened to a minimal pen (radius 0.035)
        sdf = (distance_transform_edt(~ink) - distance_transform_edt(ink)) / _UNIT
        fields.append(np.minimum(sdf, distance_transform_edt(~sk) / _UNIT - 0.035))
        digits.append(d)
        weights.append(_W_OUTLINE / n_fonts)
        outline.append(True)
        widths.append(tw / th)
        var = _variants(d, sk, ink, (top, top + th - 1, left, left + tw - 1))
        shares = _VARIANTS.get(d, {})
        full = 1.0 - sum(shares[k] for k in var)
        for name, s in [("full", sk), *var.items()]:
            fields.append(distance_transform_edt(~s) / _UNIT)
            digits.append(d)
            weights.append(_W_SKELETON / n_fonts * (full if name == "full" else shares[name]))
            outline.append(False)
            widths.append(tw / th)
    return (torch.from_numpy(np.stack(fields).astype(np.float32)), np.asarray(digits),
            np.asarray(weights, dtype=np.float64), np.asarray(outline), np.asarray(widths))


def _compute_bank() -> tuple[Tensor, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    parts = [_font_bases(f) for f in GLYPH_FONTS]
    fields = torch.cat([p[0] for p in parts])
    digits = np.concatenate([p[1] for p in parts])
    fonts = np.concatenate([np.full(len(p[1]), i) for i, p in enumerate(parts)])
    weights = np.concatenate([p[2] for p in parts])
    outline = np.concatenate([p[3] for p in parts])
    widths = np.concatenate([p[4] for p in parts])
    return fields, digits, fonts, weights, outline, widths


_BANK_KEYS = ("fields", "digits", "fonts", "weights", "outline", "widths")


def _bank_file() -> Path:
    """Where the bank is cached: ``data_root()/cache/glyph_bank-KEY.pt``.

    KEY hashes this module's and ``_fonts.py``'s source, the font list and the versions of the libraries that draw
    and measure the glyphs: any change to them computes (and caches) a new bank.
    """
    from importlib.metadata import version

    from ..storage import data_root

    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update((Path(__file__).parent / "_fonts.py").read_bytes())  # the glyph rasterizer
    libs = [version(name) for name in ("numpy", "scipy", "scikit-image", "pillow", "matplotlib")]
    h.update(repr((GLYPH_FONTS, libs)).encode())
    return data_root() / "cache" / f"glyph_bank-{h.hexdigest()[:16]}.pt"


@lru_cache(maxsize=1)
def _bank() -> tuple[Tensor, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All fonts' base fields stacked: fields, digit, font index, weight, outline flag and width of each.

    Computing them takes 1.5 s on a laptop core (skeletons, distance transforms), once per process;
    the result is kept on disk (``_bank_file``) so that a new kernel loads it in milliseconds. An
    unreadable or unwritable cache is not an error: the bank is then computed.
    """
    path = _bank_file()
    try:
        saved = torch.load(path, weights_only=True)
        return (saved["fields"].float(),) + tuple(saved[k].numpy() for k in _BANK_KEYS[1:])  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - absent, partial or foreign file: compute it
        pass
    bank = _compute_bank()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: torch.as_tensor(v) for k, v in zip(_BANK_KEYS, bank)}, tmp)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
    except (OSError, RuntimeError):  # torch.save reports an unwritable file as a RuntimeError
        pass  # a read-only data root (the grader's sandbox): compute the bank in every process
    finally:
        tmp.unlink(missing_ok=True)
    return bank


def _smooth_field(rng: np.random.Generator, n: int, channels: int, grid: int, size: int) -> Tensor:
    """Smooth random fields ``[n, channels, size, size]`` with unit-variance grid values."""
    lo = torch.from_numpy(rng.standard_normal((n, channels, grid, grid)).astype(np.float32))
    return F.interpolate(lo, size=(size, size), mode="bicubic", align_corners=True)


def _frame(ink: Tensor, out_size: int) -> Tensor:
    """Fit each ink image [m, R, R] into a (20/28 * out_size) box, centre of mass in the middle."""
    m, r, _ = ink.shape
    on = ink > 0.3
    rows, cols = on.any(2), on.any(1)
    ar = torch.arange(r)
    big = r + 1
    top = torch.where(rows, ar, big).amin(1)
    bottom = torch.where(rows, ar, -1).amax(1)
    left = torch.where(cols, ar, big).amin(1)
    right = torch.where(cols, ar, -1).amax(1)
    extent = torch.maximum(bottom - top + 1, right - left + 1).clamp(min=1).float()
    mass = ink.sum((1, 2)).clamp(min=1e-6)
    centres = ar.float() + 0.5
    cy = (ink.sum(2) * centres).sum(1) / mass
    cx = (ink.sum(1) * centres).sum(1) / mass
    hi = 2 * out_size  # render at 2x, then average-pool (anti-aliasing)
    box = 2 * out_size * 20.0 / 28.0
    scale = (box / extent)[:, None]  # output px per render px
    pos = torch.arange(hi, dtype=torch.float32) + 0.5 - hi / 2
    gx = (cx[:, None] + pos[None] / scale) / r * 2 - 1
    gy = (cy[:, None] + pos[None] / scale) / r * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(m, hi, hi), gy[:, :, None].expand(m, hi, hi)], -1)
    out = F.grid_sample(ink[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d(out, 2)[:, 0]


def _render(rng: np.random.Generator, base: np.ndarray, out_size: int) -> Tensor:
    """Render the base glyphs ``base`` (indices into ``_bank()``) as ``[m, out_size, out_size]`` in [0, 1]."""
    fields, bank_digit, _, _, is_outline, bank_width = _bank()
    m = len(base)
    outline = is_outline[base]
    # ---- random parameters of the pen and of the deformation
    radius = np.where(outline, rng.uniform(-0.01, 0.03, m), rng.uniform(0.045, 0.09, m))
    vary = rng.uniform(0.0, 0.4, m)                  # relative variation of the pen along the strokes
    theta = np.clip(rng.normal(0.0, 0.15, m), -0.4, 0.4)
    shear = rng.uniform(-0.25, 0.45, m) + _SLANT[bank_digit[base]]  # > 0 leans right
    sx = np.exp(rng.uniform(np.log(0.65), np.log(1.6), m)) * _WIDTH[bank_digit[base]]  # width
    taper = rng.uniform(-0.5, 0.5, m)                # wider at the top or at the bottom
    bulge = rng.uniform(-0.6, 0.6, m)                # moves the middle up or down (loop sizes)
    alpha1 = rng.uniform(0.0, 0.18, m)               # large, slow bends (glyph-height units)
    alpha2 = rng.uniform(0.0, 0.045, m)              # small wobbles

    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))[:, None, None]  # noqa: E731
    # the deformation is smooth: compute it on a coarse grid spanning the render's pixel centres,
    # then upsample it once (exact for the affine part)
    g = torch.linspace(-1 + 1 / _RENDER, 1 - 1 / _RENDER, _COARSE)
    gx, gy = g[None, None, :], g[None, :, None]
    # inverse of q = R(theta) S(shear) diag(sx, 1) p:  p = diag(1/sx, 1) S^-1 R^-1 q  (linear in q)
    # zoom out where the deformed glyph would leave the render ([-1, 1] glyph units)
    hx = 0.5 * bank_width[base] * sx * (1 + 0.5 * np.abs(taper)) + 0.5 * np.abs(shear) + 0.15
    hy = 0.65
    ct, st = np.abs(np.cos(theta)), np.abs(np.sin(theta))
    zoom = np.maximum(1.0, np.maximum(ct * hx + st * hy, st * hx + ct * hy) / 0.92)
    c, s, sh, isx = np.cos(theta) * zoom, np.sin(theta) * zoom, shear, 1.0 / sx
    a00, a01 = (c - sh * s) * isx, (s + sh * c) * isx
    a10, a11 = -s, c
    disp = (_smooth_field(rng, m, 2, 3, _COARSE) * t(alpha1)[:, None]
            + _smooth_field(rng, m, 2, 6, _COARSE) * t(alpha2)[:, None])
    rx = t(a00) * gx + t(a01) * gy
    ry = t(a10) * gx + t(a11) * gy
    # taper and bulge (ends of the glyph, y = +-0.5, stay in place)
    px = rx * (1 + t(taper) * ry.clamp(-0.7, 0.7))
    py = ry + t(bulge) * (0.25 - ry.clamp(-0.5, 0.5) ** 2)
    # the render spans [-1, 1] glyph units; one glyph unit is 2 * _UNIT / _RES of the base grid
    k = 2 * _UNIT / _RES
    disp[:, 0] += px
    disp[:, 1] += py
    pen = 1 + t(vary) * _smooth_field(rng, m, 1, 3, _COARSE)[:, 0].clamp(-1.5, 1.5)
    coarse = torch.cat([disp.mul_(k), pen[:, None]], 1)
    fine = F.interpolate(coarse, size=(_RENDER, _RENDER), mode="bilinear", align_corners=True)
    grid = fine[:, :2].permute(0, 2, 3, 1)
    rpen = t(radius) * fine[:, 2]
    rpen = torch.where(t(outline) > 0, rpen, rpen.clamp(min=0.045))
    field = fields[torch.from_numpy(base)][:, None]
    dist = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    # about one output pixel of anti-aliasing; pen and edge scale with the zoom (glyph units)
    soft = t(zoom / 20.0)
    ink = ((rpen * t(zoom) - dist) / soft + 0.5).clamp_(0.0, 1.0)
    return _frame(ink, out_size).clamp_(0.0, 1.0)


def glyph_digits(n: int = 10000, *, seed: int = 0, size: int = 28, domain: str = "plain",
                 channels: int | None = None) -> ImageSet:
    """MNIST-like digits 0-9 rendered from matplotlib's fonts with handwriting-like variation.

    White on black, the digit fitted into a 20 x 20 box and centred by its centre of mass in
    28 x 28 like MNIST (LeCun et al. 1998), scaled for other ``size``. Each sample redraws a
    font's digit (:data:`GLYPH_FONTS`) with a random round pen along its skeleton (or thickens /
    thins its outline), pen width varying along the strokes, random rotation, slant, width and
    elastic distortion. ``domain="photo"`` applies the MNIST-M recipe (Ganin & Lempitsky 2015)
    with scikit-image photo crops: ``out = |crop - digit|`` per RGB channel. ``channels`` is 1
    or 3 (default 1 for plain, 3 for photo; plain digits are repeated, photo ones averaged).
    Labels are balanced; ``info["font"]`` indexes :data:`GLYPH_FONTS`.
    Used in labs 03, 04, 07, 09 (source domain plain, target domain photo) and 10.
    """
    n = check_int(n, "n", low=1, hint=" (the number of digits to generate)")
    size = check_int(size, "size", low=16, high=64, hint=" (28 is MNIST's size)")
    if not isinstance(domain, str) or domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if channels is None:
        channels = 1 if domain == "plain" else 3
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"channels must be 1, 3 or None (domain default), got {channels!r}")
    rng = numpy_rng(seed)
    labels = rng.permutation(np.arange(n) % 10)
    _, bank_digit, bank_font, bank_weight, _, _ = _bank()
    base = np.empty(n, dtype=np.int64)
    for d in range(10):
        idx = np.flatnonzero(labels == d)
        cand = np.flatnonzero(bank_digit == d)
        base[idx] = rng.choice(cand, size=idx.size, p=bank_weight[cand] / bank_weight[cand].sum())
    digits = torch.empty(n, size, size)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        digits[sl] = _render(rng, base[sl], size)
    fonts = bank_font[base]
    if domain == "plain":
        images = digits[:, None].expand(-1, channels, -1, -1).contiguous()
    else:
        crops = photo_crops(rng, n, size, crop_frac=(0.1, 0.3))
        images = (crops - digits[:, None]).abs_()
        if channels == 1:
            images = images.mean(1, keepdim=True)
    info = {"font": torch.from_numpy(fonts.astype(np.int64))}
    return ImageSet(images.clamp_(0.0, 1.0), torch.from_numpy(labels.astype(np.int64)),
                    [str(i) for i in range(10)], None, info, name=f"glyph_digits[{domain}]")
