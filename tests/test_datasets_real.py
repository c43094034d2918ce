"""labkit.datasets.real: MNIST, MNIST-M, hymenoptera and ImageNet samples from the mirror copy."""

from __future__ import annotations

import csv
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from labkit.datasets import load_dataset, real
from labkit.storage import DataNotFoundError

TRAIN_FIRST = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
TEST_FIRST = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@pytest.fixture
def no_network(monkeypatch):
    """Make every urllib request fail at once, as offline (also when the CI box has network)."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled by the test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _fresh_root(tmp_path: Path, mirror_root: Path, *names: str) -> Path:
    """A new data root (so no MNIST-M cache) linking the given folders of the mirror copy."""
    root = tmp_path / "root"
    root.mkdir(parents=True)
    for name in names:
        (root / name).symlink_to(mirror_root / name, target_is_directory=True)
    return root


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().to(torch.uint8).numpy()


# ---------------------------------------------------------------- MNIST
def test_mnist_full_splits(mirror_root):
    train = real.mnist(root=mirror_root)
    assert len(train) == 60000 and train.images.shape == (60000, 1, 28, 28)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert train.labels[:10].tolist() == TRAIN_FIRST
    assert torch.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert train.images.mean().item() == pytest.approx(0.1307, abs=1e-3)
    assert train.classes == [str(d) for d in range(10)]
    test = real.mnist(False, root=mirror_root)
    assert len(test) == 10000 and test.labels[:10].tolist() == TEST_FIRST


def test_mnist_limit_channels_size(mirror_root):
    grey = real.mnist(False, root=mirror_root, limit=5)
    assert grey.images.shape == (5, 1, 28, 28) and grey.labels.tolist() == TEST_FIRST[:5]
    rgb = real.mnist(False, root=mirror_root, limit=5, channels=3)
    assert rgb.images.shape == (5, 3, 28, 28)
    assert torch.equal(rgb.images[:, 0], grey.images[:, 0]) and torch.equal(rgb.images[:, 2], grey.images[:, 0])
    big = real.mnist(False, root=mirror_root, limit=5, size=56)
    assert big.images.shape == (5, 1, 56, 56)
    # a 2x bilinear upsampling keeps the mean intensity
    assert big.images.mean().item() == pytest.approx(grey.images.mean().item(), rel=0.02)
    via_registry = load_dataset("mnist", train=False, root=mirror_root, limit=3)
    assert torch.equal(via_registry.images, grey.images[:3])


@pytest.mark.parametrize("kwargs, match", [
    ({"channels": 2}, "channels"), ({"limit": 0}, "limit"), ({"size": 0}, "size"), ({"train": "yes"}, "train"),
])
def test_mnist_bad_arguments(mirror_root, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        real.mnist(root=mirror_root, **kwargs)


def test_mnist_missing(tmp_path, no_network):
    with pytest.raises(DataNotFoundError) as err:
        real.mnist(root=tmp_path)
    msg = str(err.value)
    assert "mnist" in msg and str(tmp_path.resolve() / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in msg
    assert "shared/datasets" in msg


# ---------------------------------------------------------------- MNIST-M
def test_mnist_m_recipe_by_hand(tmp_path, mirror_root):
    root = _fresh_root(tmp_path, mirror_root, "MNIST", "BSDS500")
    mm = real.mnist_m(False, root=root, limit=40, seed=3)
    digits = real.mnist(False, root=root, limit=40)
    assert mm.images.shape == (40, 3, 28, 28) and torch.equal(mm.labels, digits.labels)
    bsds = sorted((mirror_root / "BSDS500" / "images" / "train").glob("*.jpg"))
    assert len(bsds) == 200
    assert len(set(mm.info["background"].tolist())) > 25  # 40 draws among 200 photos
    for i in (0, 1, 17, 39):
        photo = np.asarray(Image.open(bsds[int(mm.info["background"][i])]).convert("RGB")).astype(int)
        y, x = mm.info["crop_yx"][i].tolist()
        assert 0 <= y <= photo.shape[0] - 28 and 0 <= x <= photo.shape[1] - 28
        crop = photo[y:y + 28, x:x + 28]                                  # [28, 28, 3]
        digit = _to_uint8(digits.images[i, 0]).astype(int)[..., None]      # [28, 28, 1]
        expected = np.abs(crop - digit).transpose(2, 0, 1)
        assert np.array_equal(_to_uint8(mm.images[i]), expected)
    # the digit is visible: where it is bright, the output is the photo's negative
    assert mm.images.std().item() > 0.1


def test_mnist_m_determinism_and_prefix(tmp_path, mirror_root):
    r1 = _fresh_root(tmp_path / "1", mirror_root, "MNIST", "BSDS500")
    r2 = _fresh_root(tmp_path / "2", mirror_root, "MNIST", "BSDS500")
    full = real.mnist_m(False, root=r1, seed=0)  # the whole test split, built here
    assert len(full) == 10000 and full.labels[:10].tolist() == TEST_FIRST
    part = real.mnist_m(False, root=r2, limit=300, seed=0)  # built independently in another root
    assert torch.equal(part.images, full.images[:300])
    assert torch.equal(part.info["crop_yx"], full.info["crop_yx"][:300])
    other = real.mnist_m(False, root=r2, limit=300, seed=1)
    assert not torch.equal(other.images, part.images) and torch.equal(other.labels, part.labels)
    train = real.mnist_m(True, root=r2, limit=300, seed=0)  # train and test use separate streams
    assert not torch.equal(train.info["crop_yx"], part.info["crop_yx"])


def test_mnist_m_cache(tmp_path, mirror_root, monkeypatch):
    root = _fresh_root(tmp_path, mirror_root, "MNIST", "BSDS500")
    first = real.mnist_m(False, root=root, limit=50, seed=7)
    cached = sorted(p.name for p in (root / "mnist_m").iterdir())
    assert cached == [f"mnist_m-v{real.MNIST_M_VERSION}-test-seed7.pt"]
    bigger = real.mnist_m(False, root=root, limit=120, seed=7)  # the cache holds 50: rebuilt, same prefix
    assert torch.equal(bigger.images[:50], first.images)

    def must_not_build(*args, **kwargs):
        raise AssertionError("mnist_m rebuilt although the cache covers the request")

    monkeypatch.setattr(real, "_build_mnist_m", must_not_build)
    again = real.mnist_m(False, root=root, limit=120, seed=7)
    assert torch.equal(again.images, bigger.images) and torch.equal(again.labels, bigger.labels)
    assert torch.equal(again.info["background"], bigger.info["background"])
    assert torch.equal(real.mnist_m(False, root=root, limit=10, seed=7).images, first.images[:10])
    with pytest.raises(AssertionError, match="rebuilt"):  # another seed is not served from this cache
        real.mnist_m(False, root=root, limit=10, seed=8)


def test_mnist_m_full_train_split(tmp_path, mirror_root):
    root = _fresh_root(tmp_path, mirror_root, "MNIST", "BSDS500")
    full = real.mnist_m(True, root=root, seed=0)
    assert full.images.shape == (60000, 3, 28, 28) and full.labels[:10].tolist() == TRAIN_FIRST
    part = real.mnist_m(True, root=_fresh_root(tmp_path / "p", mirror_root, "MNIST", "BSDS500"), limit=64, seed=0)
    assert torch.equal(part.images, full.images[:64])
    for p in (root / "mnist_m").iterdir():  # 143 MB: do not leave it in pytest's tmp folders
        p.unlink()


def test_mnist_m_missing_backgrounds(tmp_path, mirror_root):
    root = _fresh_root(tmp_path, mirror_root, "MNIST")
    with pytest.raises(DataNotFoundError) as err:
        real.mnist_m(root=root, limit=5)
    msg = str(err.value)
    assert "mnist_m" in msg and str(root.resolve() / "BSDS500" / "images" / "train") in msg


# ---------------------------------------------------------------- hymenoptera
@pytest.mark.parametrize("split, counts", [("train", [123, 121]), ("val", [70, 83])])
def test_hymenoptera(mirror_root, split, counts):
    ds = real.hymenoptera(split, root=mirror_root, size=24)
    assert ds.classes == ["ants", "bees"]
    assert ds.images.shape == (sum(counts), 3, 24, 24)
    assert torch.bincount(ds.labels).tolist() == counts
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0 and ds.images.std() > 0.1


def test_hymenoptera_bad_split_and_missing(tmp_path):
    with pytest.raises(ValueError, match="split"):
        real.hymenoptera("test", root=tmp_path)
    with pytest.raises(DataNotFoundError) as err:
        real.hymenoptera("val", root=tmp_path)
    assert "hymenoptera" in str(err.value) and str(tmp_path.resolve() / "hymenoptera_data" / "val") in str(err.value)
    (tmp_path / "hymenoptera_data" / "val" / "ants").mkdir(parents=True)  # a folder without images
    with pytest.raises(DataNotFoundError, match="hymenoptera"):
        real.hymenoptera("val", root=tmp_path)


# ---------------------------------------------------------------- ImageNet samples
def test_imagenet_samples(mirror_root):
    ds = real.imagenet_samples(root=mirror_root, size=32)
    folder = mirror_root / "imagenet_samples"
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(ds) == len(rows) == 300 and ds.images.shape == (300, 3, 32, 32)
    assert ds.labels.tolist() == [int(r["class_index"]) for r in rows]
    assert len(ds.classes) == 1000 and ds.classes[0] == "tench" and ds.classes[1] == "goldfish"
    assert [ds.classes[y] for y in ds.labels.tolist()] == [r["class_name"].split(",")[0].strip() for r in rows]


def test_imagenet_samples_pixels_and_limit(mirror_root):
    ds = real.imagenet_samples(root=mirror_root, size=227, limit=2)  # the files are 227x227: no resampling
    assert len(ds) == 2 and ds.classes[ds.labels[0]] == "canoe"
    img = np.asarray(Image.open(mirror_root / "imagenet_samples" / "val" / "ILSVRC2012_val_00000347.JPEG").convert("RGB"))
    assert np.array_equal(_to_uint8(ds.images[0]).transpose(1, 2, 0), img)


def test_imagenet_samples_missing(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        real.imagenet_samples(root=tmp_path)
    msg = str(err.value)
    assert "imagenet_samples" in msg and str(tmp_path.resolve() / "imagenet_samples" / "labels.csv") in msg


def test_default_root_is_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match="nowhere"):
        real.hymenoptera()


# ---------------------------------------------------------------- normalization
def test_imagenet_normalize():
    mean = torch.tensor(real.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(real.IMAGENET_STD).view(3, 1, 1)
    x = mean.expand(3, 4, 5).clone()
    before = x.clone()
    assert torch.allclose(real.imagenet_normalize(x), torch.zeros(3, 4, 5), atol=1e-6)
    assert torch.equal(x, before)  # the input is not modified
    batch = (mean + std).expand(2, 3, 4, 4)
    assert torch.allclose(real.imagenet_normalize(batch), torch.ones(2, 3, 4, 4), atol=1e-6)
    y = torch.rand(2, 3, 5, 5)
    assert torch.allclose(real.imagenet_denormalize(real.imagenet_normalize(y)), y, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        real.imagenet_normalize(torch.rand(2, 1, 5, 5))
