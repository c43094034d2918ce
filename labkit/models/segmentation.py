"""Fully convolutional networks for semantic segmentation (Long, Shelhamer & Darrell 2015), lab 08.

An *encoder* turns an image into three feature maps at strides 8, 16 and 32 (``pool3``,
``pool4``, ``pool5`` in the paper's VGG-16); an :class:`FCN` head scores every class at
stride 32 (``fc6``/``fc7`` as convolutions, then a 1x1 ``score`` layer) and upsamples back to
the input with transposed convolutions initialized to bilinear interpolation:

- ``"32s"``: one x32 upsampling of the stride-32 scores;
- ``"16s"``: x2, plus the 1x1 scores of ``pool4``, then x16;
- ``"8s"``: x2, plus ``pool4`` scores, x2, plus ``pool3`` scores, then x8.

The skip score layers start at zero (so a 16s/8s net starts as its coarser parent, as in the
paper) and the final upsampling stays fixed to bilinear unless ``learn_final=True``.

Encoders: :class:`VGGEncoder` (small VGG-like: conv-BN-ReLU blocks and 2x2 max-pooling),
:class:`ResNetEncoder` (small ResNet-like: basic residual blocks, each stage max-pooled) and
:class:`EfficientNetEncoder` (EfficientNet-Lite0 with the ImageNet weights that ship with pip, lab
08's real mode) and :class:`TorchvisionEncoder` (ImageNet VGG-16/VGG-11/ResNet-18 from torchvision,
where its weights are cached). :class:`EncoderClassifier` puts a global-average-pool classifier on an encoder so that it
can be pretrained on a classification task first.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int

from . import register_model

__all__ = ["bilinear_kernel", "bilinear_upsampler", "VGGEncoder", "ResNetEncoder", "TorchvisionEncoder",
           "EfficientNetEncoder", "EncoderClassifier", "FCN", "FCN_HEADS"]

#: Head name -> output stride of its coarsest prediction; the head combines the strides up to it.
FCN_HEADS = ("32s", "16s", "8s")


def _widths(widths: object, n: int) -> tuple[int, ...]:
    try:
        w = tuple(widths)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"widths must be a sequence of {n} positive ints, got {widths!r}") from None
    if len(w) != n:
        raise ValueError(f"widths must hold {n} channel counts (one per stride-2 stage), got {len(w)}: {w!r}")
    for i, v in enumerate(w):
        check_int(v, f"widths[{i}]", low=1)
    return w


# --------------------------------------------------------------------------- bilinear upsampling
def bilinear_kernel(channels: int, factor: int) -> Tensor:
    """Weights ``[C, C, 2f, 2f]`` of a transposed convolution that upsamples by ``f`` bilinearly.

    Channel ``c`` maps to channel ``c`` only (zero elsewhere); the 1-D profile is
    ``1 - |k - (2f - 1) / 2| / f``. With stride ``f`` and padding ``f / 2`` the layer equals
    ``F.interpolate(mode="bilinear", align_corners=False)`` away from the border (Long et al.
    2015 initialize their "deconvolution" layers this way). Used in lab 08.
    """
    check_int(channels, "channels", low=1)
    check_int(factor, "factor", low=1)
    size = 2 * factor
    centre = (size - 1) / 2
    k = torch.arange(size, dtype=torch.float32)
    profile = 1 - (k - centre).abs() / factor
    kernel2d = profile[:, None] * profile[None, :]
    weight = torch.zeros(channels, channels, size, size)
    idx = torch.arange(channels)
    weight[idx, idx] = kernel2d
    return weight


def bilinear_upsampler(channels: int, factor: int, *, learnable: bool = True,
                       depthwise: bool = False) -> nn.ConvTranspose2d:
    """``ConvTranspose2d(C, C, 2f, stride=f, padding=f/2)`` initialized by :func:`bilinear_kernel`.

    The output is exactly ``f`` times larger than the input. ``factor`` must be even (2, 4, 8, ...).
    ``learnable=False`` freezes the weights (the paper's fixed final upsampling). ``depthwise=True``
    uses one filter per channel (``groups=C``): the same map at initialization, ``C`` times fewer
    operations, but no mixing of the classes once learnt. Used in lab 08.
    """
    check_int(channels, "channels", low=1)
    check_int(factor, "factor", low=1)
    if factor % 2:
        raise ValueError(f"factor must be even (2, 4, 8, 16, 32), got {factor}")
    if not isinstance(learnable, bool) or not isinstance(depthwise, bool):
        raise TypeError(f"learnable and depthwise must be True or False, got {learnable!r}, {depthwise!r}")
    groups = channels if depthwise else 1
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False,
                            groups=groups)
    with torch.no_grad():
        w = bilinear_kernel(channels, factor)
        up.weight.copy_(w.diagonal(dim1=0, dim2=1).permute(2, 0, 1)[:, None] if depthwise else w)
    up.weight.requires_grad_(learnable)
    return up


# --------------------------------------------------------------------------- encoders
class VGGEncoder(nn.Module):
    """Small VGG-like encoder: five blocks of ``convs`` x (3x3 conv, BN, ReLU) then 2x2 max-pool.

    ``forward(x)`` returns ``[pool3, pool4, pool5]`` (strides 8, 16, 32); ``out_channels`` their
    channel counts. Blocks are ``block1`` ... ``block5`` (dotted names for hooks / Grad-CAM).
    """

    def __init__(self, in_channels: int = 3, *, widths: Sequence[int] = (16, 32, 48, 64, 96), convs: int = 1,
                 batch_norm: bool = True) -> None:
        super().__init__()
        check_int(in_channels, "in_channels", low=1)
        check_int(convs, "convs", low=1)
        w = _widths(widths, 5)
        c = in_channels
        for i, width in enumerate(w, start=1):
            layers: list[nn.Module] = []
            for _ in range(convs):
                layers.append(nn.Conv2d(c, width, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=False))
                c = width
            layers.append(nn.MaxPool2d(2))
            self.add_module(f"block{i}", nn.Sequential(*layers))
        self.out_channels = (w[2], w[3], w[4])

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.block2(self.block1(x))
        p3 = self.block3(x)
        p4 = self.block4(p3)
        return [p3, p4, self.block5(p4)]


class _BasicBlock(nn.Module):
    """He et al. 2016's basic residual block (two 3x3 convs), with a 1x1 projection when needed."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """Small ResNet-like encoder: a 3x3 stem with 2x2 max-pool, then four stages (``layer1`` ...
    ``layer4``) of ``blocks`` basic residual blocks followed by a 2x2 max-pool.

    ``forward(x)`` returns ``[layer2, layer3, layer4]`` outputs (strides 8, 16, 32).
    ``widths`` = (stem, layer1, layer2, layer3, layer4) channels. Stages downsample by max-pooling
    rather than by strided convolutions: on 32-pixel shapes the strided version (He et al.'s)
    learnt the classes much more slowly in our tests.
    """

    def __init__(self, in_channels: int = 3, *, widths: Sequence[int] = (16, 24, 32, 48, 64), blocks: int = 1) -> None:
        super().__init__()
        check_int(in_channels, "in_channels", low=1)
        check_int(blocks, "blocks", low=1)
        w = _widths(widths, 5)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w[0], 3, padding=1, bias=False), nn.BatchNorm2d(w[0]),
                                  nn.ReLU(), nn.MaxPool2d(2))
        c = w[0]
        for i, width in enumerate(w[1:], start=1):
            stage: list[nn.Module] = [_BasicBlock(c, width, 1)] + [_BasicBlock(width, width, 1) for _ in range(blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*stage, nn.MaxPool2d(2)))
            c = width
        self.out_channels = (w[2], w[3], w[4])

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.layer1(self.stem(x))
        s8 = self.layer2(x)
        s16 = self.layer3(s8)
        return [s8, s16, self.layer4(s16)]


# torchvision arch -> (stage ends: indices into ``features`` for VGG, layer names for ResNet, channels)
_TV_STAGES = {
    "vgg16": ((16, 23, 30), (256, 512, 512)),
    "vgg11": ((10, 15, 20), (256, 512, 512)),
    "resnet18": (("layer2", "layer3", "layer4"), (128, 256, 512)),
}


class TorchvisionEncoder(nn.Module):
    """An ImageNet torchvision network cut into stride-8/16/32 stages (VGG ``pool3/4/5``, ResNet
    ``layer2/3/4``). Takes ``[0, 1]`` RGB images and normalizes them with ImageNet's statistics.

    ``weights="imagenet"`` needs torchvision's checkpoint (see ``lk.torchvision_model``; absent it
    raises the one clear ``WeightsNotFoundError``); ``"random"`` builds the same architecture.
    """

    def __init__(self, arch: str = "vgg16", *, weights: str = "imagenet") -> None:
        super().__init__()
        if arch not in _TV_STAGES:
            raise ValueError(f"arch must be one of {sorted(_TV_STAGES)}, got {arch!r}")
        from .pretrained import torchvision_model

        net = torchvision_model(arch, weights=weights)
        ends, channels = _TV_STAGES[arch]
        self.arch = arch
        from ..datasets.real import IMAGENET_MEAN, IMAGENET_STD

        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        if arch.startswith("vgg"):
            feats = net.features
            self.stage1 = feats[: ends[0] + 1]
            self.stage2 = feats[ends[0] + 1: ends[1] + 1]
            self.stage3 = feats[ends[1] + 1: ends[2] + 1]
        else:
            self.stage1 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2)
            self.stage2 = net.layer3
            self.stage3 = net.layer4
        self.out_channels = tuple(channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        s8 = self.stage1((x - self.mean) / self.std)
        s16 = self.stage2(s8)
        return [s8, s16, self.stage3(s16)]


class EfficientNetEncoder(nn.Module):
    """EfficientNet-Lite0 (ImageNet weights from pip, :func:`labkit.imagenet_model`) cut into
    stride-8/16/32 stages: the ends of its MBConv stages 3 (40 channels), 5 (112) and 7 (320).
    Takes ``[0, 1]`` RGB images (the network scales them itself); ``weights="random"`` builds the
    same architecture untrained. Runs offline: lab 08's real-data encoder.
    """

    def __init__(self, *, weights: str = "imagenet") -> None:
        super().__init__()
        from .efficientnet import imagenet_model

        net = imagenet_model("efficientnet_lite0", weights=weights)
        blocks = net._blocks
        self.arch = "efficientnet_lite0"
        self.stage1 = nn.Sequential(net.scale, net._conv_stem, net._bn0, net.stem_act, blocks[:5])
        self.stage2 = blocks[5:11]
        self.stage3 = blocks[11:16]
        self.out_channels = (40, 112, 320)

    def forward(self, x: Tensor) -> list[Tensor]:
        s8 = self.stage1(x)
        s16 = self.stage2(s8)
        return [s8, s16, self.stage3(s16)]


def _check_encoder(encoder: object) -> nn.Module:
    channels = getattr(encoder, "out_channels", None)
    if not isinstance(encoder, nn.Module) or not isinstance(channels, (tuple, list)) or len(channels) != 3:
        raise TypeError("encoder must be an nn.Module returning [stride-8, stride-16, stride-32] feature maps with an "
                        f"out_channels attribute (e.g. VGGEncoder(), ResNetEncoder()), got {type(encoder).__name__}")
    return encoder


class EncoderClassifier(nn.Module):
    """An encoder with a global-average-pool + linear classifier on its stride-32 features.

    Pretrain it on a classification task, then hand ``model.encoder`` to :class:`FCN`.
    """

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = _check_encoder(encoder)
        check_int(num_classes, "num_classes", low=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(encoder.out_channels[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.encoder(x)[-1]).flatten(1))


# --------------------------------------------------------------------------- FCN
class FCN(nn.Module):
    """FCN-32s / 16s / 8s (Long et al. 2015) on an encoder returning stride-8/16/32 features.

    - ``fc``: the paper's fc6/fc7 as convolutions (3x3 then 1x1, ``hidden`` channels, ReLU, dropout);
    - ``score``: 1x1 class scores at stride 32; ``score_pool4`` / ``score_pool3``: 1x1 class scores
      of the skip features, zero-initialized;
    - ``up2_a`` / ``up2_b``: learnable x2 transposed convolutions (bilinear init) between the skips;
      ``up_final``: the last upsampling (x32, x16 or x8), bilinear (one filter per class) and fixed
      unless ``learn_final``.

    Inputs whose sides are not multiples of 32 are zero-padded and the output cropped back, so
    the output is always ``[B, num_classes, H, W]``. :meth:`decode` maps encoder features to the
    scores (``lk.train_segmentation`` uses it to train the head on cached features).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, head: str = "8s", hidden: int = 128,
                 dropout: float = 0.0, learn_final: bool = False) -> None:
        super().__init__()
        self.encoder = _check_encoder(encoder)
        check_int(num_classes, "num_classes", low=1)
        check_int(hidden, "hidden", low=1)
        if head not in FCN_HEADS:
            raise ValueError(f"head must be one of {FCN_HEADS}, got {head!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        self.head = head
        self.num_classes = num_classes
        c3, c4, c5 = encoder.out_channels
        k = num_classes
        self.fc = nn.Sequential(nn.Conv2d(c5, hidden, 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout),
                                nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Dropout2d(dropout))
        self.score = nn.Conv2d(hidden, k, 1)
        if head in ("16s", "8s"):
            self.score_pool4 = nn.Conv2d(c4, k, 1)
            nn.init.zeros_(self.score_pool4.weight)
            nn.init.zeros_(self.score_pool4.bias)
            self.up2_a = bilinear_upsampler(k, 2)
        if head == "8s":
            self.score_pool3 = nn.Conv2d(c3, k, 1)
            nn.init.zeros_(self.score_pool3.weight)
            nn.init.zeros_(self.score_pool3.bias)
            self.up2_b = bilinear_upsampler(k, 2)
        self.up_final = bilinear_upsampler(k, {"32s": 32, "16s": 16, "8s": 8}[head], learnable=learn_final,
                                           depthwise=True)

    @property
    def stride(self) -> int:
        """Stride of the finest features the head uses (32, 16 or 8)."""
        return {"32s": 32, "16s": 16, "8s": 8}[self.head]

    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters outside the encoder."""
        return [p for n, p in self.named_parameters() if not n.startswith("encoder.") and p.requires_grad]

    def decode(self, features: Sequence[Tensor]) -> Tensor:
        """Scores at the padded input resolution (``32 x`` the stride-32 map) from ``[s8, s16, s32]``."""
        p3, p4, p5 = features
        s = self.score(self.fc(p5))
        if self.head in ("16s", "8s"):
            s = self.up2_a(s) + self.score_pool4(p4)
        if self.head == "8s":
            s = self.up2_b(s) + self.score_pool3(p3)
        return self.up_final(s)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 32, (-w) % 32
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return self.decode(self.encoder(x))[..., :h, :w]


# --------------------------------------------------------------------------- registry
@register_model("vgg_encoder_classifier")
def vgg_encoder_classifier(*, in_channels: int = 3, num_classes: int = 10, **kwargs) -> EncoderClassifier:
    """Small VGG-like encoder (5 pooled blocks) with a global-pool classifier, to pretrain for FCNs (lab 08)."""
    return EncoderClassifier(VGGEncoder(in_channels, **kwargs), num_classes)


@register_model("resnet_encoder_classifier")
def resnet_encoder_classifier(*, in_channels: int = 3, num_classes: int = 10, **kwargs) -> EncoderClassifier:
    """Small ResNet-like encoder (stem + 4 stride-2 stages) with a global-pool classifier (lab 08)."""
    return EncoderClassifier(ResNetEncoder(in_channels, **kwargs), num_classes)


@register_model("fcn")
def fcn(*, encoder: nn.Module | str = "vgg", num_classes: int = 6, head: str = "8s", weights: str = "imagenet",
        **kwargs) -> FCN:
    """FCN-32s/16s/8s (Long et al. 2015) on an encoder module or a name: "vgg", "resnet" (small,
    random init) or a torchvision "vgg16" / "vgg11" / "resnet18" (``weights``) (lab 08)."""
    if isinstance(encoder, str):
        if encoder == "vgg":
            encoder = VGGEncoder()
        elif encoder == "resnet":
            encoder = ResNetEncoder()
        elif encoder in _TV_STAGES:
            encoder = TorchvisionEncoder(encoder, weights=weights)
        else:
            raise ValueError(f"encoder must be a module or one of 'vgg', 'resnet', {', '.join(map(repr, _TV_STAGES))}; "
                             f"got {encoder!r}")
    return FCN(encoder, num_classes, head=head, **kwargs)
