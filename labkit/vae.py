"""Variational autoencoders (Kingma & Welling 2014): the ELBO, training and what to do with a VAE. Lab 07.

- :func:`kl_divergence`, :func:`reparameterize`, :func:`reconstruction_nll` and
  :func:`elbo_loss`: the negative ELBO, ``-log p(x|z) + KL(q(z|x) || N(0, I))`` in nats, with a
  Bernoulli decoder (binary cross-entropy) or a Gaussian one of fixed standard deviation
  ``sigma`` (a scaled squared error plus the normalizing constant).
- :func:`train_vae` (returns a :class:`VAEHistory`; a denoising VAE with ``noise_std``) and
  :func:`evaluate_elbo` (test ELBO, nats per image).
- :func:`latent_means`, :func:`kl_per_dimension` (active latent units), :func:`decode_latents`, :func:`sample_vae`, :func:`decode_grid` (the 2-D
  manifold of the paper's Fig. 4), :func:`interpolate`, :func:`impute` (hidden pixels filled in by
  iterating the autoencoder or by optimizing z), :func:`add_noise`.
- :class:`Reconstructor`: a VAE seen as an image-to-image network, so that ``lk.guided_backprop`` /
  ``lk.grad_cam`` explain a region of the reconstruction (``target=lk.region_target(...)``, one of
  the explainers' targets in :mod:`labkit.attribution`).

The models (``lk.get_model("mlp_vae" | "conv_vae" | "cvae")``) live in ``labkit/models/generative.py``;
they follow the interface ``encode(x, y) -> (mu, logvar)``, ``decode(z, y) -> logits``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_int, check_number, check_tensor
from .datasets.base import images_labels
from .device import resolve_device, to_device
from .hooks import eval_mode, preserve_state
from .progress import EpochProgress
from .reproducibility import make_generator
from .training import Curves, run_epochs, to_training_device

__all__ = ["LIKELIHOODS", "ELBO", "VAEHistory", "kl_divergence", "reparameterize", "reconstruction_nll",
           "elbo_loss", "train_vae", "evaluate_elbo", "latent_means", "kl_per_dimension", "decode_latents", "sample_vae",
           "decode_grid", "interpolate", "impute", "add_noise", "Reconstructor"]

LIKELIHOODS = ("bernoulli", "gaussian")
_IMPUTE_METHODS = ("iterate", "optimize")


# --------------------------------------------------------------------------- validation

def _likelihood(likelihood: object, sigma: object, fn: str) -> tuple[str, float]:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"{fn}: likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < float(sigma) < math.inf:
        raise ValueError(f"{fn}: sigma (the Gaussian decoder's standard deviation) must be a positive number, "
                         f"got {sigma!r}")
    return str(likelihood), float(sigma)


def _check_vae(model: object, fn: str) -> nn.Module:
    if not isinstance(model, nn.Module) or not (hasattr(model, "encode") and hasattr(model, "decode")):
        raise TypeError(f"{fn}: model must be a VAE with encode(x, y) and decode(z, y) "
                        f"(e.g. lk.get_model('mlp_vae')), got {type(model).__name__}")
    return model


def _conditional(model: nn.Module) -> bool:
    return int(getattr(model, "num_classes", 0) or 0) > 0


# --------------------------------------------------------------------------- the ELBO
def kl_divergence(mu: Tensor, logvar: Tensor, *, reduction: str = "none") -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) in nats, summed over the latent dimensions.

    Closed form (Kingma & Welling 2014, appendix B): ``0.5 * sum(mu^2 + exp(logvar) - 1 - logvar)``.
    ``reduction``: ``"none"`` (one value per row, ``[B]``), ``"mean"`` or ``"sum"`` over rows. Lab 07.
    """
    fn = "kl_divergence"
    check_tensor(mu, "mu", fn, dim=2, floating=True)
    check_tensor(logvar, "logvar", fn, floating=True)
    if logvar.shape != mu.shape:
        raise ValueError(f"{fn}: mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must have the same shape")
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
    return _reduce(kl, reduction, fn)


def _reduce(values: Tensor, reduction: str, fn: str) -> Tensor:
    if reduction == "none":
        return values
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    raise ValueError(f"{fn}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def reparameterize(mu: Tensor, logvar: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """``z = mu + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)`` (the reparameterization trick).

    The randomness sits in ``eps``, outside the parameters, so ``z`` is a differentiable function
    of ``mu`` and ``logvar`` (Kingma & Welling 2014, section 2.4). Lab 07.
    """
    fn = "reparameterize"
    check_tensor(mu, "mu", fn, floating=True)
    check_tensor(logvar, "logvar", fn, floating=True)
    if logvar.shape != mu.shape:
        raise ValueError(f"{fn}: mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must have the same shape")
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + (0.5 * logvar).exp() * eps


def reconstruction_nll(logits: Tensor, x: Tensor, *, likelihood: str = "bernoulli", sigma: float = 0.1,
                       reduction: str = "none") -> Tensor:
    """``-log p(x | z)`` in nats per image, from the decoder's ``logits`` (``[B, ...]``).

    - ``"bernoulli"``: ``sum BCE(sigmoid(logits), x)`` (on grey levels this is a cross-entropy whose
      minimum is the pixels' own entropy, not 0);
    - ``"gaussian"``: mean ``sigmoid(logits)``, fixed ``sigma``:
      ``sum (x - mean)^2 / (2 sigma^2) + D/2 log(2 pi sigma^2)`` (a density: it can be negative).

    So "MSE" is the Gaussian likelihood with the weight ``1 / (2 sigma^2)``. Lab 07.
    """
    fn = "reconstruction_nll"
    likelihood, sigma = _likelihood(likelihood, sigma, fn)
    check_tensor(logits, "logits", fn, floating=True)
    check_tensor(x, "x", fn, floating=True)
    if logits.shape != x.shape or logits.dim() < 2:
        raise ValueError(f"{fn}: logits {tuple(logits.shape)} and x {tuple(x.shape)} must have the same "
                         "[B, ...] shape")
    if likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    else:
        d = x[0].numel()
        sq = (x - torch.sigmoid(logits)).pow(2).flatten(1).sum(1)
        nll = sq / (2 * sigma**2) + 0.5 * d * math.log(2 * math.pi * sigma**2)
    return _reduce(nll, reduction, fn)


class ELBO(NamedTuple):
    """Batch means in nats per image: ``loss = reconstruction + beta * kl`` (= -ELBO when beta = 1)."""

    loss: Tensor
    reconstruction: Tensor
    kl: Tensor


def elbo_loss(logits: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, *, likelihood: str = "bernoulli",
              sigma: float = 0.1, beta: float = 1.0) -> ELBO:
    """The negative ELBO of a batch, ``E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z))``, in nats per image.

    ``logits`` are decoded from one reparameterized sample of z per image (a one-sample Monte
    Carlo estimate of the expectation, Kingma & Welling 2014, eq. 7); the KL is exact. ``beta = 1``
    is the VAE (other values: the beta-VAE of Higgins et al. 2017). Returns an :class:`ELBO`
    of batch means. Lab 07.
    """
    fn = "elbo_loss"
    beta = check_number(beta, "beta", fn, low=0.0)
    rec = reconstruction_nll(logits, x, likelihood=likelihood, sigma=sigma)
    kl = kl_divergence(mu, logvar)
    if len(kl) != len(rec):
        raise ValueError(f"{fn}: {len(rec)} images but {len(kl)} latent rows")
    rec, kl = rec.mean(), kl.mean()
    return ELBO(rec + beta * kl, rec, kl)


# --------------------------------------------------------------------------- training
@dataclass
class VAEHistory(Curves):
    """Per-epoch means (nats per image) of one :func:`train_vae` run.

    ``loss = rec + beta * kl``. The ``train_*`` / ``val_*`` names let ``lk.plot_history(h,
    metrics=("loss", "rec", "kl"))`` draw them.
    """

    _DEFAULT_LAST = "val_loss"

    train_loss: list[float] = field(default_factory=list)
    train_rec: list[float] = field(default_factory=list)
    train_kl: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_rec: list[float] = field(default_factory=list)
    val_kl: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def add_noise(images: Tensor, *, std: float, seed: int = 0, clip: bool = True) -> Tensor:
    """``images + std * N(0, 1)`` noise (seeded), clipped to ``[0, 1]`` by default; a new tensor.

    The corruption of the denoising VAE (lab 07; Vincent et al. 2008 for denoising autoencoders).
    """
    fn = "add_noise"
    check_tensor(images, "images", fn, floating=True)
    std = check_number(std, "std", fn, low=0.0)
    noise = torch.randn(images.shape, generator=make_generator(seed, images.device), device=images.device,
                        dtype=images.dtype)
    out = images + std * noise
    return out.clamp(0.0, 1.0) if clip else out


def train_vae(model: nn.Module, train: Any, val: Any = None, *, epochs: int, lr: float = 1e-3,
              batch_size: int = 128, likelihood: str = "bernoulli", sigma: float = 0.1, beta: float = 1.0,
              noise_std: float = 0.0, weight_decay: float = 0.0, device: torch.device | str | None = None,
              seed: int = 0, desc: str = "") -> VAEHistory:
    """Train a VAE with Adam on the negative ELBO (:func:`elbo_loss`); returns a :class:`VAEHistory`.

    ``train`` / ``val``: an ImageSet, an ``(images, labels)`` pair or an images tensor (labels are
    needed by a conditional model). ``noise_std > 0`` trains a *denoising* VAE: the encoder sees
    ``add_noise(x)``, the decoder is scored against the clean ``x``. Mini-batches, the
    reparameterization noise and the corruption are drawn from generators seeded by ``seed``, so a
    run is reproducible on a given device. ``val`` is scored after each epoch by
    :func:`evaluate_elbo` (same likelihood, corruption and seed). ``device=None`` picks the best
    device ("auto"), like ``lk.fit``. The model ends in eval mode. Lab 07.
    """
    fn = "train_vae"
    model = _check_vae(model, fn)
    epochs = check_int(epochs, "epochs", fn, low=0)
    lr = check_number(lr, "lr", fn, strict=True, low=0.0)
    batch_size = check_int(batch_size, "batch_size", fn, low=1)
    likelihood, sigma = _likelihood(likelihood, sigma, fn)
    beta = check_number(beta, "beta", fn, low=0.0)
    noise_std = check_number(noise_std, "noise_std", fn, low=0.0)
    weight_decay = check_number(weight_decay, "weight_decay", fn, low=0.0)
    cond = _conditional(model)
    xs, ys = images_labels(train, fn, "train", labels="required" if cond else "ignored",
                           why="the model is conditional")
    device = to_training_device(device, model)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    g_cpu = make_generator(seed, torch.device("cpu"))
    g_dev = make_generator(seed + 1, device)
    history = VAEHistory()
    n = len(xs)

    def one_epoch(epoch: int, progress: EpochProgress) -> str:
        perm = torch.randperm(n, generator=g_cpu)
        sums = torch.zeros(3, dtype=torch.float64)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            x = to_device(xs[idx], device)
            y = to_device(ys[idx], device) if ys is not None else None
            x_in = x
            if noise_std > 0:
                x_in = (x + noise_std * torch.randn(x.shape, generator=g_dev, device=device)).clamp(0.0, 1.0)
            mu, logvar = model.encode(x_in, y)
            z = reparameterize(mu, logvar, generator=g_dev)
            terms = elbo_loss(model.decode(z, y), x, mu, logvar, likelihood=likelihood, sigma=sigma, beta=beta)
            opt.zero_grad(set_to_none=True)
            terms.loss.backward()
            opt.step()
            sums += torch.tensor([float(t.detach()) for t in terms], dtype=torch.float64) * len(idx)
        sums /= n
        history.train_loss.append(float(sums[0]))
        history.train_rec.append(float(sums[1]))
        history.train_kl.append(float(sums[2]))
        line = f"loss {sums[0]:.1f} (rec {sums[1]:.1f} + kl {sums[2]:.1f})"
        if val is not None:
            ev = evaluate_elbo(model, val, likelihood=likelihood, sigma=sigma, beta=beta, noise_std=noise_std,
                               seed=seed, device=device)
            history.val_loss.append(ev["loss"])
            history.val_rec.append(ev["reconstruction"])
            history.val_kl.append(ev["kl"])
            line += f" | val loss {ev['loss']:.1f}"
        return line

    run_epochs([model], epochs, one_epoch, history=history, desc=desc, default_desc="VAE")
    return history


@torch.no_grad()
def evaluate_elbo(model: nn.Module, data: Any, *, likelihood: str = "bernoulli", sigma: float = 0.1,
                  beta: float = 1.0, samples: int = 1, noise_std: float = 0.0, seed: int = 0,
                  batch_size: int = 500, device: torch.device | str | None = None) -> dict[str, float]:
    """Mean ELBO of ``data`` in nats per image, with its two terms.

    Returns ``{"elbo", "reconstruction", "kl", "loss"}``: ``elbo = -(reconstruction + kl)``
    (a lower bound on ``log p(x)``; higher is better), ``loss = reconstruction + beta * kl``.
    The expected reconstruction term is averaged over ``samples`` seeded draws of z per image;
    the KL is exact. ``noise_std`` corrupts the encoder's input as in :func:`train_vae`. The model's
    mode is restored; ``device=None`` uses the model's device. Lab 07 (the test ELBO).
    """
    fn = "evaluate_elbo"
    model = _check_vae(model, fn)
    likelihood, sigma = _likelihood(likelihood, sigma, fn)
    beta = check_number(beta, "beta", fn, low=0.0)
    samples = check_int(samples, "samples", fn, low=1)
    noise_std = check_number(noise_std, "noise_std", fn, low=0.0)
    batch_size = check_int(batch_size, "batch_size", fn, low=1)
    xs, ys = images_labels(data, fn, "data", labels="required" if _conditional(model) else "ignored",
                           why="the model is conditional")
    device = resolve_device(device, model, trains=False)
    g = make_generator(seed, device)
    rec_sum, kl_sum = 0.0, 0.0
    with eval_mode(model):
        for start in range(0, len(xs), batch_size):
            x = to_device(xs[start:start + batch_size], device)
            y = to_device(ys[start:start + batch_size], device) if ys is not None else None
            x_in = x
            if noise_std > 0:
                x_in = (x + noise_std * torch.randn(x.shape, generator=g, device=device)).clamp(0.0, 1.0)
            mu, logvar = model.encode(x_in, y)
            rec = torch.zeros(len(x), device=device, dtype=torch.float64)
            for _ in range(samples):
                z = reparameterize(mu, logvar, generator=g)
                rec += reconstruction_nll(model.decode(z, y).float(), x, likelihood=likelihood, sigma=sigma).double()
            rec_sum += float(rec.sum()) / samples
            kl_sum += float(kl_divergence(mu.float(), logvar.float()).double().sum())
    rec, kl = rec_sum / len(xs), kl_sum / len(xs)
    return {"elbo": -(rec + kl), "reconstruction": rec, "kl": kl, "loss": rec + beta * kl}


# --------------------------------------------------------------------------- using a trained VAE
@torch.no_grad()
def latent_means(model: nn.Module, data: Any, *, batch_size: int = 500,
                 device: torch.device | str | None = None) -> Tensor:
    """Posterior means ``mu(x)`` of every image, ``[N, latent_dim]`` on the CPU (for scatter plots, t-SNE).

    Labels are used when the model is conditional. The model's mode is restored. Lab 07.
    """
    fn = "latent_means"
    with eval_mode(_check_vae(model, fn)):
        return torch.cat([mu.float().cpu() for mu, _ in _posteriors(model, data, batch_size, device, fn)])


@torch.no_grad()
def kl_per_dimension(model: nn.Module, data: Any, *, batch_size: int = 500,
                     device: torch.device | str | None = None) -> Tensor:
    """Mean KL(q(z_j | x) || N(0, 1)) of each latent dimension over ``data``, ``[latent_dim]`` (CPU).

    A dimension whose KL stays near 0 is *inactive*: the encoder ignores it (q equals the prior)
    and the decoder cannot use it ("posterior collapse" of that unit; Burda et al. 2016 count
    units by the variance of their means instead). The sum over dimensions is the KL term of
    the ELBO. Lab 07.
    """
    fn = "kl_per_dimension"
    total = torch.zeros(int(_check_vae(model, fn).latent_dim), dtype=torch.float64)
    n = 0
    with eval_mode(model):
        for mu, logvar in _posteriors(model, data, batch_size, device, fn):
            mu, logvar = mu.double().cpu(), logvar.double().cpu()
            total += (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).sum(0)
            n += len(mu)
    return (total / n).float()


def _posteriors(model: nn.Module, data: Any, batch_size: int, device: torch.device | str | None,
                fn: str) -> Iterator[tuple[Tensor, Tensor]]:
    """The encoder's ``(mu, logvar)`` on ``data`` batch by batch (labels go in when the model is
    conditional); the caller holds ``eval_mode(model)`` around the loop, so that the mode is restored
    when the loop ends, not when the generator is collected."""
    model = _check_vae(model, fn)
    batch_size = check_int(batch_size, "batch_size", fn, low=1)
    xs, ys = images_labels(data, fn, "data", labels="required" if _conditional(model) else "ignored",
                           why="the model is conditional")
    device = resolve_device(device, model, trains=False)
    for start in range(0, len(xs), batch_size):
        y = to_device(ys[start:start + batch_size], device) if ys is not None else None
        yield model.encode(to_device(xs[start:start + batch_size], device), y)


def _labels_for(model: nn.Module, labels: Any, n: int, fn: str, device: torch.device) -> Tensor | None:
    if not _conditional(model):
        if labels is not None:
            raise ValueError(f"{fn}: labels were given but the model is not conditional (num_classes=0)")
        return None
    if labels is None:
        raise ValueError(f"{fn}: the model is conditional: give labels (an int or one per row)")
    if isinstance(labels, bool):
        raise TypeError(f"{fn}: labels must be an int or a sequence/tensor of ints, got a bool")
    y = torch.full((n,), int(labels)) if isinstance(labels, int) else torch.as_tensor(labels)
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or y.shape != (n,):
        raise ValueError(f"{fn}: labels must be an int or {n} integer labels, got {y.dtype} {tuple(y.shape)}")
    if bool(((y < 0) | (y >= model.num_classes)).any()):
        raise ValueError(f"{fn}: labels must lie in 0..{model.num_classes - 1}, got {y.tolist()}")
    return y.long().to(device)


@torch.no_grad()
def decode_latents(model: nn.Module, z: Tensor, *, labels: Any = None, batch_size: int = 500) -> Tensor:
    """Decoder means ``sigmoid(decode(z))`` ``[N, C, H, W]`` on the CPU; ``labels`` for a conditional model.

    ``labels`` is an int (the same class for every row) or one label per row. Lab 07.
    """
    fn = "decode_latents"
    model = _check_vae(model, fn)
    check_tensor(z, "z", fn, dim=2, floating=True)
    device = resolve_device(None, model, trains=False)
    y = _labels_for(model, labels, len(z), fn, device)
    out = []
    with preserve_state(model):
        model.eval()
        for start in range(0, len(z), batch_size):
            yb = y[start:start + batch_size] if y is not None else None
            out.append(torch.sigmoid(model.decode(z[start:start + batch_size].to(device), yb).float()).cpu())
    return torch.cat(out) if out else torch.zeros(0, *getattr(model, "in_shape", (1, 1, 1)))


def sample_vae(model: nn.Module, n: int, *, labels: Any = None, seed: int = 0, temperature: float = 1.0) -> Tensor:
    """``n`` new images: ``z ~ N(0, temperature^2 I)`` (seeded) through the decoder (its mean).

    For a conditional VAE ``labels`` chooses the class (an int, or one per sample). Lab 07.
    """
    fn = "sample_vae"
    model = _check_vae(model, fn)
    n = check_int(n, "n", fn, low=1)
    temperature = check_number(temperature, "temperature", fn, low=0.0)
    z = torch.randn(n, int(model.latent_dim), generator=make_generator(seed, torch.device("cpu"))) * temperature
    return decode_latents(model, z, labels=labels)


def decode_grid(model: nn.Module, *, n: int = 15, dims: tuple[int, int] = (0, 1), quantiles: tuple[float, float] = (0.05, 0.95),
                labels: Any = None) -> tuple[Tensor, Tensor]:
    """The learned manifold: decode an ``n x n`` grid of latent points (Kingma & Welling 2014, Fig. 4).

    The grid is evenly spaced in *probability*: coordinates are the Gaussian quantiles
    ``Phi^-1(p)`` for ``p`` evenly spaced in ``quantiles``, so every cell covers the same prior mass.
    Latent dimensions other than ``dims`` are 0 (the prior mean). Rows go from high to low second
    coordinate (top to bottom, like a plot's y axis), columns from low to high first coordinate.
    Returns ``(images [n*n, C, H, W], coords [n*n, 2])``. Lab 07.
    """
    fn = "decode_grid"
    model = _check_vae(model, fn)
    n = check_int(n, "n", fn, low=2)
    d = int(model.latent_dim)
    if (not isinstance(dims, (tuple, list)) or len(dims) != 2 or dims[0] == dims[1]
            or any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < d for k in dims)):
        raise ValueError(f"{fn}: dims must be two different latent indices in 0..{d - 1}, got {dims!r}")
    lo, hi = quantiles
    if not 0.0 < lo < hi < 1.0:
        raise ValueError(f"{fn}: quantiles must satisfy 0 < low < high < 1, got {quantiles!r}")
    axis = torch.special.ndtri(torch.linspace(lo, hi, n, dtype=torch.float64)).float()
    gy, gx = torch.meshgrid(axis.flip(0), axis, indexing="ij")
    coords = torch.stack([gx.flatten(), gy.flatten()], 1)
    z = torch.zeros(n * n, d)
    z[:, dims[0]], z[:, dims[1]] = coords[:, 0], coords[:, 1]
    return decode_latents(model, z, labels=labels), coords


def _single_or_batch(x: object, name: str, fn: str) -> Tensor:
    x = check_tensor(x, name, fn, floating=True)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise ValueError(f"{fn}: {name} must be an image [C, H, W] or a batch [B, C, H, W], got {tuple(x.shape)}")
    return x


@torch.no_grad()
def interpolate(model: nn.Module, a: Tensor, b: Tensor, *, steps: int = 8, labels: Any = None,
                method: str = "linear") -> Tensor:
    """Decoded points on the path from ``mu(a)`` to ``mu(b)``: ``[B, steps, C, H, W]`` (CPU).

    ``a`` and ``b`` are images ``[C, H, W]`` or batches of the same size. ``method="linear"`` walks
    the straight segment; ``"slerp"`` the great circle (White 2016), which keeps the norm of z
    typical of the prior in high dimension. ``labels`` (an int or one per pair) for a conditional
    model. Lab 07.
    """
    fn = "interpolate"
    model = _check_vae(model, fn)
    a, b = _single_or_batch(a, "a", fn), _single_or_batch(b, "b", fn)
    if a.shape != b.shape:
        raise ValueError(f"{fn}: a {tuple(a.shape)} and b {tuple(b.shape)} must have the same shape")
    steps = check_int(steps, "steps", fn, low=2)
    if method not in ("linear", "slerp"):
        raise ValueError(f"{fn}: method must be 'linear' or 'slerp', got {method!r}")
    device = resolve_device(None, model, trains=False)
    y = _labels_for(model, labels, len(a), fn, device)
    with preserve_state(model):
        model.eval()
        za = model.encode(a.to(device), y)[0].float().cpu()
        zb = model.encode(b.to(device), y)[0].float().cpu()
    t = torch.linspace(0.0, 1.0, steps)[None, :, None]
    if method == "linear":
        path = (1 - t) * za[:, None] + t * zb[:, None]
    else:
        cos = F.cosine_similarity(za, zb, dim=1).clamp(-1 + 1e-7, 1 - 1e-7)
        omega = torch.acos(cos)[:, None, None]
        so = torch.sin(omega)
        path = torch.sin((1 - t) * omega) / so * za[:, None] + torch.sin(t * omega) / so * zb[:, None]
    flat = path.reshape(-1, za.shape[1])
    ys = None if y is None else y.cpu().repeat_interleave(steps)
    images = decode_latents(model, flat, labels=ys)
    return images.view(len(a), steps, *images.shape[1:])


def _visible_mask(visible: object, images: Tensor, fn: str) -> Tensor:
    if not isinstance(visible, Tensor) or visible.dtype != torch.bool:
        raise TypeError(f"{fn}: visible must be a bool tensor (True = observed pixel), got "
                        f"{visible.dtype if isinstance(visible, Tensor) else type(visible).__name__}")
    try:
        mask = torch.broadcast_to(visible.to(images.device), images.shape)
    except RuntimeError:
        raise ValueError(f"{fn}: visible {tuple(visible.shape)} does not broadcast to the images "
                         f"{tuple(images.shape)}; use [H, W], [B, 1, H, W] or the images' shape") from None
    return mask.float()


def impute(model: nn.Module, images: Tensor, visible: Tensor, *, method: str = "iterate", steps: int = 50,
           lr: float = 0.05, fill: float = 0.0, likelihood: str = "bernoulli", sigma: float = 0.1,
           labels: Any = None) -> Tensor:
    """Fill in the hidden pixels of ``images`` with a trained VAE; observed pixels are kept as given.

    ``visible`` is a bool mask broadcastable to ``images`` (True = observed). Hidden pixels start at
    ``fill``. Two methods:

    - ``"iterate"``: ``steps`` rounds of "encode, decode the mean, put the observed pixels back"
      (a deterministic variant of the Markov chain of Rezende et al. 2014, section 5.2);
    - ``"optimize"``: maximize ``log p(x_visible | z) + log p(z)`` over z with Adam (``steps``,
      ``lr``) from ``mu(x)``; the hidden pixels are then the decoder's mean.

    Returns a new tensor on the images' device; the model (mode, ``requires_grad``) is untouched. Lab 07.
    """
    fn = "impute"
    model = _check_vae(model, fn)
    images = check_tensor(images, "images", fn, dim=4, floating=True)
    mask = _visible_mask(visible, images, fn)
    if method not in _IMPUTE_METHODS:
        raise ValueError(f"{fn}: method must be one of {_IMPUTE_METHODS}, got {method!r}")
    steps = check_int(steps, "steps", fn, low=0)
    lr = check_number(lr, "lr", fn, strict=True, low=0.0)
    fill = check_number(fill, "fill", fn, low=0.0)
    likelihood, sigma = _likelihood(likelihood, sigma, fn)
    device = resolve_device(None, model, trains=False)
    y = _labels_for(model, labels, len(images), fn, device)
    x_obs, m = images.detach().to(device), mask.to(device)
    x = m * x_obs + (1 - m) * fill
    with preserve_state(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if method == "iterate":
            with torch.no_grad():
                for _ in range(steps):
                    mean = torch.sigmoid(model.decode(model.encode(x, y)[0], y))
                    x = m * x_obs + (1 - m) * mean
        else:
            with torch.no_grad():
                z0 = model.encode(x, y)[0]
            z = z0.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            with torch.enable_grad():
                for _ in range(steps):
                    logits = model.decode(z, y)
                    if likelihood == "bernoulli":
                        nll = F.binary_cross_entropy_with_logits(logits, x_obs, reduction="none")
                    else:
                        nll = (x_obs - torch.sigmoid(logits)).pow(2) / (2 * sigma**2)
                    loss = (nll * m).flatten(1).sum(1) + 0.5 * z.pow(2).sum(1)
                    opt.zero_grad(set_to_none=True)
                    loss.sum().backward()
                    opt.step()
            with torch.no_grad():
                x = m * x_obs + (1 - m) * torch.sigmoid(model.decode(z.detach(), y))
    return x.detach().to(images.device)


# --------------------------------------------------------------------------- explaining a VAE
class Reconstructor(nn.Module):
    """A VAE seen as an image-to-image network: ``x -> sigmoid(decode(mu(x)))`` ``[B, C, H, W]``.

    Deterministic (the posterior mean, no sampling), so that explainers such as
    ``lk.guided_backprop(Reconstructor(vae), images, target=lk.region_target(...))`` show which
    input pixels a region of the reconstruction depends on. Wraps (does not copy) an
    unconditional VAE. Lab 07.
    """

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        _check_vae(vae, "Reconstructor")
        if _conditional(vae):
            raise ValueError("Reconstructor: wrap an unconditional VAE (num_classes=0); a conditional one needs labels")
        self.vae = vae

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.vae.decode(self.vae.encode(x)[0]))
