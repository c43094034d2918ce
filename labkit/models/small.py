"""Small CNNs and MLPs of the course (labs 00-06): trained in seconds on a CPU.

Layers are grouped as ``features`` (Conv2d / ReLU / [BatchNorm2d] / MaxPool2d) and
``classifier`` so that the deconvnet projection (lab 05), Grad-CAM (lab 06) and feature
extraction (lab 01) can address them by dotted names like ``"features.3"``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .._checks import check_int

from . import register_model

__all__ = ["SmallCNN", "MLP", "ZFNet"]


def _check_sizes(**sizes: object) -> None:
    """Each keyword is a layer size or count that must be an int >= 1."""
    for name, value in sizes.items():
        check_int(value, name, low=1)


class SmallCNN(nn.Module):
    """VGG-style CNN: blocks of 3x3 conv + ReLU (+ BN) + 2x2 max-pool, then a small MLP head.

    Works for any input size >= 2**len(widths); a global average pool before the head makes
    the head independent of the input size (Lin et al. 2014), unless ``flatten_size`` is given.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, *, widths: Sequence[int] = (16, 32, 64),
                 hidden: int = 64, batch_norm: bool = False, dropout: float = 0.0,
                 first_kernel: int = 3, first_stride: int = 1, global_pool: bool = True,
                 input_size: int = 32) -> None:
        super().__init__()
        _check_sizes(in_channels=in_channels, num_classes=num_classes, hidden=hidden, first_kernel=first_kernel,
                     first_stride=first_stride)
        if not widths:
            raise ValueError("widths must name at least one conv block, e.g. (16, 32, 64)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            check_int(w, f"widths[{i}]", low=1)
            k, s = (first_kernel, first_stride) if i == 0 else (3, 1)
            layers.append(nn.Conv2d(c, w, k, stride=s, padding=k // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.ReLU())
            layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.global_pool = global_pool
        if global_pool:
            self.pool = nn.AdaptiveAvgPool2d(1)
            flat = c
        else:
            with torch.no_grad():
                flat = self.features(torch.zeros(1, in_channels, input_size, input_size)).numel()
            self.pool = nn.Identity()
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class MLP(nn.Module):
    """Fully connected classifier on flattened images (the linear-model argument of lab 03)."""

    def __init__(self, in_features: int = 784, num_classes: int = 10, *, hidden: Sequence[int] = (256,)) -> None:
        super().__init__()
        check_int(in_features, "in_features", low=1)
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for i, h in enumerate(hidden):
            layers += [nn.Linear(d, check_int(h, f"hidden[{i}]", low=1)), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, check_int(num_classes, "num_classes", low=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ZFNet(nn.Module):
    """AlexNet / Zeiler-Fergus-like CNN without batch norm, with a choice of first layer (lab 05).

    ``features``: conv ``first_kernel`` x ``first_kernel`` stride ``first_stride`` (11/4 as in
    Krizhevsky et al. 2012, 7/2 as in Zeiler & Fergus 2014) + ReLU + 3x3/2 max-pool, conv 5x5 +
    ReLU + 3x3/2 max-pool, conv 3x3 + ReLU + 2x2 max-pool; then a global average pool and a
    two-layer head. No batch norm, so that first-layer units can die as in the paper.
    ``init="he"`` draws conv and linear weights with Kaiming-normal (He et al. 2015) and zero
    biases (trains much faster without batch norm than torch's default); ``"default"`` keeps
    torch's initialization. Layer names: ``features.1/4/7`` are the three ReLU outputs.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, *, widths: Sequence[int] = (32, 48, 64),
                 hidden: int = 64, first_kernel: int = 7, first_stride: int = 2, init: str = "he") -> None:
        super().__init__()
        _check_sizes(in_channels=in_channels, num_classes=num_classes, hidden=hidden, first_kernel=first_kernel,
                     first_stride=first_stride)
        if len(widths) != 3:
            raise ValueError(f"widths must give the three conv layers' channels, e.g. (32, 48, 64), got {widths!r}")
        c1, c2, c3 = (check_int(w, f"widths[{i}]", low=1) for i, w in enumerate(widths))
        if init not in ("he", "default"):
            raise ValueError(f"init must be 'he' or 'default', got {init!r}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, first_kernel, stride=first_stride, padding=first_kernel // 2), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c3, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        if init == "he":
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@register_model("small_cnn")
def small_cnn(**kwargs) -> SmallCNN:
    """Small VGG-style CNN for 28-64 px images (labs 00-06); options of :class:`SmallCNN`."""
    return SmallCNN(**kwargs)


@register_model("digit_cnn")
def digit_cnn(*, in_channels: int = 1, num_classes: int = 10, **kwargs) -> SmallCNN:
    """CNN for 28x28 digits: two conv blocks (32, 64) and a 128-unit head (labs 03, 04, 07, 10)."""
    kwargs.setdefault("widths", (32, 64))
    kwargs.setdefault("hidden", 128)
    return SmallCNN(in_channels, num_classes, **kwargs)


@register_model("mlp")
def mlp(**kwargs) -> MLP:
    """Multi-layer perceptron on flattened inputs (lab 03's linear argument)."""
    return MLP(**kwargs)


@register_model("zf_cnn")
def zf_cnn(**kwargs) -> ZFNet:
    """AlexNet/ZF-like CNN for 64 px images, first layer 11x11/4 or 7x7/2 (lab 05); options of :class:`ZFNet`."""
    return ZFNet(**kwargs)
