"""``ImageSet``: the one in-memory data set type every labkit loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..reproducibility import make_generator

__all__ = ["ImageSet"]


@dataclass
class ImageSet(Dataset):
    """Images, labels and (optionally) masks held as tensors; a ``Dataset`` of ``(image, label)``.

    - ``images``: ``[N, C, H, W]`` float32 in ``[0, 1]``.
    - ``labels``: ``[N]`` int64 class indices into ``classes``.
    - ``masks``: ``None``, ``[N, H, W]`` bool (pixels of the labelled object) or ``[N, H, W]`` int64
      (a per-pixel class map, 0 = background, ``k + 1`` = ``classes[k]``, for segmentation).
    - ``info``: extra per-sample tensors whose first dimension is ``N`` (e.g. ``"cue"``).
    """

    images: Tensor
    labels: Tensor
    classes: list[str]
    masks: Tensor | None = None
    info: dict[str, Tensor] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(self.images.shape)}")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(self.labels.shape)}")
        if self.masks is not None and self.masks.shape != (n, *self.images.shape[2:]):
            raise ValueError(f"masks must be [N, H, W] = {(n, *self.images.shape[2:])} like the images, "
                             f"got shape {tuple(self.masks.shape)}")
        for key, value in self.info.items():
            if len(value) != n:
                raise ValueError(f"info[{key!r}] has {len(value)} entries, expected {n}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.images.shape[1:])
        extra = ", masks" if self.masks is not None else ""
        return f"ImageSet({self.name or 'unnamed'}: {len(self)} images {shape}, {len(self.classes)} classes{extra})"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: Tensor | Sequence[int] | slice) -> "ImageSet":
        """The samples at ``index`` (a slice, a list of ints, an int or bool tensor)."""
        if not isinstance(index, slice):
            index = torch.as_tensor(index)
            if index.dtype == torch.bool:
                if index.shape != (len(self),):
                    raise ValueError(f"a bool mask must have shape ({len(self)},), got {tuple(index.shape)}")
                index = index.nonzero().flatten()
            elif index.numel() == 0:
                index = index.long()  # [] becomes a float tensor, which cannot index
            # An int (0-dim index) would drop the sample dimension: keep it as a 1-sample set.
            index = index.reshape(-1)
        return ImageSet(
            self.images[index],
            self.labels[index],
            list(self.classes),
            None if self.masks is None else self.masks[index],
            {k: v[index] for k, v in self.info.items()},
            self.name,
        )

    def split(self, *sizes: int, seed: int = 0) -> tuple["ImageSet", ...]:
        """Random disjoint subsets of the given sizes (a seeded permutation)."""
        if not sizes or any((not isinstance(s, int)) or s < 0 for s in sizes):
            raise ValueError(f"split sizes must be non-negative ints, got {sizes}")
        if sum(sizes) > len(self):
            raise ValueError(f"split sizes {sizes} add up to more than the {len(self)} samples")
        perm = torch.randperm(len(self), generator=make_generator(seed))
        out, start = [], 0
        for s in sizes:
            out.append(self.subset(perm[start:start + s]))
            start += s
        return tuple(out)

    def loader(self, batch_size: int = 64, *, shuffle: bool = False, seed: int = 0,
               drop_last: bool = False) -> DataLoader:
        """A single-process DataLoader (the tensors are already in memory); seeded when shuffling."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return DataLoader(self, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                          generator=make_generator(seed) if shuffle else None)


_LABELS = ("required", "optional", "ignored")


def images_labels(data: object, fn: str, name: str = "data", *, labels: str,
                  why: str = "") -> tuple[Tensor, Tensor | None]:
    """Images ``[N, C, H, W]`` (float, N > 0) and int64 labels ``[N]`` (or ``None``) from what a
    labkit function accepts as data: an :class:`ImageSet` (anything with ``.images`` and ``.labels``),
    an ``(images, labels)`` pair of tensors or an images tensor. The one data adapter of the
    trainers (``train_vae``, ``train_gan``, ``train_dann``); errors name ``fn`` and the argument.

    ``labels``: ``"required"`` (data without labels is refused), ``"optional"`` (returned when
    present, checked) or ``"ignored"`` (always ``None``: e.g. an unconditional model); ``why`` says
    in the error why labels are required (e.g. ``"the model is conditional"``).
    """
    if labels not in _LABELS:
        raise ValueError(f"labels must be one of {_LABELS}, got {labels!r}")
    if hasattr(data, "images") and hasattr(data, "labels"):
        x, y = data.images, data.labels  # type: ignore[attr-defined]
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
    elif isinstance(data, Tensor):
        x, y = data, None
    else:
        raise TypeError(f"{fn}: {name} must be an ImageSet, an (images, labels) pair of tensors or an images tensor, "
                        f"got {type(data).__name__}")
    if not isinstance(x, Tensor) or x.dim() != 4 or len(x) == 0 or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{fn}: {name}: images must be a non-empty float [N, C, H, W] tensor in [0, 1], got {got}")
    if labels == "ignored":
        return x, None
    if labels == "required" and y is None:
        raise ValueError(f"{fn}: {name} needs labels{' (' + why + ')' if why else ''}: pass an ImageSet or an "
                         "(images, labels) pair")
    if y is not None and (not isinstance(y, Tensor) or y.shape != (len(x),) or y.dtype != torch.long):
        got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"{fn}: {name}: labels must be an int64 tensor of shape ({len(x)},), got {got}")
    return x, y
