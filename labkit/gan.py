"""Generative adversarial networks (Goodfellow et al. 2014): losses, training, sampling, scores. Lab 10.

- :func:`discriminator_loss` and :func:`generator_loss` (``"non_saturating"``, the
  ``-log D(G(z))`` the GAN paper recommends in practice, or ``"saturating"``, the
  ``log(1 - D(G(z)))`` of the min-max game), both from the discriminator's logits;
- :func:`train_gan`: alternating Adam updates of D and G (conditional when the models have
  ``num_classes > 0``, Mirza & Osindero 2014), returning a :class:`GANHistory` with per-step
  losses, ``D(x)``, ``D(G(z))``, the gradient norm reaching G, samples of a fixed noise batch
  after every epoch and an optional score per epoch (e.g. the FID);
- :func:`sample_gan`: images from a trained generator (seeded noise, chosen labels);
- the scores of lab 10 (the FID of Heusel et al. 2017 as ``lk.frechet_distance`` /
  ``lk.classifier_fid``, class coverage as ``lk.class_histogram`` / ``lk.class_coverage``) are
  measures, so they live in :mod:`labkit.metrics`.

The models (``lk.get_model("dcgan_generator" | "dcgan_discriminator", num_classes=K)``) live at the
end of ``labkit/models/generative.py``; the generator maps ``(z, y)`` to images in [0, 1], the
discriminator maps ``(x, y)`` to one logit per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_int, check_number
from .datasets.base import images_labels
from .device import resolve_device, to_device
from .hooks import preserve_state
from .progress import EpochProgress
from .training import Curves, run_epochs, to_training_device
from .reproducibility import make_generator

__all__ = ["GAN_LOSSES", "GANHistory", "discriminator_loss", "generator_loss", "train_gan", "sample_gan"]

GAN_LOSSES = ("non_saturating", "saturating")


# --------------------------------------------------------------------------- validation


def _logits(x: object, name: str, fn: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{fn}: {name} must be a float tensor of discriminator logits, got {got}")
    if x.numel() == 0:
        raise ValueError(f"{fn}: {name} is empty")
    return x


def _loss_kind(kind: object, fn: str) -> str:
    if kind not in GAN_LOSSES:
        raise ValueError(f"{fn}: loss must be one of {GAN_LOSSES}, got {kind!r}")
    return str(kind)


def _num_classes(model: nn.Module) -> int:
    return int(getattr(model, "num_classes", 0) or 0)


def _check_generator(model: object, fn: str) -> nn.Module:
    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "latent_dim", None), int):
        raise TypeError(f"{fn}: generator must be an nn.Module with a latent_dim attribute "
                        f"(e.g. lk.get_model('dcgan_generator')), got {type(model).__name__}")
    return model


# --------------------------------------------------------------------------- losses
def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """``-[log D(x) + log(1 - D(G(z)))]`` averaged over each batch, from D's logits (``D = sigmoid``).

    The discriminator's side of the value function of Goodfellow et al. (2014, eq. 1), written
    as two binary cross-entropies (real images labelled 1, generated ones 0); computed with
    ``softplus`` so that confident logits do not overflow. Lab 10.
    """
    fn = "discriminator_loss"
    real_logits = _logits(real_logits, "real_logits", fn)
    fake_logits = _logits(fake_logits, "fake_logits", fn)
    # -log sigmoid(l) = softplus(-l);  -log(1 - sigmoid(l)) = softplus(l)
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: Tensor, *, loss: str = "non_saturating") -> Tensor:
    """The generator's loss from D's logits on generated images, to be *minimized*.

    - ``"saturating"``: ``mean log(1 - D(G(z)))``, the generator's side of the min-max game
      (Goodfellow et al. 2014, eq. 1). Its gradient with respect to the logit is ``-D(G(z))``:
      it vanishes when D confidently rejects the fakes, i.e. early in training;
    - ``"non_saturating"``: ``-mean log D(G(z))`` (section 3 of the paper): same fixed point,
      gradient ``-(1 - D(G(z)))``, strong exactly when the fakes are poor.

    Lab 10 compares them.
    """
    fn = "generator_loss"
    fake_logits = _logits(fake_logits, "fake_logits", fn)
    loss = _loss_kind(loss, fn)
    if loss == "saturating":
        return -F.softplus(fake_logits).mean()  # log(1 - sigmoid(l)) = -softplus(l)
    return F.softplus(-fake_logits).mean()


# --------------------------------------------------------------------------- training
@dataclass
class GANHistory(Curves):
    """What :func:`train_gan` saw.

    Per optimizer step: ``d_loss``, ``g_loss``, ``d_real`` (mean ``D(x)`` on the real batch),
    ``d_fake`` (mean ``D(G(z))`` on the generated batch, before D's update) and ``g_grad_norm``
    (the L2 norm of the gradient of G's loss with respect to G's parameters). Per epoch:
    ``epoch_steps`` (the step count at each epoch's end), ``seconds``; ``scores`` holds
    ``score_fn(generator)`` before training and after every epoch (``epochs + 1`` values when a
    score function was given) and ``snapshots`` the images generated from ``fixed_noise`` (and
    ``fixed_labels``) at the same moments (``[n_fixed, C, H, W]`` each, on the CPU).
    """

    d_loss: list[float] = field(default_factory=list)
    g_loss: list[float] = field(default_factory=list)
    d_real: list[float] = field(default_factory=list)
    d_fake: list[float] = field(default_factory=list)
    g_grad_norm: list[float] = field(default_factory=list)
    epoch_steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    snapshots: list[Tensor] = field(default_factory=list, repr=False)
    fixed_noise: Tensor | None = field(default=None, repr=False)
    fixed_labels: Tensor | None = field(default=None, repr=False)
    loss: str = "non_saturating"

    _EPOCH_KEY = "epoch_steps"
    _DEFAULT_LAST = "scores"
    _EMPTY_HINT = "was a score_fn given?"

    @property
    def steps(self) -> int:
        return len(self.d_loss)

    def epoch_means(self, key: str) -> list[float]:
        """Mean of a per-step series (``"d_loss"``, ``"g_loss"``, ``"d_real"``, ...) over each epoch."""
        if key not in ("d_loss", "g_loss", "d_real", "d_fake", "g_grad_norm"):
            raise ValueError(f"key must name a per-step series (d_loss, g_loss, d_real, d_fake, g_grad_norm), "
                             f"got {key!r}")
        values, out, start = getattr(self, key), [], 0
        for end in self.epoch_steps:
            chunk = values[start:end]
            out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
            start = end
        return out

    def smoothed(self, key: str, window: int = 20) -> list[float]:
        """A per-step series averaged over a trailing window of ``window`` steps (for curves)."""
        if key not in ("d_loss", "g_loss", "d_real", "d_fake", "g_grad_norm"):
            raise ValueError(f"key must name a per-step series (d_loss, g_loss, d_real, d_fake, g_grad_norm), "
                             f"got {key!r}")
        window = check_int(window, "window", "GANHistory.smoothed", low=1)
        values, out, total = getattr(self, key), [], 0.0
        for i, v in enumerate(values):
            total += v - (values[i - window] if i >= window else 0.0)
            out.append(total / min(i + 1, window))
        return out

    def to_dict(self) -> dict[str, Any]:
        """The curves as plain lists (for ``lk.record``); the snapshots and the noise are left out."""
        return {k: list(getattr(self, k)) for k in ("d_loss", "g_loss", "d_real", "d_fake", "g_grad_norm",
                                                    "epoch_steps", "seconds", "scores")} | {"loss": self.loss}


@torch.no_grad()
def _snapshot(generator: nn.Module, z: Tensor, y: Tensor | None) -> Tensor:
    with preserve_state(generator):
        generator.eval()
        return generator(z, y).float().cpu() if y is not None else generator(z).float().cpu()


def _grad_norm(params: Sequence[Tensor]) -> float:
    sq = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


def _gan_options(epochs: Any, batch_size: Any, lr_g: Any, lr_d: Any, betas: Any, loss: Any, n_fixed: Any,
                 score_fn: Any) -> tuple[int, int, float, float, tuple[float, float], str, int]:
    """:func:`train_gan`'s options, checked (errors name the argument and the fix)."""
    fn = "train_gan"
    epochs = check_int(epochs, "epochs", fn, low=0)
    batch_size = check_int(batch_size, "batch_size", fn, low=2)
    lr_g = check_number(lr_g, "lr_g", fn, low=0.0, hint=" (0 freezes that network)")
    lr_d = check_number(lr_d, "lr_d", fn, low=0.0, hint=" (0 freezes that network)")
    if lr_g == 0 and lr_d == 0:
        raise ValueError(f"{fn}: lr_g and lr_d are both 0, so nothing would be trained; give one a positive rate")
    if (not isinstance(betas, (tuple, list)) or len(betas) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"{fn}: betas must be two numbers in [0, 1), e.g. (0.5, 0.999), got {betas!r}")
    loss = _loss_kind(loss, fn)
    n_fixed = check_int(n_fixed, "n_fixed", fn, low=1)
    if score_fn is not None and not callable(score_fn):
        raise TypeError(f"{fn}: score_fn must be a function generator -> float, got {type(score_fn).__name__}")
    return epochs, batch_size, lr_g, lr_d, tuple(betas), loss, n_fixed


def _gan_step(generator: nn.Module, discriminator: nn.Module, x: Tensor, y: Tensor | None, z: Tensor,
              opt_g: torch.optim.Optimizer | None, opt_d: torch.optim.Optimizer | None, loss: str,
              history: GANHistory) -> None:
    """One step of :func:`train_gan` on a real batch ``x`` (labels ``y`` when conditional) and noise
    ``z``: the discriminator's update, then the generator's against the updated discriminator; the
    step's losses, ``D(x)``, ``D(G(z))`` and G's gradient norm go into ``history``."""
    cond = y is not None
    fake = generator(z, y) if cond else generator(z)
    real_logits = discriminator(x, y) if cond else discriminator(x)
    fake_logits = discriminator(fake.detach(), y) if cond else discriminator(fake.detach())
    d_loss = discriminator_loss(real_logits, fake_logits)
    if opt_d is not None:
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
    if opt_g is not None:
        logits = discriminator(fake, y) if cond else discriminator(fake)
        g_loss = generator_loss(logits, loss=loss)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        history.g_grad_norm.append(_grad_norm([p for p in generator.parameters() if p.requires_grad]))
        opt_g.step()
    else:
        g_loss = generator_loss(fake_logits.detach(), loss=loss)
        history.g_grad_norm.append(float("nan"))
    history.d_loss.append(float(d_loss.detach()))
    history.g_loss.append(float(g_loss.detach()))
    history.d_real.append(float(torch.sigmoid(real_logits.detach()).mean()))
    history.d_fake.append(float(torch.sigmoid(fake_logits.detach()).mean()))


def train_gan(generator: nn.Module, discriminator: nn.Module, data: Any, *, epochs: int, batch_size: int = 64,
              lr_g: float = 2e-4, lr_d: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999),
              loss: str = "non_saturating", n_fixed: int = 64, score_fn: Callable[[nn.Module], float] | None = None,
              device: torch.device | str | None = None, seed: int = 0, desc: str = "") -> GANHistory:
    """Train a GAN by alternating one discriminator step and one generator step per mini-batch.

    D step: minimize :func:`discriminator_loss` on a real batch and on ``G(z).detach()``; G step:
    minimize :func:`generator_loss` (``loss``: ``"non_saturating"`` or ``"saturating"``) on D's
    logits for the same fakes. Adam with ``lr_d`` / ``lr_g`` and ``betas`` (Radford et al. 2016:
    2e-4, (0.5, 0.999)); a rate of 0 leaves that network's weights as they are, so that one player
    alone is trained (its batch-norm layers still normalize each batch with the batch's own
    statistics). When both models have ``num_classes = K > 0`` the GAN is *conditional*
    (Mirza & Osindero 2014): real images come with their labels, fakes with the labels of the
    real batch, and both networks receive them. ``data``: an ImageSet, an ``(images, labels)``
    pair or an images tensor, images in [0, 1]; the last incomplete batch of an epoch is dropped.
    Noise and shuffling come from generators seeded by ``seed`` (reproducible on one device and
    thread count). ``score_fn(generator) -> float`` is called before training and after each
    epoch (``history.scores``; the generator is put in eval mode around the call). ``device=None``:
    the best device ("auto"). Both models end in eval mode. Returns a :class:`GANHistory`. Lab 10.
    """
    fn = "train_gan"
    generator = _check_generator(generator, fn)
    if not isinstance(discriminator, nn.Module):
        raise TypeError(f"{fn}: discriminator must be an nn.Module (e.g. lk.get_model('dcgan_discriminator')), "
                        f"got {type(discriminator).__name__}")
    epochs, batch_size, lr_g, lr_d, betas, loss, n_fixed = _gan_options(epochs, batch_size, lr_g, lr_d, betas, loss,
                                                                        n_fixed, score_fn)
    k_g, k_d = _num_classes(generator), _num_classes(discriminator)
    if k_g != k_d:
        raise ValueError(f"{fn}: the generator has num_classes={k_g} but the discriminator {k_d}; "
                         "build both conditional (same K) or both unconditional (0)")
    cond = k_g > 0
    xs, ys = images_labels(data, fn, "data", labels="required" if cond else "ignored", why="the model is conditional")
    if ys is not None and bool(((ys < 0) | (ys >= k_g)).any()):
        raise ValueError(f"{fn}: the labels must lie in 0..{k_g - 1} (the models' num_classes)")
    n = len(xs)
    if n < batch_size:
        raise ValueError(f"{fn}: {n} images are fewer than batch_size={batch_size}; lower batch_size")
    device = to_training_device(device, generator, discriminator)
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr_g, betas=betas) if lr_g > 0 else None
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr_d, betas=betas) if lr_d > 0 else None
    g_cpu = make_generator(seed, torch.device("cpu"))
    g_dev = make_generator(seed + 1, device)
    history = GANHistory(loss=loss)
    history.fixed_noise = torch.randn(n_fixed, generator.latent_dim, generator=make_generator(seed + 2, torch.device("cpu")))
    history.fixed_labels = torch.arange(n_fixed) % k_g if cond else None
    z_fixed = history.fixed_noise.to(device)
    y_fixed = history.fixed_labels.to(device) if cond else None

    def observe() -> None:
        history.snapshots.append(_snapshot(generator, z_fixed, y_fixed))
        if score_fn is not None:
            with preserve_state(generator):
                generator.eval()
                history.scores.append(float(score_fn(generator)))

    def one_epoch(epoch: int, progress: EpochProgress) -> str:
        perm = torch.randperm(n, generator=g_cpu)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = perm[start:start + batch_size]
            x = to_device(xs[idx], device)
            y = to_device(ys[idx], device) if cond else None
            z = torch.randn(len(idx), generator.latent_dim, generator=g_dev, device=device)
            _gan_step(generator, discriminator, x, y, z, opt_g, opt_d, loss, history)
        history.epoch_steps.append(history.steps)
        observe()
        means = history.epoch_means
        line = (f"D loss {means('d_loss')[-1]:.3f}  G loss {means('g_loss')[-1]:.3f}  "
                f"D(x) {means('d_real')[-1]:.2f}  D(G(z)) {means('d_fake')[-1]:.2f}")
        if score_fn is not None:
            line += f"  score {history.scores[-1]:.2f}"
        return line

    try:
        observe()  # the snapshot (and score) before training
    except BaseException:
        generator.eval()  # like a failing epoch: both models end in eval mode
        discriminator.eval()
        raise
    run_epochs([generator, discriminator], epochs, one_epoch, history=history, desc=desc, default_desc="GAN")
    return history


@torch.no_grad()
def sample_gan(generator: nn.Module, n: int | None = None, *, z: Tensor | None = None,
               labels: int | Sequence[int] | Tensor | None = None, seed: int = 0, batch_size: int = 500,
               device: torch.device | str | None = None) -> Tensor:
    """``n`` images from ``generator`` in eval mode, ``[n, C, H, W]`` in [0, 1] on the CPU.

    The noise is ``z`` when given (``[n, latent_dim]``), else ``N(0, I)`` drawn from ``seed``
    (the same seed gives the same images). A conditional generator needs ``labels``: one int for
    all samples, or one label per sample. The generator's mode is restored. Lab 10.
    """
    fn = "sample_gan"
    generator = _check_generator(generator, fn)
    batch_size = check_int(batch_size, "batch_size", fn, low=1)
    if z is not None:
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != generator.latent_dim:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"{fn}: z must be a [n, {generator.latent_dim}] noise tensor, got {got}")
        if n is not None and n != len(z):
            raise ValueError(f"{fn}: n={n} but z has {len(z)} rows; give one of them")
        n = len(z)
    n = check_int(n, "n", fn, low=1)
    if z is None:
        z = torch.randn(n, generator.latent_dim, generator=make_generator(seed, torch.device("cpu")))
    k = _num_classes(generator)
    y: Tensor | None = None
    if k > 0:
        if labels is None:
            raise ValueError(f"{fn}: the generator is conditional (num_classes={k}): pass labels (an int or one per sample)")
        if isinstance(labels, int) and not isinstance(labels, bool):
            y = torch.full((n,), labels, dtype=torch.long)
        else:
            y = torch.as_tensor(labels, dtype=torch.long).flatten()
        if len(y) != n or bool(((y < 0) | (y >= k)).any()):
            raise ValueError(f"{fn}: labels must be one int or {n} ints in 0..{k - 1}")
    elif labels is not None:
        raise ValueError(f"{fn}: labels were given to an unconditional generator (num_classes=0); drop them")
    device = resolve_device(device, generator, trains=False)
    out = []
    with preserve_state(generator):
        generator.eval()
        for start in range(0, n, batch_size):
            zb = z[start:start + batch_size].to(device)
            if y is not None:
                out.append(generator(zb, y[start:start + batch_size].to(device)).float().cpu())
            else:
                out.append(generator(zb).float().cpu())
    return torch.cat(out)
