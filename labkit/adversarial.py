"""Adversarial examples: fooling a network with small, structured perturbations.

- :func:`minimal_targeted_attack`: Szegedy et al. 2014, "Intriguing properties of neural
  networks": small steps until a chosen class is predicted (the perturbation stays tiny).
- :func:`fgsm`: Goodfellow, Shlens & Szegedy 2015, "Explaining and harnessing adversarial
  examples": one step of ``eps * sign(grad)``.
- :func:`pgd`: Madry et al. 2018, "Towards deep learning models resistant to adversarial
  attacks": iterated steps projected back onto the L-inf or L2 ball of radius ``eps``.
- :func:`adversarial_training_step`: one Madry-style training step on PGD examples;
  :func:`adversarial_training`: epochs of such steps over a data set.
- :func:`sign_noise`: random noise of the same L-inf norm as an attack (the control that an
  adversarial perturbation is not just "any perturbation of that size").
- :func:`robust_accuracy`: accuracy under an attack (or noise) for several epsilons;
  :func:`transfer_success_rate`: how often examples crafted on one model fool another.

The loss is the cross-entropy of the model's logits; an untargeted attack climbs it for the
true ``labels``, a targeted one (``targeted=True``, ``labels`` = the wanted classes) descends it.
``clamp`` is the valid input range: ``(0, 1)`` for images in pixel space, per-channel tensors
for normalized inputs (``((0 - mean) / std, (1 - mean) / std)``), or None. The model runs in
eval mode by default (BatchNorm statistics are not touched) with its parameters frozen; its
mode and ``requires_grad`` flags are restored. Used in lab 03 (and lab 04's comparisons).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_number
from .device import model_device
from .hooks import preserve_state
from .reproducibility import make_generator

__all__ = ["fgsm", "pgd", "adversarial_training_step", "minimal_targeted_attack", "sign_noise", "robust_accuracy",
           "transfer_success_rate", "adversarial_training"]

_Bound = float | Sequence[float] | Tensor


@contextmanager
def _attack_state(model: nn.Module, eval_mode: bool) -> Iterator[None]:
    """Eval mode (optionally) and frozen parameters for the attack; everything restored on exit."""
    with preserve_state(model):
        if eval_mode:
            model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield


def _same_device(model: nn.Module, x: Tensor, fn: str) -> None:
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    if param is not None and param.device != x.device:
        raise ValueError(f"{fn}: images are on {x.device} but the model is on {param.device}; "
                         f"move them with images.to({str(param.device)!r})")


def _check_images(images: object) -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, C, H, W], got {type(images).__name__}")
    if images.dim() < 2 or not images.dtype.is_floating_point:
        raise ValueError(f"images must be a float batch [B, ...], got shape {tuple(images.shape)} "
                         f"and dtype {images.dtype}")
    return images.detach()


def _check_labels(labels: int | Tensor, n: int, device: torch.device, name: str = "labels") -> Tensor:
    if isinstance(labels, bool):
        raise TypeError(f"{name} must be an int or a 1-D tensor of class indices, got a bool")
    if isinstance(labels, int):
        return torch.full((n,), labels, dtype=torch.long, device=device)
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dim() > 1:
        raise TypeError(f"{name} must be an int or a 1-D integer tensor of class indices, got {labels!r}")
    t = labels.to(device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} entries for a batch of {n} images")
    return t


def _bounds(clamp: tuple[_Bound, _Bound] | None, x: Tensor) -> tuple[Tensor, Tensor] | None:
    """``clamp`` as two tensors broadcastable to ``x``; checks that ``x`` lies inside."""
    if clamp is None:
        return None
    if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
        raise ValueError(f"clamp must be a pair (low, high) or None, got {clamp!r}")
    out = []
    for v in clamp:
        t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
        if t.dim() == 1 and x.dim() == 4:  # per-channel bounds
            if t.numel() != x.shape[1]:
                raise ValueError(f"per-channel clamp bounds need {x.shape[1]} values, got {t.numel()}")
            t = t.view(1, -1, 1, 1)
        out.append(t)
    lo, hi = out
    if (lo >= hi).any():
        raise ValueError(f"clamp must have low < high, got {clamp!r}")
    if ((x < lo - 1e-6) | (x > hi + 1e-6)).any():
        raise ValueError(
            f"images lie outside clamp={clamp!r} (values in [{x.min().item():.3g}, {x.max().item():.3g}]): for "
            "normalized inputs pass their bounds, e.g. clamp=((0 - mean) / std, (1 - mean) / std), or clamp=None"
        )
    return lo, hi


def _clip(x: Tensor, bounds: tuple[Tensor, Tensor] | None) -> Tensor:
    return x if bounds is None else torch.maximum(torch.minimum(x, bounds[1]), bounds[0])


def _loss_grad(model: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """d/dx of the summed cross-entropy (each sample's gradient independent of the batch size)."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    if out.dim() != 2:
        raise ValueError(f"the model must output logits [B, K], got {tuple(out.shape)}")
    if labels.min() < 0 or labels.max() >= out.shape[1]:
        raise ValueError(f"labels must lie in [0, {out.shape[1]}), got {labels.unique().tolist()}")
    (g,) = torch.autograd.grad(F.cross_entropy(out, labels, reduction="sum"), x)
    return g


def _l2_normalize(g: Tensor) -> Tensor:
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))


def fgsm(model: nn.Module, images: Tensor, labels: int | Tensor, eps: float, *, targeted: bool = False,
         clamp: tuple[_Bound, _Bound] | None = (0.0, 1.0), eval_mode: bool = True) -> Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): ``x +- eps * sign(grad_x CE(f(x), labels))``.

    Untargeted: away from the true ``labels`` (+); ``targeted=True``: towards ``labels`` (-).
    The result is clamped to ``clamp``. Returns detached adversarial images on the input's
    device; ``images`` are not modified. Used in lab 03 (accuracy vs epsilon).
    """
    x = _check_images(images)
    _same_device(model, x, "fgsm")
    eps = check_number(eps, "eps", low=0.0, allow_inf=True)
    y = _check_labels(labels, len(x), x.device)
    bounds = _bounds(clamp, x)
    with _attack_state(model, eval_mode):
        g = _loss_grad(model, x, y)
    step = eps * g.sign()
    return _clip(x - step if targeted else x + step, bounds).detach()


def pgd(model: nn.Module, images: Tensor, labels: int | Tensor, eps: float, *, alpha: float, steps: int,
        targeted: bool = False, random_start: bool = True, norm: str = "linf",
        clamp: tuple[_Bound, _Bound] | None = (0.0, 1.0), seed: int | None = 0, eval_mode: bool = True) -> Tensor:
    """Projected gradient descent (Madry et al. 2018; iterative FGSM of Kurakin et al. 2017).

    ``steps`` steps of size ``alpha``, each followed by the projection onto the ``norm`` ball of
    radius ``eps`` around the clean images and by ``clamp``. ``norm="linf"``: the step is
    ``alpha * sign(g)``; ``norm="l2"``: ``alpha * g / ||g||_2`` per image (Captum's L2 PGD keeps
    the sign step; see tests/test_adversarial.py). ``random_start``: a uniform point of the ball
    (seeded by ``seed``; None draws from torch's global generator). Returns detached adversarial
    images on the input's device. Used in lab 03.
    """
    x0 = _check_images(images)
    _same_device(model, x0, "pgd")
    eps = check_number(eps, "eps", low=0.0, allow_inf=True)
    alpha = check_number(alpha, "alpha", low=0.0, strict=True)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    y = _check_labels(labels, len(x0), x0.device)
    bounds = _bounds(clamp, x0)
    view = (-1, *([1] * (x0.dim() - 1)))

    def project(x: Tensor) -> Tensor:
        d = x - x0
        if norm == "linf":
            d = d.clamp(-eps, eps)
        else:
            n = d.flatten(1).norm(dim=1).view(view)
            d = d * torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
        return _clip(x0 + d, bounds)

    x = x0.clone()
    if random_start and eps > 0:
        gen = make_generator(seed) if seed is not None else None
        if norm == "linf":
            d = (torch.rand(x0.shape, generator=gen) * 2 - 1) * eps
        else:  # uniform in the L2 ball: a random direction, radius eps * U^(1/dim)
            u = torch.randn(x0.shape, generator=gen)
            r = torch.rand(len(x0), generator=gen) ** (1.0 / x0[0].numel()) * eps
            d = _l2_normalize(u) * r.view(view)
        x = project(x0 + d.to(x0))
    sign = -1.0 if targeted else 1.0
    with _attack_state(model, eval_mode):
        for _ in range(steps):
            g = _loss_grad(model, x, y)
            step = g.sign() if norm == "linf" else _l2_normalize(g)
            x = project(x + sign * alpha * step)
    return x.detach()


def adversarial_training_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor,
                              labels: Tensor, *, eps: float, alpha: float, steps: int, norm: str = "linf",
                              random_start: bool = True, clamp: tuple[_Bound, _Bound] | None = (0.0, 1.0),
                              seed: int | None = None, clean_weight: float = 0.0,
                              attack_eval_mode: bool = True) -> float:
    """One step of adversarial training (Madry et al. 2018): PGD examples, then a training step on them.

    The attack runs with ``attack_eval_mode`` (BatchNorm statistics untouched by the attack
    iterations), the update in train mode; the model's mode is restored afterwards.
    ``clean_weight`` mixes in the clean loss as Goodfellow et al. 2015 did
    (``w * CE(clean) + (1 - w) * CE(adversarial)``; 0 = pure Madry). ``seed`` None draws the
    random start from torch's global generator (so successive steps differ). Returns the
    training loss (a float). Used in lab 03.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not 0 <= clean_weight <= 1:
        raise ValueError(f"clean_weight must lie in [0, 1], got {clean_weight!r}")
    x = _check_images(images)
    _same_device(model, x, "adversarial_training_step")
    y = _check_labels(labels, len(x), x.device)
    adv = pgd(model, x, y, eps, alpha=alpha, steps=steps, norm=norm, random_start=random_start, clamp=clamp,
              seed=seed, eval_mode=attack_eval_mode)
    was_training = [(m, m.training) for m in model.modules()]
    try:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(adv), y)
        if clean_weight > 0:
            loss = clean_weight * F.cross_entropy(model(x), y) + (1 - clean_weight) * loss
        loss.backward()
        optimizer.step()
    finally:
        for m, mode in was_training:
            m.training = mode
    return loss.item()


def minimal_targeted_attack(model: nn.Module, images: Tensor, target: int | Tensor, *, step_size: float = 0.01,
                            max_steps: int = 500, min_prob: float = 0.0,
                            clamp: tuple[_Bound, _Bound] | None = (0.0, 1.0),
                            eval_mode: bool = True) -> tuple[Tensor, Tensor]:
    """Fool the model into predicting ``target`` with a small perturbation (Szegedy et al. 2014 style).

    Repeats ``x <- clamp(x - step_size * g / ||g||_2)`` with ``g`` the gradient of the
    cross-entropy towards ``target``, for each image until ``target`` is predicted (with
    probability >= ``min_prob``), at most ``max_steps`` times; images that reach it stop moving.
    Szegedy et al. solved a box-constrained L-BFGS problem; these small normalized steps reach the
    same kind of minimal perturbation more simply. ``images``: ``[B, C, H, W]`` or one ``[C, H, W]``.
    Returns ``(perturbation, steps)``: the perturbation (adversarial minus clean, shaped like
    ``images``) and the number of steps each image needed (0 if already predicted as ``target``,
    -1 if it was never reached). Used in lab 03 (the magnified perturbation).
    """
    single = isinstance(images, Tensor) and images.dim() == 3
    x0 = _check_images(images.unsqueeze(0) if single else images)
    _same_device(model, x0, "minimal_targeted_attack")
    step_size = check_number(step_size, "step_size", low=0.0, strict=True)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"max_steps must be an int >= 0, got {max_steps!r}")
    if not 0 <= min_prob < 1:
        raise ValueError(f"min_prob must lie in [0, 1), got {min_prob!r}")
    t = _check_labels(target, len(x0), x0.device, "target")
    bounds = _bounds(clamp, x0)
    x = x0.clone()
    used = torch.full((len(x0),), -1, dtype=torch.long, device=x0.device)
    with _attack_state(model, eval_mode):
        for step in range(max_steps + 1):
            active = (used < 0).nonzero().flatten()
            if len(active) == 0:
                break
            xa = x[active].requires_grad_(True)
            out = model(xa)
            if out.dim() != 2 or t.max() >= out.shape[1] or t.min() < 0:
                raise ValueError(f"target must lie in [0, {out.shape[-1]}) for logits of shape {tuple(out.shape)}")
            ta = t[active]
            prob = out.detach().softmax(1).gather(1, ta[:, None])[:, 0]
            done = (out.detach().argmax(1) == ta) & (prob >= min_prob)
            used[active[done]] = step
            if step == max_steps or bool(done.all()):
                break
            (g,) = torch.autograd.grad(F.cross_entropy(out, ta, reduction="sum"), xa)
            moving = active[~done]
            x[moving] = _clip(x[moving] - step_size * _l2_normalize(g[~done]), bounds)
    delta = (x - x0).detach()
    return (delta[0], used[0]) if single else (delta, used)


def sign_noise(images: Tensor, eps: float, *, seed: int | None = 0,
               clamp: tuple[_Bound, _Bound] | None = (0.0, 1.0)) -> Tensor:
    """``images + eps * s`` with ``s`` independent random signs (+-1 per pixel), clamped to ``clamp``.

    Noise of the same L-inf norm as an FGSM / PGD perturbation of radius ``eps``, but with no
    relation to the model: the control of Goodfellow et al. 2015's argument (an adversarial
    direction moves the score by ``eps * ||w||_1``, a random one by about ``eps * ||w||_2``).
    ``seed`` None draws from torch's global generator. ``images`` are not modified. Used in lab 03.
    """
    x = _check_images(images)
    eps = check_number(eps, "eps", low=0.0, allow_inf=True)
    bounds = _bounds(clamp, x)
    gen = make_generator(seed) if seed is not None else None
    s = torch.randint(0, 2, x.shape, generator=gen).to(device=x.device, dtype=x.dtype) * 2 - 1
    return _clip(x + eps * s, bounds).detach()


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with preserve_state(model):
        model.eval()
        return model(x).argmax(1) == y


def robust_accuracy(model: nn.Module, images: Tensor, labels: Tensor, attack, epsilons: Sequence[float], *,
                    batch_size: int = 500) -> dict[float, float]:
    """Accuracy of ``model`` on ``attack(model, x, y, eps)`` for each ``eps`` of ``epsilons``.

    ``attack`` is any callable ``(model, images, labels, eps) -> adversarial images``, e.g.
    ``lambda m, x, y, e: lk.pgd(m, x, y, e, alpha=e / 4, steps=10)`` or
    ``lambda m, x, y, e: lk.sign_noise(x, e)``. Images are attacked in batches of ``batch_size``
    on the model's device (results returned as plain floats). Returns ``{eps: accuracy}``;
    ``eps = 0`` gives the clean accuracy if the attack returns its input unchanged. The model's
    mode is restored. Used in lab 03 (accuracy vs epsilon curves).
    """
    x = _check_images(images)
    if not callable(attack):
        raise TypeError(f"attack must be a callable (model, images, labels, eps) -> images, got {type(attack).__name__}")
    eps_list = [check_number(e, "epsilons entry", low=0.0, allow_inf=True) for e in epsilons]
    if not eps_list:
        raise ValueError("epsilons must hold at least one value, e.g. [0.05, 0.1]")
    device = model_device(model)
    y = _check_labels(labels, len(x), device)
    out = {}
    for eps in eps_list:
        correct = 0
        for sl in _batches(len(x), batch_size):
            xb = x[sl].to(device)
            adv = attack(model, xb, y[sl], eps)
            if not isinstance(adv, Tensor) or adv.shape != xb.shape:
                raise ValueError(f"attack must return images shaped {tuple(xb.shape)}, got "
                                 f"{getattr(adv, 'shape', type(adv).__name__)}")
            correct += int(_correct(model, adv, y[sl]).sum())
        out[eps] = correct / len(x)
    return out


def transfer_success_rate(source: nn.Module, target: nn.Module, images: Tensor, adversarial: Tensor,
                          labels: Tensor, *, batch_size: int = 500) -> float:
    """Fraction of the adversarial examples that fool ``source`` and also fool ``target``.

    Counted over the images that both models classify correctly when clean and whose adversarial
    version (crafted on ``source``) ``source`` misclassifies; the rate is the share of those that
    ``target`` misclassifies too (Szegedy et al. 2014, section 4.3; Goodfellow et al. 2015,
    section 8). NaN when no image qualifies. Both models must sit on the same device. Used in lab 03.
    """
    x, adv = _check_images(images), _check_images(adversarial)
    if x.shape != adv.shape:
        raise ValueError(f"adversarial has shape {tuple(adv.shape)} but images have {tuple(x.shape)}; "
                         "pass the adversarial version of each image")
    device = model_device(source)
    if model_device(target) != device:
        raise ValueError(f"source is on {device} but target is on {model_device(target)}; move both to one device")
    y = _check_labels(labels, len(x), device)
    eligible = fooled = 0
    for sl in _batches(len(x), batch_size):
        xb, ab, yb = x[sl].to(device), adv[sl].to(device), y[sl]
        keep = _correct(source, xb, yb) & _correct(target, xb, yb) & ~_correct(source, ab, yb)
        eligible += int(keep.sum())
        fooled += int((keep & ~_correct(target, ab, yb)).sum())
    return fooled / eligible if eligible else float("nan")


def adversarial_training(model: nn.Module, train, *, epochs: int, eps: float, alpha: float, steps: int,
                         lr: float = 1e-3, batch_size: int = 64, clean_weight: float = 0.0, norm: str = "linf",
                         clamp: tuple[_Bound, _Bound] | None = (0.0, 1.0), seed: int = 0,
                         max_batches: int | None = None) -> list[float]:
    """Train ``model`` in place with :func:`adversarial_training_step` (Adam, shuffled mini-batches).

    ``train``: an ``ImageSet`` (``.images``, ``.labels``) or a pair ``(images, labels)``. Each
    epoch visits the data in a seeded random order (``seed + epoch``; torch's global RNG is not
    used: the PGD random starts come from ``seed`` too); ``max_batches`` stops an epoch early
    (for smoke runs). Madry et al. 2018 train from scratch with PGD examples only
    (``clean_weight=0``); Goodfellow et al. 2015 mix clean and adversarial losses (0.5). Batches
    go to the model's device; the model ends in eval mode. Returns the mean loss of each epoch.
    Used in lab 03.
    """
    images, labels = (train.images, train.labels) if hasattr(train, "images") else tuple(train)
    x = _check_images(images)
    y = _check_labels(labels, len(x), x.device)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    lr = check_number(lr, "lr", low=0.0, strict=True)
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be None or an int >= 1, got {max_batches!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    device = model_device(model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=make_generator(seed + epoch))
        total, count = 0.0, 0
        for b, sl in enumerate(_batches(len(x), batch_size)):
            if max_batches is not None and b >= max_batches:
                break
            idx = order[sl]
            loss = adversarial_training_step(model, optimizer, x[idx].to(device), y[idx].to(device), eps=eps,
                                             alpha=alpha, steps=steps, norm=norm, clamp=clamp,
                                             clean_weight=clean_weight, seed=seed * 100003 + epoch * 1009 + b)
            total, count = total + loss * len(idx), count + len(idx)
        losses.append(total / max(count, 1))
    model.eval()
    return losses
