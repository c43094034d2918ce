"""Embedded generators: shapes, scenes, glyph_digits, uci_digits, photos (labkit.datasets.embedded)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit.datasets import (BACKGROUNDS, GLYPH_FONTS, PHOTO_LABELS, PHOTO_NAMES, SHAPE_CLASSES, glyph_digits,
                             load_dataset, photos, scenes, shapes, uci_digits)
from labkit.datasets import _glyphs


def _dilate(mask: torch.Tensor, r: int = 1) -> torch.Tensor:
    return F.max_pool2d(mask[:, None].float(), 2 * r + 1, stride=1, padding=r)[:, 0] > 0


# --------------------------------------------------------------------------- shapes
def test_shapes_types_shapes_ranges():
    ds = shapes(50, size=40, seed=1)
    assert ds.images.shape == (50, 3, 40, 40) and ds.images.dtype == torch.float32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert ds.labels.shape == (50,) and ds.labels.dtype == torch.int64
    assert ds.masks.shape == (50, 40, 40) and ds.masks.dtype == torch.bool
    assert ds.classes == list(SHAPE_CLASSES) and len(SHAPE_CLASSES) >= 8
    for key in ("distractor_label", "distractor_mask", "cue", "cue_mask", "background"):
        assert len(ds.info[key]) == 50
    assert ds.info["background"].unique().numel() > 1  # "mixed" draws several kinds


def test_shapes_deterministic_in_seed():
    a, b, c = shapes(64, seed=3, distractor=0.5), shapes(64, seed=3, distractor=0.5), shapes(64, seed=4, distractor=0.5)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.info["distractor_mask"], b.info["distractor_mask"])
    assert not torch.equal(a.images, c.images)


def test_shapes_every_class_balanced():
    ds = shapes(40, seed=0)
    assert torch.bincount(ds.labels, minlength=10).tolist() == [4] * 10


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_shapes_masks_cover_the_object(background):
    ds = shapes(60, seed=2, background=background, noise=0.0)
    area = ds.masks.sum((1, 2)).float()
    r = ds.info["radius"]
    assert (area > 0.15 * math.pi * r ** 2).all()  # every mask is a sizeable object
    if background == "flat":
        bg = ds.images[:, :, :1, :1]  # corners never hold the object (it lies in its disc)
        differs = (ds.images - bg).abs().amax(1) > 0.02
        # the image differs from the background only on the object and its anti-aliased fringe
        # (which reaches 2 px beyond the mask only at star tips and crescent horns)
        assert not (differs & ~_dilate(ds.masks, 2)).any()
        assert (differs & ~_dilate(ds.masks, 1)).sum() <= 0.002 * differs.sum()
        # and almost every mask pixel shows the object's colour, not the background
        assert (differs & ds.masks).sum() >= 0.95 * ds.masks.sum()


def test_shapes_class_subset_reindexes_labels():
    ds = shapes(200, seed=5, classes=["star", "circle"], background="flat", noise=0.0, rotate=False)
    same = shapes(200, seed=5, classes=[3, 0], background="flat", noise=0.0, rotate=False)
    assert ds.classes == ["star", "circle"] and torch.equal(ds.images, same.images)
    assert set(ds.labels.tolist()) == {0, 1}
    # fill ratio of the unit disc: circle of radius 0.88 -> 0.77; a five-pointed star -> about 0.3
    fill = ds.masks.sum((1, 2)).float() / (math.pi * ds.info["radius"] ** 2)
    assert ((fill[ds.labels == 1] - 0.88 ** 2).abs() < 0.06).all()
    assert (fill[ds.labels == 0] < 0.45).all()


def test_shapes_distractor_is_another_visible_class():
    ds = shapes(100, seed=6, distractor=1.0)
    d = ds.info["distractor_label"]
    assert ((d >= 0) & (d < 10) & (d != ds.labels)).all()
    dm = ds.info["distractor_mask"]
    assert not (dm & ds.masks).any()
    assert (dm.sum((1, 2)) > 0).float().mean() > 0.95
    # the labelled object is drawn on top: its mask is its whole shape
    fill = ds.masks.sum((1, 2)).float() / (math.pi * ds.info["radius"] ** 2)
    assert (fill > 0.15).all()
    none = shapes(30, seed=6, distractor=0.0)
    assert (none.info["distractor_label"] == -1).all() and not none.info["distractor_mask"].any()


def test_shapes_spurious_cue_statistics():
    ds = shapes(1000, seed=7, spurious_class="star", spurious_prob=0.9, spurious_other_prob=0.05)
    cue, star = ds.info["cue"], ds.labels == SHAPE_CLASSES.index("star")
    assert abs(cue[star].float().mean().item() - 0.9) < 0.1
    assert abs(cue[~star].float().mean().item() - 0.05) < 0.025
    side = 32 // 8
    cm = ds.info["cue_mask"]
    assert torch.equal(cm.sum((1, 2)), cue.long() * side * side)
    assert cm[:, 1:1 + side, 1:1 + side].all(dim=(1, 2)).eq(cue).all()
    # the cue is a black/white checkerboard, the same in every cued image
    patch = ds.images[cue][:, :, 1:1 + side, 1:1 + side]
    assert torch.allclose(patch, patch[:1].expand_as(patch), atol=0.1)
    assert patch.amax() > 0.9 and patch.amin() < 0.1
    assert not (ds.masks & cm).any()
    assert not shapes(50, seed=7).info["cue"].any()


def test_shapes_spurious_class_by_index_into_subset():
    ds = shapes(300, seed=8, classes=["ring", "cross"], spurious_class=1, spurious_prob=1.0, spurious_other_prob=0.0)
    assert torch.equal(ds.info["cue"], ds.labels == 1)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads (and suffer on a busy machine): one thread, restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def test_tiny_cnn_separates_shapes_far_above_chance(one_thread):
    torch.manual_seed(0)
    kw = dict(classes=["circle", "square", "cross", "ring"], background="flat", rotate=False, scale=(0.6, 0.8))
    train, test = shapes(600, seed=10, **kw), shapes(200, seed=11, **kw)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(10):
        for x, y in train.loader(50, shuffle=True, seed=epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(test.images).argmax(1) == test.labels).float().mean().item()
    assert acc > 0.7, f"accuracy {acc:.2f}; chance is 0.25"  # measured 0.85-0.90 over three torch seeds


# --------------------------------------------------------------------------- scenes
def test_scenes_class_map_consistent_with_present_and_labels():
    ds = scenes(40, size=64, seed=1)
    k = len(ds.classes)
    assert ds.images.shape == (40, 3, 64, 64) and ds.masks.dtype == torch.int64
    assert 0 <= ds.masks.min() and ds.masks.max() <= k
    present = torch.stack([(ds.masks == c + 1).any(2).any(1) for c in range(k)], 1)
    assert torch.equal(present, ds.info["present"])
    counts = ds.info["count"]
    assert ((counts >= 1) & (counts <= 3)).all()
    assert (present.sum(1) <= counts).all() and (present.sum(1) >= 1).all()
    areas = torch.stack([(ds.masks == c + 1).sum((1, 2)) for c in range(k)], 1)
    assert torch.equal(areas.argmax(1), ds.labels)
    assert present[torch.arange(40), ds.labels].all()


def test_scenes_are_resolution_independent():
    # the geometry is drawn in units of the image size before any pixel is rendered: a 128-px scene
    # is the 64-px scene drawn finer (lab 08's real-data mode uses 128 px)
    small, big = scenes(20, size=64, seed=4), scenes(20, size=128, seed=4)
    assert big.images.shape == (20, 3, 128, 128)
    assert torch.equal(small.info["count"], big.info["count"])
    agree = (big.masks[:, ::2, ::2] == small.masks).float().mean().item()
    assert agree > 0.97


def test_scenes_two_objects_and_determinism():
    a = scenes(30, seed=2, objects=(2, 2), classes=["circle", "star", "heart"])
    b = scenes(30, seed=2, objects=(2, 2), classes=["circle", "star", "heart"])
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert (a.info["count"] == 2).all() and a.classes == ["circle", "star", "heart"]
    assert (a.info["present"].sum(1) == 2).float().mean() > 0.9  # occlusion rarely hides one fully
    assert not torch.equal(a.images, scenes(30, seed=3, objects=(2, 2), classes=["circle", "star", "heart"]).images)


# --------------------------------------------------------------------------- glyph digits
def test_glyph_digits_mnist_like():
    ds = glyph_digits(200, seed=1)
    x = ds.images
    assert x.shape == (200, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.99
    assert ds.classes == [str(i) for i in range(10)]
    assert torch.bincount(ds.labels, minlength=10).tolist() == [20] * 10
    # centre of mass at the centre of the 28 x 28 field (MNIST: within a pixel)
    c = torch.arange(28).float() + 0.5
    m = x[:, 0].sum((1, 2))
    cy = (x[:, 0].sum(2) * c).sum(1) / m
    cx = (x[:, 0].sum(1) * c).sum(1) / m
    assert ((cy - 14).abs() < 1.0).all() and ((cx - 14).abs() < 1.0).all()
    # the digit's longer side fills the 20 x 20 box
    on = x[:, 0] > 0.3
    rows, cols = on.any(2).sum(1), on.any(1).sum(1)
    ext = torch.maximum(rows, cols)
    assert (ext >= 17).all() and (ext <= 22).all()
    # black background
    assert x[:, 0, 0, :].max() < 0.05


def test_glyph_digits_deterministic_and_varied():
    a, b, c = glyph_digits(50, seed=4), glyph_digits(50, seed=4), glyph_digits(50, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.info["font"].unique().numel() > 5 and a.info["font"].max() < len(GLYPH_FONTS)


def test_glyph_bank_is_cached_on_disk_and_equal_to_a_fresh_one(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    path = _glyphs._bank_file()
    assert path.parent == tmp_path / "cache" and not path.exists()
    _glyphs._bank.cache_clear()
    try:
        fresh = _glyphs._bank()  # computed, then written
        assert path.exists() and not list(path.parent.glob(".*.tmp"))
        _glyphs._bank.cache_clear()
        loaded = _glyphs._bank()  # read back
        assert torch.equal(loaded[0], fresh[0]) and loaded[0].dtype == torch.float32
        for a, b in zip(loaded[1:], fresh[1:]):
            assert isinstance(a, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
        path.write_bytes(b"not a torch file")  # a damaged cache is computed again and replaced
        _glyphs._bank.cache_clear()
        assert torch.equal(_glyphs._bank()[0], fresh[0]) and path.stat().st_size > 1000
    finally:
        _glyphs._bank.cache_clear()


def test_glyph_bank_with_an_unwritable_cache_is_computed_not_an_error(tmp_path, monkeypatch):
    """The grader's sandbox mounts the data root read-only: torch.save then raises a RuntimeError
    (not an OSError), which must not stop the lab (it did, in the sandbox, for a new bank)."""
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))

    def read_only(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: "
                           "Read-only file system")

    monkeypatch.setattr(_glyphs.torch, "save", read_only)
    _glyphs._bank.cache_clear()
    try:
        bank = _glyphs._bank()
        assert bank[0].shape[0] == len(bank[1]) > 0 and not _glyphs._bank_file().exists()
        assert not list((tmp_path / "cache").glob(".*.tmp"))
    finally:
        _glyphs._bank.cache_clear()


def test_glyph_digits_photo_domain_is_mnist_m_recipe(monkeypatch):
    plain = glyph_digits(20, seed=3)
    photo = glyph_digits(20, seed=3, domain="photo")
    assert photo.images.shape == (20, 3, 28, 28) and not torch.allclose(photo.images[:, :1], plain.images)
    assert torch.equal(photo.labels, plain.labels)
    assert glyph_digits(5, domain="photo", channels=1).images.shape == (5, 1, 28, 28)
    rgb = glyph_digits(5, channels=3).images
    assert rgb.shape == (5, 3, 28, 28) and torch.equal(rgb[:, 0], rgb[:, 2])
    # |crop - digit| with a constant grey crop of 0.3: 0.3 on the background, 0.7 on full ink
    monkeypatch.setattr(_glyphs, "photo_crops", lambda rng, n, size, **kw: torch.full((n, 3, size, size), 0.3))
    fake = glyph_digits(20, seed=3, domain="photo")
    assert torch.allclose(fake.images, (0.3 - plain.images).abs().expand(-1, 3, -1, -1), atol=1e-6)


# --------------------------------------------------------------------------- uci digits, photos
def test_uci_digits():
    from sklearn.datasets import load_digits

    ds = uci_digits(size=28, seed=0)
    assert ds.images.shape == (1797, 1, 28, 28) and 0 <= ds.images.min() and ds.images.max() <= 1
    assert sorted(set(ds.labels.tolist())) == list(range(10))
    same = uci_digits(size=8, seed=1)  # bilinear at the same size is the identity
    d = load_digits()
    ref = torch.from_numpy(d.images.astype(np.float32) / 16)
    order = torch.from_numpy(np.random.default_rng(1).permutation(1797))
    assert torch.allclose(same.images[:, 0], ref[order], atol=1e-6)
    assert torch.equal(same.labels, torch.from_numpy(d.target)[order])


def test_photo_labels_name_imagenet_classes_of_known_photos():
    from labkit.models import imagenet_classes
    classes = imagenet_classes()
    assert set(PHOTO_LABELS) <= set(PHOTO_NAMES) and {"chelsea", "coffee", "china", "flower"} <= set(PHOTO_LABELS)
    for name, labels in PHOTO_LABELS.items():
        assert labels and all(label in classes for label in labels), (name, labels)
    assert PHOTO_LABELS["chelsea"][0] == "tabby" and "espresso" in PHOTO_LABELS["coffee"]


def test_photos():
    ph = photos()
    assert set(ph) == set(PHOTO_NAMES) and {"astronaut", "coffee", "chelsea", "rocket"} <= set(ph)
    for img in ph.values():
        assert img.dim() == 3 and img.shape[0] == 3 and 0 <= img.min() and img.max() <= 1
    small = photos(size=32)
    assert all(v.shape == (3, 32, 32) for v in small.values())
    small["astronaut"].zero_()  # callers get copies
    assert photos(size=32)["astronaut"].max() > 0


def test_registry_calls_the_generators():
    assert len(load_dataset("shapes", n=5)) == 5
    assert load_dataset("glyph_digits", n=3).images.shape == (3, 1, 28, 28)


# --------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("call, name", [
    (lambda: shapes(10, size=10), "size"),
    (lambda: shapes(10, size=65), "size"),
    (lambda: scenes(10, size=10), "size"),
    (lambda: scenes(10, size=129), "size"),
    (lambda: glyph_digits(10, size=10), "size"),
    (lambda: shapes(10, background="stripes"), "background"),
    (lambda: scenes(10, background="stripes"), "background"),
    (lambda: shapes(10, classes=["blob"]), "classes"),
    (lambda: shapes(10, classes=[42]), "classes"),
    (lambda: shapes(10, classes=["star", "star"]), "classes"),
    (lambda: scenes(10, classes=["blob"]), "classes"),
    (lambda: shapes(0), "n"),
    (lambda: shapes(-5), "n"),
    (lambda: scenes(0), "n"),
    (lambda: glyph_digits(0), "n"),
    (lambda: shapes(10, distractor=1.5), "distractor"),
    (lambda: shapes(10, spurious_class="blob"), "spurious_class"),
    (lambda: shapes(10, spurious_prob=-0.1), "spurious_prob"),
    (lambda: shapes(10, scale=(0.8, 0.4)), "scale"),
    (lambda: scenes(10, objects=(0, 2)), "objects"),
    (lambda: scenes(10, objects=(2, 4), classes=["star", "ring"]), "objects"),
    (lambda: glyph_digits(10, domain="mnistm"), "domain"),
    (lambda: glyph_digits(10, channels=2), "channels"),
    (lambda: photos(size=2), "size"),
    (lambda: uci_digits(size=4), "size"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="n"):
        shapes(2.5)
    with pytest.raises(TypeError, match="classes"):
        shapes(10, classes="star")
