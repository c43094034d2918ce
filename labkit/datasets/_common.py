"""Shared helpers of the embedded generators: argument checks and scikit-image's bundled photos."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_int

# Photos that ship inside installed packages (no download): name -> (package, what to load).
# scikit-image: a loader of ``skimage.data`` (the bundled ones only, not those pooch fetches);
# matplotlib: a file of its sample data; scikit-learn: a file of ``load_sample_images``.
_PHOTO_LOADERS = {
    "astronaut": ("skimage", "astronaut"),
    "chelsea": ("skimage", "chelsea"),
    "coffee": ("skimage", "coffee"),
    "rocket": ("skimage", "rocket"),
    "motorcycle": ("skimage", "stereo_motorcycle"),
    "immunohistochemistry": ("skimage", "immunohistochemistry"),
    "hubble_deep_field": ("skimage", "hubble_deep_field"),
    "retina": ("skimage", "retina"),
    "camera": ("skimage", "camera"),
    "grace_hopper": ("matplotlib", "grace_hopper.jpg"),
    "china": ("sklearn", "china.jpg"),  # read from the files, without importing either package
    "flower": ("sklearn", "flower.jpg"),
}
PHOTO_NAMES = tuple(_PHOTO_LOADERS)
# What a person sees in each photo, in ImageNet's vocabulary (names of ``imagenet_classes()``), chosen by
# looking at the photos, not at any network's output: the labels to score an ImageNet classifier against.
# A photo whose object has no ImageNet class gets the nearest class, with the gap said here: the flower
# is a dahlia (ImageNet's only garden flower is the daisy); the motorcycle is a road motorcycle
# (ImageNet has moped and motor scooter); china is a tower of Beijing's Summer Palace, a Buddhist temple.
PHOTO_LABELS: dict[str, tuple[str, ...]] = {
    "chelsea": ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"),  # ImageNet's domestic cats
    "coffee": ("espresso", "cup", "coffee mug"),
    "motorcycle": ("moped", "motor scooter"),
    "china": ("palace", "monastery"),
    "flower": ("daisy",),
    "rocket": ("missile", "projectile", "space shuttle"),
}
# The photos whose random crops make good backgrounds (retina and hubble are mostly black).
BACKGROUND_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "immunohistochemistry")


def check_range(name: str, value: Any, *, low: float, high: float) -> tuple[float, float]:
    """A ``(lo, hi)`` pair with ``low <= lo <= hi <= high``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (lo, hi) of floats, got {value!r}") from None
    if not low <= lo <= hi <= high:
        raise ValueError(f"{name} must satisfy {low} <= lo <= hi <= {high}, got {value!r}")
    return lo, hi


def _resize_chw(img: Tensor, h: int, w: int) -> Tensor:
    """Resize a [3, H, W] float image with antialiased bilinear interpolation."""
    out = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return out[0].clamp_(0.0, 1.0)


@lru_cache(maxsize=None)
def _load_photo(name: str) -> Tensor:
    package, what = _PHOTO_LOADERS[name]
    if package == "skimage":
        import skimage.data as skdata

        arr = getattr(skdata, what)()
        if isinstance(arr, tuple):  # stereo_motorcycle -> (left, right, disparity)
            arr = arr[0]
    else:  # the file only: importing matplotlib is plotting.py's business, and sklearn takes a second
        import importlib.util
        from pathlib import Path

        from PIL import Image

        spec = importlib.util.find_spec(package)
        folder = Path(next(iter(spec.submodule_search_locations)))  # type: ignore[union-attr]
        sub = ("mpl-data", "sample_data") if package == "matplotlib" else ("datasets", "images")
        with Image.open(folder.joinpath(*sub, what)) as im:
            arr = np.asarray(im.convert("RGB"))
    arr = np.asarray(arr)
    if arr.ndim == 2:  # a grey photo (camera): three equal channels
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3]
    return torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)


def photos(*, size: int | None = None) -> dict[str, Tensor]:
    """Real photos that ship inside installed packages, by name, each ``[3, H, W]`` float32 in ``[0, 1]``.

    No download: scikit-image's astronaut, chelsea (a cat), coffee, rocket, motorcycle,
    immunohistochemistry, hubble_deep_field, retina and camera (grey, as three equal channels);
    matplotlib's grace_hopper; scikit-learn's china and flower.
    With ``size`` every photo is centre-cropped to a square and resized to ``size x size``.
    Used in labs 00, 02-06 (photos to classify, explain or start from) and as backgrounds of
    :func:`shapes` and of the photo domain of :func:`glyph_digits`. Returns fresh tensors.
    """
    if size is not None:
        size = check_int(size, "size", low=8, high=1024, hint=" (or None for the original size)")
    out: dict[str, Tensor] = {}
    for name in PHOTO_NAMES:
        img = _load_photo(name)
        if size is not None:
            h, w = img.shape[1:]
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            img = _resize_chw(img[:, top:top + s, left:left + s], size, size)
        out[name] = img.clone()
    return out


@lru_cache(maxsize=4)
def photo_bank(short_side: int = 160) -> tuple[Tensor, ...]:
    """The background photos, each resized so that its shorter side is ``short_side`` (cached)."""
    bank = []
    for name in BACKGROUND_PHOTOS:
        img = _load_photo(name)
        h, w = img.shape[1:]
        f = short_side / min(h, w)
        bank.append(_resize_chw(img, max(short_side, round(h * f)), max(short_side, round(w * f))).contiguous())
    return tuple(bank)


def photo_crops(rng: np.random.Generator, n: int, size: int, *, crop_frac: tuple[float, float] = (0.2, 0.6),
                short_side: int = 160) -> Tensor:
    """``n`` random square crops (random photo, scale, position, horizontal flip) resized to ``size``.

    Returns ``[n, 3, size, size]`` float32 in ``[0, 1]``; deterministic given ``rng``'s state.
    """
    bank = photo_bank(short_side)
    which = rng.integers(0, len(bank), n)
    frac = rng.uniform(*crop_frac, n)
    fx, fy = rng.random(n), rng.random(n)
    flip = rng.random(n) < 0.5
    out = torch.empty(n, 3, size, size)
    base = torch.linspace(-1 + 1 / size, 1 - 1 / size, size)
    for p, img in enumerate(bank):
        idx = np.flatnonzero(which == p)
        if idx.size == 0:
            continue
        h, w = img.shape[1:]
        side = frac[idx] * min(h, w)  # crop side in pixels
        # centre of the crop in normalized [-1, 1] coordinates (align_corners=False convention)
        cx = ((side / 2 + fx[idx] * (w - side)) / w) * 2 - 1
        cy = ((side / 2 + fy[idx] * (h - side)) / h) * 2 - 1
        sx = torch.from_numpy(side / w).float()[:, None]
        sy = torch.from_numpy(side / h).float()[:, None]
        sgn = torch.from_numpy(np.where(flip[idx], -1.0, 1.0)).float()[:, None]
        gx = torch.from_numpy(cx).float()[:, None] + sgn * sx * base[None]  # [k, size]
        gy = torch.from_numpy(cy).float()[:, None] + sy * base[None]
        k = idx.size
        grid = torch.stack([gx[:, None, :].expand(k, size, size), gy[:, :, None].expand(k, size, size)], dim=-1)
        crops = F.grid_sample(img[None].expand(k, -1, -1, -1), grid, mode="bilinear",
                              padding_mode="border", align_corners=False)
        out[torch.from_numpy(idx)] = crops
    return out.clamp_(0.0, 1.0)
