"""What a network "wants to see": images synthesized by gradient ascent.

- :func:`class_visualization`: Simonyan, Vedaldi & Zisserman 2014, "Deep inside
  convolutional networks": maximize the pre-softmax score of a class minus an L2 penalty.
- :func:`activation_maximization`: the same ascent on the mean activation of one channel
  (or one unit of a dense layer), Erhan et al. 2009.
- Regularizers of Yosinski et al. 2015, "Understanding neural networks through deep
  visualization": periodic Gaussian blur, jitter (a random roll of the image), clipping of
  pixels with a small norm; the step is the CS231n one, ``x += lr * g / ||g||``.

Used in lab 04 (and the activation maps of lab 05).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deconv import _prefix
from .hooks import capture, eval_mode, get_layer
from .reproducibility import make_generator

__all__ = ["class_visualization", "activation_maximization", "gaussian_blur", "high_frequency_share"]


def gaussian_blur(images: Tensor, sigma: float, *, kernel_size: int | None = None) -> Tensor:
    """Blur ``[B, C, H, W]`` (or ``[C, H, W]``) images with a Gaussian of std ``sigma`` pixels.

    Separable, channel by channel, edges replicated; ``kernel_size`` defaults to
    ``2 * ceil(3 * sigma) + 1``; ``sigma = 0`` returns a copy. Returns a new tensor. Used by
    :func:`class_visualization` (Yosinski et al. 2015) and as the blurred baseline of
    ``lk.insertion_curve`` (Petsiuk et al. 2018).
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or sigma < 0:
        raise ValueError(f"sigma must be a number >= 0 (pixels), got {sigma!r}")
    single = images.dim() == 3
    x = images.unsqueeze(0) if single else images
    if x.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W] or [C, H, W], got {tuple(images.shape)}")
    if sigma == 0:
        return images.clone()
    k = kernel_size if kernel_size is not None else 2 * math.ceil(3 * sigma) + 1
    if not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    w = torch.exp(-(r**2) / (2 * float(sigma) ** 2))
    w = w / w.sum()
    c = x.shape[1]
    pad = k // 2
    y = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    y = F.conv2d(y, w.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    y = F.conv2d(y, w.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return y[0] if single else y


def high_frequency_share(images: Tensor, *, cutoff: float = 0.25) -> Tensor:
    """Share of each image's spectral power above ``cutoff`` cycles per pixel; ``[B, C, H, W]`` -> ``[B]``.

    The mean of each channel is removed, the power spectrum ``|FFT|^2`` is summed over channels,
    and the power at radial frequencies ``sqrt(fy^2 + fx^2) > cutoff`` is divided by the total
    (Nyquist is 0.5; a checkerboard gives 1, a smooth ramp nearly 0, a flat image 0). A number
    for the "look" of a synthesized image: high-frequency noise vs smooth shapes, which Yosinski
    et al. 2015's blur and jitter regularizers lower. Used in lab 04.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    x = images.unsqueeze(0) if images.dim() == 3 else images
    if x.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W] or [C, H, W], got {tuple(images.shape)}")
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not 0 <= cutoff < 0.5 * math.sqrt(2):
        raise ValueError(f"cutoff must be a frequency in [0, 0.707) cycles per pixel (Nyquist 0.5), got {cutoff!r}")
    x = x.detach().double()
    x = x - x.mean(dim=(2, 3), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).sum(1)  # [B, H, W]
    fy = torch.fft.fftfreq(x.shape[2], dtype=torch.float64, device=x.device)
    fx = torch.fft.fftfreq(x.shape[3], dtype=torch.float64, device=x.device)
    high = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt() > cutoff
    total = power.flatten(1).sum(1)
    share = (power * high).flatten(1).sum(1) / total.clamp_min(1e-300)
    return torch.where(total > 0, share, torch.zeros_like(share)).to(images.dtype if images.is_floating_point()
                                                                       else torch.float32)


def _channel_stats(value: Sequence[float] | Tensor | None, name: str, c: int, like: Tensor) -> Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1)
    if t.numel() not in (1, c):
        raise ValueError(f"{name} must have 1 or {c} values (one per channel), got {t.numel()}")
    return t.expand(c).reshape(1, c, 1, 1)


def _classes(target: int | Sequence[int] | Tensor, name: str) -> Tensor:
    if isinstance(target, bool):
        raise TypeError(f"{name} must be an int or a 1-D sequence of ints, got a bool")
    t = torch.as_tensor(target)
    if t.dtype.is_floating_point or t.dim() > 1 or t.numel() == 0:
        raise TypeError(f"{name} must be an int or a non-empty 1-D sequence of ints, got {target!r}")
    return t.reshape(-1).long()


def _ascent(model: nn.Module, objective: Callable[[Tensor], Tensor], n: int, *, shape: Sequence[int],
            steps: int, lr: float, l2: float, blur_every: int, blur_sigma: float, jitter: int,
            clip_percentile: float, init: Tensor | None, seed: int, mean, std,
            clamp: tuple[float, float] | None, callback: Callable | None,
            return_history: bool) -> Tensor | tuple[Tensor, Tensor]:
    """Gradient ascent of ``objective(x_model) -> [n]`` on ``n`` images; see class_visualization."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, v in (("steps", steps), ("blur_every", blur_every), ("jitter", jitter)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0 (0 disables), got {v!r}")
    for name, v in (("lr", lr), ("l2", l2), ("blur_sigma", blur_sigma)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")
    if not 0 <= clip_percentile < 100:
        raise ValueError(f"clip_percentile must lie in [0, 100) (0 disables), got {clip_percentile!r}")
    if clamp is not None and (not isinstance(clamp, (tuple, list)) or len(clamp) != 2
                              or not float(clamp[0]) < float(clamp[1])):
        raise ValueError(f"clamp must be a pixel range (low, high) with low < high, or None, got {clamp!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable(step, images) or None, got {callback!r}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    gen = make_generator(seed)
    if init is not None:
        if not isinstance(init, Tensor):
            raise TypeError(f"init must be a tensor image in [0, 1] (pixel space) or None, got {type(init).__name__}")
        x0 = init.detach().to(device=device, dtype=torch.float32)
        x0 = x0.unsqueeze(0) if x0.dim() == 3 else x0
        if x0.dim() != 4 or x0.shape[0] not in (1, n):
            raise ValueError(f"init must be [C, H, W] or [1 or {n}, C, H, W], got {tuple(init.shape)}")
        x0 = x0.expand(n, -1, -1, -1)
    else:
        if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
            raise ValueError(f"shape must be (C, H, W) with positive ints, got {shape!r}")
        x0 = (0.5 + 0.1 * torch.randn((n, *shape), generator=gen)).clamp(0, 1).to(device)
    c = x0.shape[1]
    m = _channel_stats(mean, "mean", c, x0)
    s = _channel_stats(std, "std", c, x0)
    if (m is None) != (s is None):
        raise ValueError("give both mean and std (the model's input normalization) or neither")
    if s is not None and (s <= 0).any():
        raise ValueError(f"std must be > 0, got {std!r}")

    def to_model(p: Tensor) -> Tensor:
        return p if m is None else (p - m) / s

    def to_pixels(z: Tensor) -> Tensor:
        return z if m is None else z * s + m

    # reference colour (pulled to by L2, written by clipping): the mean colour, grey without mean/std
    ref = torch.full((1, c, 1, 1), 0.5, device=device) if m is None else m.clone()
    ref_model = to_model(ref)
    lo = hi = None
    if clamp is not None:
        lo, hi = to_model(torch.full_like(ref, float(clamp[0]))), to_model(torch.full_like(ref, float(clamp[1])))
    x = to_model(x0).clone()
    history: list[Tensor] = []
    with eval_mode(model, freeze=True):
        for step in range(steps + 1):
            x.requires_grad_(True)
            xin = x
            if jitter and step < steps:
                dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
                xin = torch.roll(x, shifts=(dy, dx), dims=(2, 3))  # the gradient flows back un-rolled
            score = objective(xin)
            history.append(score.detach().float().cpu())
            if step == steps:
                break
            total = score.sum() - l2 * ((x - ref_model) ** 2).sum()
            (g,) = torch.autograd.grad(total, x)
            with torch.no_grad():
                norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                x = x.detach() + lr * g / norm
                if blur_every and (step + 1) % blur_every == 0 and blur_sigma > 0:
                    x = gaussian_blur(x, blur_sigma)
                if clip_percentile > 0:
                    dev = (x - ref_model).norm(dim=1)  # [n, H, W]
                    thr = torch.quantile(dev.flatten(1), clip_percentile / 100, dim=1).view(-1, 1, 1)
                    x = torch.where((dev < thr)[:, None], ref_model.expand_as(x), x)
                if lo is not None:
                    x = torch.maximum(torch.minimum(x, hi), lo)
            if callback is not None:
                callback(step, to_pixels(x.detach()))
    out = to_pixels(x.detach())
    if return_history:
        return out, torch.stack(history, 1)
    return out


def class_visualization(model: nn.Module, target: int | Sequence[int] | Tensor, *,
                        shape: Sequence[int] = (3, 32, 32), steps: int = 200, lr: float = 1.0,
                        l2: float = 1e-3, blur_every: int = 0, blur_sigma: float = 0.5, jitter: int = 0,
                        clip_percentile: float = 0.0, init: Tensor | None = None, seed: int = 0,
                        mean: Sequence[float] | Tensor | None = None, std: Sequence[float] | Tensor | None = None,
                        clamp: tuple[float, float] | None = (0.0, 1.0), callback: Callable | None = None,
                        return_history: bool = False, objective: str = "score") -> Tensor | tuple[Tensor, Tensor]:
    """Simonyan et al. 2014's class model: ``argmax_x S_c(x) - l2 * ||x - ref||^2`` by gradient ascent.

    ``S_c`` is the pre-softmax score of class ``target`` (an int, or several classes: one image
    each). ``objective="log_softmax"`` ascends ``log p_c = S_c - log sum_k exp S_k`` instead: it also
    pushes the other classes' scores down, so a class whose parts another class shares still ends
    as the top class (Simonyan et al. keep the raw score, whose images show the class's evidence
    rather than the evidence against the others). Each step is ``x += lr * g / ||g||`` (per image, CS231n). Yosinski et al. 2015's
    regularizers, each disabled by 0: ``blur_every`` steps a Gaussian blur of ``blur_sigma``
    pixels; ``jitter``: the image is rolled by up to that many pixels before each forward pass
    (the gradient flows back through the roll, so it is undone); ``clip_percentile``: pixels whose
    deviation from the reference colour is below that percentile are set to it. The reference
    colour ``ref`` is ``mean`` (grey 0.5 without normalization). ``init`` (pixel space, ``[C, H, W]``)
    starts from a real image instead of seeded noise. ``mean``/``std``: the normalization the model
    expects; the ascent runs in the model's input space and the result is returned in pixel space,
    kept in ``clamp`` (None: unbounded). ``callback(step, images)`` is called after every step.
    Returns ``[B, C, H, W]`` images (and ``[B, steps + 1]`` target scores with ``return_history``;
    entry t is the score at step t, on the jittered image when jitter is on, the last one on the
    final image). The model is left as found (eval mode and frozen parameters during the ascent).
    Used in lab 04.
    """
    classes = _classes(target, "target")
    n = len(classes)
    if objective not in ("score", "log_softmax"):
        raise ValueError(f"objective must be 'score' (Simonyan's S_c) or 'log_softmax' (log p_c), got {objective!r}")

    def goal(x: Tensor) -> Tensor:
        out = model(x)
        if out.dim() != 2:
            raise ValueError(f"class_visualization needs a classifier with [B, K] outputs, got {tuple(out.shape)}")
        if classes.max() >= out.shape[1] or classes.min() < 0:
            raise ValueError(f"target classes must lie in [0, {out.shape[1]}), got {classes.tolist()}")
        if objective == "log_softmax":
            out = torch.log_softmax(out, dim=1)
        return out.gather(1, classes.to(out.device)[:, None])[:, 0]

    return _ascent(model, goal, n, shape=shape, steps=steps, lr=lr, l2=l2, blur_every=blur_every,
                   blur_sigma=blur_sigma, jitter=jitter, clip_percentile=clip_percentile, init=init, seed=seed,
                   mean=mean, std=std, clamp=clamp, callback=callback, return_history=return_history)


def activation_maximization(model: nn.Module, layer: str, channel: int | Sequence[int] | Tensor, *,
                            shape: Sequence[int] = (3, 32, 32), steps: int = 200, lr: float = 1.0,
                            l2: float = 1e-3, blur_every: int = 0, blur_sigma: float = 0.5, jitter: int = 0,
                            clip_percentile: float = 0.0, init: Tensor | None = None, seed: int = 0,
                            mean: Sequence[float] | Tensor | None = None,
                            std: Sequence[float] | Tensor | None = None,
                            clamp: tuple[float, float] | None = (0.0, 1.0), callback: Callable | None = None,
                            return_history: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Images maximizing the mean activation of ``channel`` at ``layer`` (one unit for a dense layer).

    Erhan et al. 2009's activation maximization with the regularizers and options of
    :func:`class_visualization` (several channels: one image each). ``layer`` is a dotted name
    (``"features.3"``); the activation is read with ``lk.capture``. Used in lab 04 (channels
    layer by layer: edges to textures).
    """
    channels = _classes(channel, "channel")
    get_layer(model, layer)  # unknown names raise ValueError listing the valid ones
    # A layer inside a chain of nn.Sequential that takes the images (VGG's "features.N") needs only
    # the modules up to it: much faster for early layers of deep nets. Checked once against the
    # full forward; anything else runs the whole model.
    prefix = _prefix(model, layer)
    truncated = nn.Sequential(*prefix) if prefix else None
    fast: list[bool] = []

    def activation(x: Tensor) -> Tensor:
        if truncated is not None and fast == [True]:
            return truncated(x)
        with capture(model, layer) as cap:
            model(x)
        full = cap.activations[layer]
        if truncated is not None and not fast:
            try:  # a chain that does not start at the images (SmallCNN's "classifier.N") fails or differs
                with torch.no_grad():
                    short = truncated(x)
                fast.append(short.shape == full.shape and bool(torch.allclose(short, full, rtol=1e-4, atol=1e-5)))
            except RuntimeError:
                fast.append(False)
        return full

    def objective(x: Tensor) -> Tensor:
        a = activation(x)
        if a.dim() < 2:
            raise ValueError(f"layer {layer!r} gives outputs of shape {tuple(a.shape)}; pick a layer with "
                             "[B, C, ...] outputs")
        if channels.max() >= a.shape[1] or channels.min() < 0:
            raise ValueError(f"channel must lie in [0, {a.shape[1]}) for layer {layer!r}, got {channels.tolist()}")
        picked = a[torch.arange(len(channels), device=a.device), channels.to(a.device)]
        return picked.flatten(1).mean(1) if picked.dim() > 1 else picked

    return _ascent(model, objective, len(channels), shape=shape, steps=steps, lr=lr, l2=l2,
                   blur_every=blur_every, blur_sigma=blur_sigma, jitter=jitter, clip_percentile=clip_percentile,
                   init=init, seed=seed, mean=mean, std=std, clamp=clamp, callback=callback,
                   return_history=return_history)


# ---------------------------------------------------------------------------------------------
# Representation inversion (Mahendran & Vedaldi 2015) and the image-optimization loop it shares
# with texture synthesis and style transfer (labkit.style). Used in lab 11.

__all__ += ["features_at", "total_variation", "optimize_image", "invert_features"]


class _StopForward(Exception):
    """Raised by :func:`features_at`'s stop hook once every requested layer has produced its output."""


def _check_layers(model: nn.Module, layers: str | Sequence[str], fn: str) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, Sequence) or not layers or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"{fn}: layers must be a dotted layer name or a non-empty list of them "
                         f"(see lk.layer_names(model)), got {layers!r}")
    layers = list(layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"{fn}: layers has duplicates {layers}; name each layer once")
    for name in layers:
        get_layer(model, name)  # unknown names raise ValueError listing the valid ones
    return layers


def features_at(model: nn.Module, images: Tensor, layers: str | Sequence[str], *, detach: bool = True,
                stop_early: bool = True) -> dict[str, Tensor]:
    """The outputs of ``layers`` for ``images``: ``{layer: [B, C, H, W]}`` in one forward pass.

    Read with ``lk.capture`` (the one hook mechanism). With ``stop_early`` the forward pass stops
    as soon as every requested layer has produced an output (a private exception raised by a
    forward hook, caught here): inverting or matching an early layer then costs only the layers
    before it. Do not use it for a model that calls a requested module twice per forward pass
    (``stop_early=False`` keeps the last call's output, as ``lk.capture`` does). ``detach=False``
    keeps the graph, so that a loss on the features can be back-propagated to ``images`` (the
    image-optimization loops of lab 11); ``detach=True`` runs without gradients. The model's modes
    are not changed here (callers put it in eval mode); every hook is removed before returning,
    also on errors. ``images`` is not modified. Used in lab 11.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"features_at: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, Tensor):
        raise TypeError(f"features_at: images must be a tensor [B, C, H, W], got {type(images).__name__}")
    for name, v in (("detach", detach), ("stop_early", stop_early)):
        if not isinstance(v, bool):
            raise TypeError(f"features_at: {name} must be True or False, got {v!r}")
    layers = _check_layers(model, layers, "features_at")
    remaining = set(layers)

    def stop(module: nn.Module, args: tuple, output: Any) -> None:
        remaining.discard(names[id(module)])
        if not remaining:
            raise _StopForward

    names = {id(get_layer(model, n)): n for n in layers}
    handles = []
    grad = torch.no_grad() if detach else contextlib.nullcontext()
    try:
        with capture(model, layers, detach=detach) as cap, grad:
            if stop_early:
                handles = [get_layer(model, n).register_forward_hook(stop) for n in layers]
            try:
                model(images)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in cap.activations]
    if missing:
        raise ValueError(f"features_at: the layers {missing} were not called by the model's forward pass; "
                         "pick layers that the forward pass uses (see lk.layer_names(model))")
    return {n: cap.activations[n] for n in layers}


def total_variation(images: Tensor, *, beta: float = 2.0) -> Tensor:
    """Mahendran & Vedaldi 2015's total-variation prior, one value per image: ``[B, C, H, W]`` -> ``[B]``.

    ``TV_beta(x) = mean over pixels and channels of ((x[i, j+1] - x[i, j])^2 + (x[i+1, j] - x[i, j])^2)^(beta / 2)``
    on the ``(H - 1) x (W - 1)`` pixels that have both neighbours. ``beta = 2`` is the squared
    gradient (smooth images), ``beta = 1`` the usual TV (sharp edges allowed). A constant image
    gives 0; a one-channel 2x2 image ``[[0, 1], [0, 0]]`` gives ``(1^2 + 0^2)^(beta/2) = 1``.
    Used in lab 11 as the natural-image prior of inversion, texture synthesis and style transfer.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"total_variation: images must be a tensor [B, C, H, W], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[-1] < 2 or images.shape[-2] < 2:
        raise ValueError(f"total_variation: images must be [B, C, H, W] with H, W >= 2, got {tuple(images.shape)}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"total_variation: beta must be a number > 0 (2: squared gradient, 1: TV), got {beta!r}")
    dx = images[..., :-1, 1:] - images[..., :-1, :-1]
    dy = images[..., 1:, :-1] - images[..., :-1, :-1]
    sq = dx**2 + dy**2
    # (eps keeps the gradient of the power finite at 0 for beta < 2)
    val = sq if beta == 2 else (sq + 1e-8) ** (beta / 2)
    return val.flatten(1).mean(1)


def optimize_image(model: nn.Module, loss: Callable[[Tensor], Tensor], init: Tensor, *, steps: int = 200,
                   lr: float = 0.05, tv: float = 0.0, tv_beta: float = 2.0, jitter: int = 0, blur_every: int = 0,
                   blur_sigma: float = 0.5, seed: int = 0, clamp: tuple[float, float] | None = (0.0, 1.0),
                   callback: Callable | None = None,
                   return_history: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Minimize ``loss(x) + tv * TV(x)`` over the pixels of images ``x`` with Adam: the loop of lab 11.

    ``loss(x)`` returns one value per image (``[B]``, usually a function of ``model``'s features of
    ``x``). The images start at ``init`` (``[B, C, H, W]`` pixels, copied, never modified) and are
    kept in ``clamp`` after each step. Image priors, as in :func:`class_visualization`: ``tv`` weights
    :func:`total_variation` (``tv_beta``; Mahendran & Vedaldi 2015), ``jitter`` rolls the image by up
    to that many pixels before each evaluation (Yosinski et al. 2015; the roll is drawn from a
    ``torch.Generator`` seeded with ``seed``), ``blur_every`` steps a Gaussian blur of ``blur_sigma``
    pixels. Adam (not class_visualization's normalized step) because inversion and style transfer
    minimize a loss towards a target and need steps that shrink near it. ``model`` is in eval mode
    with frozen parameters during the loop and left as found (modes, ``requires_grad``) even when
    ``loss`` raises. ``callback(step, images)`` after every step. Returns the images (and, with
    ``return_history``, the ``[B, steps + 1]`` values of ``loss`` without the prior, the last on the
    final images without jitter). Used in lab 11 (inversion, texture synthesis, style transfer).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize_image: model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss):
        raise TypeError(f"optimize_image: loss must be a function images -> [B] losses, got {loss!r}")
    if not isinstance(init, Tensor) or init.dim() != 4:
        raise ValueError("optimize_image: init must be a tensor of images [B, C, H, W] in pixel space, got "
                         f"{tuple(init.shape) if isinstance(init, Tensor) else type(init).__name__}")
    for name, v in (("steps", steps), ("blur_every", blur_every), ("jitter", jitter)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"optimize_image: {name} must be an int >= 0 (0 disables), got {v!r}")
    for name, v in (("lr", lr), ("tv", tv), ("blur_sigma", blur_sigma)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"optimize_image: {name} must be a number >= 0, got {v!r}")
    if clamp is not None and (not isinstance(clamp, (tuple, list)) or len(clamp) != 2
                              or not float(clamp[0]) < float(clamp[1])):
        raise ValueError(f"optimize_image: clamp must be a pixel range (low, high) with low < high, or None, "
                         f"got {clamp!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"optimize_image: callback must be callable(step, images) or None, got {callback!r}")
    total_variation(init[:1, :, :2, :2], beta=tv_beta)  # validates tv_beta
    gen = make_generator(seed)
    x = init.detach().clone().float()
    if clamp is not None:
        x = x.clamp(float(clamp[0]), float(clamp[1]))
    x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=float(lr))
    history: list[Tensor] = []
    b = x.shape[0]
    with eval_mode(model, freeze=True), torch.enable_grad():
        for step in range(steps):
            xin = x
            if jitter:
                dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
                xin = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            value = loss(xin)
            if not isinstance(value, Tensor) or value.shape != (b,):
                raise ValueError(f"optimize_image: loss must return one value per image, shape ({b},), got "
                                 f"{tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__}")
            history.append(value.detach().float().cpu())
            total = value.sum() + (tv * total_variation(x, beta=tv_beta).sum() if tv else 0.0)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            with torch.no_grad():
                if blur_every and (step + 1) % blur_every == 0 and blur_sigma > 0:
                    x.copy_(gaussian_blur(x, blur_sigma))
                if clamp is not None:
                    x.clamp_(float(clamp[0]), float(clamp[1]))
            if callback is not None:
                callback(step, x.detach())
        if return_history:
            with torch.no_grad():
                history.append(loss(x.detach()).detach().float().cpu())
    out = x.detach()
    if return_history:
        return out, torch.stack(history, 1)
    return out


def invert_features(model: nn.Module, images: Tensor, layer: str, *, steps: int = 200, lr: float = 0.05,
                    tv: float = 1.0, tv_beta: float = 2.0, jitter: int = 0, blur_every: int = 0,
                    blur_sigma: float = 0.5, init: Tensor | None = None, seed: int = 0,
                    return_history: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Mahendran & Vedaldi 2015: an image whose features at ``layer`` match those of ``images``.

    ``argmin_x ||Phi(x) - Phi(x0)||^2 / ||Phi(x0)||^2 + tv * TV(x)``, one reconstruction per image
    (``[B, 3, H, W]`` in ``[0, 1]``), from seeded noise around grey (``init`` overrides it), by
    :func:`optimize_image` (Adam, ``tv`` prior, ``jitter``, ``blur_every``); the forward pass stops at
    ``layer`` (:func:`features_at`). The relative feature error makes one ``tv`` fit every depth. With
    ``return_history`` also the ``[B, steps + 1]`` relative feature errors. The model is left as
    found; ``images`` is not modified. Used in lab 11.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError("invert_features: images must be a tensor [B, C, H, W] in [0, 1], got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"invert_features: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(layer, str):
        raise TypeError(f"invert_features: layer must be one dotted layer name (str), got {layer!r}")
    _check_layers(model, layer, "invert_features")
    if init is None:
        g = make_generator(seed)
        init = (0.5 + 0.05 * torch.randn(images.shape, generator=g)).clamp(0, 1).to(images.device)
    elif not isinstance(init, Tensor) or init.shape != images.shape:
        raise ValueError(f"invert_features: init must be None or a tensor of the images' shape {tuple(images.shape)}, "
                         f"got {tuple(init.shape) if isinstance(init, Tensor) else type(init).__name__}")
    with eval_mode(model, freeze=True):
        target = features_at(model, images.detach(), layer)[layer]
    norm = target.flatten(1).pow(2).sum(1).clamp_min(1e-12)

    def loss(x: Tensor) -> Tensor:
        f = features_at(model, x, layer, detach=False)[layer]
        return (f - target).flatten(1).pow(2).sum(1) / norm

    return optimize_image(model, loss, init, steps=steps, lr=lr, tv=tv, tv_beta=tv_beta, jitter=jitter,
                          blur_every=blur_every, blur_sigma=blur_sigma, seed=seed, return_history=return_history)
