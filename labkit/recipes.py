"""Course recipes: small building blocks that several labs repeat.

- :func:`train_shapes_classifier`: the course's recipe for a small CNN on ``lk.shapes``
  (batch norm, Adam, cosine schedule; seeded initialization that leaves the global RNG alone).
- :func:`with_normalization`: an ImageNet model that takes ``[0, 1]`` pixels, so that input
  gradients (saliency, adversarial perturbations) are expressed in pixel units.
- :func:`centered_gaussian_maps`: the "centre prior" baseline map of weak segmentation.

Used in lab 02 (saliency) and meant for labs 03-06.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["train_shapes_classifier", "Normalize", "with_normalization", "centered_gaussian_maps",
           "fully_convolutional"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------- training
def train_shapes_classifier(train: Any, val: Any = None, *, epochs: int, lr: float = 1e-3, batch_size: int = 32,
                            seed: int = 0, device: torch.device | str | None = None, desc: str = "",
                            batch_norm: bool = True, global_pool: bool = True, widths: Sequence[int] = (16, 32, 64),
                            dropout: float = 0.0, **fit_options: Any) -> tuple[nn.Module, Any]:
    """Build and train ``small_cnn`` on an ``ImageSet`` (e.g. ``lk.shapes``); returns ``(model, history)``.

    The recipe: three conv blocks with batch norm (without it the network can sit at chance for
    several epochs on mixed shapes), a global average pool (so the head does not depend on the
    input size), Adam at 1e-3 with a cosine learning-rate schedule (Loshchilov & Hutter 2017),
    batch size 32. At 2e-3 the network sat at chance for the first epochs at some seeds and ended
    near 0.52 test accuracy (lab 02/06's 5 epochs at seed 8, lab 04's 8 epochs at seed 9); at 1e-3
    the lowest over seeds 0-10 was 0.86 and 0.95. Initialization and training run under ``torch.manual_seed(seed)`` inside a forked
    CPU RNG, so the same call gives the same model whatever ran before, and the caller's global
    CPU RNG is not advanced. ``fit_options`` go to ``lk.fit`` (e.g. ``weight_decay``, ``augment``,
    ``on_epoch_end``). ``dropout``: dropout probability before the last layer (lab 01's regularized
    scratch model). Used in labs 01 and 02; meant for lab 06.
    """
    from .models import get_model
    from .training import fit

    for name, data in (("train", train), ("val", val)):
        if data is None and name == "val":
            continue
        if not (hasattr(data, "images") and hasattr(data, "classes") and hasattr(data, "labels")):
            raise TypeError(f"{name} must be an lk.ImageSet (e.g. lk.shapes(...)), got {type(data).__name__}")
    if train.images.ndim != 4:
        raise ValueError(f"train.images must be [N, C, H, W], got shape {tuple(train.images.shape)}")
    if val is not None and tuple(val.images.shape[1:]) != tuple(train.images.shape[1:]):
        raise ValueError(f"val images are {tuple(val.images.shape[1:])} but train images are "
                         f"{tuple(train.images.shape[1:])}; draw both with the same size")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if "scheduler" not in fit_options:
        fit_options["scheduler"] = "cosine"
    _, c, h, w = train.images.shape
    if h != w:
        raise ValueError(f"small_cnn expects square images, got {h}x{w}; draw square images (size=...)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_model("small_cnn", in_channels=c, num_classes=train.num_classes, widths=tuple(widths),
                          batch_norm=batch_norm, global_pool=global_pool, input_size=h, dropout=dropout)
        history = fit(model, train, val, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
                      desc=desc, **fit_options)
    return model, history


# --------------------------------------------------------------------------- normalization
class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as a layer (buffers, so it follows ``.to(device)``)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.numel() != std_t.numel() or mean_t.numel() == 0:
            raise ValueError(f"mean and std must have one value per channel, got {mean_t.numel()} and {std_t.numel()}")
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"Normalize expects [B, {self.mean.shape[1]}, H, W], got {tuple(x.shape)}")
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def with_normalization(model: nn.Module, *, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None) -> nn.Sequential:
    """``nn.Sequential(Normalize(mean, std), model)``: a model that takes ``[0, 1]`` pixels.

    Defaults to ImageNet's statistics (torchvision's models). Gradients with respect to the
    input are then per *pixel* (not per normalized value), which is what a saliency map or an
    adversarial perturbation should be measured in. The model is wrapped, not copied: its
    parameters are shared and its state is not changed (the wrapper is in the model's mode, on
    its device). Its layers are named ``"1.<name>"`` in the wrapper. Used in lab 02; meant for
    labs 03-06.
    """
    from .datasets import IMAGENET_MEAN, IMAGENET_STD

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    norm = Normalize(IMAGENET_MEAN if mean is None else mean, IMAGENET_STD if std is None else std)
    ref = next(model.parameters(), None)
    if ref is not None:
        norm = norm.to(ref.device)
    wrapped = nn.Sequential(norm, model)
    wrapped.training = model.training  # do not call .train()/.eval(): that would change the model's mode
    norm.training = model.training
    return wrapped


# --------------------------------------------------------------------------- saliency baselines
def centered_gaussian_maps(n: int, size: int | tuple[int, int], *, sigma: float | None = None) -> Tensor:
    """``n`` copies of a centred isotropic Gaussian ``[n, H, W]`` (peak 1 at the image centre).

    The "centre prior" baseline of weak segmentation: thresholding it keeps a centred disc, so
    a method must beat it to show that it *locates* objects. ``sigma`` defaults to a quarter of
    the smaller side (with a top-fraction threshold only the ranking matters, so any sigma
    gives the same disc). Used in lab 02.
    """
    if not _is_int(n) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if _is_int(size):
        h = w = size
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_int(s) for s in size):
        h, w = size
    else:
        raise TypeError(f"size must be an int or a pair (height, width) of ints, got {size!r}")
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    if sigma is None:
        sigma = min(h, w) / 4
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma must be a positive number (pixels), got {sigma!r}")
    y = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
    x = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
    g = torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * float(sigma) ** 2))
    return g.expand(n, h, w).clone()


# --------------------------------------------------------------------------- dense outputs
def fully_convolutional(model: nn.Module) -> nn.Sequential:
    """A ``small_cnn`` with a global-average-pool head, turned into a dense class-score map.

    Each ``nn.Linear`` of the head becomes the equivalent 1x1 convolution (Long et al. 2015's
    "convolutionalization"), so the head runs at every position of the last feature map and the
    new model returns ``[B, K, h, w]`` scores (for 40-px inputs and three blocks, 5x5) instead of
    ``[B, K]``. Dropout is dropped (it is the identity in eval mode). Layer names are kept:
    ``"features.<i>"`` for the body, ``"head.<j>"`` for the converted head. The weights are
    copied, so the caller's model is not touched; the copy is in eval mode on the model's device.
    Gives a dense output to explain with area Grad-CAM (a callable target that sums a class's
    scores over a region). Used in lab 06.
    """
    from collections import OrderedDict

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
    if not isinstance(features, nn.Module) or not isinstance(classifier, nn.Sequential) \
            or not isinstance(getattr(model, "pool", None), nn.AdaptiveAvgPool2d):
        raise ValueError("model must be a small_cnn built with global_pool=True (features, an adaptive average "
                         "pool, then a classifier of Flatten/Linear/ReLU/Dropout); e.g. "
                         "recipes.train_shapes_classifier(...)[0]")
    head: list[nn.Module] = []
    for layer in classifier:
        if isinstance(layer, nn.Linear):
            conv = nn.Conv2d(layer.in_features, layer.out_features, 1, bias=layer.bias is not None)
            with torch.no_grad():
                conv.weight.copy_(layer.weight[:, :, None, None])
                if layer.bias is not None:
                    conv.bias.copy_(layer.bias)
            head.append(conv)
        elif isinstance(layer, nn.ReLU):
            head.append(nn.ReLU())
        elif not isinstance(layer, (nn.Flatten, nn.Dropout)):
            raise ValueError(f"cannot convert the head layer {type(layer).__name__} to a convolution; "
                             "the head may hold only Flatten, Linear, ReLU and Dropout")
    dense = nn.Sequential(OrderedDict(features=copy.deepcopy(features), head=nn.Sequential(*head)))
    ref = next(model.parameters(), None)
    if ref is not None:
        dense = dense.to(ref.device)
    return dense.eval()
