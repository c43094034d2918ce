"""Domain-adversarial network (DANN) of Ganin & Lempitsky (2015) with its gradient reversal layer.

The network has three parts: a feature extractor ``features`` (G_f), a label predictor
``classifier`` (G_y) and a domain classifier ``domain_classifier`` (G_d) that sees the features
through a gradient reversal layer (GRL). ``forward(x)`` returns the class logits only, so the
model works with ``lk.fit`` / ``lk.evaluate`` / the explainers; ``lk.train_dann`` (labkit's
``domain_adaptation`` module) adds the domain branch. Used in lab 09.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .._checks import check_int

from . import register_model

__all__ = ["GradientReversalFunction", "grad_reverse", "GradientReversal", "ImageStandardize", "DANN", "INPUT_NORMS"]

INPUT_NORMS = ("none", "image")


class GradientReversalFunction(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by ``-coeff`` backwards.

    Ganin & Lempitsky (2015), section 3.2: the layer that turns the minimization of the domain
    loss by G_d into its maximization by G_f in a single backward pass.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, coeff: float) -> Tensor:  # type: ignore[override]
        ctx.coeff = coeff
        return x.clone()  # a copy, not a view: in-place ops downstream must not reach the caller's tensor

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad_output.neg() * ctx.coeff, None


def _check_coeff(coeff: object) -> float:
    if isinstance(coeff, bool) or not isinstance(coeff, (int, float)):
        raise TypeError(f"coeff must be a real number (the lambda of the GRL), got {type(coeff).__name__} ({coeff!r})")
    coeff = float(coeff)
    if coeff != coeff or coeff in (float("inf"), float("-inf")):
        raise ValueError(f"coeff must be finite, got {coeff}")
    return coeff


def grad_reverse(x: Tensor, coeff: float = 1.0) -> Tensor:
    """Gradient reversal: ``x`` unchanged forward, gradient ``-coeff * g`` backward (lab 09).

    ``coeff`` is the lambda of Ganin & Lempitsky (2015); 0 blocks the gradient, a negative value
    lets the gradient through with a positive sign (no reversal).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return GradientReversalFunction.apply(x, _check_coeff(coeff))


class GradientReversal(nn.Module):
    """The GRL as a module with a settable ``coeff`` (lambda); see :func:`grad_reverse`. Lab 09."""

    def __init__(self, coeff: float = 1.0) -> None:
        super().__init__()
        self.coeff = _check_coeff(coeff)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff:g}"


class ImageStandardize(nn.Module):
    """Per-image standardization: subtract each image's mean and divide by its standard deviation.

    Removes global brightness and contrast differences between domains (an option of lab 09).
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        mean = flat.mean(1).view(-1, 1, 1, 1)
        std = flat.std(1, unbiased=False).view(-1, 1, 1, 1)
        return (x - mean) / (std + self.eps)


class DANN(nn.Module):
    """Feature extractor + label predictor + domain classifier (Ganin & Lempitsky 2015, Fig. 1).

    Defaults follow the paper's MNIST network: two 5x5 conv layers (32, 48 channels) each followed
    by ReLU and 2x2 max-pooling, a label predictor with two hidden layers of 100 units, and a
    domain classifier with one hidden layer of 100 units and one logit (target = 1).
    ``input_norm="image"`` standardizes each image first (part of ``features``).
    ``forward(x)`` gives class logits; ``domain_logits(feats, coeff)`` goes through the GRL.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, *, widths: Sequence[int] = (32, 48),
                 kernel: int = 5, hidden: Sequence[int] = (100, 100), domain_hidden: Sequence[int] = (100,),
                 input_size: int = 28, input_norm: str = "none", dropout: float = 0.0) -> None:
        super().__init__()
        check_int(in_channels, "in_channels", low=1)
        check_int(num_classes, "num_classes", low=1)
        check_int(kernel, "kernel", low=1)
        check_int(input_size, "input_size", low=1)
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if not widths:
            raise ValueError("widths must name at least one conv layer, e.g. (32, 48)")
        layers: list[nn.Module] = [ImageStandardize() if input_norm == "image" else nn.Identity()]
        c = in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, check_int(w, f"widths[{i}]", low=1), kernel), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            try:
                self.feature_dim = int(self.features(torch.zeros(2, in_channels, input_size, input_size)).shape[1])
            except RuntimeError as exc:
                raise ValueError(f"input_size={input_size} is too small for {len(widths)} conv layers with "
                                 f"kernel {kernel} and 2x2 pooling; use larger images or fewer layers") from exc
        self.classifier = self._mlp(self.feature_dim, hidden, num_classes, dropout, "hidden")
        self.domain_classifier = self._mlp(self.feature_dim, domain_hidden, 1, 0.0, "domain_hidden")
        self.input_norm = input_norm

    @staticmethod
    def _mlp(d: int, hidden: Sequence[int], out: int, dropout: float, name: str) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, h in enumerate(hidden):
            layers += [nn.Linear(d, check_int(h, f"{name}[{i}]", low=1)), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            d = h
        layers.append(nn.Linear(d, out))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    def domain_logits(self, feats: Tensor, coeff: float = 1.0) -> Tensor:
        """Domain logits ``[B]`` (positive = target) of features seen through a GRL of ``coeff``."""
        return self.domain_classifier(grad_reverse(feats, coeff)).squeeze(1)


@register_model("dann")
def dann(**kwargs: Any) -> DANN:
    """DANN for 28x28 digits (Ganin & Lempitsky 2015), lab 09; options of :class:`DANN`."""
    return DANN(**kwargs)
