"""Scores: classification and segmentation, explanation quality, sanity checks, generative models (the
FID of Heusel et al. 2017 and class coverage, lab 10), and the centre-prior baseline map (lab 02).

Everything works on tensors (CPU or CUDA) and is checked against hand-computed cases in
``tests/test_metrics.py``. Conventions:

- masks are boolean (or 0/1 integer) tensors ``[B, H, W]``; maps are ``[B, H, W]`` (or
  ``[B, 1, H, W]``) at the resolution of the masks (upsample Grad-CAM maps first);
- a per-sample score is returned as a tensor ``[B]``; an overall score as a Python float;
- undefined ratios (0/0) get the value documented on each function, never a silent NaN.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_int, check_tensor, is_int
from .attribution import _class_index
from .embeddings import extract_features
from .training import predict

__all__ = [
    "cascading_randomization",
    "feature_statistics",
    "gaussian_frechet_distance",
    "frechet_distance",
    "classifier_fid",
    "class_histogram",
    "class_coverage",
    "centered_gaussian_maps",
    "accuracy",
    "confusion_matrix",
    "pixel_accuracy",
    "mean_accuracy",
    "mean_iou",
    "segmentation_scores",
    "iou",
    "boundary_f1",
    "pointing_game",
    "discriminative_pointing",
    "deletion_curve",
    "insertion_curve",
    "auc",
    "spearman",
    "randomization_test",
    "psnr",
    "mask_share",
    "top_pixel_share",
    "threshold_mask",
]


# --------------------------------------------------------------------------- validation

def _reduction(reduction: str) -> str:
    if reduction not in ("none", "mean"):
        raise ValueError(f"reduction must be 'none' (per sample) or 'mean', got {reduction!r}")
    return reduction


def _same_device(model: nn.Module, x: Tensor, fn: str) -> None:
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    if param is not None and param.device != x.device:
        raise ValueError(f"{fn}: images are on {x.device} but the model is on {param.device}; "
                         f"move them with images.to({str(param.device)!r})")


def _as_preds(x: Tensor, labels: Tensor, name: str) -> Tensor:
    """Class predictions from integer predictions (same shape as labels) or scores (one more dim)."""
    check_tensor(x, name)
    check_tensor(labels, "labels")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold integer class indices, got dtype {labels.dtype}")
    if labels.numel() == 0:
        raise ValueError("labels is empty: nothing to score")
    if x.shape == labels.shape:
        if x.dtype.is_floating_point:
            raise TypeError(
                f"{name} has the shape of labels {tuple(labels.shape)} but dtype {x.dtype}: pass integer "
                "predictions, or scores with a class dimension (e.g. logits [B, K])"
            )
        return x
    if x.dim() == labels.dim() + 1 and x.shape[0] == labels.shape[0] and x.shape[2:] == labels.shape[1:]:
        return x.argmax(1)
    raise ValueError(
        f"{name} of shape {tuple(x.shape)} does not match labels {tuple(labels.shape)}: pass predictions of "
        "the same shape as labels, or scores [B, K, ...] with the classes in dimension 1"
    )


def _as_masks(m: Tensor, name: str) -> Tensor:
    """A boolean mask batch ``[B, H, W]`` from ``[B, H, W]``, ``[B, 1, H, W]`` or one ``[H, W]`` mask."""
    check_tensor(m, name)
    if m.dtype.is_floating_point:
        raise TypeError(f"{name} must be a boolean (or 0/1 integer) mask, got dtype {m.dtype}; threshold it "
                        "first, e.g. lk.threshold_mask(maps, fraction=0.1) or maps > 0.5")
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    elif m.dim() == 2:
        m = m.unsqueeze(0)
    if m.dim() != 3:
        raise ValueError(f"{name} must be [B, H, W] (or [B, 1, H, W] or one [H, W]), got {tuple(m.shape)}")
    if m.dtype != torch.bool:
        if ((m != 0) & (m != 1)).any():
            raise ValueError(f"{name} must hold only 0 and 1 (it is a binary mask); for a class map compare "
                             "it with a class first, e.g. mask == k")
        m = m.bool()
    return m


def _as_maps(maps: Tensor, name: str = "maps", *, reduce_channels: bool = False) -> Tensor:
    """A float map batch ``[B, H, W]``; with ``reduce_channels`` a ``[B, C, H, W]`` map is summed in |.|."""
    check_tensor(maps, name)
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    elif maps.dim() == 4 and reduce_channels:
        maps = maps.abs().sum(1)
    elif maps.dim() == 2:
        maps = maps.unsqueeze(0)
    if maps.dim() != 3:
        raise ValueError(f"{name} must be [B, H, W] (or [B, 1, H, W]), got {tuple(maps.shape)}; reduce the "
                         "channels first, e.g. maps.abs().amax(1)")
    return maps.float() if not maps.dtype.is_floating_point else maps


def _same_size(maps: Tensor, masks: Tensor) -> None:
    if maps.shape != masks.shape:
        raise ValueError(
            f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must have the same [B, H, W] shape; "
            "upsample low-resolution maps first (e.g. lk.grad_cam(..., upsample=True))"
        )


# --------------------------------------------------------------------------- classification
def accuracy(logits_or_preds: Tensor, labels: Tensor) -> float:
    """Fraction of correct predictions; scores ``[B, K, ...]`` are arg-maxed over dimension 1.

    Used in every lab that trains a classifier (00, 01, 03, 09, 10).
    """
    preds = _as_preds(logits_or_preds, labels, "logits_or_preds")
    return (preds == labels).float().mean().item()


def confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int, *, ignore_index: int | None = None) -> Tensor:
    """``[K, K]`` int64 counts: row = true class, column = predicted class (scikit-learn's order).

    ``preds`` may be class indices or scores ``[B, K, ...]``; ``labels`` equal to ``ignore_index``
    are left out. Sum the matrices of several batches to score a whole data set. Used in labs 06, 08.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    p = _as_preds(preds, labels, "preds").reshape(-1).long()
    t = labels.reshape(-1).long()
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    for name, v in (("labels", t), ("preds", p)):
        if v.numel() and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}) for num_classes={num_classes}, "
                             f"found values in [{v.min().item()}, {v.max().item()}]")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def pixel_accuracy(pred: Tensor, true: Tensor, *, ignore_index: int | None = None) -> float:
    """Share of correctly labelled pixels (Long et al. 2015, "pixel accuracy"). Used in lab 08."""
    p = _as_preds(pred, true, "pred")
    keep = torch.ones_like(true, dtype=torch.bool) if ignore_index is None else true != ignore_index
    n = keep.sum().item()
    if n == 0:
        raise ValueError(f"every pixel of true equals ignore_index={ignore_index}: nothing to score")
    return ((p == true) & keep).sum().item() / n


def segmentation_scores(confusion: Tensor) -> dict[str, float]:
    """Long et al. 2015's four scores from a confusion matrix (rows true, columns predicted).

    ``pixel_accuracy`` = sum n_ii / sum t_i; ``mean_accuracy`` = mean over classes of n_ii / t_i;
    ``mean_iou`` = mean of n_ii / (t_i + sum_j n_ji - n_ii); ``fw_iou`` weights IoU by t_i.
    Classes absent from both the truth and the prediction (0/0) are left out of the means;
    a class that is predicted but absent from the truth counts with IoU 0. Used in lab 08.
    """
    check_tensor(confusion, "confusion")
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square [K, K] matrix, got {tuple(confusion.shape)}")
    cm = confusion.double()
    total = cm.sum()
    if total == 0:
        raise ValueError("confusion is all zeros: nothing to score")
    diag, t, p = cm.diagonal(), cm.sum(1), cm.sum(0)
    union = t + p - diag
    present = t > 0
    iou_k = diag[union > 0] / union[union > 0]
    return {
        "pixel_accuracy": (diag.sum() / total).item(),
        "mean_accuracy": (diag[present] / t[present]).mean().item(),
        "mean_iou": iou_k.mean().item(),
        "fw_iou": ((t[union > 0] / total) * iou_k).sum().item(),
    }


def mean_accuracy(pred: Tensor, true: Tensor, num_classes: int, *, ignore_index: int | None = None) -> float:
    """Per-class pixel accuracy averaged over the classes present in ``true`` (Long et al. 2015). Lab 08."""
    return segmentation_scores(confusion_matrix(pred, true, num_classes, ignore_index=ignore_index))["mean_accuracy"]


def mean_iou(pred: Tensor, true: Tensor, num_classes: int | None = None, *,
             ignore_index: int | None = None) -> float:
    """Mean intersection over union.

    With ``num_classes``: Long et al. 2015's multi-class mean IU over all the pixels given
    (from their confusion matrix, not averaged per image; classes absent from both prediction
    and truth are left out). Used in lab 08. Without it, ``pred`` and ``true`` must be boolean
    masks ``[B, H, W]`` and the result is the mean over images of the binary :func:`iou` (two
    empty masks count 1). Used in lab 02.
    """
    if num_classes is None:
        if not (isinstance(pred, Tensor) and isinstance(true, Tensor)
                and pred.dtype == torch.bool and true.dtype == torch.bool):
            raise ValueError("mean_iou needs num_classes=K for class maps or scores; without it pred and true "
                             "must be boolean masks (binary IoU averaged over images)")
        return iou(pred, true, reduction="mean")
    return segmentation_scores(confusion_matrix(pred, true, num_classes, ignore_index=ignore_index))["mean_iou"]


def iou(pred_mask: Tensor, true_mask: Tensor, *, reduction: str = "none", empty: float = 1.0) -> Tensor | float:
    """Binary intersection over union per sample: ``|P & T| / |P | T|``; ``[B]`` or its mean.

    Two empty masks agree perfectly: their 0/0 is ``empty`` (default 1.0). Used in lab 02
    (saliency as weak segmentation) and lab 06.
    """
    _reduction(reduction)
    p, t = _as_masks(pred_mask, "pred_mask"), _as_masks(true_mask, "true_mask")
    _same_size(p, t)
    inter = (p & t).flatten(1).sum(1).double()
    union = (p | t).flatten(1).sum(1).double()
    out = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float(empty))).float()
    return out.mean().item() if reduction == "mean" else out


def _boundaries(labels: Tensor) -> Tensor:
    """Pixels with a 4-neighbour (inside the image) of another label: both sides of every edge."""
    b = torch.zeros_like(labels, dtype=torch.bool)
    dy = labels[:, 1:, :] != labels[:, :-1, :]
    dx = labels[:, :, 1:] != labels[:, :, :-1]
    b[:, 1:, :] |= dy
    b[:, :-1, :] |= dy
    b[:, :, 1:] |= dx
    b[:, :, :-1] |= dx
    return b


def _dilate(mask: Tensor, tolerance: int) -> Tensor:
    """Square dilation: pixels within chessboard distance ``tolerance`` of the mask."""
    if tolerance == 0:
        return mask
    k = 2 * tolerance + 1
    return F.max_pool2d(mask[:, None].float(), k, stride=1, padding=tolerance)[:, 0] > 0


def boundary_f1(pred: Tensor, true: Tensor, *, tolerance: int = 1, reduction: str = "none") -> Tensor | float:
    """Boundary F-score per image: how well the predicted segment edges match the true ones.

    A boundary pixel has a 4-neighbour with another label (both sides of an edge are marked).
    Precision = share of predicted boundary pixels within ``tolerance`` pixels (chessboard
    distance) of a true boundary pixel; recall the other way round; F1 = 2PR / (P + R). Two
    images without any boundary score 1; one without, 0. ``pred``/``true``: label maps or
    binary masks ``[B, H, W]`` (or scores ``[B, K, H, W]`` for ``pred``). In the spirit of
    Csurka et al. 2013's BF score; used in lab 08 to compare FCN-32s/16s/8s edges.
    """
    _reduction(reduction)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be an int >= 0 (pixels), got {tolerance!r}")
    check_tensor(true, "true")
    if true.dtype.is_floating_point:
        raise TypeError(f"true must be a label map or mask (integer or bool), got dtype {true.dtype}")
    t = (true.unsqueeze(0) if true.dim() == 2 else true).long()
    if t.dim() != 3:
        raise ValueError(f"true must be [B, H, W] (or one [H, W]), got {tuple(true.shape)}")
    p = check_tensor(pred, "pred")
    p = p.unsqueeze(0) if p.dim() == 2 else p
    p = _as_preds(p.long() if p.dtype == torch.bool else p, t, "pred")
    bp, bt = _boundaries(p.long()), _boundaries(t.long())
    n_p = bp.flatten(1).sum(1).double()
    n_t = bt.flatten(1).sum(1).double()
    hit_p = (bp & _dilate(bt, tolerance)).flatten(1).sum(1).double()
    hit_t = (bt & _dilate(bp, tolerance)).flatten(1).sum(1).double()
    precision = hit_p / n_p.clamp_min(1)
    recall = hit_t / n_t.clamp_min(1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12),
                     torch.zeros_like(precision))
    f1 = torch.where((n_p == 0) & (n_t == 0), torch.ones_like(f1), f1).float()
    return f1.mean().item() if reduction == "mean" else f1


# --------------------------------------------------------------------------- explanation quality
def _disk(radius: int, device: torch.device) -> Tensor:
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).float()


def pointing_game(maps: Tensor, masks: Tensor, *, tolerance: int = 0) -> tuple[float, Tensor]:
    """Zhang et al. 2016's pointing game: is the map's maximum on the object?

    A hit when the maximal point of the map lies in the mask or within ``tolerance`` pixels
    (Euclidean) of it; the paper uses 15 px on 224 px images. When several pixels tie for the
    maximum (e.g. an all-zero map) the sample counts as a hit only if all of them are on the
    (dilated) mask. Samples with an empty mask cannot be scored: they get ``False`` and are left
    out of the rate. Returns ``(hit_rate, hits [B] bool)``. Used in lab 06.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be an int >= 0 (pixels), got {tolerance!r}")
    m = _as_maps(maps)
    k = _as_masks(masks, "masks")
    _same_size(m, k)
    valid = k.flatten(1).any(1)
    if tolerance > 0:
        disk = _disk(tolerance, k.device)[None, None]
        k = F.conv2d(k[:, None].float(), disk, padding=tolerance)[:, 0] > 0.5
    flat = m.flatten(1)
    is_max = flat == flat.max(1, keepdim=True).values
    hits = (is_max & ~k.flatten(1)).sum(1) == 0
    hits = hits & valid
    n = int(valid.sum())
    rate = hits.sum().item() / n if n else float("nan")
    return rate, hits


def discriminative_pointing(maps: Tensor, masks: Tensor, other_masks: Tensor) -> tuple[float, Tensor]:
    """Does a class's map point at *its* object rather than at another object in the same image?

    A hit when the map's maximum over ``masks`` (the pixels of the explained class's object) is
    strictly greater than its maximum over ``other_masks`` (another object's pixels): a two-way
    pointing game, the class-discrimination test of Selvaraju et al. 2017 on two-object images
    scored without a human study. A map that ignores the class (the same map for both objects'
    classes) hits at most one of the two classes of an image, about 0.5 on average; ties (e.g. an
    all-zero map) are misses. Samples where either mask is empty are left out of the rate and get
    ``False``. Returns ``(hit_rate, hits [B] bool)``. Used in lab 06.
    """
    m = _as_maps(maps)
    own = _as_masks(masks, "masks")
    other = _as_masks(other_masks, "other_masks")
    _same_size(m, own)
    _same_size(m, other)
    if bool((own & other).any()):
        raise ValueError("masks and other_masks overlap; give the two objects' visible pixels, which are disjoint")
    flat = m.flatten(1)
    low = torch.finfo(flat.dtype).min
    on_own = flat.masked_fill(~own.flatten(1), low).max(1).values
    on_other = flat.masked_fill(~other.flatten(1), low).max(1).values
    valid = own.flatten(1).any(1) & other.flatten(1).any(1)
    hits = (on_own > on_other) & valid
    n = int(valid.sum())
    rate = hits.sum().item() / n if n else float("nan")
    return rate, hits


def _baseline(baseline: float | str | Tensor, images: Tensor, blur_sigma: float) -> Tensor:
    if isinstance(baseline, str):
        if baseline != "blur":
            raise ValueError(f"baseline must be a number, 'blur' or a tensor, got {baseline!r}")
        from .feature_vis import gaussian_blur

        return gaussian_blur(images, blur_sigma)
    if isinstance(baseline, Tensor):
        try:
            return torch.broadcast_to(baseline.to(images), images.shape)
        except RuntimeError:
            raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to the images "
                             f"{tuple(images.shape)}") from None
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(images, float(baseline))
    raise TypeError(f"baseline must be a number, 'blur' or a tensor, got {type(baseline).__name__}")


def _perturbation_curve(model: nn.Module, images: Tensor, maps: Tensor, target: int | Tensor | None,
                        steps: int, baseline: float | str | Tensor, blur_sigma: float, batch_size: int,
                        insert: bool) -> Tensor:
    from .hooks import preserve_state

    check_tensor(images, "images")
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    _same_device(model, images, "insertion_curve" if insert else "deletion_curve")
    b, c, h, w = images.shape
    m = _as_maps(maps)
    if m.shape != (b, h, w):
        raise ValueError(f"maps must be [B, H, W] = {(b, h, w)} like the images, got {tuple(m.shape)}; "
                         "upsample low-resolution maps first")
    x = images.detach()
    base = _baseline(baseline, x, blur_sigma).detach()
    order = torch.argsort(m.reshape(b, -1).to(x.device), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=x.device).expand(b, -1).contiguous())
    counts = torch.round(torch.arange(steps + 1, device=x.device, dtype=torch.float64) * (h * w) / steps).long()
    probs = torch.empty(b * (steps + 1), device=x.device)
    with preserve_state(model), torch.no_grad():
        model.eval()
        cls = _class_index(model(x), target, "insertion_curve" if insert else "deletion_curve")
        for start in range(0, b * (steps + 1), batch_size):
            idx = torch.arange(start, min(start + batch_size, b * (steps + 1)), device=x.device)
            i, s = idx // (steps + 1), idx % (steps + 1)
            changed = (rank[i] < counts[s][:, None]).reshape(-1, 1, h, w)
            batch = torch.where(changed, x[i], base[i]) if insert else torch.where(changed, base[i], x[i])
            out = model(batch)
            probs[idx] = out.float().softmax(1).gather(1, cls[i][:, None])[:, 0]
    return probs.reshape(b, steps + 1)


def deletion_curve(model: nn.Module, images: Tensor, maps: Tensor, *, target: int | Tensor | None = None,
                   steps: int = 50, baseline: float | str | Tensor = 0.0, blur_sigma: float = 5.0,
                   batch_size: int = 64) -> Tensor:
    """Petsiuk et al. 2018's deletion curve: target probability as the most salient pixels go.

    Pixels are ranked by ``maps`` (high first; ties in raster order) and replaced by
    ``baseline`` (0 = black, ``"blur"`` = a Gaussian blur of the image with ``blur_sigma``, or a
    tensor) in ``steps`` equal steps. Returns ``[B, steps + 1]`` softmax probabilities of
    ``target`` (None = the class predicted on the intact image), from the intact image to the
    fully deleted one. A good map makes the curve fall fast: small :func:`auc`. The model runs
    in eval mode without gradients (its mode is restored). Used in labs 02 and 06.
    """
    return _perturbation_curve(model, images, maps, target, steps, baseline, blur_sigma, batch_size, insert=False)


def insertion_curve(model: nn.Module, images: Tensor, maps: Tensor, *, target: int | Tensor | None = None,
                    steps: int = 50, baseline: float | str | Tensor = "blur", blur_sigma: float = 5.0,
                    batch_size: int = 64) -> Tensor:
    """Petsiuk et al. 2018's insertion curve: start from ``baseline`` (a blurred image by default)
    and put back the most salient pixels first; a good map makes it rise fast (large :func:`auc`).

    Same arguments and output as :func:`deletion_curve`. Used in labs 02 and 06.
    """
    return _perturbation_curve(model, images, maps, target, steps, baseline, blur_sigma, batch_size, insert=True)


def auc(curve: Tensor) -> Tensor | float:
    """Trapezoidal area under equally spaced curve points on x in [0, 1] (so in [0, 1] for
    probabilities): a float for a 1-D curve, ``[B]`` for ``[B, n]`` curves. Petsiuk et al. 2018.
    """
    check_tensor(curve, "curve")
    if curve.dim() not in (1, 2) or curve.shape[-1] < 2:
        raise ValueError(f"curve must be [n] or [B, n] with n >= 2 points, got {tuple(curve.shape)}")
    c = curve.double()
    n = c.shape[-1] - 1
    area = (c.sum(-1) - 0.5 * (c[..., 0] + c[..., -1])) / n
    return area.item() if curve.dim() == 1 else area.float()


def _ranks(x: Tensor) -> Tensor:
    """Ranks 1..n of a 1-D tensor, ties sharing their average rank (as scipy.stats.rankdata)."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return (ends - (counts.double() - 1) / 2)[inverse]


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = a.norm() * b.norm()
    return float("nan") if den == 0 else (a @ b / den).item()


def spearman(a: Tensor, b: Tensor, *, per_sample: bool = False) -> float | Tensor:
    """Spearman rank correlation (Pearson correlation of average ranks, as scipy's ``spearmanr``).

    Both tensors are flattened; with ``per_sample=True`` the first dimension is a batch and a
    tensor ``[B]`` is returned. A constant input gives NaN (the correlation is undefined). Used in
    lab 02 (sanity checks, Adebayo et al. 2018).
    """
    check_tensor(a, "a")
    check_tensor(b, "b")
    if per_sample:
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"a and b must have the same batch size, got {a.shape[0]} and {b.shape[0]}")
        return torch.tensor([spearman(x, y) for x, y in zip(a, b)], dtype=torch.float32)
    if a.numel() != b.numel() or a.numel() < 2:
        raise ValueError(f"a and b must have the same number (>= 2) of elements, got {a.numel()} and {b.numel()}")
    return _pearson(_ranks(a.detach().reshape(-1)), _ranks(b.detach().reshape(-1).to(a.device)))


def _default_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules()
            if name and not list(m.children()) and any(True for _ in m.parameters(recurse=False))]


def cascading_randomization(model: nn.Module, explainer: Callable[..., Tensor], images: Tensor, *,
                            target: int | Tensor | None = None, layers: list[str] | None = None,
                            seed: int = 0) -> dict[str, Tensor]:
    """The maps of Adebayo et al. 2018's cascading model randomization, stage by stage.

    ``explainer(model, images, target=...)`` returns maps (e.g. ``lk.saliency``). On a deep copy
    of ``model`` (the caller's model is never touched) the layers are re-initialized one after
    the other from the top (output) down, cumulatively, with their ``reset_parameters`` under
    ``torch.manual_seed(seed + i)`` for the i-th; the maps are computed before and after each.
    ``target`` None = the class the intact model predicts, kept fixed. ``layers`` (names, default:
    every leaf module that has parameters) are taken in the model's forward order and randomized
    from the last. Returns ``{"original": maps, layer: maps, ...}`` in randomization order. Lab 02
    (the figure of maps per stage; :func:`randomization_test` gives their rank correlations).
    """
    from .hooks import get_layer, preserve_state

    check_tensor(images, "images")
    _same_device(model, images, "cascading_randomization")
    if not callable(explainer):
        raise TypeError(f"explainer must be a callable explainer(model, images, target=...), got {explainer!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    work = copy.deepcopy(model)
    names = [n for n, _ in work.named_modules()]
    if layers is None:
        chosen = _default_layers(work)
    else:
        if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
            raise TypeError(f"layers must be a list of layer names, got {layers!r}")
        for n in layers:
            get_layer(work, n)  # raises ValueError listing the valid names
        chosen = sorted(set(layers), key=names.index)
    if not chosen:
        raise ValueError("the model has no layer with parameters to randomize; pass layers=[...]")
    with preserve_state(work), torch.no_grad():
        work.eval()
        tgt = _class_index(work(images), target, "cascading_randomization")
    device = next(work.parameters()).device
    maps = {"original": explainer(work, images, target=tgt).detach()}
    for i, name in enumerate(reversed(chosen)):
        resettable = [m for m in get_layer(work, name).modules() if hasattr(m, "reset_parameters")]
        if not resettable:
            raise ValueError(f"layer {name!r} has no reset_parameters(); choose layers made of standard modules")
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed + i)
            for m in resettable:
                m.reset_parameters()
        maps[name] = explainer(work, images, target=tgt).detach()
    return maps


def randomization_test(model: nn.Module, explainer: Callable[..., Tensor], images: Tensor, *,
                       target: int | Tensor | None = None, layers: list[str] | None = None, seed: int = 0,
                       absolute: bool = True) -> dict[str, float]:
    """Adebayo et al. 2018's cascading model-randomization sanity check.

    The maps of :func:`cascading_randomization` after each stage are compared with the original
    maps by Spearman rank correlation (of absolute values when ``absolute``, the paper's main
    variant), averaged over the images. A map that does not change while the weights it should
    explain are destroyed fails the check. A constant map (no ranking) counts as correlation 0.
    Returns ``{layer name: mean rank correlation}`` in randomization order. Used in lab 02.
    """
    maps = cascading_randomization(model, explainer, images, target=target, layers=layers, seed=seed)

    def flat(m: Tensor) -> Tensor:
        m = m.float().reshape(len(images), -1)
        return m.abs() if absolute else m

    original = flat(maps.pop("original"))
    result: dict[str, float] = {}
    for name, now in maps.items():
        rho = [spearman(o, n) for o, n in zip(original, flat(now))]
        result[name] = sum(0.0 if math.isnan(r) else r for r in rho) / len(rho)
    return result


# --------------------------------------------------------------------------- images and masks
def psnr(a: Tensor, b: Tensor, *, data_range: float = 1.0, reduction: str = "mean") -> Tensor | float:
    """Peak signal-to-noise ratio 10 log10(range^2 / MSE) in dB (inf for identical images).

    4-D inputs are batches ``[B, C, H, W]`` scored per image (``reduction="none"`` gives ``[B]``,
    ``"mean"`` their mean); anything else is one image. Used in lab 07 (reconstructions).
    """
    _reduction(reduction)
    check_tensor(a, "a")
    check_tensor(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0 (1.0 for images in [0, 1], 255 for bytes), got {data_range!r}")
    a2 = a.detach().double().reshape(a.shape[0] if a.dim() == 4 else 1, -1)
    b2 = b.detach().double().reshape(a2.shape)
    mse = ((a2 - b2) ** 2).mean(1)
    out = (10 * torch.log10(data_range**2 / mse)).float()  # mse 0 -> inf
    return out.mean().item() if reduction == "mean" else out


def mask_share(maps: Tensor, masks: Tensor) -> Tensor:
    """Share of each map's total absolute attribution that falls inside the mask, ``[B]``.

    ``maps`` ``[B, H, W]`` or ``[B, C, H, W]`` (absolute values summed over channels). A map with
    no attribution at all (0/0) gets 0. Used for the spurious-cue share in labs 02 and 06.
    """
    m = _as_maps(maps, reduce_channels=True).abs()
    k = _as_masks(masks, "masks")
    _same_size(m, k)
    total = m.flatten(1).sum(1).double()
    inside = (m * k).flatten(1).sum(1).double()
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.zeros_like(total)).float()


def top_pixel_share(maps: Tensor, masks: Tensor, *, k: int | None = None) -> Tensor:
    """Share of each map's ``k`` highest pixels that lie inside the mask, ``[B]``.

    Where :func:`mask_share` measures the attribution *mass* on a region, this measures where a
    map's peak is, which is what a reader of a heat map sees: with ``k`` equal to the region's
    size (the default: each image's own mask size) it is 1 when the brightest pixels are exactly
    the region, and the region's area fraction for a map that ignores it (in expectation, for a
    random map). ``maps`` ``[B, H, W]`` or ``[B, C, H, W]`` (absolute values summed over
    channels); ties are broken by position, as in :func:`threshold_mask`; an image with an empty
    mask and ``k=None`` gets 0. Used for the spurious-cue experiment in lab 02.
    """
    m = _as_maps(maps, reduce_channels=True).abs()
    region = _as_masks(masks, "masks")
    _same_size(m, region)
    b = m.shape[0]
    flat, inside = m.reshape(b, -1), region.reshape(b, -1)
    n_pix = flat.shape[1]
    if k is None:
        ks = inside.sum(1)
    else:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int (a number of pixels) or None (the mask's size), got {k!r}")
        if not 1 <= k <= n_pix:
            raise ValueError(f"k must lie in 1..{n_pix} (the pixels of one map), got {k}; use k=None for the "
                             "mask's own size")
        ks = torch.full((b,), k, dtype=torch.long, device=flat.device)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    hits = inside.gather(1, order).float()
    rank = torch.arange(n_pix, device=flat.device).expand(b, -1)
    top = (rank < ks[:, None]).float()
    counted = (hits * top).sum(1)
    return torch.where(ks > 0, counted / ks.clamp_min(1).float(), torch.zeros_like(counted))


def threshold_mask(maps: Tensor, *, fraction: float | None = None, quantile: float | None = None) -> Tensor:
    """Weak segmentation from a saliency map: a boolean mask ``[B, H, W]`` per image.

    ``fraction=f`` keeps exactly round(f * H * W) highest pixels of each image (ties broken by
    position); ``quantile=q`` keeps the pixels >= the image's q-quantile. Give exactly one.
    Used in lab 02 (saliency as segmentation, scored with :func:`iou`).
    """
    m = _as_maps(maps)
    if (fraction is None) == (quantile is None):
        raise ValueError("give exactly one of fraction= (e.g. 0.1 keeps the top 10 % of pixels) or quantile=")
    b, h, w = m.shape
    flat = m.reshape(b, -1)
    if fraction is not None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}")
        k = int(round(fraction * h * w))
        out = torch.zeros_like(flat, dtype=torch.bool)
        if k > 0:
            order = torch.argsort(flat, dim=1, descending=True, stable=True)[:, :k]
            out.scatter_(1, order, True)
        return out.reshape(b, h, w)
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must lie in [0, 1], got {quantile!r}")
    q = torch.quantile(flat.float(), float(quantile), dim=1, keepdim=True)
    return (flat >= q).reshape(b, h, w)


# --------------------------------------------------------------------------- generative models: Frechet distance, class coverage (lab 10)
def _feature_rows(x: object, name: str, fn: str) -> Tensor:
    if not isinstance(x, Tensor):
        try:
            import numpy as np

            if isinstance(x, np.ndarray):
                x = torch.from_numpy(x)
        except ImportError:  # pragma: no cover
            pass
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor of features [N, D], got {type(x).__name__}")
    if x.dim() != 2 or len(x) < 2:
        raise ValueError(f"{fn}: {name} must be [N, D] with N >= 2 samples (one row each), got shape {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{fn}: {name} holds NaN or infinite values")
    return x


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased, N - 1) of ``features [N, D]``, in float64. Lab 10."""
    f = _feature_rows(features, "features", "feature_statistics")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (len(f) - 1)


def _sqrt_psd(m: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def gaussian_frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """Squared Frechet (2-Wasserstein) distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``:

    ``|mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2))`` (Dowson & Landau 1982; the FID of
    Heusel et al. 2017). The trace of the matrix square root is computed as the sum of the square
    roots of the eigenvalues of ``cov1^(1/2) cov2 cov1^(1/2)`` (symmetric, positive semi-definite),
    which stays real and stable for the singular covariances of small samples. Lab 10.
    """
    fn = "gaussian_frechet_distance"
    tensors = []
    for name, t in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a tensor, got {type(t).__name__}")
        tensors.append(t.detach().to("cpu", torch.float64))
    mu1, cov1, mu2, cov2 = tensors
    d = mu1.numel()
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"{fn}: expected means [D] and covariances [D, D] of one D, got {tuple(mu1.shape)}, "
                         f"{tuple(cov1.shape)}, {tuple(mu2.shape)}, {tuple(cov2.shape)}")
    root1 = _sqrt_psd(cov1)
    middle = root1 @ cov2 @ root1
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * tr_sqrt
    return max(float(value), 0.0)


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``[N_a, D]`` and ``[N_b, D]``.

    With the features of a fixed network this is the FID of Heusel et al. (2017): 0 for identical
    sets, growing when the means move apart or the spreads differ. It is biased upwards for small
    samples, so compare values computed with the same sample sizes (lab 10 reports a real-vs-real
    baseline). Lab 10.
    """
    fn = "frechet_distance"
    a = _feature_rows(feats_a, "feats_a", fn)
    b = _feature_rows(feats_b, "feats_b", fn)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{fn}: feats_a has {a.shape[1]} features per row but feats_b has {b.shape[1]}; "
                         "extract both at the same layer")
    return gaussian_frechet_distance(*feature_statistics(a), *feature_statistics(b))


def classifier_fid(classifier: nn.Module, images_a: Tensor, images_b: Tensor, *, layer: str,
                   batch_size: int = 500) -> float:
    """FID between two image sets in the feature space of ``classifier`` at ``layer``.

    Heusel et al. (2017) use Inception-v3's pool features on ImageNet-like images; for 28x28
    digits a small classifier trained on the real digits plays that role (e.g. ``layer=
    "classifier.2"``, the penultimate ReLU of ``lk.get_model("digit_cnn")``). Features come from
    ``lk.extract_features`` (eval mode, restored). Lab 10.
    """
    fn = "classifier_fid"
    if not isinstance(classifier, nn.Module):
        raise TypeError(f"{fn}: classifier must be an nn.Module, got {type(classifier).__name__}")
    for name, t in (("images_a", images_a), ("images_b", images_b)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{fn}: {name} must be an [N, C, H, W] image tensor, got {got}")
    fa, _ = extract_features(classifier, images_a, layer, batch_size=batch_size)
    fb, _ = extract_features(classifier, images_b, layer, batch_size=batch_size)
    return frechet_distance(fa, fb)


# --------------------------------------------------------------------------- mode collapse
def class_histogram(classifier: nn.Module, images: Tensor, *, num_classes: int | None = None,
                    batch_size: int = 500) -> Tensor:
    """How many of ``images`` the classifier assigns to each class: int64 counts ``[K]``.

    ``K`` is ``num_classes`` or the classifier's number of outputs. A GAN that covers the data
    gives roughly the data's class proportions; a collapsed one piles its samples on a few
    classes (Salimans et al. 2016 discuss this "mode collapse"). Lab 10.
    """
    fn = "class_histogram"
    if not isinstance(classifier, nn.Module):
        raise TypeError(f"{fn}: classifier must be an nn.Module, got {type(classifier).__name__}")
    if not isinstance(images, Tensor) or images.dim() != 4 or len(images) == 0:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{fn}: images must be a non-empty [N, C, H, W] tensor, got {got}")
    logits = predict(classifier, images, batch_size=check_int(batch_size, "batch_size", fn, low=1))
    k = logits.shape[1] if num_classes is None else check_int(num_classes, "num_classes", fn, low=1)
    if k < logits.shape[1]:
        raise ValueError(f"{fn}: num_classes={k} but the classifier has {logits.shape[1]} outputs")
    return torch.bincount(logits.argmax(1), minlength=k)


def class_coverage(counts: Tensor, *, min_share: float | None = None) -> float:
    """Share of the classes that hold at least ``min_share`` of the samples, from a class histogram.

    ``counts``: the ``[K]`` histogram of :func:`class_histogram`. ``min_share`` defaults to a
    quarter of the uniform share, ``0.25 / K`` (25 of 1,000 samples for 10 classes), so that a
    handful of stray samples does not count as covering a class. 1.0: every class is produced;
    0.1 of 10 classes: the generator collapsed onto one. Lab 10.
    """
    fn = "class_coverage"
    if not isinstance(counts, Tensor) or counts.dim() != 1 or len(counts) == 0:
        got = tuple(counts.shape) if isinstance(counts, Tensor) else type(counts).__name__
        raise ValueError(f"{fn}: counts must be a 1-D histogram [K] (see class_histogram), got {got}")
    counts = counts.detach().to("cpu", torch.float64)
    if bool((counts < 0).any()) or float(counts.sum()) <= 0:
        raise ValueError(f"{fn}: counts must be non-negative with a positive total")
    k = len(counts)
    if min_share is None:
        min_share = 0.25 / k
    if isinstance(min_share, bool) or not isinstance(min_share, (int, float)) or not 0 <= min_share <= 1:
        raise ValueError(f"{fn}: min_share must be a fraction in [0, 1], got {min_share!r}")
    shares = counts / counts.sum()
    return float((shares >= min_share).double().mean()) if min_share > 0 else float((counts > 0).double().mean())


# --------------------------------------------------------------------------- baselines

def centered_gaussian_maps(n: int, size: int | tuple[int, int], *, sigma: float | None = None) -> Tensor:
    """``n`` copies of a centred isotropic Gaussian ``[n, H, W]`` (peak 1 at the image centre).

    The "centre prior" baseline of weak segmentation: thresholding it keeps a centred disc, so
    a method must beat it to show that it *locates* objects. ``sigma`` defaults to a quarter of
    the smaller side (with a top-fraction threshold only the ranking matters, so any sigma
    gives the same disc). Used in lab 02.
    """
    if not is_int(n) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if is_int(size):
        h = w = size
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(is_int(s) for s in size):
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
