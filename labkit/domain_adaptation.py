"""Unsupervised domain adaptation with DANN (Ganin & Lempitsky 2015; Ganin et al. 2016). Lab 09.

- :func:`lambda_schedule` and :func:`lr_schedule`: the paper's schedules of the adaptation
  factor, ``2 / (1 + exp(-gamma p)) - 1``, and of the learning rate, ``mu0 / (1 + alpha p)^beta``,
  with ``p`` the training progress from 0 to 1.
- :func:`train_dann`: one training loop for every variant of the lab: ``"dann"`` (GRL with the
  lambda schedule), ``"fixed"`` (GRL with a constant lambda), ``"no_grl"`` (the domain loss
  minimized by the features too) and ``"source_only"`` (the features never see the domain loss).
- :func:`domain_accuracy`, :func:`pseudo_label` and :func:`self_train` (the pseudo-labelling
  extension: confident target predictions used as labels).

The gradient reversal layer (:func:`grad_reverse`) and the network (:class:`DANN`, also
``lk.get_model("dann")``) live in ``labkit/models/dann.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_int, check_number
from .datasets.base import images_labels
from .device import autocast, resolve_device, to_device
from .hooks import eval_mode
from .models.dann import DANN, GradientReversal, GradientReversalFunction, grad_reverse
from .reproducibility import make_generator
from .progress import EpochProgress
from .training import Curves, run_epochs, to_training_device

__all__ = ["MODES", "lambda_schedule", "lr_schedule", "DANNHistory", "train_dann", "domain_accuracy",
           "pseudo_label", "self_train", "grad_reverse", "GradientReversal", "GradientReversalFunction", "DANN"]

MODES = ("dann", "fixed", "no_grl", "source_only")


# --------------------------------------------------------------------------- schedules
def _check_progress(p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"p must be a number (training progress in [0, 1]), got {type(p).__name__} ({p!r})")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p is the training progress and must be in [0, 1], got {p}")
    return float(p)


def lambda_schedule(p: float, *, gamma: float = 10.0) -> float:
    """Adaptation factor ``2 / (1 + exp(-gamma * p)) - 1``: 0 at ``p = 0``, close to 1 at the end.

    Ganin & Lempitsky (2015), section 5 (gamma = 10): the domain classifier's noisy early signal
    is suppressed while the features are still random. Used in lab 09.
    """
    p = _check_progress(p)
    gamma = check_number(gamma, "gamma", low=0.0, strict=True)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


def lr_schedule(p: float, *, lr0: float = 0.01, alpha: float = 10.0, beta: float = 0.75) -> float:
    """Annealed learning rate ``lr0 / (1 + alpha * p) ** beta`` (Ganin & Lempitsky 2015, section 5).

    With the paper's ``alpha = 10``, ``beta = 0.75`` the rate falls to about 0.17 ``lr0`` at the end.
    Used in lab 09.
    """
    p = _check_progress(p)
    lr0 = check_number(lr0, "lr0", low=0.0, strict=True)
    alpha = check_number(alpha, "alpha", low=0.0)
    beta = check_number(beta, "beta", low=0.0)
    return lr0 / (1.0 + alpha * p) ** beta


# --------------------------------------------------------------------------- history
@dataclass
class DANNHistory(Curves):
    """Per-epoch curves of one :func:`train_dann` run (accuracies on the validation sets given).

    ``domain_acc`` is the domain classifier's balanced accuracy on the held-out source and target
    images (0.5 = the domains are indistinguishable to it); ``train_domain_acc`` the same on the
    training batches. ``coeff`` is the GRL factor at the end of each epoch (negative = no reversal).
    ``diverged_step`` is the step whose loss was not finite (training stopped there), else None.
    """

    _EPOCH_KEY = "label_loss"
    _DEFAULT_LAST = "target_acc"
    _EMPTY_HINT = "was the matching validation set given?"

    mode: str = "dann"
    source_acc: list[float] = field(default_factory=list)
    target_acc: list[float] = field(default_factory=list)
    domain_acc: list[float] = field(default_factory=list)
    label_loss: list[float] = field(default_factory=list)
    domain_loss: list[float] = field(default_factory=list)
    train_domain_acc: list[float] = field(default_factory=list)
    coeff: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    diverged_step: int | None = None


# --------------------------------------------------------------------------- data helpers
def _check_dann_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module) or not all(
            hasattr(model, a) for a in ("features", "classifier", "domain_classifier")):
        raise TypeError("model must be a DANN-like nn.Module with .features, .classifier and .domain_classifier "
                        f"(e.g. lk.get_model('dann')), got {type(model).__name__}")
    return model


class _Batches:
    """Endless mini-batches of row indices: a fresh seeded permutation for every pass."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.gen = n, batch_size, generator
        self.perm, self.pos = torch.randperm(n, generator=generator), 0

    def next(self) -> Tensor:
        if self.pos + self.batch_size > self.n:
            if self.batch_size >= self.n:  # a tiny data set: one (smaller) batch of everything
                return torch.randperm(self.n, generator=self.gen)
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx


@torch.no_grad()
def _features(model: nn.Module, x: Tensor, device: torch.device, batch_size: int) -> Tensor:
    outs = []
    for i in range(0, len(x), batch_size):
        with autocast(device):
            outs.append(model.features(to_device(x[i:i + batch_size], device)).float())
    return torch.cat(outs)


@torch.no_grad()
def _label_accuracy(model: nn.Module, x: Tensor, y: Tensor, device: torch.device, batch_size: int) -> float:
    correct = 0
    for i in range(0, len(x), batch_size):
        with autocast(device):
            out = model(to_device(x[i:i + batch_size], device))
        correct += int((out.argmax(1).cpu() == y[i:i + batch_size]).sum())
    return correct / len(x)


def domain_accuracy(model: nn.Module, source: Any, target: Any, *, device: torch.device | str | None = None,
                    batch_size: int = 256) -> float:
    """Balanced accuracy of the model's domain classifier: mean of its source and target accuracies.

    Source images should get a negative domain logit, target images a positive one; 0.5 means the
    domain classifier cannot tell the domains apart (Ganin & Lempitsky 2015). The model's mode is
    restored; NaN when the network produces non-finite logits. Used in lab 09.
    """
    model = _check_dann_model(model)
    fn = "domain_accuracy"
    xs, _ = images_labels(source, fn, "source", labels="ignored")
    xt, _ = images_labels(target, fn, "target", labels="ignored")
    batch_size = check_int(batch_size, "batch_size", low=1)
    device = resolve_device(device, model, trains=False)
    with eval_mode(model):
        with torch.no_grad():
            ds = model.domain_classifier(_features(model, xs, device, batch_size)).squeeze(1)
            dt = model.domain_classifier(_features(model, xt, device, batch_size)).squeeze(1)
    if not (torch.isfinite(ds).all() and torch.isfinite(dt).all()):
        return float("nan")  # a diverged network: no meaningful domain prediction
    return 0.5 * (float((ds < 0).float().mean()) + float((dt > 0).float().mean()))


# --------------------------------------------------------------------------- training
def _coeff(mode: str, p: float, lambda_max: float, gamma: float) -> float:
    if mode == "dann":
        return lambda_max * lambda_schedule(p, gamma=gamma)
    if mode == "fixed":
        return lambda_max
    if mode == "no_grl":
        return -lambda_max * lambda_schedule(p, gamma=gamma)
    return 0.0


def train_dann(model: nn.Module, source: Any, target: Any = None, *, mode: str = "dann", epochs: int = 10,
               steps_per_epoch: int | None = None, batch_size: int = 64, lr: float = 0.01,
               optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 0.0,
               schedule_lr: bool = True, lambda_max: float = 1.0, gamma: float = 10.0,
               source_val: Any = None, target_val: Any = None, device: torch.device | str | None = None,
               seed: int = 0, desc: str = "") -> DANNHistory:
    """Train a DANN on labelled ``source`` and unlabelled ``target`` images; returns a :class:`DANNHistory`.

    Each step takes ``batch_size`` source and ``batch_size`` target images; the loss is the label
    cross-entropy on the source half plus the domain cross-entropy (source 0, target 1) of the
    domain classifier, which sees the features through a GRL with factor ``coeff``:

    - ``mode="dann"``: ``coeff = lambda_max * lambda_schedule(p, gamma=gamma)`` (the paper);
    - ``"fixed"``: ``coeff = lambda_max`` from the first step (a constant reversal);
    - ``"no_grl"``: ``coeff = -lambda_max * lambda_schedule(p)``: no reversal, the features help the
      domain classifier (the domain loss is minimized by every part);
    - ``"source_only"``: the label loss only reaches the features; the domain classifier is still
      trained on detached features (to measure how separable the domains are), or skipped when
      ``target`` is None. This is also the *train-on-target* bound when ``source`` is the
      labelled target set.

    ``p`` runs from 0 to 1 over ``epochs * steps_per_epoch`` steps (default: one pass over the
    source per epoch). With ``schedule_lr`` the rate follows :func:`lr_schedule` from ``lr``.
    The labels of ``target`` are never used; ``source_val`` / ``target_val`` (labelled) are
    evaluated after every epoch. The model is moved to ``device`` (default: where it is) and ends
    in eval mode. Ganin & Lempitsky (2015); used in lab 09.
    """
    model = _check_dann_model(model)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    fn = "train_dann"
    xs, ys, xt = _dann_data(source, target, mode)
    epochs, batch_size, steps_per_epoch, lr, lambda_max, gamma, weight_decay = _dann_options(
        epochs, batch_size, steps_per_epoch, lr, lambda_max, gamma, weight_decay, optimizer)
    sv = images_labels(source_val, fn, "source_val", labels="required") if source_val is not None else None
    tv = images_labels(target_val, fn, "target_val", labels="required") if target_val is not None else None
    device = to_training_device(device, model)
    steps_per_epoch = steps_per_epoch or max(1, len(xs) // batch_size)
    total = max(1, epochs * steps_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    opt = (torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay) if optimizer == "sgd"
           else torch.optim.Adam(params, lr=lr, weight_decay=weight_decay))
    # Separate generators: the source batches do not depend on whether a target set is given.
    src_batches = _Batches(len(xs), batch_size, make_generator(seed))
    tgt_batches = _Batches(len(xt), batch_size, make_generator((seed + 1) % 2**32)) if xt is not None else None
    history = DANNHistory(mode=mode)
    state = {"step": 0}

    def one_epoch(epoch: int, progress: EpochProgress) -> str:
        sums = _DannSums()
        coeff, rate = 0.0, lr
        for _ in range(steps_per_epoch):
            if history.diverged_step is not None:
                break  # diverged: keep the last finite weights, evaluate them every epoch
            step = state["step"]
            p = step / total
            rate = lr_schedule(p, lr0=lr) if schedule_lr else lr
            for group in opt.param_groups:
                group["lr"] = rate
            coeff = _coeff(mode, p, lambda_max, gamma)
            i = src_batches.next()
            x_s, y_s = to_device((xs[i], ys[i]), device)
            x_t = to_device(xt[tgt_batches.next()], device) if tgt_batches is not None else None
            with autocast(device):
                loss, *terms = _dann_loss(model, mode, x_s, y_s, x_t, coeff)
            if not torch.isfinite(loss.detach()):
                history.diverged_step = step
                progress.message(f"{desc or mode}: the loss became {float(loss.detach()):.3g} at step {step}: "
                                 "training diverged and stops here (the weights of the previous step are kept)")
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] = step + 1
            sums.add(*terms)
        sums.record(history, has_target=xt is not None)
        history.coeff.append(coeff)
        history.lr.append(rate)
        history.steps.append(state["step"])
        return _dann_validate(model, history, sv, tv, xt is not None, device)

    run_epochs([model], epochs, one_epoch, history=history, desc=desc or mode, default_desc=f"DANN ({mode})")
    return history


def _dann_options(epochs: Any, batch_size: Any, steps_per_epoch: Any, lr: Any, lambda_max: Any, gamma: Any,
                  weight_decay: Any, optimizer: Any) -> tuple[int, int, int | None, float, float, float, float]:
    """:func:`train_dann`'s numeric options, checked (``optimizer`` only checked)."""
    checked = (check_int(epochs, "epochs", low=0), check_int(batch_size, "batch_size", low=1),
               check_int(steps_per_epoch, "steps_per_epoch", low=1, allow_none=True), check_number(lr, "lr", low=0.0, strict=True),
               check_number(lambda_max, "lambda_max", low=0.0), check_number(gamma, "gamma", low=0.0, strict=True),
               check_number(weight_decay, "weight_decay", low=0.0))
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' (the paper's, with momentum) or 'adam', got {optimizer!r}")
    return checked


class _DannSums:
    """One epoch's running sums of :func:`train_dann`'s loss terms and training domain accuracy."""

    def __init__(self) -> None:
        self.label, self.domain, self.correct, self.count, self.steps = 0.0, 0.0, 0, 0, 0

    def add(self, label_loss: Tensor, domain_loss: Tensor | None, d_logits: Tensor | None,
            d_true: Tensor | None) -> None:
        self.steps += 1
        self.label += float(label_loss.detach())
        if domain_loss is not None:
            self.domain += float(domain_loss.detach())
            self.correct += int(((d_logits.detach() > 0).float() == d_true).sum())
            self.count += len(d_true)

    def record(self, history: DANNHistory, *, has_target: bool) -> None:
        """The epoch's means into ``history`` (NaN for an epoch without a step, after divergence)."""
        nan = float("nan")
        history.label_loss.append(self.label / self.steps if self.steps else nan)
        if has_target:
            history.domain_loss.append(self.domain / self.steps if self.steps else nan)
            history.train_domain_acc.append(self.correct / self.count if self.steps else nan)


def _dann_data(source: Any, target: Any, mode: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`train_dann`'s source images and labels and target images (None without a target)."""
    fn = "train_dann"
    xs, ys = images_labels(source, fn, "source", labels="required")
    if target is None:
        if mode != "source_only":
            raise ValueError(f"mode={mode!r} needs unlabelled target images; pass target=..., or use mode='source_only'")
        return xs, ys, None
    xt, _ = images_labels(target, fn, "target", labels="ignored")
    if xt.shape[1:] != xs.shape[1:]:
        raise ValueError(f"source images {tuple(xs.shape[1:])} and target images {tuple(xt.shape[1:])} must have "
                         "the same [C, H, W] (e.g. glyph_digits(..., channels=3) for an RGB target)")
    return xs, ys, xt


def _dann_loss(model: nn.Module, mode: str, x_s: Tensor, y_s: Tensor, x_t: Tensor | None,
               coeff: float) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """One step's loss (label + domain), its label and domain terms, the domain logits and their
    targets (source 0, target 1); the domain parts are None without target images."""
    label_loss, d_logits = _dann_forward(model, mode, x_s, y_s, x_t, coeff)
    if x_t is None:
        return label_loss, label_loss, None, None, None
    d_true = torch.cat([torch.zeros(len(x_s), device=x_s.device), torch.ones(len(x_t), device=x_s.device)])
    domain_loss = F.binary_cross_entropy_with_logits(d_logits.float(), d_true)
    return label_loss + domain_loss, label_loss, domain_loss, d_logits, d_true


def _dann_forward(model: nn.Module, mode: str, x_s: Tensor, y_s: Tensor, x_t: Tensor | None,
                  coeff: float) -> tuple[Tensor, Tensor | None]:
    """One DANN forward pass: the label loss on the source half and the domain logits (source
    then target), the features reaching the domain classifier through a GRL of factor ``coeff``
    (``mode="source_only"``: detached features, so the domain loss trains only the domain head)."""
    if mode == "source_only":
        f_s = model.features(x_s)
        label_loss = F.cross_entropy(model.classifier(f_s).float(), y_s)
        if x_t is None:
            return label_loss, None
        with torch.no_grad():
            f_t = model.features(x_t)
        return label_loss, model.domain_classifier(torch.cat([f_s.detach(), f_t])).squeeze(1)
    f = model.features(torch.cat([x_s, x_t]))
    label_loss = F.cross_entropy(model.classifier(f[: len(x_s)]).float(), y_s)
    return label_loss, model.domain_classifier(grad_reverse(f, coeff)).squeeze(1)


def _dann_validate(model: nn.Module, history: DANNHistory, sv: tuple[Tensor, Tensor] | None,
                   tv: tuple[Tensor, Tensor] | None, has_target: bool, device: torch.device) -> str:
    """After an epoch: the accuracies on the validation sets given, into ``history``; the epoch's line."""
    model.eval()
    if sv is not None:
        history.source_acc.append(_label_accuracy(model, sv[0], sv[1], device, 256))
    if tv is not None:
        history.target_acc.append(_label_accuracy(model, tv[0], tv[1], device, 256))
    if sv is not None and tv is not None and has_target:
        history.domain_acc.append(domain_accuracy(model, sv[0], tv[0], device=device))
    parts = [f"label loss {history.label_loss[-1]:.3f}"]
    for key, short in (("source_acc", "source"), ("target_acc", "target"), ("domain_acc", "domain")):
        if getattr(history, key):
            parts.append(f"{short} acc {getattr(history, key)[-1]:.3f}")
    return "  ".join(parts)


# --------------------------------------------------------------------------- pseudo-labelling
def pseudo_label(model: nn.Module, images: Any, *, threshold: float = 0.9, device: torch.device | str | None = None,
                 batch_size: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """Predicted labels, their softmax confidence, and the mask of confident ones (``>= threshold``).

    The selection step of self-training (pseudo-labelling, Lee 2013): the model's confident
    predictions on unlabelled target images become training labels. Returns CPU tensors
    ``(labels [N] int64, confidence [N], keep [N] bool)``; the model's mode is restored. Lab 09.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    fn = "pseudo_label"
    x, _ = images_labels(images, fn, "images", labels="ignored")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
    batch_size = check_int(batch_size, "batch_size", low=1)
    device = resolve_device(device, model, trains=False)
    probs = []
    with eval_mode(model):
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                with autocast(device):
                    out = model(to_device(x[i:i + batch_size], device))
                probs.append(out.float().softmax(1).cpu())
    confidence, labels = torch.cat(probs).max(1)
    return labels, confidence, confidence >= threshold


def self_train(model: nn.Module, source: Any, target: Any, *, rounds: int = 1, threshold: float = 0.9,
               mode: str = "source_only", target_val: Any = None, **train_kwargs: Any) -> list[dict[str, float]]:
    """Self-training: label the confident ``target`` images with the model, retrain on source + them.

    Each round calls :func:`pseudo_label` on the target images, then :func:`train_dann` (``mode``,
    ``train_kwargs``) with the union of the labelled source and the pseudo-labelled target as the
    labelled set (the target images stay the unlabelled domain). Returns one dict per round:
    ``selected`` (share of target images kept), ``pseudo_label_acc`` (their precision, when
    ``target`` carries labels; for analysis only, never used for training) and ``target_acc``
    (on ``target_val`` when given). Extension of lab 09.
    """
    rounds = check_int(rounds, "rounds", low=1)
    fn = "self_train"
    xs, ys = images_labels(source, fn, "source", labels="required")
    xt, yt = images_labels(target, fn, "target", labels="optional")
    if xt.shape[1:] != xs.shape[1:]:
        raise ValueError(f"source images {tuple(xs.shape[1:])} and target images {tuple(xt.shape[1:])} differ in shape")
    if "source_val" not in train_kwargs:
        train_kwargs["source_val"] = None
    seed = train_kwargs.pop("seed", 0)
    stats = []
    for r in range(rounds):
        labels, confidence, keep = pseudo_label(model, xt, threshold=threshold, device=train_kwargs.get("device"))
        row: dict[str, float] = {"round": r + 1, "selected": float(keep.float().mean()), "threshold": float(threshold)}
        if yt is not None and bool(keep.any()):
            row["pseudo_label_acc"] = float((labels[keep] == yt[keep]).float().mean())
        train = (torch.cat([xs, xt[keep]]), torch.cat([ys, labels[keep]]))
        hist = train_dann(model, train, xt, mode=mode, target_val=target_val, seed=seed + r + 1, **train_kwargs)
        if hist.target_acc:
            row["target_acc"] = hist.target_acc[-1]
        stats.append(row)
    return stats
