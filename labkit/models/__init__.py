"""Model registry of the course: ``get_model(name, **kw)`` and ``list_models()``.

Small course models live in submodules that register themselves with ``@register_model``;
torchvision's ImageNet architectures come through ``labkit.models.pretrained``, the ImageNet network
that ships with pip (EfficientNet-Lite0) through ``labkit.models.efficientnet``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from torch import nn

from .wrappers import Normalize, fully_convolutional, with_normalization

__all__ = ["get_model", "list_models", "register_model", "count_parameters", "torchvision_model",
           "find_weights", "WeightsNotFoundError", "TORCHVISION_ARCHS", "imagenet_model", "imagenet_classes",
           "ImageNetWeightsError", "Normalize", "with_normalization", "fully_convolutional"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DOCS: dict[str, str] = {}
# Submodules that register models; a missing one (not written yet) is skipped.
_SUBMODULES = ("small", "pretrained", "efficientnet", "generative", "segmentation", "dann")
_loaded = False


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make ``fn(**kw) -> nn.Module`` available as ``get_model(name, **kw)``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = fn
        doc = (fn.__doc__ or "").strip()
        _DOCS[name] = doc.splitlines()[0] if doc else ""
        return fn

    return deco


def register_class(name: str, cls: type[nn.Module], doc: str) -> None:
    """Register ``cls`` itself as ``get_model(name, **kw)`` (its options are its constructor's)."""

    def build(**kwargs: Any) -> nn.Module:
        return cls(**kwargs)

    build.__doc__, build.__name__ = doc, name
    register_model(name)(build)


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for sub in _SUBMODULES:
        try:
            importlib.import_module(f"{__name__}.{sub}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{sub}":
                raise
    _register_torchvision()
    _loaded = True


def __getattr__(name: str) -> Any:
    # torchvision's architectures and their weight lookup live in .pretrained (imports torchvision).
    if name in ("torchvision_model", "find_weights", "WeightsNotFoundError", "TORCHVISION_ARCHS"):
        from . import pretrained

        return getattr(pretrained, name)
    if name in ("imagenet_model", "imagenet_classes", "ImageNetWeightsError"):
        from . import efficientnet

        return getattr(efficientnet, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_torchvision() -> None:
    from .pretrained import TORCHVISION_ARCHS, torchvision_model

    for arch in TORCHVISION_ARCHS:
        if arch not in _REGISTRY:
            def build(*, _arch: str = arch, **kw: Any) -> nn.Module:
                return torchvision_model(_arch, **kw)

            build.__doc__ = f"torchvision {arch} (``weights='imagenet'`` or ``'random'``; see torchvision_model)"
            register_model(arch)(build)


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` (unknown names list the valid ones)."""
    _load_all()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters; lab 01 uses it for the VGG16 question."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
