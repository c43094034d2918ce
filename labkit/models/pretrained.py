"""torchvision's ImageNet architectures with their pretrained weights, found offline.

``torchvision_model(arch, weights="imagenet")`` loads torchvision's own checkpoint file
(e.g. ``resnet18-f37072fd.pth``) from a weights folder, checking the SHA-256 prefix in its
name; it never downloads unless ``download=True``. When the file is absent it raises
:class:`WeightsNotFoundError` with the file name, the URL, the folders searched and a
one-line command to fetch it. ``weights="random"`` builds the same architecture with random
initial weights (seeded by the caller's ``torch.manual_seed``). Used in labs 01-06 (the
``WEIGHTS`` parameter). Architectures: AlexNet (Krizhevsky et al. 2012), VGG (Simonyan &
Zisserman 2015), ResNet (He et al. 2016).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..storage import DataNotFoundError, data_root, download, sha256sum

__all__ = ["torchvision_model", "find_weights", "weights_url", "WeightsNotFoundError", "TORCHVISION_ARCHS"]

#: arch -> (torchvision builder name, weights enum name).
TORCHVISION_ARCHS: dict[str, tuple[str, str]] = {
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "vgg16": ("vgg16", "VGG16_Weights"),
    "vgg11": ("vgg11", "VGG11_Weights"),
    "alexnet": ("alexnet", "AlexNet_Weights"),
}
WEIGHT_CHOICES = ("imagenet", "random")

# Verified checkpoint files in this process: (path, size, mtime_ns) -> True, so a lab that
# builds the same model twice hashes the (large) file once.
_VERIFIED: set[tuple[str, int, int]] = set()


class WeightsNotFoundError(DataNotFoundError):
    """The ImageNet checkpoint of a torchvision architecture is not cached and may not be downloaded."""

    def __init__(self, arch: str, filename: str, url: str, folders: list[str | os.PathLike],
                 dest: str | os.PathLike | None = None) -> None:
        self.arch, self.filename, self.url = arch, filename, url
        self.folders = [str(f) for f in folders]
        self.dest = str(dest if dest is not None else Path(self.folders[0]) / filename)
        super().__init__(f"{arch} ImageNet weights", [Path(f) / filename for f in self.folders])

    def _compose(self) -> str:
        return (
            f"ImageNet weights for {self.arch!r} not found: no file {self.filename} in "
            f"{', '.join(self.folders)}. They are not downloaded at run time. On a machine with internet run\n"
            f"  curl -L --create-dirs -o {self.dest} {self.url}\n"
            f"(then copy the file to one of those folders), or call torchvision_model({self.arch!r}, download=True) "
            f"where there is network, or use weights='random' (WEIGHTS = \"random\" in a lab)."
        )

    def __reduce__(self):
        return (self.__class__, (self.arch, self.filename, self.url, self.folders, self.dest))


def _check_arch(arch: object) -> str:
    if not isinstance(arch, str) or arch not in TORCHVISION_ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(TORCHVISION_ARCHS)}")
    return arch


def weights_url(arch: str) -> str:
    """The URL of torchvision's ``IMAGENET1K_V1`` checkpoint for ``arch`` (no network used)."""
    import torchvision.models as tvm

    _, enum_name = TORCHVISION_ARCHS[_check_arch(arch)]
    return getattr(tvm, enum_name).IMAGENET1K_V1.url


def _hash_prefix(filename: str) -> str:
    """torchvision's convention: ``name-<first hex chars of the SHA-256>.pth``."""
    stem = filename.rsplit(".", 1)[0]
    prefix = stem.rsplit("-", 1)[-1].lower()
    if len(prefix) < 8 or any(c not in "0123456789abcdef" for c in prefix):
        raise ValueError(f"weights file name {filename!r} carries no SHA-256 prefix (expected name-<hex>.pth)")
    return prefix


def _weight_dirs(root: str | os.PathLike | None) -> list[Path]:
    dirs = []
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a str, a Path or None (the data root), got {type(root).__name__}")
        dirs.append(Path(root).expanduser().resolve() / "weights")
    dirs.append(data_root() / "weights")
    dirs.append(Path(torch.hub.get_dir()).expanduser().resolve() / "checkpoints")
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def find_weights(arch: str, *, root: str | os.PathLike | None = None) -> Path | None:
    """Path of the cached ImageNet checkpoint for ``arch`` (``root/weights``, ``data_root()/weights``,
    torch hub's ``checkpoints``, in that order), or None. Labs use it to say whether WEIGHTS="imagenet" can run.
    """
    filename = weights_url(arch).rsplit("/", 1)[-1]
    for d in _weight_dirs(root):
        if (d / filename).is_file():
            return d / filename
    return None


def _verify_checkpoint(path: Path) -> None:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    prefix = _hash_prefix(path.name)
    got = sha256sum(path)
    if not got.startswith(prefix):
        raise ValueError(
            f"weights file {path} is corrupt or not the official checkpoint: its SHA-256 is {got}, "
            f"but the name says it starts with {prefix}. Delete it and fetch it again."
        )
    _VERIFIED.add(key)


def _replace_head(model: nn.Module, arch: str, num_classes: int) -> None:
    if arch.startswith("resnet"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:  # alexnet, vgg: the last layer of the classifier Sequential
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)


def torchvision_model(arch: str, *, weights: str = "imagenet", num_classes: int | None = None,
                      root: str | os.PathLike | None = None, download: bool = False) -> nn.Module:
    """A torchvision ``arch`` (resnet18, vgg16, vgg11, alexnet) with ImageNet or random weights.

    - ``weights="imagenet"``: load torchvision's ``IMAGENET1K_V1`` checkpoint from ``root/weights``,
      ``data_root()/weights`` or torch hub's ``checkpoints`` folder after checking the SHA-256 prefix
      in its file name (a mismatch raises ``ValueError``); absent -> :class:`WeightsNotFoundError`,
      unless ``download=True`` (then it is fetched once, hash-checked, into the first of those folders).
    - ``weights="random"``: the architecture with random initial weights (uses torch's global RNG).
    - ``num_classes``: replace the final classifier layer by a new, randomly initialized one.

    The model is returned on the CPU in eval mode. Inputs: ImageNet-normalized RGB
    (see ``labkit.datasets.imagenet_normalize``). Used in labs 01-06.
    """
    arch = _check_arch(arch)
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int or None (keep the 1000 ImageNet classes), got {num_classes!r}")
    if not isinstance(download, bool):
        raise TypeError(f"download must be True or False, got {download!r}")
    import torchvision.models as tvm

    builder: Callable[..., nn.Module] = getattr(tvm, TORCHVISION_ARCHS[arch][0])
    path: Path | None = None
    if weights == "imagenet":
        url = weights_url(arch)
        filename = url.rsplit("/", 1)[-1]
        dirs = _weight_dirs(root)
        path = find_weights(arch, root=root)
        if path is None:
            if not download:
                raise WeightsNotFoundError(arch, filename, url, dirs)
            path = _download(url, dirs[0] / filename, arch)
        _verify_checkpoint(path)
    model = builder(weights=None)
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    if num_classes is not None:
        _replace_head(model, arch, num_classes)
    return model.eval()


def _download(url: str, dest: Path, arch: str) -> Path:
    return download(url, dest, sha256=_hash_prefix(dest.name), desc=f"{arch} ImageNet weights")
