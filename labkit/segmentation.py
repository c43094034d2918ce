"""Semantic segmentation helpers of lab 08 (FCN, Long, Shelhamer & Darrell 2015).

- :func:`train_segmentation`: per-pixel cross-entropy training of a dense model (an ``lk``
  :class:`~labkit.models.segmentation.FCN`, or any model returning ``[B, K, H, W]`` scores); with
  ``freeze_encoder=True`` the encoder's features are computed once and only the head is trained.
- :func:`predict_segmentation`, :func:`evaluate_segmentation`: label maps and the paper's scores
  (pixel accuracy, mean accuracy, mean IU, frequency-weighted IU) from one confusion matrix over
  the whole set, plus the boundary F1 score of ``lk.boundary_f1`` and the per-class IoU.
- area Grad-CAM / saliency of a segment: ``target=lk.segment_target(k, region)`` (the explainers'
  targets live in :mod:`labkit.attribution`).
- :func:`label_to_rgb`: colour a label map for display. The real-data mode's scenes on photographs
  (``lk.photo_scenes``) live with the other data sets, in labkit.datasets.real.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_int
from .device import resolve_device
from .hooks import eval_mode
from .models.segmentation import (FCN, EfficientNetEncoder, EncoderClassifier, ResNetEncoder, TorchvisionEncoder,
                                  VGGEncoder, bilinear_kernel, bilinear_upsampler)
from .metrics import boundary_f1, confusion_matrix, segmentation_scores
from .progress import EpochProgress
from .training import Curves, run_epochs, to_training_device

__all__ = ["SegHistory", "train_segmentation", "predict_segmentation", "evaluate_segmentation",
           "label_to_rgb", "per_class_iou", "SEGMENTATION_PALETTE",
           # the models (defined in labkit.models.segmentation), re-exported as lk.FCN, lk.bilinear_kernel, ...
           "FCN", "VGGEncoder", "ResNetEncoder", "TorchvisionEncoder", "EfficientNetEncoder", "EncoderClassifier",
           "bilinear_kernel", "bilinear_upsampler"]

#: Colours of the label maps: background black, then one colour per class (cycled beyond 12).
SEGMENTATION_PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 0.0), (0.90, 0.10, 0.10), (0.10, 0.70, 0.10), (0.15, 0.35, 0.95), (0.95, 0.80, 0.10),
    (0.85, 0.20, 0.85), (0.10, 0.80, 0.85), (0.95, 0.55, 0.10), (0.55, 0.35, 0.15), (0.60, 0.60, 0.60),
    (0.55, 0.85, 0.45), (0.45, 0.20, 0.60),
)


@dataclass
class SegHistory(Curves):
    """Per-epoch curves of :func:`train_segmentation` (validation scores when ``val`` is given)."""

    _DEFAULT_LAST = "val_mean_iou"

    train_loss: list[float] = field(default_factory=list)
    val_pixel_accuracy: list[float] = field(default_factory=list)
    val_mean_iou: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- argument checks
def _images_masks(data: Any, name: str) -> tuple[Tensor, Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, masks = data
    elif hasattr(data, "images") and hasattr(data, "masks"):
        images, masks = data.images, data.masks
    else:
        raise TypeError(f"{name} must be an ImageSet with class masks (e.g. lk.scenes(...)) or an (images, masks) pair, "
                        f"got {type(data).__name__}")
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"{name}: images must be a [N, C, H, W] tensor, got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    if not isinstance(masks, Tensor) or masks.dtype.is_floating_point or masks.dtype == torch.bool:
        raise TypeError(f"{name}: masks must be an int64 label map [N, H, W] (0 = background), "
                        f"got {getattr(masks, 'dtype', type(masks).__name__)}")
    if masks.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"{name}: masks must be [N, H, W] = {(images.shape[0], *images.shape[2:])}, "
                         f"got {tuple(masks.shape)}")
    return images, masks.long()


def _num_classes(model: nn.Module, masks: Tensor, num_classes: int | None) -> int:
    if num_classes is not None:
        return check_int(num_classes, "num_classes", low=1)
    k = getattr(model, "num_classes", None)
    if isinstance(k, int):
        return k
    return int(masks.max()) + 1


# --------------------------------------------------------------------------- training
def train_segmentation(model: nn.Module, train: Any, val: Any = None, *, epochs: int, lr: float = 1e-3,
                       batch_size: int = 32, weight_decay: float = 0.0, freeze_encoder: bool = True,
                       scheduler: str | None = "cosine", class_weights: Tensor | None = None,
                       device: torch.device | str | None = None, seed: int = 0, desc: str = "") -> SegHistory:
    """Train a dense classifier with the per-pixel cross-entropy (Adam); returns a :class:`SegHistory`.

    ``train`` / ``val``: ImageSets with int64 class masks (``lk.scenes``) or ``(images, masks)``.
    ``freeze_encoder=True`` (needs ``model.encoder`` and ``model.decode``, as in ``lk``'s FCN)
    trains only the head: the encoder runs once, in eval mode, and its features are cached, which
    makes a head's epoch cost almost nothing; the encoder's ``requires_grad`` flags are restored
    afterwards. ``False`` fine-tunes everything, as the paper does. ``scheduler="cosine"`` anneals
    the rate to 0. Seeded in a forked RNG (the same call gives the same model; the caller's RNG is
    left alone). The model ends in eval mode. Used in lab 08.
    """
    check_int(epochs, "epochs", low=0)
    check_int(batch_size, "batch_size", low=1)
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive float, got {lr!r}")
    if scheduler not in (None, "cosine"):
        raise ValueError(f"scheduler must be None or 'cosine', got {scheduler!r}")
    if not isinstance(freeze_encoder, bool):
        raise TypeError(f"freeze_encoder must be True or False, got {freeze_encoder!r}")
    if freeze_encoder and not (hasattr(model, "encoder") and hasattr(model, "decode")):
        raise ValueError("freeze_encoder=True needs a model with .encoder and .decode(features) (an lk FCN); "
                         "pass freeze_encoder=False to train the whole model")
    images, masks = _images_masks(train, "train")
    dev = to_training_device(device, model)
    weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32, device=dev)
    history = SegHistory()
    saved_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            inputs = val_inputs = None
            if val is not None:
                val_images, val_masks = _images_masks(val, "val")
                k = _num_classes(model, masks, None)
            if freeze_encoder:
                for p in model.encoder.parameters():
                    p.requires_grad_(False)
                inputs = _encode(model, images, dev)
                if val is not None:
                    val_inputs = _encode(model, val_images, dev)
            params = [p for p in model.parameters() if p.requires_grad]
            if not params:
                raise ValueError("the model has no trainable parameters")
            opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
            n = images.shape[0]
            steps = epochs * ((n + batch_size - 1) // batch_size)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps)) if scheduler else None
            gen = torch.Generator().manual_seed(seed)
            h, w = images.shape[-2:]

            def one_epoch(epoch: int, progress: EpochProgress) -> str:
                if freeze_encoder:
                    model.encoder.eval()  # batch-norm statistics of the pretrained encoder stay fixed
                order = torch.randperm(n, generator=gen)
                loss_sum = 0.0
                for start in range(0, n, batch_size):
                    idx = order[start:start + batch_size]
                    y = masks[idx].to(dev)
                    if freeze_encoder:
                        out = model.decode([f[idx].to(dev) for f in inputs])[..., :h, :w]
                    else:
                        out = model(images[idx].to(dev))
                    loss = F.cross_entropy(out, y, weight=weights)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    loss_sum += float(loss.detach()) * len(idx)
                history.train_loss.append(loss_sum / n)
                line = f"train loss {history.train_loss[-1]:.3f}"
                if val is None:
                    return line
                scores = _val_scores(model, val_images, val_masks, val_inputs, k, dev)
                history.val_pixel_accuracy.append(scores["pixel_accuracy"])
                history.val_mean_iou.append(scores["mean_iou"])
                return line + f" | val pixel acc {scores['pixel_accuracy']:.3f} mean IoU {scores['mean_iou']:.3f}"

            run_epochs([model], epochs, one_epoch, history=history, desc=desc, default_desc="segmentation")
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved_flags.get(name, p.requires_grad))
        model.eval()
    return history


def _val_scores(model: nn.Module, images: Tensor, masks: Tensor, features: list[Tensor] | None, k: int,
                dev: torch.device) -> dict[str, Any]:
    """Pixel accuracy and mean IoU on the validation set: the head on the cached encoder
    ``features`` when the encoder is frozen, else the whole model."""
    if features is not None:
        pred = _decode_labels(model, features, images.shape[-2:], dev)
        return segmentation_scores(confusion_matrix(pred, masks, k))
    return evaluate_segmentation(model, (images, masks), num_classes=k, device=dev, boundary=False)


@torch.no_grad()
def _encode(model: nn.Module, images: Tensor, dev: torch.device, batch_size: int = 128) -> list[Tensor]:
    """The encoder's features of all images (padded to multiples of 32), eval mode, on the CPU."""
    with eval_mode(model.encoder):
        h, w = images.shape[-2:]
        ph, pw = (-h) % 32, (-w) % 32
        chunks: list[list[Tensor]] = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(dev)
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph))
            chunks.append([f.cpu() for f in model.encoder(x)])
    return [torch.cat(parts) for parts in zip(*chunks)]


@torch.no_grad()
def _decode_labels(model: nn.Module, features: list[Tensor], size: Sequence[int], dev: torch.device,
                   batch_size: int = 128) -> Tensor:
    with eval_mode(model):
        h, w = size
        out = [model.decode([f[s:s + batch_size].to(dev) for f in features])[..., :h, :w].argmax(1).cpu()
               for s in range(0, features[0].shape[0], batch_size)]
    return torch.cat(out)


# --------------------------------------------------------------------------- prediction and scores
@torch.no_grad()
def predict_segmentation(model: nn.Module, images: Tensor, *, batch_size: int = 64,
                         device: torch.device | str | None = None, scores: bool = False) -> Tensor:
    """Label maps ``[N, H, W]`` (int64, on the CPU) of a dense model, or its scores ``[N, K, H, W]``
    with ``scores=True``. Eval mode for the call (the mode is restored). Used in lab 08."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a [N, C, H, W] tensor, got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    check_int(batch_size, "batch_size", low=1)
    dev = resolve_device(device, model, trains=False)
    outs = []
    with eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            out = model(images[start:start + batch_size].to(dev)).float()
            outs.append(out.cpu() if scores else out.argmax(1).cpu())
    return torch.cat(outs)


def per_class_iou(confusion: Tensor) -> Tensor:
    """IoU of each class ``[K]`` from a confusion matrix (rows true); NaN for a class absent from
    both the truth and the prediction. Used in lab 08."""
    if not isinstance(confusion, Tensor) or confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError("confusion must be a square [K, K] tensor (see lk.confusion_matrix)")
    cm = confusion.double()
    diag = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - diag
    return torch.where(union > 0, diag / union.clamp_min(1), torch.full_like(diag, float("nan"))).float()


def evaluate_segmentation(model: nn.Module, data: Any, *, num_classes: int | None = None, batch_size: int = 64,
                          tolerance: int = 1, boundary: bool = True,
                          device: torch.device | str | None = None) -> dict[str, Any]:
    """Long et al. 2015's scores of ``model`` on ``data`` (one confusion matrix over all pixels).

    Returns ``pixel_accuracy``, ``mean_accuracy``, ``mean_iou``, ``fw_iou``, ``class_iou`` (``[K]``),
    ``confusion`` and, with ``boundary=True``, ``boundary_f1`` (mean over images of
    ``lk.boundary_f1`` with ``tolerance`` pixels). Used in lab 08.
    """
    images, masks = _images_masks(data, "data")
    k = _num_classes(model, masks, num_classes)
    pred = predict_segmentation(model, images, batch_size=batch_size, device=device)
    cm = confusion_matrix(pred, masks, k)
    out: dict[str, Any] = dict(segmentation_scores(cm))
    out["class_iou"] = per_class_iou(cm)
    out["confusion"] = cm
    if boundary:
        out["boundary_f1"] = boundary_f1(pred, masks, tolerance=tolerance, reduction="mean")
    return out




# --------------------------------------------------------------------------- display and data
def label_to_rgb(labels: Tensor, *, palette: Sequence[Sequence[float]] = SEGMENTATION_PALETTE) -> Tensor:
    """RGB images ``[N, 3, H, W]`` (or ``[3, H, W]``) of label maps, coloured by ``palette``. Lab 08."""
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dim() not in (2, 3):
        raise ValueError("labels must be an integer label map [H, W] or [N, H, W]")
    pal = torch.tensor([list(c) for c in palette], dtype=torch.float32)
    rgb = pal[labels.long().cpu() % len(pal)]  # [..., H, W, 3]
    return rgb.movedim(-1, -3).contiguous()
