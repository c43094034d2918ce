"""Every public function of labkit that takes a model leaves the caller's model as it found it.

The functions are DISCOVERED from the package (every public callable of ``labkit`` with a
parameter annotated ``nn.Module``, or an unannotated parameter named like a model: ``model``,
``net``, ``classifier``, ``encoder``, ``generator``, ...), so a new function is covered without
editing the discovery; it then needs one entry in :data:`CASES` (how to call it on the tiny
models below), and ``test_every_function_taking_a_model_has_a_case`` FAILS until it has one.

Each case runs on two arrangements of its models (every model of the kit: the classifier, the
generator *and* the discriminator, the source *and* the target network):

- ``train+frozen``: the model in train mode with its BatchNorm in eval mode and its first
  parameter frozen (``requires_grad=False``): a restoration to "all train", "all eval" or
  "all trainable" is caught;
- ``eval+dropout``: the model in eval mode with its Dropout in train mode.

and three times per arrangement: a normal call, then calls that FAIL in the middle (the
model's forward raises at the first, the middle and the last forward pass that the normal call
made, when the hooks, the eval mode and the frozen flags are in place), or, for a function that
runs no forward pass, a call with an argument that is rejected as late as possible.

The rule (labkit's house rule: never change a caller's tensor or a submodule's mode without
restoring it; hooks removed in ``finally`` within the call), checked after every call:

- no hook is left on any module (every ``*hooks*`` dict of every submodule: forward, forward-pre,
  backward, backward-pre, with-kwargs, state-dict...), no global module hook, no torch-function
  mode, the grad mode as before, every ReLU's ``inplace`` flag as before;
- every parameter's ``requires_grad`` as before;
- the caller's tensors unchanged (values, ``requires_grad``, ``.grad``, version counter);
- every submodule's ``training`` flag as before, except for the TRAINERS, which document "the
  model ends in eval mode" (``fit``, ``train_or_load``, ``train_vae``, ``train_gan``,
  ``train_dann``, ``self_train``, ``train_segmentation``, ``adversarial_training``): after a
  normal call every submodule is in eval mode; after a failing call the model is either exactly
  as before (the failure came before the trainer touched the modes) or entirely in eval mode (the
  trainer's ``finally``), never left training half-way (a model left in train mode after a crash
  silently uses batch statistics and dropout in the next cell);
- for the functions that do not train (``trains=False`` below), also the weights, the
  BatchNorm statistics (the state dict) and every parameter's ``.grad``.

Trainers may change parameter values, buffers and ``.grad`` (that is their purpose);
``adversarial_training_step`` trains but documents that it restores the mode, so its modes are
checked as for any other function.
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_mod
from torch.utils.data import TensorDataset

import labkit as lk

BOOM = "boom: the model failed in the middle of a forward pass"

# Unannotated parameters with one of these names are taken to receive a model.
MODEL_PARAM_NAMES = {"model", "models", "net", "network", "module", "classifier", "encoder", "decoder",
                     "generator", "discriminator", "critic", "vae", "backbone", "teacher", "student"}


# --------------------------------------------------------------------------------------- discovery


def _annotation_is_module(annotation: object) -> bool:
    """True when ``annotation`` is ``nn.Module`` or a union with ``nn.Module`` as one alternative."""
    if isinstance(annotation, str):  # `from __future__ import annotations`: "nn.Module | None"
        alternatives = [a.strip() for a in annotation.split("|")]
        return any(a in ("nn.Module", "torch.nn.Module", "Module") for a in alternatives)
    if isinstance(annotation, type):
        return issubclass(annotation, nn.Module)
    args = getattr(annotation, "__args__", ())
    return any(isinstance(a, type) and issubclass(a, nn.Module) for a in args)


def _takes_a_model(obj: object) -> bool:
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    for p in sig.parameters.values():
        if p.annotation is inspect.Parameter.empty:
            if p.name in MODEL_PARAM_NAMES:
                return True
        elif _annotation_is_module(p.annotation):
            return True
    return False


def discover() -> list[str]:
    """Public callables of ``labkit`` (functions, context managers, classes) that take a model."""
    found = []
    for name in dir(lk):
        if name.startswith("_"):
            continue
        obj = getattr(lk, name)
        if inspect.ismodule(obj) or not callable(obj):
            continue
        if isinstance(obj, type) and issubclass(obj, BaseException):
            continue
        if _takes_a_model(obj):
            found.append(name)
    return sorted(found)


DISCOVERED = discover()


# --------------------------------------------------------------------------------------- tiny models


class Trigger:
    """Counts the forward passes through the :class:`Boom` modules of a kit; once armed, raises
    at the ``fail_at``-th. Shared by deep copies of the models (randomization tests copy them)."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail_at = 0

    def __deepcopy__(self, memo: dict) -> Trigger:
        return self

    def hit(self) -> None:
        self.calls += 1
        if self.fail_at and self.calls >= self.fail_at:
            raise RuntimeError(BOOM)


class Boom(nn.Identity):
    """An identity (an ``nn.Identity``, so the deconvnet accepts it on its path) that counts its
    calls and raises when its trigger says so."""

    def __init__(self, trigger: Trigger) -> None:
        super().__init__()
        self.trigger = trigger

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.trigger.hit()
        return x


class TinyNet(nn.Module):
    """A small_cnn-like classifier, 3x8x8 -> 3 classes (``features``, ``pool``, ``classifier``)."""

    def __init__(self, trigger: Trigger) -> None:
        super().__init__()
        self.features = nn.Sequential(
            Boom(trigger), nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=True),  # in place, as VGG's: relu_rule switches it
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class TinyDANN(nn.Module):
    """The DANN interface: ``features`` -> ``classifier`` (3 classes) and ``domain_classifier`` (1 logit)."""

    def __init__(self, trigger: Trigger) -> None:
        super().__init__()
        self.features = nn.Sequential(Boom(trigger), nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 3))
        self.domain_classifier = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TinyVAE(nn.Module):
    """The lk VAE interface on 1x8x8 images: ``encode(x, y) -> (mu, logvar)``, ``decode(z, y) -> logits``."""

    in_shape = (1, 8, 8)
    latent_dim = 2
    num_classes = 0

    def __init__(self, trigger: Trigger) -> None:
        super().__init__()
        self.boom = Boom(trigger)  # on both paths (decode-only functions must fail too)
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                     nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, 4))
        self.decoder = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 64))

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(self.boom(x)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self.boom(z)).view(-1, *self.in_shape)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):  # noqa: ANN201
        mu, logvar = self.encode(x, y)
        return self.decode(mu, y), mu, logvar


class TinyGenerator(nn.Module):
    latent_dim = 2
    num_classes = 0

    def __init__(self, trigger: Trigger) -> None:
        super().__init__()
        self.net = nn.Sequential(Boom(trigger), nn.Linear(2, 64), nn.Unflatten(1, (4, 4, 4)), nn.BatchNorm2d(4),
                                 nn.ReLU(), nn.Dropout(0.1), nn.Upsample(scale_factor=2), nn.Conv2d(4, 1, 3, padding=1),
                                 nn.Sigmoid())

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z)


class TinyDiscriminator(nn.Module):
    num_classes = 0

    def __init__(self, trigger: Trigger) -> None:
        super().__init__()
        self.net = nn.Sequential(Boom(trigger), nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4),
                                 nn.LeakyReLU(0.2), nn.Flatten(), nn.Dropout(0.3), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x).squeeze(1)


class TinyEncoder(nn.Module):
    """The lk segmentation-encoder interface: stride-8/16/32 feature maps and ``out_channels``
    (inputs of at least 32x32 pixels)."""

    out_channels = (4, 4, 4)

    def __init__(self, trigger: Trigger) -> None:
        super().__init__()
        self.body = nn.Sequential(Boom(trigger), nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Dropout2d(0.2))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.body(x)
        return [F.avg_pool2d(f, s) for s in (8, 16, 32)]


class TinySeg(nn.Module):
    """A dense model with ``encoder`` and ``decode(features)`` (lk's FCN interface): [B, 3, H, W] scores."""

    num_classes = 3

    def __init__(self, trigger: Trigger) -> None:
        super().__init__()
        self.encoder = TinyEncoder(trigger)
        self.head = nn.Sequential(nn.Dropout2d(0.5), nn.Conv2d(4, 3, 1))

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Scores at the padded resolution (8 x the stride-8 map), as FCN.decode."""
        return F.interpolate(self.head(features[0]), scale_factor=8, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % 32, 0, (-h) % 32))
        return self.decode(self.encoder(x))[..., :h, :w]


# --------------------------------------------------------------------------------------- kits


class Kit:
    """The models and the tensors of one call; ``kit.<name>`` is a model or an input tensor."""

    def __init__(self, trigger: Trigger, models: dict[str, nn.Module], inputs: dict[str, torch.Tensor],
                 root: Path) -> None:
        self.trigger, self.models, self.inputs, self.root = trigger, models, inputs, root

    def __getattr__(self, name: str) -> Any:
        for store in ("models", "inputs"):
            values = self.__dict__.get(store, {})
            if name in values:
                return values[name]
        raise AttributeError(name)


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def make_kit(kind: str, root: Path) -> Kit:
    torch.manual_seed(0)
    t = Trigger()
    y = torch.tensor([0, 1, 2, 0])
    if kind == "cnn":
        models = {"model": TinyNet(t)}
        inputs = {"x": _rand(4, 3, 8, 8, seed=1), "y": y, "maps": _rand(4, 8, 8, seed=2),
                  "masks": _rand(4, 8, 8, seed=3) > 0.5}
    elif kind == "two_cnns":
        models = {"model": TinyNet(t), "other": TinyNet(t)}
        inputs = {"x": _rand(4, 3, 8, 8, seed=1), "adv": _rand(4, 3, 8, 8, seed=4), "y": y}
    elif kind == "dann":
        models = {"model": TinyDANN(t)}
        inputs = {"x": _rand(4, 3, 8, 8, seed=1), "y": y, "xt": _rand(4, 3, 8, 8, seed=5)}
    elif kind == "vae":
        models = {"model": TinyVAE(t)}
        inputs = {"x": _rand(4, 1, 8, 8, seed=1), "z": torch.randn(3, 2, generator=torch.Generator().manual_seed(6)),
                  "visible": _rand(8, 8, seed=7) > 0.5}
    elif kind == "gan":
        models = {"generator": TinyGenerator(t), "discriminator": TinyDiscriminator(t)}
        inputs = {"x": _rand(4, 1, 8, 8, seed=1)}
    elif kind == "seg":
        models = {"model": TinySeg(t)}
        inputs = {"x": _rand(4, 3, 8, 8, seed=1), "masks": torch.randint(0, 3, (4, 8, 8),
                                                                         generator=torch.Generator().manual_seed(8))}
    elif kind == "encoder":
        models = {"model": TinyEncoder(t)}
        inputs = {"x": _rand(2, 3, 32, 32, seed=1)}
    else:
        raise ValueError(kind)
    root.mkdir(parents=True, exist_ok=True)
    return Kit(t, models, inputs, root)


CONFIGS = ("train+frozen", "eval+dropout")


def arrange(model: nn.Module, config: str) -> None:
    bn = next(m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    dropout = next(m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd))
    if config == "train+frozen":
        model.train()
        bn.eval()
        next(model.parameters()).requires_grad_(False)
    else:
        model.eval()
        dropout.train()


# --------------------------------------------------------------------------------------- the table


@dataclass
class Case:
    """How to call ``lk.<fn>`` on a kit. ``fail``: ``"boom"`` (the same call, the model failing
    mid-forward), a callable (a call with an argument rejected late), or None (the function only
    reads the model: nothing can fail after it started; say why in ``why``)."""

    fn: str
    kit: str
    call: Callable[[Kit], Any]
    fail: str | Callable[[Kit], Any] | None = "boom"
    trains: bool = False  # changes parameter values on purpose
    ends_eval: bool = False  # documented "the model ends in eval mode"
    variant: str = ""
    why: str = ""

    @property
    def id(self) -> str:
        return f"{self.fn}[{self.variant}]" if self.variant else self.fn


def _fwd(k: Kit) -> None:
    with torch.no_grad():
        k.model(k.x)


def _input_grad(k: Kit) -> torch.Tensor:
    x = k.x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(k.model(x).sum(), x)
    return g


def _with_capture(k: Kit) -> None:
    with lk.capture(k.model, ["features.3", "features.6"], gradients=True):
        _input_grad(k)


def _with_relu_rule(k: Kit) -> None:
    with lk.relu_rule(k.model, "guided"):
        _input_grad(k)


def _with_eval_mode(k: Kit) -> None:
    with lk.eval_mode(k.model, freeze=True):
        _fwd(k)


def _with_preserve_state(k: Kit) -> None:
    with lk.preserve_state(k.model):
        k.model.eval()
        for p in k.model.parameters():
            p.requires_grad_(not p.requires_grad)
        _fwd(k)


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)


def _pgd_attack(m: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    return lk.pgd(m, x, y, eps, alpha=eps / 2, steps=2) if eps > 0 else x


def _train_or_load_twice(k: Kit) -> None:
    """The checkpoint path: a copy trains and saves, then the caller's model loads the checkpoint."""
    options = dict(root=k.root, epochs=1, batch_size=2, device="cpu")
    lk.train_or_load("tiny", copy.deepcopy(k.model), (k.x, k.y), **options)
    k.trigger.calls = 0
    lk.train_or_load("tiny", k.model, (k.x, k.y), **options)


CPU = {"device": "cpu"}

CASES: list[Case] = [
    # hooks.py
    Case("capture", "cnn", _with_capture),
    Case("relu_rule", "cnn", _with_relu_rule),
    Case("eval_mode", "cnn", _with_eval_mode),
    Case("preserve_state", "cnn", _with_preserve_state),
    Case("get_layer", "cnn", lambda k: lk.get_layer(k.model, "features.3"),
         lambda k: lk.get_layer(k.model, "features.99")),
    Case("layer_names", "cnn", lambda k: lk.layer_names(k.model, kind=nn.Conv2d),
         lambda k: lk.layer_names(k.model, kind="conv")),
    Case("count_hooks", "cnn", lambda k: lk.count_hooks(k.model), None, why="reads the hook dicts only"),
    # models
    Case("count_parameters", "cnn", lambda k: lk.count_parameters(k.model, trainable_only=True), None,
         why="reads the parameters only"),
    Case("EncoderClassifier", "encoder", lambda k: lk.EncoderClassifier(k.model, 3)(k.x)),
    Case("EncoderClassifier", "encoder", lambda k: lk.EncoderClassifier(k.model, 3),
         lambda k: lk.EncoderClassifier(k.model, 0), variant="bad num_classes"),
    Case("FCN", "encoder", lambda k: lk.FCN(k.model, 3, hidden=4)(k.x)),
    Case("FCN", "encoder", lambda k: lk.FCN(k.model, 3, hidden=4),
         lambda k: lk.FCN(k.model, 3, hidden=4, dropout=2.0), variant="bad dropout"),
    # training.py
    Case("evaluate", "cnn", lambda k: lk.evaluate(k.model, (k.x, k.y), batch_size=2)),
    Case("predict", "cnn", lambda k: lk.predict(k.model, (k.x, k.y), batch_size=2)),
    Case("fit", "cnn", lambda k: lk.fit(k.model, (k.x, k.y), (k.x, k.y), epochs=2, batch_size=2, **CPU),
         trains=True, ends_eval=True),
    Case("fit", "cnn", lambda k: lk.fit(k.model, (k.x, k.y), epochs=2, batch_size=2, optimizer="sgd",
                                        scheduler="cosine", augment=lambda x: x.flip(3), **CPU,
                                        on_epoch_end=lambda epoch, m, h: lk.evaluate(m, (k.x, k.y))),
         trains=True, ends_eval=True, variant="sgd, cosine, augment, on_epoch_end"),
    Case("train_or_load", "cnn", lambda k: lk.train_or_load("tiny", k.model, (k.x, k.y), root=k.root, epochs=1,
                                                            batch_size=2, **CPU),
         trains=True, ends_eval=True),
    Case("train_or_load", "cnn", _train_or_load_twice, None, trains=True, ends_eval=True, variant="checkpoint",
         why="the load path runs no forward pass and validates nothing late; the training path is tested above"),
    # attribution.py
    Case("saliency", "cnn", lambda k: lk.saliency(k.model, k.x)),
    Case("gradient_x_input", "cnn", lambda k: lk.gradient_x_input(k.model, k.x, 1)),
    Case("smoothgrad", "cnn", lambda k: lk.smoothgrad(k.model, k.x, samples=3, batch_size=5)),
    Case("integrated_gradients", "cnn", lambda k: lk.integrated_gradients(k.model, k.x, steps=3, batch_size=5)),
    Case("guided_backprop", "cnn", lambda k: lk.guided_backprop(k.model, k.x)),
    Case("deconvnet", "cnn", lambda k: lk.deconvnet(k.model, k.x)),
    Case("grad_cam", "cnn", lambda k: lk.grad_cam(k.model, k.x, "features.5")),
    Case("guided_grad_cam", "cnn", lambda k: lk.guided_grad_cam(k.model, k.x, "features.5")),
    Case("occlusion", "cnn", lambda k: lk.occlusion(k.model, k.x, window=4, stride=4, batch_size=3)),
    Case("occlusion_activation", "cnn",
         lambda k: lk.occlusion_activation(k.model, k.x, "features.6", 1, window=4, stride=4, batch_size=3)),
    # deconv.py
    Case("deconv_projection", "cnn", lambda k: lk.deconv_projection(k.model, k.x, "features.6", 1)),
    Case("top_patches", "cnn", lambda k: lk.top_patches(k.model, k.x, "features.6", 1, k=2, batch_size=2)),
    Case("active_fraction", "cnn", lambda k: lk.active_fraction(k.model, k.x, "features.6", batch_size=2)),
    Case("receptive_field", "cnn", lambda k: lk.receptive_field(k.model, "features.6"),
         lambda k: lk.receptive_field(k.model, "classifier.2")),
    Case("occlusion_drop_by_mask", "cnn",
         lambda k: lk.occlusion_drop_by_mask(k.model, k.x, k.masks, window=4, stride=4, batch_size=3)),
    # feature_vis.py
    Case("class_visualization", "cnn",
         lambda k: lk.class_visualization(k.model, 1, shape=(3, 8, 8), steps=2, init=k.x[0], blur_every=1)),
    Case("activation_maximization", "cnn",
         lambda k: lk.activation_maximization(k.model, "features.6", 1, shape=(3, 8, 8), steps=2, init=k.x[0])),
    Case("features_at", "cnn", lambda k: lk.features_at(k.model, k.x, ["features.2", "features.6"])),
    Case("optimize_image", "cnn",
         lambda k: lk.optimize_image(k.model, lambda z: -k.model(z)[:, 1], k.x[:1], steps=2, jitter=1,
                                     blur_every=1, tv=0.1)),
    Case("invert_features", "cnn", lambda k: lk.invert_features(k.model, k.x[:1], "features.6", steps=2, tv=0.1)),
    # style.py
    Case("style_targets", "cnn", lambda k: lk.style_targets(k.model, k.x, ["features.2"])),
    Case("synthesize_texture", "cnn",
         lambda k: lk.synthesize_texture(k.model, k.x[0], ["features.2", "features.6"], steps=2)),
    Case("style_transfer", "cnn",
         lambda k: lk.style_transfer(k.model, k.x[0], k.x[1], content_layer="features.6",
                                     style_layers=["features.2"], steps=2)),
    # adversarial.py
    Case("fgsm", "cnn", lambda k: lk.fgsm(k.model, k.x, k.y, 0.03)),
    Case("fgsm", "cnn", lambda k: lk.fgsm(k.model, k.x, k.y, 0.03, eval_mode=False), variant="train-mode attack"),
    Case("pgd", "cnn", lambda k: lk.pgd(k.model, k.x, k.y, 0.03, alpha=0.01, steps=2)),
    Case("pgd", "cnn", lambda k: lk.pgd(k.model, k.x, k.y, 0.03, alpha=0.01, steps=2, norm="l2", eval_mode=False),
         variant="l2, train-mode attack"),
    Case("minimal_targeted_attack", "cnn", lambda k: lk.minimal_targeted_attack(k.model, k.x, 1, max_steps=3)),
    Case("robust_accuracy", "cnn", lambda k: lk.robust_accuracy(k.model, k.x, k.y, _pgd_attack, [0.0, 0.03],
                                                                batch_size=2)),
    Case("transfer_success_rate", "two_cnns",
         lambda k: lk.transfer_success_rate(k.model, k.other, k.x, k.adv, k.y, batch_size=2)),
    Case("adversarial_training_step", "cnn",
         lambda k: lk.adversarial_training_step(k.model, _sgd(k.model), k.x, k.y, eps=0.03, alpha=0.01, steps=2,
                                                clean_weight=0.5, seed=0),
         trains=True),
    Case("adversarial_training", "cnn",
         lambda k: lk.adversarial_training(k.model, (k.x, k.y), epochs=2, eps=0.03, alpha=0.01, steps=1,
                                           batch_size=2),
         trains=True, ends_eval=True),
    # embeddings.py, transfer.py, models/wrappers.py
    Case("extract_features", "cnn", lambda k: lk.extract_features(k.model, k.x, "features.6", batch_size=2)),
    Case("extract_features", "cnn", lambda k: lk.extract_features(k.model, TensorDataset(k.x, k.y), None, pool="avg"),
         variant="output"),
    Case("layer_features", "cnn",
         lambda k: lk.layer_features(k.model, k.x, ["features.3", "features.6"], batch_size=2)),
    Case("transfer_model", "cnn", lambda k: lk.transfer_model(k.model, 2, head="classifier.2", freeze=True)(k.x)),
    Case("transfer_model", "cnn", lambda k: lk.transfer_model(k.model, 2, head="classifier.2", freeze=True),
         lambda k: lk.transfer_model(k.model, 2, head="features.1", freeze=True), variant="bad head"),
    # unfreeze_layers changes requires_grad in place by design: on a transfer_model copy, as used
    Case("unfreeze_layers", "cnn", lambda k: lk.unfreeze_layers(
        lk.transfer_model(k.model, 2, head="classifier.2", freeze=True), ["features.5"])(k.x)),
    Case("unfreeze_layers", "cnn", lambda k: lk.unfreeze_layers(
        lk.transfer_model(k.model, 2, head="classifier.2", freeze=True), ["features.5"]),
         lambda k: lk.unfreeze_layers(lk.transfer_model(k.model, 2, head="classifier.2", freeze=True), ["nope"]),
         variant="bad layer"),
    Case("with_normalization", "cnn", lambda k: lk.with_normalization(k.model, mean=[0.5] * 3, std=[0.5] * 3)(k.x)),
    Case("fully_convolutional", "cnn", lambda k: lk.fully_convolutional(k.model)(k.x)),
    Case("cascading_randomization", "cnn",
         lambda k: lk.cascading_randomization(k.model, lk.saliency, k.x, layers=["features.5", "classifier.2"])),
    # metrics.py
    Case("deletion_curve", "cnn", lambda k: lk.deletion_curve(k.model, k.x, k.maps, steps=3, batch_size=5)),
    Case("insertion_curve", "cnn", lambda k: lk.insertion_curve(k.model, k.x, k.maps, steps=3, batch_size=5)),
    Case("randomization_test", "cnn",
         lambda k: lk.randomization_test(k.model, lk.saliency, k.x, layers=["features.5", "classifier.2"])),
    # vae.py
    Case("train_vae", "vae", lambda k: lk.train_vae(k.model, k.x, k.x, epochs=2, batch_size=2, noise_std=0.1, **CPU),
         trains=True, ends_eval=True),
    Case("evaluate_elbo", "vae", lambda k: lk.evaluate_elbo(k.model, k.x, samples=2, batch_size=2)),
    Case("latent_means", "vae", lambda k: lk.latent_means(k.model, k.x, batch_size=2)),
    Case("kl_per_dimension", "vae", lambda k: lk.kl_per_dimension(k.model, k.x, batch_size=2)),
    Case("decode_latents", "vae", lambda k: lk.decode_latents(k.model, k.z, batch_size=2)),
    Case("sample_vae", "vae", lambda k: lk.sample_vae(k.model, 3)),
    Case("decode_grid", "vae", lambda k: lk.decode_grid(k.model, n=2)),
    Case("interpolate", "vae", lambda k: lk.interpolate(k.model, k.x[:2], k.x[2:], steps=3)),
    Case("impute", "vae", lambda k: lk.impute(k.model, k.x, k.visible, steps=2)),
    Case("impute", "vae", lambda k: lk.impute(k.model, k.x, k.visible, method="optimize", steps=2),
         variant="optimize"),
    Case("Reconstructor", "vae", lambda k: lk.Reconstructor(k.model)(k.x)),
    # gan.py
    Case("train_gan", "gan", lambda k: lk.train_gan(k.generator, k.discriminator, k.x, epochs=2, batch_size=2,
                                                    n_fixed=2, **CPU),
         trains=True, ends_eval=True),
    Case("train_gan", "gan", lambda k: lk.train_gan(k.generator, k.discriminator, k.x, epochs=1, batch_size=2,
                                                    lr_d=0.0, score_fn=lambda g: float(lk.sample_gan(g, 2).mean()),
                                                    **CPU),
         trains=True, ends_eval=True, variant="score_fn, frozen discriminator"),
    Case("sample_gan", "gan", lambda k: lk.sample_gan(k.generator, 3, batch_size=2)),
    Case("class_histogram", "cnn", lambda k: lk.class_histogram(k.model, k.x, batch_size=2)),
    Case("classifier_fid", "cnn", lambda k: lk.classifier_fid(k.model, k.x, k.x.flip(0), layer="features.6",
                                                              batch_size=2)),
    # domain_adaptation.py
    Case("domain_accuracy", "dann", lambda k: lk.domain_accuracy(k.model, k.x, k.xt, batch_size=2)),
    Case("pseudo_label", "dann", lambda k: lk.pseudo_label(k.model, k.xt, threshold=0.3, batch_size=2)),
    Case("train_dann", "dann",
         lambda k: lk.train_dann(k.model, (k.x, k.y), k.xt, epochs=2, batch_size=2, steps_per_epoch=2,
                                 source_val=(k.x, k.y), target_val=(k.xt, k.y), **CPU),
         trains=True, ends_eval=True),
    Case("self_train", "dann",
         lambda k: lk.self_train(k.model, (k.x, k.y), (k.xt, k.y), threshold=0.0, epochs=1, batch_size=2,
                                 steps_per_epoch=2, **CPU),
         trains=True, ends_eval=True),
    # segmentation.py
    Case("predict_segmentation", "seg", lambda k: lk.predict_segmentation(k.model, k.x, batch_size=2)),
    Case("evaluate_segmentation", "seg", lambda k: lk.evaluate_segmentation(k.model, (k.x, k.masks), batch_size=2)),
    Case("train_segmentation", "seg",
         lambda k: lk.train_segmentation(k.model, (k.x, k.masks), (k.x, k.masks), epochs=2, batch_size=2, **CPU),
         trains=True, ends_eval=True),
    Case("train_segmentation", "seg",
         lambda k: lk.train_segmentation(k.model, (k.x, k.masks), (k.x, k.masks), epochs=2, batch_size=2,
                                         freeze_encoder=False, **CPU),
         trains=True, ends_eval=True, variant="fine-tune"),
]


# --------------------------------------------------------------------------------------- checks


def _hooks(model: nn.Module) -> list[tuple[str, str, int]]:
    """Every non-empty ``*hooks*`` dict of every submodule (forward, pre, backward, full backward,
    backward-pre, with-kwargs, always-called, state-dict and load hooks)."""
    out = []
    for name, m in model.named_modules():
        for attr, value in vars(m).items():
            if "hook" in attr and isinstance(value, dict) and value:
                out.append((name, attr, len(value)))
    return out


def _global_hooks() -> int:
    names = [n for n in vars(module_mod) if n.startswith("_global_") and "hook" in n]
    return sum(len(getattr(module_mod, n)) for n in names if isinstance(getattr(module_mod, n), dict))


def snapshot(kit: Kit) -> dict[str, Any]:
    snap: dict[str, Any] = {
        "global hooks": _global_hooks(),
        "torch-function modes": torch._C._len_torch_function_stack(),
        "grad mode": torch.is_grad_enabled(),
        "inputs": {k: (t.clone(), t._version, t.requires_grad, t.grad is None) for k, t in kit.inputs.items()},
    }
    for key, model in kit.models.items():
        snap[key] = {
            "training": [(n, m.training) for n, m in model.named_modules()],
            "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
            "hooks": _hooks(model),
            "inplace": [(n, m.inplace) for n, m in model.named_modules() if hasattr(m, "inplace")],
            "grads": [(n, None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()],
            "state": {k: v.clone() for k, v in model.state_dict().items()},
        }
    return snap


def check(case: Case, before: dict[str, Any], kit: Kit, *, failed: bool, when: str) -> None:
    after = snapshot(kit)
    where = f"lk.{case.id} ({when})"
    for key in ("global hooks", "torch-function modes", "grad mode"):
        assert after[key] == before[key], f"{where}: {key} changed: {before[key]} -> {after[key]}"
    for name, (x0, version, req, nograd) in before["inputs"].items():
        x1, version1, req1, nograd1 = after["inputs"][name]
        assert torch.equal(x0, x1), f"{where}: the caller's tensor {name!r} was modified"
        assert (version, req, nograd) == (version1, req1, nograd1), \
            f"{where}: the caller's tensor {name!r} was touched (in place / requires_grad / grad)"
    for key in kit.models:
        b, a = before[key], after[key]
        label = f"{where}, model {key!r}"
        assert a["hooks"] == b["hooks"], f"{label}: hooks left behind: {sorted(set(a['hooks']) - set(b['hooks']))}"
        assert a["requires_grad"] == b["requires_grad"], \
            f"{label}: requires_grad changed: {_diff(b['requires_grad'], a['requires_grad'])}"
        assert a["inplace"] == b["inplace"], f"{label}: inplace flags changed: {_diff(b['inplace'], a['inplace'])}"
        if case.ends_eval:
            all_eval = not any(flag for _, flag in a["training"])
            if failed:
                assert a["training"] == b["training"] or all_eval, (
                    f"{label}: a trainer that failed must leave the model as before or in eval mode (its finally), "
                    f"got {_diff(b['training'], a['training'])}")
            else:
                assert all_eval, f"{label}: the model must end in eval mode, still training: " \
                                 f"{[n for n, flag in a['training'] if flag]}"
        else:
            assert a["training"] == b["training"], \
                f"{label}: submodule modes changed: {_diff(b['training'], a['training'])}"
        if not case.trains:
            for k, v in b["state"].items():
                assert torch.equal(a["state"][k], v), f"{label}: the model's state {k!r} changed (weights/statistics)"
            for (n, g0), (_, g1) in zip(b["grads"], a["grads"]):
                same = (g0 is None and g1 is None) or (g0 is not None and g1 is not None and torch.equal(g0, g1))
                assert same, f"{label}: the .grad of parameter {n!r} changed"


def _diff(before: list[tuple[str, Any]], after: list[tuple[str, Any]]) -> list[str]:
    return [f"{n!r}: {v0} -> {v1}" for (n, v0), (_, v1) in zip(before, after) if v0 != v1]


# --------------------------------------------------------------------------------------- tests


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_PROGRESS", "none")
    monkeypatch.setenv("LABKIT_WIDGETS", "off")


def test_discovery_finds_the_functions_taking_a_model() -> None:
    """Discovery is not silently broken: it finds the known functions of every module."""
    print(f"{len(DISCOVERED)} public callables of labkit take a model: {', '.join(DISCOVERED)}")
    anchors = {"fit", "evaluate", "predict", "saliency", "grad_cam", "capture", "eval_mode", "fgsm", "pgd",
               "extract_features", "deconv_projection", "class_visualization", "train_vae", "train_gan",
               "sample_gan", "train_dann", "train_segmentation", "randomization_test", "transfer_model"}
    assert anchors <= set(DISCOVERED), f"discovery missed {sorted(anchors - set(DISCOVERED))}"
    assert "reparameterize" not in DISCOVERED  # its `generator` is a torch.Generator (annotated)
    assert "train_shapes_classifier" not in DISCOVERED  # builds its own model


@pytest.mark.parametrize("name", DISCOVERED)
def test_every_function_taking_a_model_has_a_case(name: str) -> None:
    covered = {c.fn for c in CASES}
    assert name in covered, (
        f"lk.{name} takes a model but has no entry in CASES of tests/test_model_state.py: add a "
        f"Case({name!r}, kit, call, fail) saying how to call it on the tiny models (and how to make it fail "
        "mid-call), so that the test checks it restores the model's modes, requires_grad flags and hooks")


def test_every_case_names_a_discovered_function() -> None:
    stale = sorted({c.fn for c in CASES} - set(DISCOVERED))
    assert not stale, f"CASES names functions that are not public or take no model (remove them): {stale}"
    for c in CASES:
        assert c.fail is not None or c.why, f"{c.id}: a case without a failing call must say why"


def run_case(case: Case, config: str, root: Path) -> None:
    """The normal call, then the failing calls, each on fresh models arranged as ``config``."""
    counter = itertools.count()

    def fresh() -> tuple[Kit, dict[str, Any]]:
        kit = make_kit(case.kit, root / f"run{next(counter)}")
        for model in kit.models.values():
            arrange(model, config)
        return kit, snapshot(kit)

    kit, before = fresh()
    case.call(kit)
    check(case, before, kit, failed=False, when=f"{config}, normal call")
    forwards = kit.trigger.calls
    if case.fail is None:
        return
    if case.fail == "boom":
        assert forwards > 0, (f"lk.{case.id}: the normal call ran no forward pass through the model, so it cannot "
                              "fail mid-forward: give its Case a failing call with a bad argument instead")
        for fail_at in sorted({1, (forwards + 1) // 2, forwards}):
            kit, before = fresh()
            kit.trigger.fail_at = fail_at
            with pytest.raises(Exception) as info:  # noqa: PT011 - the model's own error, checked below
                case.call(kit)
            assert BOOM in _messages(info.value), f"lk.{case.id} failed for another reason: {info.value!r}"
            check(case, before, kit, failed=True, when=f"{config}, forward {fail_at} of {forwards} raised")
    else:
        kit, before = fresh()
        with pytest.raises(Exception):  # noqa: B017, PT011 - any rejection will do; the state is what is tested
            case.fail(kit)
        check(case, before, kit, failed=True, when=f"{config}, bad argument")


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_model_state_is_restored(case: Case, config: str, tmp_path: Path) -> None:
    run_case(case, config, tmp_path)


# The checks themselves: each of these deliberately careless functions must be caught.


def _restores_top_mode_only(k: Kit) -> None:  # model.train(was_training): the frozen BatchNorm trains again
    was = k.model.training
    k.model.eval()
    _fwd(k)
    k.model.train(was)


def _unfreezes(k: Kit) -> None:
    for p in k.model.parameters():
        p.requires_grad_(False)
    _fwd(k)
    for p in k.model.parameters():
        p.requires_grad_(True)


def _keeps_a_hook(k: Kit) -> None:
    k.model.features[3].register_forward_hook(lambda *args: None)
    _fwd(k)


def _keeps_a_full_backward_hook(k: Kit) -> None:
    k.model.classifier[2].register_full_backward_hook(lambda *args: None)


def _writes_the_input(k: Kit) -> None:
    k.x.clamp_(0, 1)  # same values, but in place


def _marks_the_input(k: Kit) -> None:
    k.x.requires_grad_(True)


def _runs_in_train_mode(k: Kit) -> None:  # BatchNorm statistics updated by an explainer
    with lk.preserve_state(k.model):
        k.model.train()
        _fwd(k)


def _trains_without_finally(k: Kit) -> None:  # a trainer whose model stays in train mode when it fails
    k.model.train()
    _fwd(k)
    k.model.eval()


LEAKS = [
    Case("predict", "cnn", _restores_top_mode_only, None, why="meta"),
    Case("predict", "cnn", _unfreezes, None, why="meta"),
    Case("predict", "cnn", _keeps_a_hook, None, why="meta"),
    Case("predict", "cnn", _keeps_a_full_backward_hook, None, why="meta"),
    Case("predict", "cnn", _writes_the_input, None, why="meta"),
    Case("predict", "cnn", _marks_the_input, None, why="meta"),
    Case("predict", "cnn", _runs_in_train_mode, None, why="meta"),
    Case("fit", "cnn", _trains_without_finally, trains=True, ends_eval=True),
]


@pytest.mark.parametrize("case", LEAKS, ids=[c.call.__name__ for c in LEAKS])
def test_the_checks_catch_careless_functions(case: Case, tmp_path: Path) -> None:
    caught = []
    for config in CONFIGS:
        try:
            run_case(case, config, tmp_path / config)
        except AssertionError as exc:
            caught.append(str(exc))
    assert caught, f"the checks did not catch {case.call.__name__} in any arrangement"


def _messages(exc: BaseException | None) -> str:
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return " | ".join(parts)
