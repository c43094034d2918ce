"""Device choice and transfers (lab 00 reports it; ``training`` and the explainers use it).

No module-level device global: call :func:`get_device` where a device is needed.

**The one rule for ``device=None``** (:func:`resolve_device`), the same in every labkit function:

- a *trainer* (``fit``, ``train_or_load``, ``train_vae``, ``train_gan``, ``train_dann``,
  ``train_segmentation``) takes the model to the best device (``"auto"``: CUDA, else MPS, else the
  CPU; ``LABKIT_DEVICE`` overrides) and trains there; the model stays there afterwards;
- everything else (evaluation, prediction, explanation, attacks) runs where the model's parameters
  are and never moves the model.

An explicit ``device`` (a name or a ``torch.device``) always wins.
"""

from __future__ import annotations

import contextlib
import platform
from typing import Any

import torch

__all__ = ["get_device", "to_device", "autocast", "device_report"]  # resolve_device, model_device: internal

_VALID = ("auto", "cpu", "cuda", "mps")


def get_device(prefer: str | torch.device | None = "auto") -> torch.device:
    """Return ``cuda`` if available, else ``mps``, else ``cpu`` (``prefer`` forces one).

    ``LABKIT_DEVICE`` in the environment overrides ``"auto"`` (e.g. to force the CPU).
    """
    import os

    if isinstance(prefer, torch.device):
        return prefer
    source = "device"
    if prefer is None or prefer == "auto":
        prefer = os.environ.get("LABKIT_DEVICE", "auto")
        source = "LABKIT_DEVICE" if prefer != "auto" else source
    if not isinstance(prefer, str) or not _valid_name(prefer):
        raise ValueError(f"{source} must be one of {_VALID} (optionally 'cuda:N'), got {prefer!r}")
    if prefer == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(prefer)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{source}={prefer!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{source}={prefer!r}: only {torch.cuda.device_count()} CUDA device(s); use 'cuda' or 'cpu'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{source}={prefer!r} was asked for but MPS is not available; use 'auto' or 'cpu'")
    return dev


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's first parameter (else buffer) lives; the CPU for a model without tensors."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None, model: torch.nn.Module, *, trains: bool) -> torch.device:
    """The device a labkit function runs on (the module docstring states the rule).

    ``device``: an explicit choice, or ``None``; ``trains``: whether the caller is a trainer (which
    takes the model to the best device) or not (which stays where the model is).
    """
    if device is not None:
        if not isinstance(device, (str, torch.device)):
            raise TypeError(f"device must be None, a name ('auto', 'cpu', 'cuda', 'cuda:1', 'mps') or a torch.device, "
                            f"got {type(device).__name__}")
        return get_device(device)
    return get_device("auto") if trains else model_device(model)


def _valid_name(name: str) -> bool:
    """'auto', 'cpu', 'mps', 'cuda', optionally with an index ('cuda:1', or 'mps:0' as str(device) gives)."""
    base, sep, index = name.partition(":")
    if not sep:
        return base in _VALID
    return base != "auto" and base in _VALID and index.isdigit()


def to_device(obj: Any, device: torch.device | str, *, non_blocking: bool | None = None) -> Any:
    """Move a tensor, module, or a (nested) list/tuple/dict of tensors to ``device``.

    Transfers are non-blocking when the target is CUDA (pinned host memory makes them async).
    """
    device = torch.device(device)
    if non_blocking is None:
        non_blocking = device.type == "cuda"
    if isinstance(obj, (torch.Tensor, torch.nn.Module)):
        return obj.to(device, non_blocking=non_blocking) if isinstance(obj, torch.Tensor) else obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking=non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        moved = [to_device(v, device, non_blocking=non_blocking) for v in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else type(obj)(moved)  # namedtuples take fields
    return obj


def autocast(device: torch.device | str, *, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bfloat16 where supported, else float16); a no-op elsewhere."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def device_report() -> dict[str, str]:
    """Versions and hardware, as shown by lab 00's environment check."""
    import numpy
    import torchvision

    dev = get_device()
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "device": str(dev),
        "threads": str(torch.get_num_threads()),
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info
