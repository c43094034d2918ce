"""Generative networks of the course. Variational autoencoders (lab 07) come first.

VAE part (Kingma & Welling 2014): :class:`MLPVAE` (fully connected encoder/decoder, the
paper's architecture) and :class:`ConvVAE` (strided convolutions down, transposed
convolutions up), both optionally *conditional* (Sohn et al. 2015) on a class label given as
a one-hot vector to the encoder and to the decoder (``num_classes > 0``). Both share the
interface of :class:`VAE`:

- ``encode(x, y=None) -> (mu, logvar)``, the Gaussian posterior q(z|x[, y]);
- ``decode(z, y=None) -> logits`` ``[B, C, H, W]``; ``sigmoid(logits)`` is the decoder mean
  (the Bernoulli probabilities, or the Gaussian mean);
- ``forward(x, y=None) -> (logits, mu, logvar)``: z drawn with the reparameterization trick in
  training mode, ``z = mu`` in eval mode.

All nonlinearities are ``nn.ReLU`` modules, so guided backpropagation (``lk.guided_backprop``)
applies to them. Registered as ``lk.get_model("mlp_vae" | "conv_vae" | "cvae")``.
The training loop, the loss and the helpers live in ``labkit/vae.py``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int

from . import register_class, register_model

__all__ = ["VAE", "MLPVAE", "ConvVAE"]


def _shape(in_shape: object) -> tuple[int, int, int]:
    if (not isinstance(in_shape, (tuple, list)) or len(in_shape) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in in_shape)):
        raise ValueError(f"in_shape must be (channels, height, width) of positive ints, e.g. (1, 28, 28), "
                         f"got {in_shape!r}")
    return tuple(in_shape)  # type: ignore[return-value]


def _label_one_hot(y: Tensor | None, num_classes: int, batch: int, device: torch.device, who: str) -> Tensor | None:
    """The one-hot labels ``y`` of a conditional model (``who``: the model, for the messages), else None."""
    if num_classes == 0:
        if y is not None:
            raise ValueError(f"y was given to an unconditional {who} (num_classes=0); drop it or build the "
                             "model with num_classes=K")
        return None
    if y is None:
        raise ValueError(f"this {who} is conditional (num_classes={num_classes}): pass the labels y")
    if not isinstance(y, Tensor) or y.dtype != torch.long or y.shape != (batch,):
        got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must be an int64 tensor of shape ({batch},) with one label per row, got {got}")
    if bool(((y < 0) | (y >= num_classes)).any()):
        raise ValueError(f"y holds labels outside 0..{num_classes - 1}")
    return F.one_hot(y.to(device), num_classes).float()


class VAE(nn.Module):
    """Common interface of the course's VAEs; subclasses build ``encoder`` / ``decoder`` parts.

    ``num_classes = 0``: a plain VAE; ``num_classes = K > 0``: a conditional VAE whose encoder
    and decoder also receive the one-hot label (then ``y`` is required).
    """

    in_shape: tuple[int, int, int]
    latent_dim: int
    num_classes: int

    def _with_label(self, h: Tensor, y: Tensor | None) -> Tensor:
        """``h`` [B, F], with the one-hot label appended for a conditional model (unchanged otherwise)."""
        onehot = _label_one_hot(y, self.num_classes, len(h), h.device, "VAE")
        return h if onehot is None else torch.cat([h, onehot], 1)

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance ``[B, latent_dim]`` of the Gaussian posterior q(z | x[, y])."""
        raise NotImplementedError

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Decoder logits ``[B, C, H, W]``; ``torch.sigmoid`` of them is the decoder mean."""
        raise NotImplementedError

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x, y)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decode(z, y), mu, logvar

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, latent_dim={self.latent_dim}, num_classes={self.num_classes}"


class MLPVAE(VAE):
    """Fully connected VAE: ``D -> hidden... -> (mu, logvar)`` and ``z -> reversed(hidden) -> D``.

    Kingma & Welling (2014) used one hidden layer of 500 units for MNIST; the default here is
    one layer of 400. Used in lab 07 (MLP vs conv, the 2-D latent map, the conditional VAE).
    """

    def __init__(self, in_shape: Sequence[int] = (1, 28, 28), latent_dim: int = 16, *,
                 hidden: Sequence[int] = (400,), num_classes: int = 0) -> None:
        super().__init__()
        self.in_shape = _shape(tuple(in_shape) if isinstance(in_shape, list) else in_shape)
        self.latent_dim = check_int(latent_dim, "latent_dim", low=1)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be 0 (plain VAE) or the number of classes, got {num_classes!r}")
        self.num_classes = num_classes
        if not hidden:
            raise ValueError("hidden must list at least one layer width, e.g. (400,)")
        widths = [check_int(h, f"hidden[{i}]", low=1) for i, h in enumerate(hidden)]
        d = self.in_shape[0] * self.in_shape[1] * self.in_shape[2]
        enc: list[nn.Module] = []
        prev = d + num_classes
        for w in widths:
            enc += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        self.encoder = nn.Sequential(*enc)
        self.to_stats = nn.Linear(prev, 2 * latent_dim)
        dec: list[nn.Module] = []
        prev = latent_dim + num_classes
        for w in reversed(widths):
            dec += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        dec.append(nn.Linear(prev, d))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, logvar = self.to_stats(self.encoder(self._with_label(x.flatten(1), y))).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        z = self._with_label(z, y)
        return self.decoder(z).view(len(z), *self.in_shape)


class ConvVAE(VAE):
    """Convolutional VAE: 4x4 stride-2 convolutions halve the image per block, a dense layer
    gives (mu, logvar); the decoder mirrors it with 4x4 stride-2 transposed convolutions.

    Height and width must be divisible by ``2 ** len(widths)`` (28 with two blocks: 28 -> 14 -> 7).
    A conditional model concatenates the one-hot label to the flattened features (encoder) and
    to z (decoder). Used in lab 07.
    """

    def __init__(self, in_shape: Sequence[int] = (1, 28, 28), latent_dim: int = 16, *,
                 widths: Sequence[int] = (32, 64), hidden: int = 256, num_classes: int = 0) -> None:
        super().__init__()
        self.in_shape = _shape(tuple(in_shape) if isinstance(in_shape, list) else in_shape)
        self.latent_dim = check_int(latent_dim, "latent_dim", low=1)
        check_int(hidden, "hidden", low=1)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be 0 (plain VAE) or the number of classes, got {num_classes!r}")
        self.num_classes = num_classes
        if not widths:
            raise ValueError("widths must list at least one conv block width, e.g. (32, 64)")
        widths = [check_int(w, f"widths[{i}]", low=1) for i, w in enumerate(widths)]
        c, h, w = self.in_shape
        factor = 2 ** len(widths)
        if h % factor or w % factor:
            raise ValueError(f"in_shape {self.in_shape}: height and width must be divisible by 2**len(widths) = "
                             f"{factor}; use fewer widths or pad the images")
        self._grid = (widths[-1], h // factor, w // factor)
        flat = widths[-1] * (h // factor) * (w // factor)
        enc: list[nn.Module] = []
        prev = c
        for width in widths:
            enc += [nn.Conv2d(prev, width, 4, stride=2, padding=1), nn.ReLU()]
            prev = width
        enc.append(nn.Flatten())
        self.encoder = nn.Sequential(*enc)
        self.encoder_head = nn.Sequential(nn.Linear(flat + num_classes, hidden), nn.ReLU())
        self.to_stats = nn.Linear(hidden, 2 * latent_dim)
        self.decoder_head = nn.Sequential(nn.Linear(latent_dim + num_classes, hidden), nn.ReLU(),
                                          nn.Linear(hidden, flat), nn.ReLU())
        dec: list[nn.Module] = []
        chans = list(reversed(widths)) + [c]
        for i in range(len(widths)):
            dec.append(nn.ConvTranspose2d(chans[i], chans[i + 1], 4, stride=2, padding=1))
            if i < len(widths) - 1:
                dec.append(nn.ReLU())
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, logvar = self.to_stats(self.encoder_head(self._with_label(self.encoder(x), y))).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        z = self._with_label(z, y)
        return self.decoder(self.decoder_head(z).view(len(z), *self._grid))


@register_model("cvae")
def cvae(*, arch: str = "mlp", num_classes: int = 10, **kwargs: object) -> VAE:
    """Conditional VAE (Sohn et al. 2015) on one-hot labels: ``arch="mlp"`` or ``"conv"`` (lab 07)."""
    if arch not in ("mlp", "conv"):
        raise ValueError(f"arch must be 'mlp' or 'conv', got {arch!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int for a conditional VAE, got {num_classes!r}")
    cls = MLPVAE if arch == "mlp" else ConvVAE
    return cls(num_classes=num_classes, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- GAN models (lab 10) below
#
# DCGAN (Radford et al. 2016) for small images, optionally conditional on a class label (Mirza &
# Osindero 2014): ``lk.get_model("dcgan_generator" | "dcgan_discriminator", num_classes=K)``.
# Images live in [0, 1] at both interfaces (the generator maps its tanh output to [0, 1], the
# discriminator maps its input back to [-1, 1]). The training loop is ``labkit/gan.py``.

__all__ += ["DCGANGenerator", "DCGANDiscriminator", "dcgan_init"]


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialization (Radford et al. 2016, section 4): conv / linear weights ~ N(0, 0.02),
    batch-norm scales ~ N(1, 0.02), biases 0. Apply with ``model.apply(dcgan_init)``. Lab 10."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _gan_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be 0 (unconditional GAN) or the number of classes, got {num_classes!r}")
    return num_classes


def _halving_widths(widths: Sequence[int], shape: tuple[int, int, int], name: str,
                    example: str) -> tuple[list[int], int]:
    """The DCGAN blocks' widths, checked, and ``2 ** len(widths)``: each block halves (or doubles) the
    side, so ``shape``'s height and width must be divisible by it."""
    if not widths:
        raise ValueError(f"widths must list at least one width, e.g. {example}")
    widths = [check_int(w, f"widths[{i}]", low=1) for i, w in enumerate(widths)]
    factor = 2 ** len(widths)
    if shape[1] % factor or shape[2] % factor:
        raise ValueError(f"{name} {shape}: height and width must be divisible by 2**len(widths) = "
                         f"{factor}; use fewer widths")
    return widths, factor


class DCGANGenerator(nn.Module):
    """DCGAN generator: ``z [B, latent_dim]`` (+ one-hot label) -> images ``[B, C, H, W]`` in [0, 1].

    A linear layer makes a ``widths[0] x H/f x W/f`` grid (``f = 2 ** len(widths)``), then 4x4
    stride-2 transposed convolutions double the resolution, with batch norm and ReLU between them
    and tanh at the end (Radford et al. 2016's guidelines). The default, 64 and 32 channels for
    28x28 digits, is a small DCGAN that trains in a minute on a CPU. A conditional generator
    (``num_classes = K > 0``) receives the one-hot label concatenated to z (Mirza & Osindero 2014).
    Used in lab 10.
    """

    def __init__(self, latent_dim: int = 64, *, out_shape: Sequence[int] = (1, 28, 28),
                 widths: Sequence[int] = (64, 32), num_classes: int = 0) -> None:
        super().__init__()
        self.latent_dim = check_int(latent_dim, "latent_dim", low=1)
        self.out_shape = _shape(tuple(out_shape) if isinstance(out_shape, list) else out_shape)
        self.num_classes = _gan_classes(num_classes)
        widths, factor = _halving_widths(widths, self.out_shape, "out_shape", "(64, 32)")
        c, h, w = self.out_shape
        self._grid = (widths[0], h // factor, w // factor)
        flat = widths[0] * (h // factor) * (w // factor)
        self.project = nn.Sequential(nn.Linear(self.latent_dim + self.num_classes, flat), nn.BatchNorm1d(flat),
                                     nn.ReLU())
        layers: list[nn.Module] = []
        chans = widths + [c]
        for i in range(len(widths)):
            layers.append(nn.ConvTranspose2d(chans[i], chans[i + 1], 4, stride=2, padding=1,
                                             bias=i == len(widths) - 1))
            if i < len(widths) - 1:
                layers += [nn.BatchNorm2d(chans[i + 1]), nn.ReLU()]
        layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z must be a [B, {self.latent_dim}] tensor of noise, got {got}")
        onehot = _label_one_hot(y, self.num_classes, len(z), z.device, "generator")
        if onehot is not None:
            z = torch.cat([z, onehot], 1)
        h = self.project(z).view(len(z), *self._grid)
        return 0.5 * (self.net(h) + 1.0)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, out_shape={self.out_shape}, num_classes={self.num_classes}"


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: images ``[B, C, H, W]`` in [0, 1] (+ label) -> one logit per image ``[B]``.

    4x4 stride-2 convolutions with LeakyReLU(0.2), batch norm on all but the first (Radford et al.
    2016), then a linear layer to one logit; ``sigmoid(logit)`` is D's probability that the image
    is real. A conditional discriminator (``num_classes = K > 0``) sees the one-hot label as K
    constant extra input channels (Mirza & Osindero 2014 concatenate y to D's input) and, with
    ``projection=True`` (the default), also adds the inner product of a learned class embedding
    with its last features to the logit (the projection discriminator of Miyato & Koyama 2018),
    which made the label matter about twice as fast in our CPU-sized runs. Lab 10.
    """

    def __init__(self, in_shape: Sequence[int] = (1, 28, 28), *, widths: Sequence[int] = (32, 64),
                 num_classes: int = 0, projection: bool = True) -> None:
        super().__init__()
        self.in_shape = _shape(tuple(in_shape) if isinstance(in_shape, list) else in_shape)
        self.num_classes = _gan_classes(num_classes)
        widths, factor = _halving_widths(widths, self.in_shape, "in_shape", "(32, 64)")
        c, h, w = self.in_shape
        layers: list[nn.Module] = []
        prev = c + self.num_classes
        for i, width in enumerate(widths):
            layers.append(nn.Conv2d(prev, width, 4, stride=2, padding=1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(0.2))
            prev = width
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        flat = widths[-1] * (h // factor) * (w // factor)
        self.head = nn.Linear(flat, 1)
        if not isinstance(projection, bool):
            raise ValueError(f"projection must be True or False, got {projection!r}")
        self.embed = nn.Embedding(self.num_classes, flat) if self.num_classes and projection else None
        self.apply(dcgan_init)
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a [B, {', '.join(map(str, self.in_shape))}] batch of images, got {got}")
        h = 2.0 * x - 1.0
        onehot = _label_one_hot(y, self.num_classes, len(x), x.device, "discriminator")
        if onehot is not None:
            h = torch.cat([h, onehot[:, :, None, None].expand(-1, -1, *self.in_shape[1:])], 1)
        features = self.features(h)
        logit = self.head(features).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(y.to(x.device)) * features).sum(1)
        return logit

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, num_classes={self.num_classes}, projection={self.embed is not None}"


register_class("mlp_vae", MLPVAE,
               "Fully connected VAE (Kingma & Welling 2014) for 28x28 digits (lab 07); options of :class:`MLPVAE`.")
register_class("conv_vae", ConvVAE,
               'Convolutional VAE for 28x28 digits (lab 07); options of :class:`ConvVAE`.')
register_class("dcgan_generator", DCGANGenerator,
               "DCGAN generator (Radford et al. 2016), conditional with ``num_classes=K`` (lab 10); "
               "see :class:`DCGANGenerator`.")
register_class("dcgan_discriminator", DCGANDiscriminator,
               'DCGAN discriminator (Radford et al. 2016), conditional with ``num_classes=K`` (lab 10).')
