"""Models made from other models: a normalization layer in front (pixels in ``[0, 1]`` in) and a
global-pool classifier turned fully convolutional (a dense class-score map out).

Used in labs 01, 02, 04 and 06 (``lk.with_normalization``, ``lk.fully_convolutional``).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Normalize", "with_normalization", "fully_convolutional"]


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
    its device). Its layers are named ``"1.<name>"`` in the wrapper. Used in labs 01, 02, 04
    and 06.
    """
    from ..datasets.real import IMAGENET_MEAN, IMAGENET_STD

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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
    if not isinstance(features, nn.Module) or not isinstance(classifier, nn.Sequential) \
            or not isinstance(getattr(model, "pool", None), nn.AdaptiveAvgPool2d):
        raise ValueError("model must be a small_cnn built with global_pool=True (features, an adaptive average "
                         "pool, then a classifier of Flatten/Linear/ReLU/Dropout); e.g. "
                         "lk.train_shapes_classifier(...)[0]")
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
