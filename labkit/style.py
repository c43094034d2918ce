"""Textures and styles from a classifier's features: Gram matrices, texture synthesis, style transfer,
and the texture-versus-shape cue-conflict test.

- :func:`gram_matrix`: ``G = F F^T / (H W)`` for features ``F`` of shape ``C x HW``: which channels
  fire *together*, averaged over positions, so every spatial arrangement of the same local features
  gives the same ``G`` (Gatys, Ecker & Bethge 2015, "Texture synthesis using convolutional neural
  networks").
- :func:`style_loss`, :func:`content_loss`: the two terms of Gatys, Ecker & Bethge 2016, "Image
  style transfer using convolutional neural networks".
- :func:`synthesize_texture`, :func:`style_transfer`: images optimized by
  :func:`labkit.feature_vis.optimize_image` (the image-optimization loop shared with representation
  inversion), with its priors (total variation, jitter).
- :func:`shuffle_patches`: an image cut into a grid of tiles put back in a random order (same local
  content, another arrangement).
- :func:`cue_conflict_decisions`: Geirhos et al. 2019, "ImageNet-trained CNNs are biased towards
  texture": for images with the shape of one class and the texture of another, count the decisions
  that follow the shape and those that follow the texture.

Used in lab 11.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ._checks import check_number
from .feature_vis import _check_layers, features_at, optimize_image
from .hooks import eval_mode
from .reproducibility import make_generator

__all__ = ["gram_matrix", "content_loss", "style_loss", "style_targets", "synthesize_texture", "style_transfer",
           "shuffle_patches", "cue_conflict_decisions"]


def _check_features(fn: str, name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor of features [B, C, H, W], got {type(value).__name__}")
    if value.dim() != 4:
        raise ValueError(f"{fn}: {name} must be features [B, C, H, W] (add a batch dimension with f[None]), "
                         f"got shape {tuple(value.shape)}")
    return value


def gram_matrix(features: Tensor, *, normalize: bool = True) -> Tensor:
    """Gram matrices of feature maps: ``[B, C, H, W]`` -> ``[B, C, C]``, ``G_ij = sum_p F_ip F_jp / (H W)``.

    ``G_ij`` is the average over the ``H W`` positions ``p`` of the product of channels ``i`` and
    ``j``: a second-order statistic of the features that ignores where they are. ``normalize=False``
    keeps the plain sum of Gatys et al. (their loss then divides by ``4 N^2 M^2``). Example: one
    channel holding ``[[1, 2], [3, 4]]`` gives ``G = (1 + 4 + 9 + 16) / 4 = 7.5``. Used in lab 11.
    """
    f = _check_features("gram_matrix", "features", features)
    if not isinstance(normalize, bool):
        raise TypeError(f"gram_matrix: normalize must be True or False, got {normalize!r}")
    b, c, h, w = f.shape
    flat = f.reshape(b, c, h * w)
    g = flat @ flat.transpose(1, 2)
    return g / (h * w) if normalize else g


def content_loss(features: Tensor, target: Tensor) -> Tensor:
    """Gatys et al. 2016's content loss, one value per image: ``mean((F - P)^2)`` over ``C, H, W``.

    ``features`` ``[B, C, H, W]``, ``target`` the same shape or ``[1, C, H, W]`` (one content image for
    all). Returns ``[B]``. (The paper's ``1/2 sum`` differs by the constant ``C H W / 2``.)
    """
    f = _check_features("content_loss", "features", features)
    t = _check_features("content_loss", "target", target)
    if t.shape[1:] != f.shape[1:] or t.shape[0] not in (1, f.shape[0]):
        raise ValueError(f"content_loss: target must have the features' shape {tuple(f.shape)} (or batch 1), "
                         f"got {tuple(t.shape)}")
    return (f - t).pow(2).flatten(1).mean(1)


def style_loss(features: Mapping[str, Tensor], targets: Mapping[str, Tensor], *,
               weights: Mapping[str, float] | None = None) -> Tensor:
    """Gatys et al.'s style (texture) loss, one value per image: ``sum_l w_l mean_ij (G^l_ij - A^l_ij)^2``.

    ``features``: ``{layer: [B, C, H, W]}``; ``targets``: ``{layer: [1 or B, C, C]}`` Gram matrices
    (:func:`gram_matrix` of the style image's features, see :func:`style_targets`); ``weights``: per
    layer, default 1 for each (the paper's ``w_l = 1 / L`` is a constant factor away). The mean over
    the ``C^2`` entries plays the role of the paper's ``1 / (4 N_l^2)`` with normalized Gram
    matrices. Returns ``[B]``.
    """
    if not isinstance(features, Mapping) or not features:
        raise TypeError("style_loss: features must be a non-empty dict {layer: features [B, C, H, W]}, got "
                        f"{type(features).__name__}")
    if not isinstance(targets, Mapping) or set(targets) != set(features):
        raise ValueError(f"style_loss: targets must be a dict of Gram matrices with the same layers as features "
                         f"{sorted(features)}, got {sorted(targets) if isinstance(targets, Mapping) else targets!r}")
    if weights is not None and (not isinstance(weights, Mapping) or not set(weights) <= set(features)):
        raise ValueError(f"style_loss: weights must be None or a dict {{layer: weight}} over the layers "
                         f"{sorted(features)}, got {weights!r}")
    total: Tensor | None = None
    for layer, f in features.items():
        g = gram_matrix(_check_features("style_loss", f"features[{layer!r}]", f))
        a = targets[layer]
        if not isinstance(a, Tensor) or a.dim() != 3 or a.shape[1:] != g.shape[1:] or a.shape[0] not in (1, g.shape[0]):
            raise ValueError(f"style_loss: targets[{layer!r}] must be Gram matrices [1 or {g.shape[0]}, "
                             f"{g.shape[1]}, {g.shape[2]}], got "
                             f"{tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__}")
        w = 1.0 if weights is None else check_number(weights.get(layer, 1.0), f"weights[{layer!r}]",
                                                     "style_loss", low=0.0)
        term = w * (g - a).pow(2).flatten(1).mean(1)
        total = term if total is None else total + term
    assert total is not None
    return total


def style_targets(model: nn.Module, images: Tensor, layers: str | Sequence[str]) -> dict[str, Tensor]:
    """Gram matrices of ``images`` (``[B, C, H, W]`` or one ``[C, H, W]``) at ``layers``: ``{layer: [B, C, C]}`` (no gradients; the model in eval
    mode for the call and left as found). The targets of :func:`style_loss`. Used in lab 11."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"style_targets: model must be a torch.nn.Module, got {type(model).__name__}")
    images = _check_images("style_targets", "images", images)
    layers = _check_layers(model, layers, "style_targets")
    with eval_mode(model, freeze=True):
        feats = features_at(model, images, layers)
    return {n: gram_matrix(f) for n, f in feats.items()}


def _check_images(fn: str, name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor of images [B, 3, H, W] in [0, 1], got {type(value).__name__}")
    if value.dim() == 3:
        value = value[None]
    if value.dim() != 4:
        raise ValueError(f"{fn}: {name} must be images [B, C, H, W] or one image [C, H, W], got {tuple(value.shape)}")
    return value


def synthesize_texture(model: nn.Module, texture: Tensor, layers: Sequence[str], *, size: int | None = None,
                       n: int = 1, steps: int = 200, lr: float = 0.05, tv: float = 0.0,
                       weights: Mapping[str, float] | None = None, jitter: int = 0, seed: int = 0,
                       return_history: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Gatys et al. 2015: ``n`` new images, from seeded noise, whose Gram matrices at ``layers`` match
    those of ``texture`` (one image ``[C, H, W]`` or ``[1, C, H, W]`` in ``[0, 1]``).

    Minimizes :func:`style_loss` with :func:`optimize_image` (Adam, ``tv`` prior, ``jitter``). ``size``:
    side of the square outputs (default: the texture's size). Returns ``[n, C, size, size]`` (and the
    ``[n, steps + 1]`` style losses with ``return_history``). The model is left as found.
    """
    tex = _check_images("synthesize_texture", "texture", texture)
    if tex.shape[0] != 1:
        raise ValueError(f"synthesize_texture: texture must be ONE image, got a batch of {tex.shape[0]}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"synthesize_texture: model must be a torch.nn.Module, got {type(model).__name__}")
    layers = _check_layers(model, layers, "synthesize_texture")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"synthesize_texture: n must be a positive int (images to make), got {n!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
        raise ValueError(f"synthesize_texture: size must be an int >= 8 or None (the texture's size), got {size!r}")
    h, w = (size, size) if size is not None else tex.shape[-2:]
    targets = style_targets(model, tex, layers)
    g = make_generator(seed)
    init = (0.5 + 0.1 * torch.randn(n, tex.shape[1], h, w, generator=g)).clamp(0, 1).to(tex.device)

    def loss(x: Tensor) -> Tensor:
        return style_loss(features_at(model, x, layers, detach=False), targets, weights=weights)

    return optimize_image(model, loss, init, steps=steps, lr=lr, tv=tv, jitter=jitter, seed=seed,
                          return_history=return_history)


def style_transfer(model: nn.Module, content: Tensor, style: Tensor, *, content_layer: str,
                   style_layers: Sequence[str], style_weight: float = 1.0, content_weight: float = 1.0,
                   steps: int = 200, lr: float = 0.03, tv: float = 0.0, init: str = "content",
                   weights: Mapping[str, float] | None = None, jitter: int = 0, seed: int = 0,
                   callback: Callable | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Gatys et al. 2016: images with the features of ``content`` at ``content_layer`` and the Gram
    matrices of ``style`` at ``style_layers``.

    Minimizes ``content_weight * L_content + style_weight * L_style (+ tv * TV)`` with
    :func:`optimize_image`. ``content`` and ``style`` are ``[B, 3, H, W]`` in ``[0, 1]`` (either may be
    one image for all; the content's size is the output's; the style image may have another size).
    ``init``: ``"content"`` (start from the content photo, the usual choice for speed) or ``"noise"``
    (seeded noise around grey, as in the paper's figures). Returns the images ``[B, 3, H, W]`` and
    ``{"content": [B], "style": [B]}``, the two unweighted losses of the final images. The model is
    left as found; ``content`` and ``style`` are not modified. Used in lab 11 (the weight sweep and the
    cue-conflict images).
    """
    fn = "style_transfer"
    c = _check_images(fn, "content", content)
    s = _check_images(fn, "style", style)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(content_layer, str):
        raise TypeError(f"{fn}: content_layer must be one dotted layer name (str), got {content_layer!r}")
    _check_layers(model, content_layer, fn)
    style_layers = _check_layers(model, style_layers, fn)
    sw = check_number(style_weight, "style_weight", fn, low=0.0)
    cw = check_number(content_weight, "content_weight", fn, low=0.0)
    if init not in ("content", "noise"):
        raise ValueError(f"{fn}: init must be 'content' or 'noise', got {init!r}")
    b = max(c.shape[0], s.shape[0])
    if c.shape[0] not in (1, b) or s.shape[0] not in (1, b):
        raise ValueError(f"{fn}: content and style must hold the same number of images, or one of them one image; "
                         f"got {c.shape[0]} and {s.shape[0]}")
    layers = list(dict.fromkeys([*style_layers, content_layer]))
    with eval_mode(model, freeze=True):
        c_feat = features_at(model, c.detach(), content_layer)[content_layer]
    grams = style_targets(model, s.detach(), style_layers)
    if init == "content":
        start = c.detach().expand(b, -1, -1, -1)
    else:
        g = make_generator(seed)
        start = (0.5 + 0.1 * torch.randn((b, *c.shape[1:]), generator=g)).clamp(0, 1).to(c.device)

    def both(x: Tensor) -> tuple[Tensor, Tensor]:
        feats = features_at(model, x, layers, detach=False)
        return (content_loss(feats[content_layer], c_feat),
                style_loss({n: feats[n] for n in style_layers}, grams, weights=weights))

    def loss(x: Tensor) -> Tensor:
        lc, ls = both(x)
        return cw * lc + sw * ls

    out = optimize_image(model, loss, start, steps=steps, lr=lr, tv=tv, jitter=jitter, seed=seed, callback=callback)
    with eval_mode(model, freeze=True), torch.no_grad():
        lc, ls = both(out)
    return out, {"content": lc.detach(), "style": ls.detach()}


def shuffle_patches(images: Tensor, *, grid: int, seed: int = 0) -> Tensor:
    """Cut each image into ``grid x grid`` tiles and put them back in a random order (seeded).

    ``[B, C, H, W]`` (H and W divisible by ``grid``) -> a new tensor of the same shape; every image
    gets the same permutation. Local content is kept, the arrangement destroyed: Gram matrices of
    layers whose receptive fields are smaller than a tile hardly change, the feature maps do.
    Used in lab 11.
    """
    x = _check_images("shuffle_patches", "images", images)
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"shuffle_patches: grid must be a positive int (tiles per side), got {grid!r}")
    b, c, h, w = x.shape
    if h % grid or w % grid:
        raise ValueError(f"shuffle_patches: the image size {h}x{w} must be divisible by grid={grid}; "
                         "resize the images or pick a divisor")
    th, tw = h // grid, w // grid
    tiles = x.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, th, tw)
    perm = torch.randperm(grid * grid, generator=make_generator(seed))
    tiles = tiles[:, perm.to(x.device)]
    out = tiles.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
    return out.clone() if images.dim() == 4 else out[0].clone()


def cue_conflict_decisions(logits: Tensor, shape_classes: Sequence[Sequence[int]],
                           texture_classes: Sequence[Sequence[int]]) -> dict[str, object]:
    """Geirhos et al. 2019's decisions on cue-conflict images: does the network follow shape or texture?

    ``logits`` ``[N, K]`` of N cue-conflict images; ``shape_classes[i]`` / ``texture_classes[i]``: the
    classes that count as the shape's / the texture's category for image ``i`` (e.g. the three cat
    classes of ImageNet). Two measures:

    - ``"top1"``: per image ``"shape"`` if the top class is in the shape's category, ``"texture"`` if in
      the texture's, else ``"other"``; ``"shape_bias"`` = shape / (shape + texture) over the decisions
      that are one of the two (the paper's measure; None when there is none);
    - ``"forced"``: a two-way choice between the categories (the larger best logit of each), so every
      image counts; ``"forced_shape_share"`` is the share that picks the shape.

    Returns ``{"top1": [N] labels, "shape": int, "texture": int, "other": int, "shape_bias": float |
    None, "forced": [N] labels, "forced_shape_share": float}``. A class in both categories of one
    image raises ``ValueError`` (that pair cannot be decided). Used in lab 11.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError("cue_conflict_decisions: logits must be a tensor [N, K] (one row per cue-conflict image), "
                         f"got {tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
    n, k = logits.shape
    for name, groups in (("shape_classes", shape_classes), ("texture_classes", texture_classes)):
        if not isinstance(groups, Sequence) or len(groups) != n:
            raise ValueError(f"cue_conflict_decisions: {name} must hold one list of classes per image ({n}), got "
                             f"{len(groups) if isinstance(groups, Sequence) else type(groups).__name__}")
        for i, grp in enumerate(groups):
            if (not isinstance(grp, Sequence) or isinstance(grp, str) or not grp
                    or not all(isinstance(j, int) and not isinstance(j, bool) and 0 <= j < k for j in grp)):
                raise ValueError(f"cue_conflict_decisions: {name}[{i}] must be a non-empty list of class indices in "
                                 f"[0, {k}), got {grp!r}")
    top = logits.detach().argmax(1).tolist()
    labels, forced = [], []
    for i in range(n):
        sc, tc = set(shape_classes[i]), set(texture_classes[i])
        if sc & tc:
            raise ValueError(f"cue_conflict_decisions: image {i}: the classes {sorted(sc & tc)} are in both the shape's "
                             "and the texture's category; such a pair cannot be decided, leave it out")
        labels.append("shape" if top[i] in sc else "texture" if top[i] in tc else "other")
        row = logits[i].detach()
        best_s = row[list(sc)].max()
        best_t = row[list(tc)].max()
        forced.append("shape" if bool(best_s > best_t) else "texture")
    shape, texture = labels.count("shape"), labels.count("texture")
    return {"top1": labels, "shape": shape, "texture": texture, "other": labels.count("other"),
            "shape_bias": shape / (shape + texture) if shape + texture else None,
            "forced": forced, "forced_shape_share": forced.count("shape") / n if n else 0.0}
