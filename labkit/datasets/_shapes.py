"""Procedural shapes and multi-object scenes, rendered in batches from signed distances.

Every shape is an approximate signed distance function (negative inside) of local unit
coordinates ``(u, v)`` (the object fits in the unit disc, ``v`` points down the image).
A batch of objects is rendered by rotating and scaling one pixel grid per object, so there
is no per-pixel Python loop; edges are anti-aliased from the distance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..reproducibility import numpy_rng
from .._checks import check_int, check_prob
from ._common import check_range, photo_crops
from .base import ImageSet

__all__ = ["SHAPE_CLASSES", "BACKGROUNDS", "shapes", "scenes"]

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "hexagon",
                 "crescent", "arrow")
BACKGROUNDS = ("flat", "gradient", "noise", "photo")
_CHUNK = 2048


# --------------------------------------------------------------------------- signed distances
def _box(u: Tensor, v: Tensor, a: float, b: float) -> Tensor:
    qx, qy = u.abs() - a, v.abs() - b
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return outside + torch.maximum(qx, qy).clamp(max=0)


def _circle(u: Tensor, v: Tensor, cx: float = 0.0, cy: float = 0.0, r: float = 1.0) -> Tensor:
    return torch.sqrt((u - cx) ** 2 + (v - cy) ** 2) - r


def _polygon(u: Tensor, v: Tensor, verts: Sequence[tuple[float, float]]) -> Tensor:
    """Exact signed distance to a simple polygon (convex or not): nearest edge, even-odd inside test."""
    dist = None
    inside = torch.zeros_like(u, dtype=torch.bool)
    for i in range(len(verts)):
        (ax, ay), (bx, by) = verts[i], verts[(i + 1) % len(verts)]
        ex, ey = bx - ax, by - ay
        wx, wy = u - ax, v - ay
        t = ((wx * ex + wy * ey) / (ex * ex + ey * ey)).clamp_(0.0, 1.0)
        d = (wx - t * ex) ** 2 + (wy - t * ey) ** 2
        dist = d if dist is None else torch.minimum(dist, d)
        if ay != by:
            crosses = ((ay > v) != (by > v)) & (u < ax + ex * (v - ay) / ey)
            inside ^= crosses
    dist = dist.sqrt_()
    return torch.where(inside, -dist, dist)


def _regular(sides: int, circumradius: float, phase: float) -> list[tuple[float, float]]:
    return [(circumradius * math.cos(phase + 2 * math.pi * i / sides),
             circumradius * math.sin(phase + 2 * math.pi * i / sides)) for i in range(sides)]


def _star_vertices(points: int = 5, outer: float = 1.0, inner: float = 0.42) -> list[tuple[float, float]]:
    verts = []
    for i in range(2 * points):
        r = outer if i % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * i / points
        verts.append((r * math.cos(a), r * math.sin(a)))
    return verts


_TRIANGLE = _regular(3, 1.0, -math.pi / 2)           # apex up, centroid at the origin
_HEXAGON = _regular(6, 0.93, 0.0)
_STAR = _star_vertices()
_CROSS = [(0.28, -0.88), (0.28, -0.28), (0.88, -0.28), (0.88, 0.28), (0.28, 0.28), (0.28, 0.88),
          (-0.28, 0.88), (-0.28, 0.28), (-0.88, 0.28), (-0.88, -0.28), (-0.28, -0.28), (-0.28, -0.88)]
_ARROW = [(-0.9, -0.17), (0.05, -0.17), (0.05, -0.6), (0.95, 0.0), (0.05, 0.6), (0.05, 0.17), (-0.9, 0.17)]


def _sd_circle(u: Tensor, v: Tensor) -> Tensor:
    return _circle(u, v, r=0.88)


def _sd_square(u: Tensor, v: Tensor) -> Tensor:
    return _box(u, v, 0.68, 0.68)


def _sd_triangle(u: Tensor, v: Tensor) -> Tensor:
    return _polygon(u, v, _TRIANGLE)


def _sd_hexagon(u: Tensor, v: Tensor) -> Tensor:
    return _polygon(u, v, _HEXAGON)


def _sd_star(u: Tensor, v: Tensor) -> Tensor:
    return _polygon(u, v, _STAR)


def _sd_cross(u: Tensor, v: Tensor) -> Tensor:
    return _polygon(u, v, _CROSS)


def _sd_ring(u: Tensor, v: Tensor) -> Tensor:
    return (torch.sqrt(u * u + v * v) - 0.66).abs() - 0.24


def _sd_heart(u: Tensor, v: Tensor) -> Tensor:
    # a diamond (point down) with two discs on its upper edges; the union of exact distances
    d, c = 0.78, 0.10
    diamond = _polygon(u, v, [(0.0, c - d), (d, c), (0.0, c + d), (-d, c)])
    r = d / math.sqrt(2)
    left = _circle(u, v, -d / 2, c - d / 2, r)
    right = _circle(u, v, d / 2, c - d / 2, r)
    return torch.minimum(diamond, torch.minimum(left, right))


def _sd_crescent(u: Tensor, v: Tensor) -> Tensor:
    """Disc A minus disc B: distance to the arc of A outside B, to the arc of B inside A, or to a horn."""
    ax, ay, ra = -0.05, 0.0, 0.9
    bx, by, rb = 0.42, -0.1, 0.72
    da = torch.sqrt((u - ax) ** 2 + (v - ay) ** 2)
    db = torch.sqrt((u - bx) ** 2 + (v - by) ** 2)
    inside = (da < ra) & (db > rb)
    # horns: intersection points of the two circles
    dx, dy = bx - ax, by - ay
    dd = math.hypot(dx, dy)
    a = (ra * ra - rb * rb + dd * dd) / (2 * dd)
    hgt = math.sqrt(ra * ra - a * a)
    mx, my = ax + a * dx / dd, ay + a * dy / dd
    horns = [(mx - hgt * dy / dd, my + hgt * dx / dd), (mx + hgt * dy / dd, my - hgt * dx / dd)]
    dh = torch.minimum(*[torch.sqrt((u - hx) ** 2 + (v - hy) ** 2) for hx, hy in horns])
    # nearest point on circle A lies outside B -> |da - ra| is the distance to that arc
    pa_x, pa_y = ax + ra * (u - ax) / da.clamp(min=1e-6), ay + ra * (v - ay) / da.clamp(min=1e-6)
    on_a = torch.sqrt((pa_x - bx) ** 2 + (pa_y - by) ** 2) >= rb
    dist_a = torch.where(on_a, (da - ra).abs(), dh)
    # nearest point on circle B lies inside A -> |db - rb| is the distance to that arc
    pb_x, pb_y = bx + rb * (u - bx) / db.clamp(min=1e-6), by + rb * (v - by) / db.clamp(min=1e-6)
    on_b = torch.sqrt((pb_x - ax) ** 2 + (pb_y - ay) ** 2) <= ra
    dist_b = torch.where(on_b, (db - rb).abs(), dh)
    dist = torch.minimum(dist_a, dist_b)
    return torch.where(inside, -dist, dist)


def _sd_arrow(u: Tensor, v: Tensor) -> Tensor:
    return _polygon(u, v, _ARROW)


_SDF: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "circle": _sd_circle, "square": _sd_square, "triangle": _sd_triangle, "star": _sd_star,
    "cross": _sd_cross, "ring": _sd_ring, "heart": _sd_heart, "hexagon": _sd_hexagon,
    "crescent": _sd_crescent, "arrow": _sd_arrow,
}


def _render_alpha(names: Sequence[str], cls: np.ndarray, cx: np.ndarray, cy: np.ndarray, radius: np.ndarray,
                  theta: np.ndarray, size: int) -> Tensor:
    """Anti-aliased coverage ``[m, size, size]`` of objects of class ``names[cls[i]]``.

    ``cx, cy`` are pixel coordinates of the centre (pixel ``j`` spans ``[j, j + 1)``), ``radius``
    the radius in pixels of the unit disc, ``theta`` the rotation in radians.
    """
    m = len(cls)
    out = torch.zeros(m, size, size)
    if m == 0:
        return out
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    for k in np.unique(cls):
        idx = np.flatnonzero(cls == k)
        t = lambda a: torch.from_numpy(np.asarray(a[idx], dtype=np.float32))[:, None, None]  # noqa: E731
        r, c, s = t(radius), torch.cos(t(theta)), torch.sin(t(theta))
        dx = (coords[None, None, :] - t(cx)) / r
        dy = (coords[None, :, None] - t(cy)) / r
        u = c * dx + s * dy
        v = -s * dx + c * dy
        sd = _SDF[names[k]](u, v)
        out[torch.from_numpy(idx)] = (0.5 - sd * r).clamp_(0.0, 1.0)
    return out


# --------------------------------------------------------------------------- colours, backgrounds
def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorized HSV -> RGB, all arrays in [0, 1]; returns [..., 3]."""
    i = np.floor(h * 6.0) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(x, -1) for x in
                      [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]], 0)
    return np.take_along_axis(table, i.astype(int)[None, ..., None].repeat(3, -1), 0)[0]


def _random_colours(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random colours (mostly saturated, some greys), [..., 3] in [0, 1]."""
    h = rng.random(shape)
    s = np.where(rng.random(shape) < 0.15, rng.uniform(0.0, 0.15, shape), rng.uniform(0.35, 1.0, shape))
    v = rng.uniform(0.15, 1.0, shape)
    return _hsv_to_rgb(h, s, v)


def _backgrounds(rng: np.random.Generator, kinds: np.ndarray, size: int) -> Tensor:
    """One background per entry of ``kinds`` (indices into ``BACKGROUNDS``): [n, 3, size, size]."""
    n = len(kinds)
    out = torch.empty(n, 3, size, size)
    # flat
    idx = np.flatnonzero(kinds == 0)
    if idx.size:
        col = torch.from_numpy(_random_colours(rng, (idx.size,))).float()
        out[torch.from_numpy(idx)] = col[:, :, None, None].expand(-1, -1, size, size)
    # linear gradient between two colours along a random direction
    idx = np.flatnonzero(kinds == 1)
    if idx.size:
        k = idx.size
        c0 = torch.from_numpy(_random_colours(rng, (k,))).float()[:, :, None, None]
        c1 = torch.from_numpy(_random_colours(rng, (k,))).float()[:, :, None, None]
        ang = torch.from_numpy(rng.uniform(0, 2 * np.pi, k)).float()[:, None, None]
        g = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
        proj = torch.cos(ang) * g[None, None, :] + torch.sin(ang) * g[None, :, None]
        w = (proj / math.sqrt(0.5) + 0.5).clamp(0, 1)[:, None]
        out[torch.from_numpy(idx)] = c0 * (1 - w) + c1 * w
    # smooth coloured noise: two octaves of bilinear value noise around a base colour
    idx = np.flatnonzero(kinds == 2)
    if idx.size:
        k = idx.size
        base = torch.from_numpy(_random_colours(rng, (k,))).float()[:, :, None, None]
        lo = torch.from_numpy(rng.normal(0, 0.16, (k, 3, 4, 4))).float()
        hi = torch.from_numpy(rng.normal(0, 0.08, (k, 3, 9, 9))).float()
        noise = (F.interpolate(lo, size=(size, size), mode="bicubic", align_corners=False)
                 + F.interpolate(hi, size=(size, size), mode="bilinear", align_corners=False))
        out[torch.from_numpy(idx)] = (base + noise).clamp(0, 1)
    # photo crops
    idx = np.flatnonzero(kinds == 3)
    if idx.size:
        out[torch.from_numpy(idx)] = photo_crops(rng, idx.size, size)
    return out


def _contrasting_colours(rng: np.random.Generator, bg_mean: np.ndarray, n_candidates: int = 6) -> np.ndarray:
    """For each background mean colour [m, 3], the random candidate colour farthest from it."""
    m = len(bg_mean)
    cand = _random_colours(rng, (m, n_candidates))
    dist = np.linalg.norm(cand - bg_mean[:, None, :], axis=-1)
    return cand[np.arange(m), dist.argmax(1)]


def _paint(images: Tensor, alpha: Tensor, rng: np.random.Generator, shading: float = 0.15) -> np.ndarray:
    """Paint objects with coverage ``alpha`` [m, H, W] over ``images`` [m, 3, H, W] in place.

    Each object gets a colour that contrasts with the background under it and a faint linear
    shading; returns the chosen base colours [m, 3].
    """
    m, _, h, w = images.shape
    wsum = alpha.sum((1, 2)).clamp(min=1e-6)
    bg_mean = ((images * alpha[:, None]).sum((2, 3)) / wsum[:, None]).numpy()
    col = _contrasting_colours(rng, bg_mean)
    ang = torch.from_numpy(rng.uniform(0, 2 * np.pi, m)).float()[:, None, None]
    g = (torch.arange(h, dtype=torch.float32) + 0.5) / h - 0.5
    shade = 1 + shading * 2 * (torch.cos(ang) * g[None, None, :] + torch.sin(ang) * g[None, :, None])
    fill = (torch.from_numpy(col).float()[:, :, None, None] * shade[:, None]).clamp(0, 1)
    a = alpha[:, None]
    images.mul_(1 - a).add_(fill * a)
    return col


# --------------------------------------------------------------------------- argument checks
def _check_size(size: object, *, high: int = 64) -> int:
    return check_int(size, "size", low=32, high=high, hint=f" (this generator draws 32..{high} px images)")


def _check_n(n: object) -> int:
    return check_int(n, "n", low=1, hint=" (the number of images to generate)")


def _resolve_classes(classes: Sequence[str | int] | None) -> list[str]:
    if classes is None:
        return list(SHAPE_CLASSES)
    if isinstance(classes, (str, int)):
        raise TypeError(f"classes must be a sequence of names or indices, got {classes!r}; "
                        f"e.g. classes=['circle', 'star']")
    names: list[str] = []
    for c in classes:
        if isinstance(c, str):
            if c not in SHAPE_CLASSES:
                raise ValueError(f"classes: unknown shape class {c!r}; valid names: {', '.join(SHAPE_CLASSES)}")
            names.append(c)
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if not 0 <= c < len(SHAPE_CLASSES):
                raise ValueError(f"classes: index {c} out of range 0..{len(SHAPE_CLASSES) - 1} "
                                 f"(SHAPE_CLASSES = {SHAPE_CLASSES})")
            names.append(SHAPE_CLASSES[int(c)])
        else:
            raise TypeError(f"classes: entries must be names or indices, got {c!r}")
    if len(names) < 1:
        raise ValueError("classes must name at least one shape class, e.g. ['circle', 'star']")
    if len(set(names)) != len(names):
        raise ValueError(f"classes must not repeat a class, got {list(classes)!r}")
    return names


def _background_kinds(rng: np.random.Generator, background: str, n: int) -> np.ndarray:
    if background == "mixed":
        return rng.integers(0, len(BACKGROUNDS), n)
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {(*BACKGROUNDS, 'mixed')}, got {background!r}")
    return np.full(n, BACKGROUNDS.index(background))


def _check_background(background: object) -> str:
    if not isinstance(background, str) or background not in (*BACKGROUNDS, "mixed"):
        raise ValueError(f"background must be one of {(*BACKGROUNDS, 'mixed')}, got {background!r}")
    return background


def _check_noise(noise: object) -> float:
    """``noise`` (the standard deviation of the per-pixel noise) as given, if a number in [0, 0.5]."""
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise <= 0.5:
        raise ValueError(f"noise must be a float in [0, 0.5], got {noise!r}")
    return noise


def _resolve_spurious(spurious_class: str | int | None, names: list[str]) -> int | None:
    """Index into ``names`` of :func:`shapes`' ``spurious_class`` (a name or an index), or None."""
    if spurious_class is None:
        return None
    k = len(names)
    if isinstance(spurious_class, str):
        if spurious_class not in names:
            raise ValueError(f"spurious_class {spurious_class!r} is not among the classes drawn: {names}")
        return names.index(spurious_class)
    if isinstance(spurious_class, (int, np.integer)) and not isinstance(spurious_class, bool):
        if not 0 <= spurious_class < k:
            raise ValueError(f"spurious_class index {spurious_class} out of range 0..{k - 1} "
                             f"(an index into the classes drawn: {names})")
        return int(spurious_class)
    raise TypeError(f"spurious_class must be a class name, an index or None, got {spurious_class!r}")


def _cue_pattern(side: int) -> Tensor:
    """The spurious cue: a black/white pixel checkerboard of ``side x side`` ([3, side, side])."""
    ij = torch.arange(side)
    return ((ij[:, None] + ij[None, :]) % 2 == 0).float()[None].expand(3, -1, -1)


def _add_noise(img: Tensor, rng: np.random.Generator, noise: float) -> None:
    """Add Gaussian noise of standard deviation ``noise`` to ``img`` [m, 3, H, W] in place (no draw if 0)."""
    if noise > 0:
        m, _, h, w = img.shape
        img.add_(torch.from_numpy(rng.normal(0, noise, (m, 3, h, w)).astype(np.float32)))


# --------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class _ShapeDraws:
    """Per-image parameters of :func:`shapes` ([n] arrays; ``d_*``: the distractor), drawn before rendering."""

    labels: np.ndarray
    kinds: np.ndarray
    has_d: np.ndarray
    d_label: np.ndarray
    radius: np.ndarray
    d_radius: np.ndarray
    theta: np.ndarray
    d_theta: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    dcx: np.ndarray
    dcy: np.ndarray


def _place_objects(rng: np.random.Generator, has_d: np.ndarray, radius: np.ndarray, d_radius: np.ndarray,
                   size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centres ``cx, cy, dcx, dcy`` of the labelled objects and of the distractors, fully inside the image."""
    n = len(has_d)
    # free placement: anywhere the disc fits
    cx = radius + rng.random(n) * (size - 2 * radius)
    cy = radius + rng.random(n) * (size - 2 * radius)
    # with a distractor: the two objects on opposite sides of the centre
    psi = rng.uniform(0, 2 * np.pi, n)
    off = size * rng.uniform(0.18, 0.24, n)
    mcx, mcy = size / 2 + off * np.cos(psi), size / 2 + off * np.sin(psi)
    dcx, dcy = size / 2 - off * np.cos(psi), size / 2 - off * np.sin(psi)
    cx = np.where(has_d, np.clip(mcx, radius, size - radius), cx)
    cy = np.where(has_d, np.clip(mcy, radius, size - radius), cy)
    dcx, dcy = np.clip(dcx, d_radius, size - d_radius), np.clip(dcy, d_radius, size - d_radius)
    return cx, cy, dcx, dcy


def _draw_objects(rng: np.random.Generator, n: int, k: int, size: int, *, background: str, distractor: float,
                  scale: tuple[float, float], rotate: bool) -> _ShapeDraws:
    """Labels, backgrounds, distractors, sizes, angles and centres of ``n`` images (in this draw order)."""
    labels = rng.permutation(np.arange(n) % k)
    kinds = _background_kinds(rng, background, n)
    has_d = rng.random(n) < distractor
    d_label = np.where(has_d, (labels + rng.integers(1, max(k, 2), n)) % k, -1)
    diam = rng.uniform(*scale, n) * size
    d_diam = rng.uniform(*scale, n) * size * 0.62
    diam = np.where(has_d, diam * 0.62, diam)
    radius, d_radius = diam / 2, d_diam / 2
    theta = rng.uniform(0, 2 * np.pi, n) if rotate else np.zeros(n)
    d_theta = rng.uniform(0, 2 * np.pi, n) if rotate else np.zeros(n)
    cx, cy, dcx, dcy = _place_objects(rng, has_d, radius, d_radius, size)
    return _ShapeDraws(labels, kinds, has_d, d_label, radius, d_radius, theta, d_theta, cx, cy, dcx, dcy)


def _draw_cue(rng: np.random.Generator, labels: np.ndarray, spurious: int | None, spurious_prob: float,
              spurious_other_prob: float) -> np.ndarray:
    """Which images [n] bool carry the spurious cue (no draw when ``spurious`` is None)."""
    cue = np.zeros(len(labels), dtype=bool)
    if spurious is not None:
        p = np.where(labels == spurious, spurious_prob, spurious_other_prob)
        cue = rng.random(len(labels)) < p
    return cue


def _paint_distractors(img: Tensor, rng: np.random.Generator, names: Sequence[str], draws: _ShapeDraws,
                       sl: slice) -> Tensor:
    """Paint the distractors of images ``sl`` onto their backgrounds ``img`` in place; their coverage > 0.5."""
    m, _, size, _ = img.shape
    cover = torch.zeros(m, size, size, dtype=torch.bool)
    idx = np.flatnonzero(draws.has_d[sl])
    if idx.size:
        a_d = _render_alpha(names, draws.d_label[sl][idx], draws.dcx[sl][idx], draws.dcy[sl][idx],
                            draws.d_radius[sl][idx], draws.d_theta[sl][idx], size)
        t = torch.from_numpy(idx)
        sub = img[t]
        _paint(sub, a_d, rng)
        img[t] = sub
        cover[t] = a_d > 0.5
    return cover


def _stamp_cue(img: Tensor, masks: Sequence[Tensor], cue: np.ndarray, cue_img: Tensor) -> None:
    """Draw ``cue_img`` in the top-left corner of the images where ``cue``, hiding it from ``masks`` (in place)."""
    idx = np.flatnonzero(cue)
    if idx.size:
        side = cue_img.shape[-1]
        t = torch.from_numpy(idx)
        img[t, :, 1:1 + side, 1:1 + side] = cue_img
        for mask in masks:
            mask[t, 1:1 + side, 1:1 + side] = False


def _render_shapes_chunk(rng: np.random.Generator, names: Sequence[str], draws: _ShapeDraws, cue: np.ndarray,
                         sl: slice, size: int, noise: float,
                         cue_img: Tensor) -> tuple[Tensor, Tensor, Tensor, np.ndarray]:
    """Images, masks, distractor masks and colours of images ``sl``, drawn in the order of the generator."""
    img = _backgrounds(rng, draws.kinds[sl], size)
    d_cover = _paint_distractors(img, rng, names, draws, sl)
    alpha = _render_alpha(names, draws.labels[sl], draws.cx[sl], draws.cy[sl], draws.radius[sl], draws.theta[sl],
                          size)
    colours = _paint(img, alpha, rng)
    mask = alpha > 0.5
    d_mask = d_cover & ~mask
    _stamp_cue(img, (mask, d_mask), cue[sl], cue_img)
    _add_noise(img, rng, noise)
    return img.clamp_(0.0, 1.0), mask, d_mask, colours


def _render_shapes(rng: np.random.Generator, names: Sequence[str], draws: _ShapeDraws, cue: np.ndarray,
                   size: int, noise: float, side: int) -> tuple[Tensor, Tensor, Tensor, np.ndarray]:
    """All images [n, 3, H, W], masks, distractor masks [n, H, W] and colours [n, 3], in chunks."""
    n = len(draws.labels)
    images = torch.empty(n, 3, size, size)
    masks = torch.empty(n, size, size, dtype=torch.bool)
    d_masks = torch.zeros(n, size, size, dtype=torch.bool)
    colours = np.zeros((n, 3), dtype=np.float32)
    cue_img = _cue_pattern(side)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        images[sl], masks[sl], d_masks[sl], colours[sl] = _render_shapes_chunk(rng, names, draws, cue, sl, size,
                                                                              noise, cue_img)
    return images, masks, d_masks, colours


def _shapes_info(draws: _ShapeDraws, cue: np.ndarray, d_masks: Tensor, colours: np.ndarray,
                 side: int) -> dict[str, Tensor]:
    """The ``info`` tensors of :func:`shapes` (backgrounds, distractors, cue and its mask, geometry, colours)."""
    n, size = d_masks.shape[:2]
    cue_t = torch.from_numpy(cue)
    cue_mask = torch.zeros(n, size, size, dtype=torch.bool)
    cue_mask[cue_t, 1:1 + side, 1:1 + side] = True
    return {
        "background": torch.from_numpy(draws.kinds.astype(np.int64)),
        "distractor_label": torch.from_numpy(draws.d_label.astype(np.int64)),
        "distractor_mask": d_masks,
        "cue": cue_t,
        "cue_mask": cue_mask,
        "center": torch.from_numpy(np.stack([draws.cx, draws.cy], 1).astype(np.float32)),
        "radius": torch.from_numpy(draws.radius.astype(np.float32)),
        "angle": torch.from_numpy(draws.theta.astype(np.float32)),
        "colour": torch.from_numpy(colours),
    }


def shapes(n: int = 1000, *, size: int = 32, seed: int = 0, classes: Sequence[str | int] | None = None,
           background: str = "mixed", distractor: float = 0.0, spurious_class: str | int | None = None,
           spurious_prob: float = 0.9, spurious_other_prob: float = 0.05,
           scale: tuple[float, float] = (0.45, 0.8), rotate: bool = True, noise: float = 0.02) -> ImageSet:
    """One coloured shape per RGB image, with its pixel mask; deterministic in ``seed``.

    - ``classes``: names or indices of :data:`SHAPE_CLASSES` to draw (default all ten);
      labels are re-indexed ``0..k-1`` in the order given. Classes are balanced (``n // k`` each,
      the remainder spread over the first classes) and shuffled.
    - ``background``: ``"flat"``, ``"gradient"``, ``"noise"``, ``"photo"`` (random crops of
      scikit-image's photos) or ``"mixed"`` (each image draws one); ``info["background"]`` holds
      the index into :data:`BACKGROUNDS`.
    - ``scale``: range of the object's diameter as a fraction of ``size``; random colour
      (contrasting with the background), rotation (if ``rotate``) and position (fully inside).
    - ``distractor``: probability of a second, smaller object of another class, drawn first
      (the labelled object is on top and never hidden); ``info["distractor_label"]`` (-1 if none,
      else an index into ``classes``) and ``info["distractor_mask"]`` (its visible pixels).
    - ``spurious_class`` (a name, or an index into the returned classes): a fixed cue, a
      black/white checkerboard of side ``size // 8`` in the top-left corner, is drawn in a
      fraction ``spurious_prob`` of that class's images and ``spurious_other_prob`` of the others;
      ``info["cue"]`` [N] bool and ``info["cue_mask"]`` [N, H, W] bool.
    - ``noise``: standard deviation of the per-pixel Gaussian noise added at the end.

    ``masks`` is ``[N, H, W]`` bool: the labelled object's visible pixels (coverage > 0.5).
    Used in labs 00-02, 05, 06 (saliency as weak segmentation, spurious-cue experiments).
    """
    n = _check_n(n)
    size = _check_size(size)
    names = _resolve_classes(classes)
    background = _check_background(background)
    distractor = check_prob(distractor, "distractor")
    spurious_prob = check_prob(spurious_prob, "spurious_prob")
    spurious_other_prob = check_prob(spurious_other_prob, "spurious_other_prob")
    scale = check_range("scale", scale, low=0.05, high=1.0)
    noise = _check_noise(noise)
    k = len(names)
    if distractor > 0 and k < 2:
        raise ValueError("distractor > 0 needs at least two classes (the distractor is of another class)")
    spurious = _resolve_spurious(spurious_class, names)

    rng = numpy_rng(seed)
    # ---- per-sample parameters, all drawn before rendering
    draws = _draw_objects(rng, n, k, size, background=background, distractor=distractor, scale=scale, rotate=rotate)
    cue = _draw_cue(rng, draws.labels, spurious, spurious_prob, spurious_other_prob)
    side = max(3, size // 8)
    images, masks, d_masks, colours = _render_shapes(rng, names, draws, cue, size, noise, side)
    info = _shapes_info(draws, cue, d_masks, colours, side)
    return ImageSet(images, torch.from_numpy(draws.labels.astype(np.int64)), names, masks, info, name="shapes")


# --------------------------------------------------------------------------- scenes
def scenes(n: int = 500, *, size: int = 64, seed: int = 0, classes: Sequence[str | int] | None = None,
           objects: tuple[int, int] = (1, 3), background: str = "mixed",
           scale: tuple[float, float] = (0.3, 0.55), noise: float = 0.02) -> ImageSet:
    """Images with several shapes of distinct classes, and a per-pixel class map.

    ``objects = (lo, hi)``: each image holds between ``lo`` and ``hi`` objects (inclusive), of
    distinct classes, placed in distinct cells of a jittered grid so that they overlap little;
    later-drawn objects occlude earlier ones. ``masks`` is ``[N, H, W]`` int64 with 0 for the
    background and ``k + 1`` for ``classes[k]``; ``labels`` is the class of the largest visible
    object; ``info["present"]`` ``[N, K]`` bool says which classes have visible pixels (exactly
    ``(masks == k + 1).any()``) and ``info["count"]`` how many objects were drawn. ``size`` may go
    up to 128 (lab 08's real-data mode draws 128-px scenes for ImageNet encoders).
    Used in lab 08 (segmentation) and lab 06 (class-discriminative Grad-CAM on two objects).
    """
    n = _check_n(n)
    size = _check_size(size, high=128)
    names = _resolve_classes(classes)
    background = _check_background(background)
    scale = check_range("scale", scale, low=0.05, high=1.0)
    noise = _check_noise(noise)
    k = len(names)
    try:
        lo, hi = (int(v) for v in objects)
    except (TypeError, ValueError):
        raise TypeError(f"objects must be a pair (lo, hi) of ints, got {objects!r}") from None
    if not 1 <= lo <= hi <= min(k, 9):
        raise ValueError(f"objects must satisfy 1 <= lo <= hi <= min(number of classes, 9) = {min(k, 9)}, "
                         f"got {objects!r}")
    rng = numpy_rng(seed)
    count = rng.integers(lo, hi + 1, n)
    kinds = _background_kinds(rng, background, n)
    cls = np.argsort(rng.random((n, k)), axis=1)[:, :hi]  # distinct classes per image
    g = 1 if hi == 1 else (2 if hi <= 4 else 3)
    cells = np.argsort(rng.random((n, g * g)), axis=1)[:, :hi]
    cell = size / g
    radius = rng.uniform(*scale, (n, hi)) * size / 2
    jit = rng.uniform(-1, 1, (n, hi, 2))
    slack = np.maximum(cell / 2 - radius, 0) + 0.15 * cell
    cx = (cells % g + 0.5) * cell + jit[..., 0] * slack
    cy = (cells // g + 0.5) * cell + jit[..., 1] * slack
    cx, cy = np.clip(cx, radius, size - radius), np.clip(cy, radius, size - radius)
    theta = rng.uniform(0, 2 * np.pi, (n, hi))

    images = torch.empty(n, 3, size, size)
    cmap = torch.zeros(n, size, size, dtype=torch.int64)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        m = sl.stop - sl.start
        img = _backgrounds(rng, kinds[sl], size)
        cm = torch.zeros(m, size, size, dtype=torch.int64)
        for j in range(hi):
            idx = np.flatnonzero(count[sl] > j)
            if idx.size == 0:
                continue
            a = _render_alpha(names, cls[sl][idx, j], cx[sl][idx, j], cy[sl][idx, j], radius[sl][idx, j],
                              theta[sl][idx, j], size)
            t = torch.from_numpy(idx)
            sub = img[t]
            _paint(sub, a, rng)
            img[t] = sub
            sub_cm = cm[t]
            sub_cm[a > 0.5] = 0
            sub_cm += (a > 0.5).long() * torch.from_numpy(cls[sl][idx, j] + 1)[:, None, None]
            cm[t] = sub_cm
        _add_noise(img, rng, noise)
        images[sl] = img.clamp_(0.0, 1.0)
        cmap[sl] = cm
    areas = torch.stack([(cmap == c + 1).sum((1, 2)) for c in range(k)], 1)  # [N, K]
    present = areas > 0
    labels = areas.argmax(1)
    info = {"present": present, "count": torch.from_numpy(count.astype(np.int64)), "areas": areas}
    return ImageSet(images, labels, names, cmap, info, name="scenes")
