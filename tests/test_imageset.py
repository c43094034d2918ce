"""ImageSet (labkit/datasets/base.py): validation, subsets, seeded splits and loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from labkit.datasets.base import ImageSet


def make(n: int = 10, *, masks: bool = True) -> ImageSet:
    """Image i is filled with the value i, so every sample can be identified after indexing."""
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 4, 4).clone()
    labels = torch.arange(n) % 3
    m = (torch.arange(n).view(n, 1, 1) % 2 == 0).expand(n, 4, 4).clone() if masks else None
    return ImageSet(images, labels, ["a", "b", "c"], m, {"cue": torch.arange(n) * 10}, name="toy")


def ids(s: ImageSet) -> list[int]:
    return s.images[:, 0, 0, 0].long().tolist()


# --- construction -------------------------------------------------------------------------------

def test_basic_properties() -> None:
    s = make()
    assert len(s) == 10 and s.num_classes == 3
    x, y = s[4]
    assert x.shape == (3, 4, 4) and x[0, 0, 0] == 4 and y == 1
    assert repr(s) == "ImageSet(toy: 10 images 3x4x4, 3 classes, masks)"
    assert repr(make(masks=False)) == "ImageSet(toy: 10 images 3x4x4, 3 classes)"
    assert "unnamed" in repr(ImageSet(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long), ["x"]))


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(images=torch.zeros(4, 3, 4)), r"images must be \[N, C, H, W\], got shape \(4, 3, 4\)"),
        (dict(labels=torch.zeros(3, dtype=torch.long)), r"labels must have shape \(4,\), got \(3,\)"),
        (dict(labels=torch.zeros(4, 1, dtype=torch.long)), r"labels must have shape \(4,\), got \(4, 1\)"),
        (dict(masks=torch.zeros(3, 5, 5, dtype=torch.bool)), r"masks must be \[N, H, W\] = \(4, 5, 5\)"),
        (dict(masks=torch.zeros(4, 4, 4, dtype=torch.bool)), r"masks must be \[N, H, W\].* got shape \(4, 4, 4\)"),
        (dict(info={"cue": torch.zeros(5)}), r"info\['cue'\] has 5 entries, expected 4"),
    ],
)
def test_shape_validation_errors(kwargs: dict, msg: str) -> None:
    args = dict(images=torch.zeros(4, 3, 5, 5), labels=torch.zeros(4, dtype=torch.long), classes=["x"])
    args.update(kwargs)
    with pytest.raises(ValueError, match=msg):
        ImageSet(**args)


def test_int64_class_map_masks_are_accepted() -> None:
    s = ImageSet(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), ["x"], torch.zeros(2, 4, 4, dtype=torch.long))
    assert s.masks.dtype == torch.int64


# --- subset -------------------------------------------------------------------------------------

def test_subset_with_slice_list_tensor_and_array() -> None:
    s = make()
    assert ids(s.subset(slice(2, 5))) == [2, 3, 4]
    assert ids(s.subset([7, 1, 1])) == [7, 1, 1]  # order and repeats kept
    assert ids(s.subset(torch.tensor([9, 0]))) == [9, 0]
    assert ids(s.subset(np.array([3, 5]))) == [3, 5]


def test_subset_carries_labels_masks_info_classes_and_name() -> None:
    s = make()
    sub = s.subset([2, 3])
    assert sub.labels.tolist() == [2, 0]
    assert sub.masks[:, 0, 0].tolist() == [True, False]
    assert sub.info["cue"].tolist() == [20, 30]
    assert sub.classes == ["a", "b", "c"] and sub.classes is not s.classes
    assert sub.name == "toy"
    assert make(masks=False).subset([1]).masks is None


def test_subset_with_a_bool_mask() -> None:
    s = make()
    keep = s.labels == 1
    sub = s.subset(keep)
    assert ids(sub) == [1, 4, 7] and sub.info["cue"].tolist() == [10, 40, 70]
    assert len(s.subset(torch.zeros(10, dtype=torch.bool))) == 0
    with pytest.raises(ValueError, match=r"a bool mask must have shape \(10,\), got \(3,\)"):
        s.subset(torch.tensor([True, False, True]))


def test_subset_with_an_int_and_an_empty_list() -> None:
    s = make()
    one = s.subset(6)
    assert len(one) == 1 and ids(one) == [6] and one.masks.shape == (1, 4, 4)
    empty = s.subset([])
    assert len(empty) == 0 and empty.images.shape == (0, 3, 4, 4) and empty.info["cue"].shape == (0,)


def test_subset_does_not_modify_the_original() -> None:
    s = make()
    before = s.images.clone()
    sub = s.subset([0, 1])
    sub.images += 100  # advanced indexing copies
    assert torch.equal(s.images, before)


# --- split --------------------------------------------------------------------------------------

def test_split_sizes_disjoint_and_deterministic() -> None:
    s = make(20)
    a, b, c = s.split(10, 5, 3, seed=4)
    assert (len(a), len(b), len(c)) == (10, 5, 3)
    all_ids = ids(a) + ids(b) + ids(c)
    assert len(set(all_ids)) == 18  # disjoint
    assert [ids(p) for p in s.split(10, 5, 3, seed=4)] == [ids(a), ids(b), ids(c)]
    assert ids(s.split(10, seed=5)[0]) != ids(a)
    assert sorted(ids(s.split(20, seed=1)[0])) == list(range(20))  # a permutation of all
    assert a.info["cue"].tolist() == [10 * i for i in ids(a)]  # info follows the samples


@pytest.mark.parametrize("sizes, msg", [((), "non-negative ints"), ((5, -1), "non-negative ints"),
                                        ((2.5,), "non-negative ints"), ((8, 3), r"add up to more than the 10")])
def test_split_errors(sizes: tuple, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        make().split(*sizes)


def test_split_bad_seed() -> None:
    with pytest.raises(ValueError, match="seed must be in"):
        make().split(2, seed=-1)


# --- loader -------------------------------------------------------------------------------------

def test_loader_batches_in_order() -> None:
    dl = make(10).loader(4)
    assert isinstance(dl, DataLoader) and dl.num_workers == 0
    batches = list(dl)
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.shape == (4, 3, 4, 4) and x[:, 0, 0, 0].tolist() == [0, 1, 2, 3] and y.tolist() == [0, 1, 2, 0]
    assert [len(x) for x, _ in make(10).loader(4, drop_last=True)] == [4, 4]


def test_loader_shuffle_is_seeded() -> None:
    s = make(16)

    def order(seed: int) -> list[int]:
        return torch.cat([x[:, 0, 0, 0] for x, _ in s.loader(5, shuffle=True, seed=seed)]).long().tolist()

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert order(3) != list(range(16)) and sorted(order(3)) == list(range(16))
    torch.manual_seed(0)
    a = order(3)
    torch.manual_seed(1)
    assert order(3) == a  # independent of the global torch seed


@pytest.mark.parametrize("bs", [0, -1, 2.0, None])
def test_loader_bad_batch_size(bs) -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        make().loader(bs)


# --- images_labels: the one data adapter of the trainers ------------------------------------------

def test_images_labels_accepts_the_three_forms_and_names_the_argument() -> None:
    from labkit.datasets.base import images_labels

    s = make(4)
    x, y = images_labels(s, "f", labels="required")
    assert x is s.images and y is s.labels
    assert images_labels((s.images, s.labels), "f", labels="optional")[1] is s.labels
    assert images_labels(s.images, "f", labels="optional")[1] is None
    assert images_labels(s, "f", labels="ignored")[1] is None
    with pytest.raises(ValueError, match=r"f: source needs labels \(the model is conditional\)"):
        images_labels(s.images, "f", "source", labels="required", why="the model is conditional")
    with pytest.raises(TypeError, match="f: target must be an ImageSet"):
        images_labels([1, 2, 3], "f", "target", labels="optional")
    with pytest.raises(ValueError, match=r"f: data: images must be a non-empty float \[N, C, H, W\]"):
        images_labels(torch.zeros(0, 1, 2, 2), "f", labels="optional")
    with pytest.raises(ValueError, match=r"labels must be an int64 tensor of shape \(4,\)"):
        images_labels((s.images, s.labels.float()), "f", labels="optional")
    with pytest.raises(ValueError, match="labels must be one of"):
        images_labels(s, "f", labels="yes")
