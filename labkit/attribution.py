"""Attribution maps: which pixels matter for a network's decision.

Reference implementations, kept short so that students can read them:

- :func:`saliency` (Simonyan et al. 2014), :func:`gradient_x_input` (Shrikumar et al. 2016),
  :func:`smoothgrad` (Smilkov et al. 2017), :func:`integrated_gradients` (Sundararajan et al. 2017);
- :func:`guided_backprop` and :func:`deconvnet` (Springenberg et al. 2015; Zeiler & Fergus 2014);
- :func:`grad_cam` and :func:`guided_grad_cam` (Selvaraju et al. 2017), with region targets;
- :func:`occlusion` and :func:`occlusion_activation` (Zeiler & Fergus 2014);
- targets for dense outputs: :func:`segment_target` (a class's score over a mask, labs 06, 08) and
  :func:`region_target` (every channel over a rectangle, e.g. of a VAE's reconstruction, lab 07).

Conventions shared by every function here:

- ``target`` is ``None`` (the predicted class), an ``int``, a 1-D tensor of per-image classes,
  or a callable ``f(output) -> [B]`` scores acting row by row, e.g. a region of a dense output
  (occlusion then maps that score instead of the probability). The score is the pre-softmax
  output (see :func:`resolve_target`).
- The model is evaluated in eval mode with its parameters frozen inside the call (so only
  input gradients are computed); its mode, ``requires_grad`` flags and hooks are restored on
  exit, also when the call raises. ``images`` is never modified. Results are detached tensors
  on the input's device.
- One backward pass serves the whole batch: the selected scores are summed (the images are
  independent in eval mode). SmoothGrad, integrated gradients and occlusion evaluate their
  many copies in chunks of ``batch_size`` rows per forward pass.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_int
from .hooks import _layer_key, capture, eval_mode, get_layer, relu_rule

__all__ = [
    "resolve_target",
    "segment_target",
    "region_target",
    "saliency",
    "gradient_x_input",
    "smoothgrad",
    "integrated_gradients",
    "guided_backprop",
    "deconvnet",
    "grad_cam",
    "guided_grad_cam",
    "occlusion",
    "occlusion_activation",
]

Target = Union[None, int, Sequence[int], Tensor, Callable[[Tensor], Tensor]]

# Rows (input copies) per forward pass when batch_size=None: about this many input elements,
# e.g. 27 images of 3x224x224 or 1365 of 3x32x32 with gradients, twice that without.
_GRAD_ELEMENTS = 2**22
_NOGRAD_ELEMENTS = 2**23
_IG_METHODS = ("trapezoid", "right", "left", "middle")
_UPSAMPLE_MODES = ("bilinear", "nearest", "bicubic", "area")


# ---------------------------------------------------------------------------------------------
# Validation and shared machinery


def _check_inputs(model: object, images: object, fn: str, *, image_batch: bool = True) -> Tensor:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, Tensor):
        raise TypeError(f"{fn}: images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{fn}: images must be a floating-point tensor, got dtype {images.dtype}; use images.float()")
    if image_batch and images.ndim != 4:
        raise ValueError(
            f"{fn}: images must be a batch [B, C, H, W], got shape {tuple(images.shape)}; "
            "for a single image use images.unsqueeze(0)"
        )
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"{fn}: images must be a non-empty batch [B, ...], got shape {tuple(images.shape)}")
    param = next(model.parameters(), None)
    if param is not None and param.device != images.device:
        raise ValueError(
            f"{fn}: images are on {images.device} but the model is on {param.device}; "
            f"move them with images.to({str(param.device)!r})"
        )
    return images


def _check_batch_size(batch_size: int | None, numel: int, budget: int, fn: str) -> int:
    if batch_size is None:
        return max(1, budget // max(1, numel))
    return check_int(batch_size, "batch_size", fn, low=1)


@contextlib.contextmanager
def _explaining(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the call; everything restored on exit."""
    with eval_mode(model, freeze=True):
        yield


def _class_index(output: Tensor, target: Target, fn: str) -> Tensor:
    """Per-image class indices [B] (long, on the output's device) for a non-callable target."""
    if not isinstance(output, Tensor):
        raise TypeError(
            f"{fn}: the model returns {type(output).__name__}, not a tensor of scores; pass a callable target "
            "f(output) -> [B] that picks the score to explain"
        )
    if output.ndim != 2:
        raise ValueError(
            f"{fn}: target={target!r} selects a class, which needs a model output [B, classes], got "
            f"{tuple(output.shape)}; pass target=callable(output) -> [B] scores for dense outputs"
        )
    b, k = output.shape
    if target is None:
        return output.argmax(dim=1)
    if isinstance(target, bool):
        raise TypeError(f"{fn}: target must be None, an int, a 1-D tensor of classes or a callable, got a bool")
    if isinstance(target, (int, np.integer)):
        if not 0 <= int(target) < k:
            raise ValueError(f"{fn}: target={int(target)} is out of range for {k} classes; use 0..{k - 1}")
        return torch.full((b,), int(target), dtype=torch.long, device=output.device)
    if isinstance(target, (list, tuple, np.ndarray)):
        target = torch.as_tensor(np.asarray(target))
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"{fn}: target tensor must hold integer classes, got dtype {target.dtype}")
        if target.numel() == 1 and target.ndim <= 1:  # one class for every image
            return _class_index(output, int(target.reshape(-1)[0]), fn)
        if target.ndim != 1 or target.shape[0] != b:
            raise ValueError(
                f"{fn}: target must be a 1-D tensor with one class per image ({b}), got shape {tuple(target.shape)}"
            )
        idx = target.to(device=output.device, dtype=torch.long)
        if bool(((idx < 0) | (idx >= k)).any()):
            raise ValueError(f"{fn}: target holds classes outside 0..{k - 1}: {target.tolist()}")
        return idx
    raise TypeError(
        f"{fn}: target must be None, an int, a 1-D tensor of classes or a callable, got {type(target).__name__}"
    )


def resolve_target(output: object, target: Target, *, batch: int | None = None, fn: str = "resolve_target") -> Tensor:
    """The scores [B] to explain: ``output[i, target_i]`` (pre-softmax) or ``target(output)``.

    ``target``: ``None`` (argmax class of each row), an ``int``, a 1-D tensor (or list) of
    per-image classes, or a callable ``f(output) -> [B]`` (e.g. the summed logits of a region
    of a segmentation, for area Grad-CAM; it also receives non-tensor outputs, such as a VAE's
    ``(reconstruction, mu, logvar)``, in which case ``batch`` gives B). Used by every
    explainer (labs 02-07).
    """
    if callable(target) and not isinstance(target, Tensor):
        if batch is None:
            if not isinstance(output, Tensor):
                raise TypeError(f"{fn}: pass batch=B with a model output of type {type(output).__name__}")
            batch = output.shape[0]
        scores = target(output)
        if not isinstance(scores, Tensor) or tuple(scores.shape) != (batch,):
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"{fn}: a callable target must return one score per image, shape ({batch},), got {shape}")
        return scores
    idx = _class_index(output, target, fn)
    return output.gather(1, idx[:, None]).squeeze(1)


# Callable targets for dense outputs: the summed score of an area (area Grad-CAM / saliency).
def segment_target(class_index: int, region: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """A target ``f(output) -> [B]``: the score of class ``class_index`` summed over ``region``.

    ``region``: a boolean (or 0/1) mask ``[H, W]`` or ``[B, H, W]`` (e.g. the predicted pixels of
    a segment); ``None`` sums over the whole image. Pass it as ``target=`` to ``lk.grad_cam`` or
    ``lk.saliency`` to explain a segment of a dense output (area Grad-CAM). Used in labs 06, 08.
    """
    if isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer)) or class_index < 0:
        raise ValueError(f"class_index must be an int >= 0, got {class_index!r}")
    k = int(class_index)
    if region is not None:
        if not isinstance(region, Tensor) or region.dim() not in (2, 3):
            raise ValueError("region must be a mask tensor [H, W] or [B, H, W], got "
                             f"{tuple(region.shape) if isinstance(region, Tensor) else type(region).__name__}")
        region = region.detach().float()

    def target(output: Tensor) -> Tensor:
        if not isinstance(output, Tensor) or output.dim() != 4:
            raise ValueError(f"segment_target needs dense scores [B, K, H, W], got "
                             f"{tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__}")
        if k >= output.shape[1]:
            raise ValueError(f"class_index={k} is out of range for {output.shape[1]} classes")
        s = output[:, k]
        if region is None:
            return s.sum((1, 2))
        r = region.to(s.device)
        if r.shape[-2:] != s.shape[-2:]:
            raise ValueError(f"region is {tuple(r.shape[-2:])} but the output is {tuple(s.shape[-2:])}")
        return (s * r).sum((1, 2))

    return target


def region_target(top: int, left: int, height: int, width: int) -> Callable[[Tensor], Tensor]:
    """A target for the explainers: ``output -> output[:, :, top:top+height, left:left+width]`` summed per image.

    Explains a *region* of a dense output (a reconstruction, a segmentation score map): "area"
    guided backprop or Grad-CAM. Lab 07.
    """
    fn = "region_target"
    top, left = check_int(top, "top", fn, low=0), check_int(left, "left", fn, low=0)
    height, width = check_int(height, "height", fn, low=1), check_int(width, "width", fn, low=1)

    def target(output: Tensor) -> Tensor:
        if output.dim() != 4:
            raise ValueError(f"region_target: the output must be dense [B, C, H, W], got {tuple(output.shape)}")
        if top + height > output.shape[2] or left + width > output.shape[3]:
            raise ValueError(f"region_target: the region rows {top}:{top + height}, cols {left}:{left + width} "
                             f"leaves the output of size {tuple(output.shape[2:])}")
        return output[:, :, top:top + height, left:left + width].sum(dim=(1, 2, 3))

    return target


def _row_targets(output: Tensor, target: Target, fn: str) -> Target:
    """Targets to reuse on copies of the batch: class indices (or the callable itself)."""
    if callable(target) and not isinstance(target, Tensor):
        return target
    return _class_index(output, target, fn)


def _input_grad(model: nn.Module, x: Tensor, target: Target, fn: str, rule: str | None = None) -> Tensor:
    """d(sum of selected scores)/d(input): one forward and one input-only backward."""
    with torch.inference_mode(False):
        x = x.detach().clone().requires_grad_(True)
    rules = relu_rule(model, rule) if rule is not None else contextlib.nullcontext()
    with torch.inference_mode(False), torch.enable_grad():  # also works when called under no_grad
        with rules:  # the rules are recorded in the graph by the forward pass
            output = model(x)
        scores = resolve_target(output, target, batch=x.shape[0], fn=fn)
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad


def _rows_grad(model: nn.Module, x: Tensor, targets: Target, rows: Tensor, fn: str) -> Tensor:
    """Input gradients of copies ``x`` whose row i belongs to image ``rows[i]``."""
    if isinstance(targets, Tensor):
        targets = targets[rows]
    return _input_grad(model, x, targets, fn)


# ---------------------------------------------------------------------------------------------
# Gradient maps


def saliency(model: nn.Module, images: Tensor, target: Target = None) -> Tensor:
    """Saliency map [B, H, W]: max over channels of |d score / d input| (Simonyan et al. 2014).

    The score is the pre-softmax output of the target class. One forward and one backward
    (input gradient only) for the whole batch. Used in labs 02 and 05.
    """
    images = _check_inputs(model, images, "saliency")
    with _explaining(model):
        grad = _input_grad(model, images, target, "saliency")
    return grad.abs().amax(dim=1)


def gradient_x_input(model: nn.Module, images: Tensor, target: Target = None) -> Tensor:
    """Gradient times input [B, C, H, W] (Shrikumar et al. 2016). Used in lab 02."""
    images = _check_inputs(model, images, "gradient_x_input", image_batch=False)
    with _explaining(model):
        grad = _input_grad(model, images, target, "gradient_x_input")
    return grad * images.detach()


def smoothgrad(
    model: nn.Module,
    images: Tensor,
    target: Target = None,
    *,
    samples: int = 25,
    noise: float = 0.15,
    seed: int = 0,
    batch_size: int | None = None,
) -> Tensor:
    """SmoothGrad [B, H, W]: the saliency map averaged over noisy copies (Smilkov et al. 2017).

    Each copy adds Gaussian noise of standard deviation ``noise * (max - min)`` of its image
    (the paper's noise level, 10-20 % works well), drawn from a CPU generator seeded with
    ``seed`` (the same maps on every device and for every ``batch_size``). ``target=None``
    explains the class predicted on the clean image. The ``samples * B`` copies are evaluated
    in chunks of ``batch_size`` rows. Used in lab 02.
    """
    fn = "smoothgrad"
    images = _check_inputs(model, images, fn)
    samples = check_int(samples, "samples", fn, low=1)
    seed = check_int(seed, "seed", fn, low=0)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"{fn}: noise must be a finite float >= 0 (fraction of each image's range), got {noise!r}")
    b = images.shape[0]
    chunk = _check_batch_size(batch_size, images[0].numel(), _GRAD_ELEMENTS, fn)
    x = images.detach()
    sigma = noise * (x.flatten(1).amax(1) - x.flatten(1).amin(1))  # [B]
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(b, *images.shape[2:], dtype=images.dtype, device=images.device)
    with _explaining(model):
        if not callable(target) or isinstance(target, Tensor):
            with torch.no_grad():  # classes from the clean images (validates the target too)
                target = _class_index(model(x), target, fn)
        for start in range(0, samples * b, chunk):
            rows = torch.arange(start, min(start + chunk, samples * b), device=images.device) % b  # sample-major
            eps = torch.stack([torch.randn(x.shape[1:], generator=gen, dtype=x.dtype) for _ in range(len(rows))])
            noisy = x[rows] + eps.to(x.device) * sigma[rows].view(-1, *[1] * (x.ndim - 1))
            grad = _rows_grad(model, noisy, target, rows, fn)
            total.index_add_(0, rows, grad.abs().amax(dim=1))
    return total / samples


def _ig_rule(steps: int, method: str, fn: str) -> tuple[list[float], list[float]]:
    """Points alpha_k in [0, 1] and weights w_k of the path integral (Captum's riemann_* rules)."""
    if method == "trapezoid":
        if steps < 2:
            raise ValueError(f"{fn}: steps must be >= 2 for method='trapezoid', got {steps}")
        alphas = [k / (steps - 1) for k in range(steps)]
        weights = [1.0 / (steps - 1)] * steps
        weights[0] /= 2
        weights[-1] /= 2
        return alphas, weights
    offset = {"right": 1.0, "left": 0.0, "middle": 0.5}[method]
    return [(k + offset) / steps for k in range(steps)], [1.0 / steps] * steps


def integrated_gradients(
    model: nn.Module,
    images: Tensor,
    target: Target = None,
    *,
    baseline: float | Tensor | None = None,
    steps: int = 32,
    method: str = "trapezoid",
    batch_size: int | None = None,
) -> Tensor:
    """Integrated gradients [B, C, H, W] (Sundararajan et al. 2017).

    ``(x - x0) * sum_k w_k * d score / d input at x0 + alpha_k (x - x0)``, with the baseline
    ``x0`` = 0 by default (a float, or a tensor broadcastable to ``images``: a colour [C, 1, 1]
    or an image). ``method`` picks the quadrature, as Captum's ``riemann_<method>``:
    ``"trapezoid"`` (default: alphas ``linspace(0, 1, steps)``, weights 1/(steps-1), end weights
    halved; Captum 0.9's ``riemann_trapezoid`` uses weights 1/steps, which sum to (steps-1)/steps,
    so its maps are ours times (steps-1)/steps), ``"right"`` (the paper's sum, alphas k/steps),
    ``"left"``, ``"middle"`` (these three equal Captum's). Completeness:
    the maps of an image sum to about score(x) - score(x0). ``target=None`` explains the class
    predicted on the image. The ``steps * B`` path points are evaluated in chunks of
    ``batch_size`` rows. Used in lab 02.
    """
    fn = "integrated_gradients"
    images = _check_inputs(model, images, fn, image_batch=False)
    steps = check_int(steps, "steps", fn, low=1)
    if method not in _IG_METHODS:
        raise ValueError(f"{fn}: method must be one of {_IG_METHODS}, got {method!r}")
    alphas, weights = _ig_rule(steps, method, fn)
    x = images.detach()
    if baseline is None:
        x0 = torch.zeros_like(x)
    elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        x0 = torch.full_like(x, float(baseline))
    elif isinstance(baseline, Tensor):
        try:
            x0 = baseline.detach().to(x).expand(x.shape)
        except RuntimeError:
            raise ValueError(
                f"{fn}: baseline of shape {tuple(baseline.shape)} does not broadcast to images {tuple(x.shape)}"
            ) from None
    else:
        raise TypeError(f"{fn}: baseline must be None, a float or a tensor, got {type(baseline).__name__}")
    b = x.shape[0]
    chunk = _check_batch_size(batch_size, x[0].numel(), _GRAD_ELEMENTS, fn)
    alpha_t = torch.tensor(alphas, dtype=x.dtype, device=x.device)
    weight_t = torch.tensor(weights, dtype=x.dtype, device=x.device)
    total = torch.zeros_like(x)
    delta = x - x0
    view = (-1,) + (1,) * (x.ndim - 1)
    with _explaining(model):
        if not callable(target) or isinstance(target, Tensor):
            with torch.no_grad():  # classes from the clean images (validates the target too)
                target = _class_index(model(x), target, fn)
        for start in range(0, steps * b, chunk):
            idx = torch.arange(start, min(start + chunk, steps * b), device=x.device)
            rows, k = idx % b, idx // b
            points = x0[rows] + alpha_t[k].view(view) * delta[rows]
            grad = _rows_grad(model, points, target, rows, fn)
            total.index_add_(0, rows, grad * weight_t[k].view(view))
    return delta * total


def guided_backprop(model: nn.Module, images: Tensor, target: Target = None) -> Tensor:
    """Guided backpropagation [B, C, H, W] (Springenberg et al. 2015).

    The gradient of the score with every ReLU back-propagating only positive gradients where
    its input was positive (see :func:`labkit.hooks.relu_rule`). Used in labs 05, 06, 07.
    """
    images = _check_inputs(model, images, "guided_backprop", image_batch=False)
    with _explaining(model):
        return _input_grad(model, images, target, "guided_backprop", rule="guided")


def deconvnet(model: nn.Module, images: Tensor, target: Target = None) -> Tensor:
    """Deconvnet map [B, C, H, W] (Zeiler & Fergus 2014, as formulated by Springenberg et al. 2015).

    Every ReLU back-propagates ``relu(gradient)``, ignoring the forward mask (Captum's
    Deconvolution computes the same). Max-pooling switches are the usual gradient routing.
    Used in lab 05.
    """
    images = _check_inputs(model, images, "deconvnet", image_batch=False)
    with _explaining(model):
        return _input_grad(model, images, target, "deconvnet", rule="deconvnet")


# ---------------------------------------------------------------------------------------------
# Grad-CAM


def _upsample(maps: Tensor, size: Sequence[int], mode: str) -> Tensor:
    corners = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(maps[:, None], size=tuple(size), mode=mode, **corners)[:, 0]


def grad_cam(
    model: nn.Module,
    images: Tensor,
    layer: str | nn.Module,
    target: Target = None,
    *,
    upsample: bool = True,
    mode: str = "bilinear",
) -> Tensor:
    """Grad-CAM [B, H, W] (Selvaraju et al. 2017): relu(sum_c mean(d score/d A_c) * A_c).

    ``A`` is the output of ``layer`` (dotted name or submodule; the last call if the layer
    runs twice). Not normalized. ``upsample=False`` returns the layer resolution [B, h, w];
    otherwise the map is resized to the input by ``mode`` interpolation (``align_corners=False``).
    ``target`` may be a callable ``f(output) -> [B]`` for area Grad-CAM on dense outputs.
    The backward pass stops at the layer (only d score/d A is computed). Used in labs 06, 08.
    """
    fn = "grad_cam"
    images = _check_inputs(model, images, fn)
    if mode not in _UPSAMPLE_MODES:
        raise ValueError(f"{fn}: mode must be one of {_UPSAMPLE_MODES}, got {mode!r}")
    key = _layer_key(model, layer)
    with _explaining(model), capture(model, key, require_grad=True) as cap, torch.inference_mode(False), \
            torch.enable_grad():  # fmt: skip
        output = model(images.detach().clone())
        if key not in cap.activations:
            raise ValueError(f"{fn}: layer {key!r} was not called in the forward pass; pick another layer")
        acts = cap.activations[key]
        if acts.ndim != 4:
            raise ValueError(
                f"{fn}: layer {key!r} outputs shape {tuple(acts.shape)}; Grad-CAM needs a feature map "
                "[B, C, h, w] (pick a convolutional layer, see lk.layer_names(model, kind=nn.Conv2d))"
            )
        scores = resolve_target(output, target, batch=images.shape[0], fn=fn)
        try:
            (grads,) = torch.autograd.grad(scores.sum(), acts)
        except RuntimeError as exc:
            raise ValueError(f"{fn}: the target score does not depend on layer {key!r} ({exc})") from None
    with torch.no_grad():
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = (weights * acts.detach()).sum(dim=1).clamp(min=0)
        if upsample:
            cam = _upsample(cam, images.shape[-2:], mode)
    return cam


def guided_grad_cam(
    model: nn.Module,
    images: Tensor,
    layer: str | nn.Module,
    target: Target = None,
    *,
    mode: str = "bilinear",
) -> Tensor:
    """Guided Grad-CAM [B, C, H, W]: guided backprop times the upsampled Grad-CAM (Selvaraju et al. 2017).

    The paper upsamples bilinearly (Captum's GuidedGradCam defaults to ``"nearest"``; pass
    ``mode="nearest"`` to reproduce it). Used in lab 06.
    """
    cam = grad_cam(model, images, layer, target, upsample=True, mode=mode)
    return guided_backprop(model, images, target) * cam[:, None]


# ---------------------------------------------------------------------------------------------
# Occlusion


def _pair(value: object, name: str, fn: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints (height, width), got {value!r}")
    if min(value) < 1:
        raise ValueError(f"{fn}: {name} must be >= 1, got {value!r}")
    return int(value[0]), int(value[1])


def _occluded_batches(
    images: Tensor, window: object, stride: object, baseline: float | Tensor, batch_size: int | None, fn: str
) -> tuple[tuple[int, int], Iterator[tuple[Tensor, Tensor, Tensor]]]:
    """Grid shape and an iterator of (rows, positions, occluded copies) chunks, image-major."""
    (wh, ww), (sh, sw) = _pair(window, "window", fn), _pair(stride, "stride", fn)
    b, _, h, w = images.shape
    if wh > h or ww > w:
        raise ValueError(f"{fn}: window {(wh, ww)} is larger than the images ({h}, {w})")
    ys = torch.arange(0, h - wh + 1, sh, device=images.device)
    xs = torch.arange(0, w - ww + 1, sw, device=images.device)
    grid = (len(ys), len(xs))
    n_pos = grid[0] * grid[1]
    if isinstance(baseline, Tensor):
        try:
            base: float | Tensor = baseline.detach().to(images).expand(images.shape)
        except RuntimeError:
            raise ValueError(
                f"{fn}: baseline of shape {tuple(baseline.shape)} does not broadcast to images {tuple(images.shape)}"
            ) from None
    elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        base = float(baseline)
    else:
        raise TypeError(f"{fn}: baseline must be a float or a tensor, got {type(baseline).__name__}")
    chunk = _check_batch_size(batch_size, images[0].numel(), _NOGRAD_ELEMENTS, fn)
    r_h = torch.arange(h, device=images.device)
    r_w = torch.arange(w, device=images.device)

    def batches() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for start in range(0, b * n_pos, chunk):
            idx = torch.arange(start, min(start + chunk, b * n_pos), device=images.device)
            rows, pos = idx // n_pos, idx % n_pos
            y0, x0 = ys[pos // grid[1]], xs[pos % grid[1]]
            in_y = (r_h >= y0[:, None]) & (r_h < y0[:, None] + wh)
            in_x = (r_w >= x0[:, None]) & (r_w < x0[:, None] + ww)
            mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]  # [n, 1, H, W]
            fill = base[rows] if isinstance(base, Tensor) else base
            yield rows, pos, torch.where(mask, fill, images[rows])

    return grid, batches()


def occlusion(
    model: nn.Module,
    images: Tensor,
    target: Target = None,
    *,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    baseline: float | Tensor = 0.0,
    batch_size: int | None = None,
) -> Tensor:
    """Occlusion sensitivity [B, H', W'] (Zeiler & Fergus 2014, Fig. 7).

    Entry (i, j) is the target class probability when the ``window`` at
    (i * stride, j * stride) is replaced by ``baseline`` (a float, or a tensor broadcastable to
    the images, e.g. the mean colour [C, 1, 1]); windows that would cross the border are not
    used, so H' = (H - window) // stride + 1. ``target=None`` is the class predicted on the
    unoccluded image; a callable target maps ``f(output) -> [n]`` instead of the probability.
    All occluded copies are evaluated in chunks of ``batch_size`` rows per forward pass (no
    gradients). Used in lab 05.
    """
    fn = "occlusion"
    images = _check_inputs(model, images, fn)
    x = images.detach()
    grid, batches = _occluded_batches(x, window, stride, baseline, batch_size, fn)
    with _explaining(model), torch.no_grad():
        clean = model(x)
        targets = _row_targets(clean, target, fn)
        dtype = clean.dtype if isinstance(clean, Tensor) and clean.is_floating_point() else x.dtype
        out_map = torch.empty(x.shape[0], grid[0] * grid[1], dtype=dtype, device=x.device)
        for rows, pos, copies in batches:
            out = model(copies)
            if isinstance(targets, Tensor):
                vals = torch.softmax(out, dim=1).gather(1, targets[rows][:, None]).squeeze(1)
            else:
                vals = resolve_target(out, targets, batch=len(rows), fn=fn)
            out_map[rows, pos] = vals.to(out_map.dtype)
    return out_map.view(x.shape[0], *grid)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run."""


def _forward_to(model: nn.Module, x: Tensor, layer: nn.Module, key: str, fn: str) -> Tensor:
    """Output of ``layer`` (its first call), without running the rest of the network."""
    box: dict[str, Tensor] = {}

    def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        box["out"] = output
        raise _StopForward

    handle = layer.register_forward_hook(hook)
    try:
        model(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "out" not in box:
        raise ValueError(f"{fn}: layer {key!r} was not called in the forward pass")
    if not isinstance(box["out"], Tensor) or box["out"].ndim < 2:
        raise ValueError(f"{fn}: layer {key!r} must output a tensor [B, C, ...]")
    return box["out"]


def occlusion_activation(
    model: nn.Module,
    images: Tensor,
    layer: str | nn.Module,
    channel: int | None = None,
    *,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    baseline: float | Tensor = 0.0,
    reduce: str = "mean",
    batch_size: int | None = None,
) -> Tensor:
    """Occlusion map [B, H', W'] of one feature map's activation (Zeiler & Fergus 2014, Fig. 7 b).

    Same sweep as :func:`occlusion`, but each entry is the ``reduce`` (``"mean"`` or ``"max"``)
    over positions of channel ``channel`` of ``layer``'s output (its first call; the forward
    pass stops at the layer). ``channel=None`` takes, per image, the strongest channel on the
    unoccluded image. Used in lab 05.
    """
    fn = "occlusion_activation"
    images = _check_inputs(model, images, fn)
    if reduce not in ("mean", "max"):
        raise ValueError(f"{fn}: reduce must be 'mean' or 'max', got {reduce!r}")
    key = _layer_key(model, layer)
    module = get_layer(model, key)
    x = images.detach()
    grid, batches = _occluded_batches(x, window, stride, baseline, batch_size, fn)

    def summary(act: Tensor) -> Tensor:  # [n, C, ...] -> [n, C]
        if act.ndim == 2:
            return act
        flat = act.flatten(2)
        return flat.mean(2) if reduce == "mean" else flat.amax(2)

    with _explaining(model), torch.no_grad():
        clean = summary(_forward_to(model, x, module, key, fn))
        n_ch = clean.shape[1]
        if channel is None:
            chans = clean.argmax(dim=1)
        else:
            channel = check_int(channel, "channel", fn, low=0)
            if channel >= n_ch:
                raise ValueError(f"{fn}: channel={channel} is out of range for layer {key!r} with {n_ch} channels")
            chans = torch.full((x.shape[0],), channel, dtype=torch.long, device=x.device)
        dtype = clean.dtype if isinstance(clean, Tensor) and clean.is_floating_point() else x.dtype
        out_map = torch.empty(x.shape[0], grid[0] * grid[1], dtype=dtype, device=x.device)
        for rows, pos, copies in batches:
            vals = summary(_forward_to(model, copies, module, key, fn))
            out_map[rows, pos] = vals.gather(1, chans[rows][:, None]).squeeze(1)
    return out_map.view(x.shape[0], *grid)
