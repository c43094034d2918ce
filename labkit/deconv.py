"""Zeiler & Fergus 2014, "Visualizing and understanding convolutional networks": the deconvnet.

A feature map is projected back to pixel space by running the layers backwards:
max-pooling is undone with the *switches* (where each maximum came from) recorded in
the forward pass, ReLUs rectify the signal going down, and convolutions are undone by
the same filters transposed. :func:`top_patches` finds the strongest activations of a
channel over a data set, with their input patches and projections (the paper's Fig. 2).

Supported: a layer inside an ``nn.Sequential`` (e.g. VGG/AlexNet ``features.N``) that
receives the images directly, made of ``Conv2d`` (zero padding), ``ReLU``, ``MaxPool2d``,
``BatchNorm2d``, ``Dropout``/``Identity``. Choices, each the transpose of the forward layer
(so the projection equals the backward pass with the deconvnet ReLU rule, as the tests check):
convolution biases and BatchNorm shifts are dropped, BatchNorm's scale ``gamma / sqrt(var + eps)``
is applied, and unpooling *adds* values whose windows share a switch (overlapping pooling).
Used in lab 05.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hooks import capture, get_layer, preserve_state

__all__ = ["deconv_projection", "top_patches", "receptive_field", "active_fraction", "occlusion_drop_by_mask"]

_SUPPORTED = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity)
_SUPPORTED_TEXT = ("a layer inside an nn.Sequential that takes the images as input (e.g. VGG/AlexNet "
                   "'features.N'), made of Conv2d (zero padding), ReLU, MaxPool2d, BatchNorm2d, Dropout, Identity")


def _same_device(model: nn.Module, x: Tensor, fn: str) -> None:
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    if param is not None and param.device != x.device:
        raise ValueError(f"{fn}: images are on {x.device} but the model is on {param.device}; "
                         f"move them with images.to({str(param.device)!r})")


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _flatten(modules: list[nn.Module]) -> list[nn.Module]:
    out: list[nn.Module] = []
    for m in modules:
        out.extend(_flatten(list(m)) if isinstance(m, nn.Sequential) else [m])
    return out


def _prefix(model: nn.Module, name: str) -> list[nn.Module] | None:
    """Modules of the enclosing chain of Sequentials, from its first one up to ``name`` (None if none)."""
    parent_name, _, child = name.rpartition(".")
    parent = get_layer(model, parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential):
        return None
    mods = list(parent)[: list(parent._modules).index(child) + 1]
    outer = _prefix(model, parent_name) if parent_name else None
    return mods if outer is None else outer[:-1] + mods


def _path(model: nn.Module, layer: str) -> list[nn.Module]:
    """The modules from the images up to and including ``layer`` (nested Sequentials flattened)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a dotted layer name such as 'features.3', got {type(layer).__name__}")
    target = get_layer(model, layer)  # unknown names: ValueError listing the valid ones
    prefix = _prefix(model, layer)
    if prefix is None and isinstance(target, nn.Sequential):
        prefix = [target]
    if prefix is None:
        raise ValueError(f"deconv: layer {layer!r} is not inside an nn.Sequential; supported: {_SUPPORTED_TEXT}")
    modules = _flatten(prefix)
    for m in modules:
        if not isinstance(m, _SUPPORTED):
            raise ValueError(f"deconv: the path to layer {layer!r} contains {type(m).__name__}, which the deconvnet "
                             f"cannot invert; supported: {_SUPPORTED_TEXT}")
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            raise ValueError(f"deconv: Conv2d with padding_mode={m.padding_mode!r} is not supported (zeros only)")
        if isinstance(m, nn.Conv2d) and isinstance(m.padding, str):
            raise ValueError("deconv: Conv2d with string padding ('same'/'valid') is not supported; use ints")
    return modules


def _forward(modules: list[nn.Module], x: Tensor) -> tuple[Tensor, list[tuple[nn.Module, Any]]]:
    """Run the path, recording for each layer what its transpose needs (input size, switches)."""
    trace: list[tuple[nn.Module, Any]] = []
    for m in modules:
        if isinstance(m, nn.MaxPool2d):
            size = x.shape
            x, switches = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                                       return_indices=True)
            trace.append((m, (size, switches)))
        elif isinstance(m, nn.ReLU):
            x = F.relu(x)
            trace.append((m, None))
        else:
            trace.append((m, x.shape))
            x = m(x)
    return x, trace


def _backward(trace: list[tuple[nn.Module, Any]], y: Tensor) -> Tensor:
    """The deconvnet: unpool with switches, rectify, transposed filters, from the top down."""
    for m, info in reversed(trace):
        if isinstance(m, nn.MaxPool2d):
            size, switches = info
            flat = torch.zeros(size[0], size[1], size[2] * size[3], dtype=y.dtype, device=y.device)
            y = flat.scatter_add_(2, switches.flatten(2), y.flatten(2)).view(size)
        elif isinstance(m, nn.ReLU):
            y = F.relu(y)
        elif isinstance(m, nn.Conv2d):
            size = info
            stride, padding, dilation = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
            k = m.weight.shape[2:]
            extra = [size[2 + d] - ((y.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (k[d] - 1) + 1)
                     for d in range(2)]
            y = F.conv_transpose2d(y, m.weight, None, stride, padding, tuple(extra), m.groups, dilation)
        elif isinstance(m, nn.BatchNorm2d):
            var = m.running_var if m.running_var is not None else torch.ones_like(y[0, :, 0, 0])
            scale = (var + m.eps).rsqrt()
            if m.weight is not None:
                scale = scale * m.weight
            y = y * scale.view(1, -1, 1, 1)
        # Dropout / Identity: identity in eval mode
    return y


def _select(act: Tensor, channel: int, top: int | None) -> Tensor:
    """Zero everything but ``channel`` (and, with ``top=k``, but its k strongest locations)."""
    out = torch.zeros_like(act)
    a = act[:, channel]
    if top is None:
        out[:, channel] = a
    else:
        flat = a.flatten(1)
        idx = flat.topk(min(top, flat.shape[1]), dim=1).indices
        kept = torch.zeros_like(flat).scatter_(1, idx, flat.gather(1, idx))
        out[:, channel] = kept.view_as(a)
    return out


def _check_channel(channel: object, act: Tensor, layer: str) -> int:
    if isinstance(channel, bool) or not isinstance(channel, int):
        raise TypeError(f"channel must be an int, got {type(channel).__name__}")
    if not 0 <= channel < act.shape[1]:
        raise ValueError(f"channel must lie in [0, {act.shape[1]}) for layer {layer!r}, got {channel}")
    return channel


def _verified_forward(model: nn.Module, modules: list[nn.Module], x: Tensor, layer: str):
    """Our forward along the path, checked against the layer's output in the model's own forward."""
    act, trace = _forward(modules, x)
    with capture(model, layer, detach=True) as cap:
        model(x)
    ref = cap.activations[layer]
    if ref.shape != act.shape or not torch.allclose(ref, act, rtol=1e-4, atol=1e-5):
        raise ValueError(f"deconv: the nn.Sequential holding layer {layer!r} does not take the images directly "
                         f"(its output differs from the model's own forward); supported: {_SUPPORTED_TEXT}")
    return act, trace


def deconv_projection(model: nn.Module, images: Tensor, layer: str, channel: int, *, top: int | None = 1) -> Tensor:
    """Zeiler & Fergus 2014's projection of one feature map of ``layer`` back to pixel space.

    The forward pass records the max-pooling switches; all activations of ``layer`` but those of
    ``channel`` are set to zero, and of those only the ``top`` strongest locations are kept
    (``top=1``: the strongest, as in the paper's figures; ``top=None``: the whole map). The
    deconvnet then goes down: unpooling with the switches, ReLU rectification, transposed
    convolution with the same filters. Returns ``[B, C, H, W]`` projections (same device as
    ``images``, not normalized). The model runs in eval mode; its state is restored. Lab 05.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a tensor [B, C, H, W], got {getattr(images, 'shape', type(images))}")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f"top must be a positive int or None (the whole map), got {top!r}")
    modules = _path(model, layer)
    _same_device(model, images, "deconv_projection")
    with preserve_state(model), torch.no_grad():
        model.eval()
        act, trace = _verified_forward(model, modules, images.detach(), layer)
        c = _check_channel(channel, act, layer)
        return _backward(trace, _select(act, c, top))


@dataclass(frozen=True)
class _Field:
    size: tuple[int, int]      # receptive field (rows, cols) in input pixels
    stride: tuple[int, int]    # input pixels between neighbouring positions of the layer
    offset: tuple[int, int]    # input coordinate of the top-left corner of position (0, 0)


def _field(modules: list[nn.Module]) -> _Field:
    size, jump, start = [1, 1], [1, 1], [0, 0]
    for m in modules:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k = _pair(m.kernel_size)
            s, p, d = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
            for i in range(2):
                start[i] -= p[i] * jump[i]
                size[i] += d[i] * (k[i] - 1) * jump[i]
                jump[i] *= s[i]
    return _Field(tuple(size), tuple(jump), tuple(start))


def receptive_field(model: nn.Module, layer: str) -> dict[str, tuple[int, int]]:
    """Receptive field of one position of ``layer``: ``{"size", "stride", "offset"}`` in input pixels.

    Position (i, j) of the layer sees the input rows ``offset[0] + i * stride[0]`` to
    ``... + size[0] - 1`` (and likewise for columns; parts may fall in the zero padding).
    Same layers as :func:`deconv_projection`. Used in lab 05.
    """
    f = _field(_path(model, layer))
    return {"size": f.size, "stride": f.stride, "offset": f.offset}


def _crop(images: Tensor, top: Tensor, left: Tensor, size: tuple[int, int]) -> Tensor:
    """Windows ``size`` at (top, left) of each image, zero outside the image."""
    h, w = images.shape[2:]
    ph, pw = size
    padded = F.pad(images, (pw, pw, ph, ph))
    rows = [padded[i, :, int(t) + ph:int(t) + 2 * ph, int(l) + pw:int(l) + 2 * pw] for i, (t, l) in
            enumerate(zip(top.tolist(), left.tolist()))]
    return torch.stack(rows) if rows else images.new_zeros(0, images.shape[1], ph, pw)


def top_patches(model: nn.Module, data: object, layer: str, channel: int, *, k: int = 9,
                batch_size: int = 256) -> dict[str, Tensor | tuple[int, int]]:
    """The ``k`` images of ``data`` where ``channel`` of ``layer`` fires most (Zeiler & Fergus 2014, Fig. 2).

    For each image the strongest location of the channel is found; the ``k`` strongest images
    are kept (one location per image). ``data``: an ImageSet (or anything with ``.images``) or a
    tensor ``[N, C, H, W]``. Returns a dict: ``indices`` [k] into ``data``, ``values`` [k],
    ``locations`` [k, 2] (row, column at the layer), ``boxes`` [k, 4] (top, left, bottom, right
    in input pixels, bottom/right exclusive), ``patches`` [k, C, R, R'] (the input inside the
    receptive field, zero where it passes the border), ``projections`` [k, C, R, R'] (the
    :func:`deconv_projection` with ``top=1``, cropped the same way), ``receptive_field`` (R, R')
    and ``stride``. Used in lab 05.
    """
    images = data if isinstance(data, Tensor) else getattr(data, "images", None)
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise TypeError(f"data must be an ImageSet or a tensor [N, C, H, W], got {type(data).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(images):
        raise ValueError(f"k must be an int in [1, {len(images)}] (the number of images), got {k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    modules = _path(model, layer)
    field = _field(modules)
    param = next(model.parameters(), None)
    device = param.device if param is not None else images.device
    best_v, best_i, best_loc = [], [], []
    with preserve_state(model), torch.no_grad():
        model.eval()
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            if start == 0:
                act, _ = _verified_forward(model, modules, x, layer)
                c = _check_channel(channel, act, layer)
            else:
                act, _ = _forward(modules, x)
            a = act[:, c].flatten(1)
            v, pos = a.max(1)
            best_v.append(v.cpu())
            best_loc.append(torch.stack([pos // act.shape[3], pos % act.shape[3]], 1).cpu())
            best_i.append(torch.arange(start, start + len(x)))
        values, order = torch.cat(best_v).topk(k)
        indices = torch.cat(best_i)[order]
        locations = torch.cat(best_loc)[order]
        chosen = images[indices].to(device)
        act, trace = _forward(modules, chosen)
        proj = _backward(trace, _select(act, c, 1))
    top = field.offset[0] + locations[:, 0] * field.stride[0]
    left = field.offset[1] + locations[:, 1] * field.stride[1]
    boxes = torch.stack([top, left, top + field.size[0], left + field.size[1]], 1)
    return {
        "indices": indices,
        "values": values,
        "locations": locations,
        "boxes": boxes,
        "patches": _crop(chosen.cpu(), top, left, field.size),
        "projections": _crop(proj.cpu(), top, left, field.size),
        "receptive_field": field.size,
        "stride": field.stride,
    }


def _images_of(data: object, fn: str) -> Tensor:
    images = data if isinstance(data, Tensor) else getattr(data, "images", None)
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise TypeError(f"{fn}: data must be an ImageSet or a tensor [N, C, H, W], got {type(data).__name__}")
    return images


def active_fraction(model: nn.Module, data: object, layer: str, *, batch_size: int = 256) -> Tensor:
    """Per channel of ``layer``, the fraction of (image, position) pairs where its output is > 0.

    Applied to a ReLU output, a channel whose fraction is ~0 is a *dead* unit: it never fires on
    these images, so it passes no signal forward and receives no gradient (Zeiler & Fergus 2014
    count such dead first-layer filters). ``data``: an ImageSet or a tensor ``[N, C, H, W]``.
    Returns a float tensor ``[C]`` on the CPU; the model's mode is restored. Used in lab 05.
    """
    fn = "active_fraction"
    images = _images_of(data, fn)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{fn}: batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(layer, str):
        raise TypeError(f"{fn}: layer must be a dotted layer name such as 'features.1', got {type(layer).__name__}")
    get_layer(model, layer)  # unknown names: ValueError listing the valid ones
    param = next(model.parameters(), None)
    device = param.device if param is not None else images.device
    positive, total = None, 0
    with preserve_state(model), torch.no_grad():
        model.eval()
        for start in range(0, len(images), batch_size):
            with capture(model, layer, detach=True) as cap:
                model(images[start:start + batch_size].to(device))
            act = cap.activations[layer]
            if act.dim() < 2:
                raise ValueError(f"{fn}: layer {layer!r} must output [B, C, ...], got shape {tuple(act.shape)}")
            count = (act > 0).transpose(0, 1).flatten(1).sum(1).double().cpu()
            positive = count if positive is None else positive + count
            total += act[:, 0].numel()
    return (positive / max(total, 1)).float()


def occlusion_drop_by_mask(model: nn.Module, images: Tensor, masks: Tensor, target: Any = None, *,
                           window: int, stride: int, baseline: float | Tensor = 0.5, object_min: float = 0.5,
                           batch_size: int | None = None) -> dict[str, Any]:
    """Drop of the target-class probability when a grey square hides the object vs the background.

    Runs :func:`labkit.attribution.occlusion` (Zeiler & Fergus 2014, Fig. 7) and compares each
    window with the true ``masks`` ``[B, H, W]``: a window is an *object* window when at least
    ``object_min`` of its pixels are object pixels, a *background* window when none are. Returns
    ``{"drop": [B, H', W'] p(clean) - p(occluded), "coverage": [B, H', W'] object fraction of each
    window, "probability": [B, H', W'] occluded probabilities, "clean": [B], "object": mean drop over
    object windows, "background": mean drop over background windows, "n_object", "n_background"}``
    (tensors on the CPU; a mean over no window is NaN). ``target``: None (predicted class), an int
    or a 1-D tensor, as for the explainers. Used in lab 05.
    """
    from .attribution import occlusion

    fn = "occlusion_drop_by_mask"
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"{fn}: images must be a tensor [B, C, H, W], got {getattr(images, 'shape', type(images))}")
    if not isinstance(masks, Tensor) or masks.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"{fn}: masks must be a tensor [B, H, W] = {(images.shape[0], *images.shape[2:])} matching "
                         f"the images, got {getattr(masks, 'shape', type(masks))}")
    if isinstance(object_min, bool) or not isinstance(object_min, (int, float)) or not 0.0 < object_min <= 1.0:
        raise ValueError(f"{fn}: object_min must be a fraction in (0, 1], got {object_min!r}")
    if callable(target):
        raise TypeError(f"{fn}: target must be None, an int or a 1-D tensor of classes (a probability is compared)")
    probability = occlusion(model, images, target, window=window, stride=stride, baseline=baseline,
                            batch_size=batch_size).cpu()
    with preserve_state(model), torch.no_grad():
        model.eval()
        out = torch.softmax(model(images.detach()), dim=1)
        if target is None:
            cls = out.argmax(1)
        elif isinstance(target, Tensor):
            cls = target.to(out.device).long().view(-1)
        else:
            cls = torch.full((len(out),), int(target), dtype=torch.long, device=out.device)
        clean = out.gather(1, cls[:, None]).squeeze(1).cpu()
    win, st = _pair(window), _pair(stride)
    coverage = F.avg_pool2d(masks.detach().float().cpu()[:, None], win, st)[:, 0]
    coverage = coverage[:, : probability.shape[1], : probability.shape[2]]
    drop = clean[:, None, None] - probability
    on_object, on_background = coverage >= object_min, coverage == 0
    nan = float("nan")
    return {
        "drop": drop, "coverage": coverage, "probability": probability, "clean": clean,
        "object": drop[on_object].mean().item() if on_object.any() else nan,
        "background": drop[on_background].mean().item() if on_background.any() else nan,
        "n_object": int(on_object.sum()), "n_background": int(on_background.sum()),
    }
