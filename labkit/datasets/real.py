"""Real data sets found under the data root (``labkit.storage.data_root()``).

- :func:`mnist`: LeCun et al. 1998, through ``torchvision.datasets.MNIST`` (labs 02-05, 08, 09).
- :func:`mnist_m`: MNIST digits blended with BSDS500 photo crops, the recipe of Ganin &
  Lempitsky 2015 (lab 09, domain adaptation); built once per seed and cached.
- :func:`photo_scenes`: ``lk.scenes`` composited on crops of BSDS500 photos (lab 08's real mode).
- :func:`hymenoptera`: the ants/bees set of the PyTorch transfer-learning tutorial (lab 01).
- :func:`imagenet_samples`: 300 ILSVRC2012 validation images with labels and the 1000 class
  names (labs 02-06 with ImageNet-pretrained models).

Every loader returns an :class:`~labkit.datasets.base.ImageSet` with images in ``[0, 1]``
(not normalized: use :func:`imagenet_normalize` before an ImageNet model). When files are
missing it raises :class:`~labkit.storage.DataNotFoundError` naming the data set, the paths
looked for and how to provide them.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_int
from ..storage import DataNotFoundError, data_root, require
from .base import ImageSet

__all__ = [
    "mnist",
    "mnist_m",
    "photo_scenes",
    "hymenoptera",
    "imagenet_samples",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet_normalize",
    "imagenet_denormalize",
]

#: Per-channel mean and std of ImageNet (RGB, images in [0, 1]) used by torchvision's models.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

DIGIT_CLASSES = [str(d) for d in range(10)]
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: Bump when the MNIST-M recipe changes: cached files of another version are ignored.
MNIST_M_VERSION = 1
_MNIST_M_CROP = 28


# --------------------------------------------------------------------------- argument checks
def _root(root: str | os.PathLike | None) -> Path:
    if root is None:
        return data_root()
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a str, a Path or None (the data root), got {type(root).__name__} ({root!r})")
    return Path(root).expanduser().resolve()


def _check_bool(value: object, arg: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{arg} must be True or False, got {value!r}")
    return bool(value)


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------- normalization
def _stats(x: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"x must be [3, H, W] or [N, 3, H, W] (RGB), got shape {tuple(x.shape)}")
    dtype = x.dtype if x.is_floating_point() else torch.float32
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype, device=x.device).view(3, 1, 1)
    return mean, std


def imagenet_normalize(x: Tensor) -> Tensor:
    """``(x - IMAGENET_MEAN) / IMAGENET_STD`` per channel, for ``[3,H,W]`` or ``[N,3,H,W]`` in ``[0, 1]``.

    Returns a new tensor (the input is not modified). Used by the labs with ImageNet models (01-06).
    """
    mean, std = _stats(x)
    return (x.to(mean.dtype) - mean) / std


def imagenet_denormalize(x: Tensor) -> Tensor:
    """Inverse of :func:`imagenet_normalize` (e.g. to show an optimized input image; labs 03, 04)."""
    mean, std = _stats(x)
    return x.to(mean.dtype) * std + mean


# --------------------------------------------------------------------------- MNIST
def _mnist_how(root: Path, reason: str) -> str:
    return (f"torchvision could not find or download the four MNIST .gz files ({reason}). Copy them from the "
            f"course mirror: `mkdir -p {root}/MNIST/raw && cp ../shared/datasets/MNIST/raw/*.gz {root}/MNIST/raw/` "
            f"(or `labkit data --from-mirror ../shared/datasets --root {root}`), or set LABKIT_DATA to a "
            "writable copy of the mirror.")


def _mnist_uint8(train: bool, root: Path, dataset: str = "mnist") -> tuple[Tensor, Tensor]:
    """MNIST as torchvision stores it: uint8 ``[N, 28, 28]`` and int64 ``[N]``."""
    from torchvision.datasets import MNIST

    looked = [root / "MNIST" / "raw" / f"{f}.gz" for f in MNIST_FILES]
    try:
        # torchvision checks the .gz MD5s, gunzips them and only uses the network when they are absent.
        with contextlib.redirect_stdout(io.StringIO()):
            ds = MNIST(str(root), train=train, download=True)
    except (RuntimeError, OSError) as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        reason = " ".join(lines[:1] + lines[-1:] if len(lines) > 1 else lines).rstrip(":") or type(exc).__name__
        raise DataNotFoundError(dataset, looked, _mnist_how(root, reason)) from exc
    return ds.data, ds.targets.long()


def mnist(train: bool = True, *, root: str | os.PathLike | None = None, limit: int | None = None,
          channels: int = 1, size: int = 28) -> ImageSet:
    """MNIST (LeCun et al. 1998) from ``root/MNIST/raw`` via torchvision, as float images in ``[0, 1]``.

    ``limit`` keeps the first ``limit`` samples (all when larger than the split); ``channels=3``
    repeats the grey channel (for RGB models); ``size`` resizes bilinearly (antialiased).
    Used in labs 02-05, 08 and 09 with ``DATA="real"``.
    """
    train = _check_bool(train, "train")
    limit = check_int(limit, "limit", low=1, allow_none=True)
    size = check_int(size, "size", low=4)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be 1 (grey) or 3 (grey repeated as RGB), got {channels!r}")
    base = _root(root)
    data, targets = _mnist_uint8(train, base)
    if limit is not None:
        data, targets = data[:limit], targets[:limit]
    x = data.unsqueeze(1).float().div_(255.0)
    if size != 28:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    if channels == 3:
        x = x.repeat(1, 3, 1, 1)
    return ImageSet(x, targets.clone(), list(DIGIT_CLASSES), name=f"mnist-{'train' if train else 'test'}")


# --------------------------------------------------------------------------- MNIST-M
def bsds_paths(root: Path, split: str, *, name: str, why: str) -> list[Path]:
    """The BSDS500 photos of ``split`` under ``root`` (sorted), or a DataNotFoundError for the data set
    ``name`` that says ``why`` it needs them and how to copy them from the course mirror."""
    folder = root / "BSDS500" / "images" / split
    paths = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not paths:
        raise DataNotFoundError(
            name, [folder / "*.jpg"],
            f"{why} Copy them from the course mirror: `mkdir -p {root}/BSDS500/images && cp -r "
            f"../shared/datasets/BSDS500/images/{split} {root}/BSDS500/images/` (or `labkit data --from-mirror "
            f"../shared/datasets --root {root}`), or set LABKIT_DATA to a writable copy of the mirror.")
    return paths


def photo_scenes(n: int = 500, *, size: int = 64, seed: int = 0, split: str = "train",
                 root: str | os.PathLike | None = None, **scene_options: Any) -> Any:
    """``lk.scenes`` whose background pixels (class 0) are replaced by random crops of BSDS500 photos.

    Real photographs as clutter (Arbelaez et al. 2011, the course mirror's ``BSDS500/images/<split>``);
    the objects, masks and labels are those of ``lk.scenes(n, size=size, seed=seed, **scene_options)``.
    Crops cover 40-100 % of the photo's shorter side, resized to ``size``. Lab 08's real-data mode.
    """
    from ._shapes import scenes

    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    base = scenes(n, size=size, seed=seed, **scene_options)
    paths = bsds_paths(Path(root) if root is not None else data_root(), split, name="BSDS500",
                       why="lab 08's real mode composites shapes on BSDS500 photos.")
    from PIL import Image

    rng = np.random.default_rng(seed + 7919)

    pick = rng.integers(0, len(paths), n)
    photos = torch.empty(n, 3, size, size)
    cache: dict[int, Tensor] = {}
    for i, j in enumerate(pick.tolist()):
        if j not in cache:
            with Image.open(paths[j]) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
            cache[j] = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        img = cache[j]
        hh, ww = img.shape[-2:]
        side = int(min(hh, ww) * rng.uniform(0.4, 1.0))
        top, left = int(rng.integers(0, hh - side + 1)), int(rng.integers(0, ww - side + 1))
        crop = img[:, top:top + side, left:left + side][None]
        photos[i] = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    images = torch.where((base.masks == 0)[:, None], photos.clamp(0, 1), base.images)
    out = copy.copy(base)
    out.images = images
    out.name = f"photo_scenes-{split}"
    return out


def _mnist_m_cache(root: Path, train: bool, seed: int) -> Path:
    split = "train" if train else "test"
    return root / "mnist_m" / f"mnist_m-v{MNIST_M_VERSION}-{split}-seed{seed}.pt"


def _mnist_m_plan(n_total: int, sizes: np.ndarray, train: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Background index and crop corner (y, x) for all ``n_total`` samples of the split.

    Everything is drawn up front for the whole split, so sample ``i`` depends only on
    ``seed``, the split and ``i``; a ``limit`` gives a prefix of the full split.
    """
    rng = np.random.default_rng([seed, 1 if train else 2, MNIST_M_VERSION])
    bg = rng.integers(0, len(sizes), size=n_total)
    hi = sizes[bg] - _MNIST_M_CROP + 1  # [n, 2]: number of valid corners along y and x
    y = rng.integers(0, hi[:, 0])
    x = rng.integers(0, hi[:, 1])
    return bg, np.stack([y, x], axis=1)


def _build_mnist_m(train: bool, root: Path, seed: int, n: int | None) -> dict:
    from PIL import Image

    paths = bsds_paths(root, "train", name="mnist_m", why="MNIST-M is built from MNIST and the BSDS500 train images.")
    digits, labels = _mnist_uint8(train, root, "mnist (needed by mnist_m)")
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in paths]  # each loaded once
    sizes = np.array([ph.shape[:2] for ph in photos])
    bg, crop = _mnist_m_plan(len(digits), sizes, train, seed)
    n = len(digits) if n is None else min(n, len(digits))
    c = _MNIST_M_CROP
    patches = np.empty((n, c, c, 3), dtype=np.uint8)
    for i in range(n):
        y, x = crop[i]
        patches[i] = photos[bg[i]][y:y + c, x:x + c]
    # |crop - digit| per channel on 0..255 (the digit repeated on R, G and B): photo where the
    # digit is black, the photo's negative where the digit is white.
    d = digits[:n].numpy()[..., None]
    blended = np.maximum(patches, d) - np.minimum(patches, d)
    return {
        "images": torch.from_numpy(np.ascontiguousarray(blended.transpose(0, 3, 1, 2))),
        "labels": labels[:n].clone(),
        "background": torch.from_numpy(bg[:n].astype(np.int64)),
        "crop_yx": torch.from_numpy(crop[:n].astype(np.int64)),
        "meta": {"version": MNIST_M_VERSION, "seed": seed, "train": train, "n_split": len(digits),
                 "backgrounds": [p.name for p in paths]},
    }


def _load_mnist_m_cache(path: Path, train: bool, seed: int, n_needed: int | None) -> dict | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = blob["meta"]
    except Exception as exc:  # a truncated or foreign file: rebuild
        warnings.warn(f"ignoring unreadable MNIST-M cache {path} ({exc}); rebuilding it", stacklevel=3)
        return None
    if (meta.get("version"), meta.get("seed"), meta.get("train")) != (MNIST_M_VERSION, seed, train):
        return None
    have = len(blob["labels"])
    want = meta["n_split"] if n_needed is None else min(n_needed, meta["n_split"])
    return blob if have >= want else None


def _save_atomic(blob: dict, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not cache MNIST-M at {path} ({exc}); it will be rebuilt next time", stacklevel=3)


def mnist_m(train: bool = True, *, root: str | os.PathLike | None = None, limit: int | None = None,
            seed: int = 0) -> ImageSet:
    """MNIST-M (Ganin & Lempitsky 2015): each MNIST digit blended with a random BSDS500 photo crop.

    Recipe: for digit ``i`` pick a random *train* image of BSDS500 and a random 28x28 crop of it;
    the output pixel is ``|crop - digit|`` per RGB channel on 0..255. Crop positions are drawn
    up front for the whole split from ``seed``, so ``limit`` gives a prefix of the full split.
    The result is cached as uint8 in ``root/mnist_m/`` (file name: recipe version, split, seed)
    and loaded from there next time. ``info["background"]`` is the index into the sorted BSDS500
    train file names and ``info["crop_yx"]`` the crop's top-left corner. Used in lab 09.
    """
    train = _check_bool(train, "train")
    limit = check_int(limit, "limit", low=1, allow_none=True)
    seed = _check_seed(seed)
    base = _root(root)
    cache = _mnist_m_cache(base, train, seed)
    blob = _load_mnist_m_cache(cache, train, seed, limit)
    if blob is None:
        blob = _build_mnist_m(train, base, seed, limit)
        _save_atomic(blob, cache)
    n = len(blob["labels"]) if limit is None else min(limit, len(blob["labels"]))
    images = blob["images"][:n].float().div_(255.0)
    return ImageSet(images, blob["labels"][:n].clone(), list(DIGIT_CLASSES),
                    info={"background": blob["background"][:n].clone(), "crop_yx": blob["crop_yx"][:n].clone()},
                    name=f"mnist_m-{'train' if train else 'test'}")


# --------------------------------------------------------------------------- photos (ImageFolder-like)
def _resize_crop(size: int):
    from torchvision import transforms as T

    return T.Compose([T.Resize(size, antialias=True), T.CenterCrop(size), T.ToTensor()])


def _load_photos(paths: Sequence[Path], size: int) -> Tensor:
    from PIL import Image

    tf = _resize_crop(size)
    out = torch.empty(len(paths), 3, size, size)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            out[i] = tf(im.convert("RGB"))
    return out


def hymenoptera(split: str = "train", *, root: str | os.PathLike | None = None, size: int = 224) -> ImageSet:
    """The ants/bees images of the PyTorch transfer-learning tutorial (ImageNet subset), lab 01.

    ``root/hymenoptera_data/{train,val}/{ants,bees}/``, read like ``torchvision.datasets.ImageFolder``
    (sorted classes ``["ants", "bees"]``; the stray .gif is skipped): 244 train, 153 val images.
    Resized (shorter side to ``size``) and centre-cropped to ``size``; values in ``[0, 1]``, not
    normalized (see :func:`imagenet_normalize`).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    size = check_int(size, "size", low=8)
    base = require("hymenoptera", [f"hymenoptera_data/{split}"], root=_root(root))
    from torchvision.datasets import ImageFolder

    split_dir = base / "hymenoptera_data" / split
    try:
        folder = ImageFolder(str(split_dir))
    except FileNotFoundError as exc:  # the folder exists but holds no class folders / images
        raise DataNotFoundError("hymenoptera", [split_dir / "ants" / "*.jpg", split_dir / "bees" / "*.jpg"],
                                f"({exc}) Re-copy hymenoptera_data from ../shared/datasets.") from exc
    paths = [Path(p) for p, _ in folder.samples]
    labels = torch.tensor([t for _, t in folder.samples], dtype=torch.int64)
    return ImageSet(_load_photos(paths, size), labels, list(folder.classes), name=f"hymenoptera-{split}")


def _read_synsets(path: Path) -> tuple[list[str], list[str]]:
    wnids, names = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        wnid, _, rest = line.strip().partition(" ")
        wnids.append(wnid)
        names.append(rest.split(",")[0].strip())
    return wnids, names


def imagenet_samples(*, root: str | os.PathLike | None = None, size: int = 224, limit: int | None = None) -> ImageSet:
    """300 ILSVRC2012 validation images (one per class, 300 classes) with their labels.

    Files: ``root/imagenet_samples/{labels.csv, synset_words.txt, val/*.JPEG}``. ``classes`` holds
    all 1000 ImageNet class names in the standard order of torchvision's outputs (the first name
    of each synset), so ``classes[label]`` names an image's class. Images are resized (shorter
    side) and centre-cropped to ``size``, values in ``[0, 1]``, not normalized. ``limit`` keeps
    the first rows of ``labels.csv``. Used in labs 02-06 with ImageNet-pretrained models.
    """
    size = check_int(size, "size", low=8)
    limit = check_int(limit, "limit", low=1, allow_none=True)
    rels = ["imagenet_samples/labels.csv", "imagenet_samples/synset_words.txt", "imagenet_samples/val"]
    base = require("imagenet_samples", rels, root=_root(root))
    folder = base / "imagenet_samples"
    wnids, classes = _read_synsets(folder / "synset_words.txt")
    with open(folder / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if limit is not None:
        rows = rows[:limit]
    paths = [folder / "val" / r["filename"] for r in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataNotFoundError("imagenet_samples", missing[:5] + ([f"... and {len(missing) - 5} more"] if len(missing) > 5 else []))
    labels = torch.tensor([int(r["class_index"]) for r in rows], dtype=torch.int64)
    bad = [r["filename"] for r, y in zip(rows, labels.tolist())
           if not 0 <= y < len(wnids) or (r.get("wnid") and r["wnid"] != wnids[y])]
    if bad:
        raise ValueError(f"{folder / 'labels.csv'} disagrees with synset_words.txt (class index out of range "
                         f"or wnid mismatch) for {len(bad)} rows, e.g. {bad[:3]}; re-copy imagenet_samples from the mirror")
    return ImageSet(_load_photos(paths, size), labels, classes, name="imagenet_samples")
