"""Argument checks: the one place where labkit validates what a caller passes.

Every check raises with one message format, ``"<function>: <argument> must be <what>, got <value>"``
plus, where one exists, the fix: ``TypeError`` when the value has the wrong type, ``ValueError``
when it has the right type and a wrong value. Each returns the value converted (``int``,
``float``) so that a caller writes ``epochs = check_int(epochs, "epochs", fn, low=0)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn


def _where(fn: str | None) -> str:
    return f"{fn}: " if fn else ""


def is_int(value: object) -> bool:
    """An int (a NumPy integer too), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A real number (int or float, NumPy ones too), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_int(value: object, name: str, fn: str | None = None, *, low: int | None = None, high: int | None = None,
              allow_none: bool = False, hint: str = "") -> Any:
    """``value`` as an ``int`` in ``[low, high]`` (``None`` passes with ``allow_none``)."""
    if value is None and allow_none:
        return None
    bounds = (f" >= {low}" if high is None else f" in [{low}, {high}]") if low is not None else (
        f" <= {high}" if high is not None else "")
    none = " or None" if allow_none else ""
    if not is_int(value):
        raise TypeError(f"{_where(fn)}{name} must be an int{bounds}{none}, got {type(value).__name__} "
                        f"({value!r}){hint}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{_where(fn)}{name} must be an int{bounds}{none}, got {value!r}{hint}")
    return int(value)


def check_number(value: object, name: str, fn: str | None = None, *, low: float | None = None,
                 high: float | None = None, strict: bool = False, allow_inf: bool = False, hint: str = "") -> float:
    """``value`` as a finite ``float`` (``inf`` too with ``allow_inf``; NaN never), ``>= low`` (``> low``
    with ``strict``) and ``<= high``."""
    if not is_number(value):
        raise TypeError(f"{_where(fn)}{name} must be a number, got {type(value).__name__} ({value!r}){hint}")
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{_where(fn)}{name} must be a finite number, got {value!r}{hint}")
    if low is not None and (value < low or (strict and value == low)):
        raise ValueError(f"{_where(fn)}{name} must be {'>' if strict else '>='} {low}, got {value!r}{hint}")
    if high is not None and value > high:
        raise ValueError(f"{_where(fn)}{name} must be <= {high}, got {value!r}{hint}")
    return float(value)


def check_prob(value: object, name: str, fn: str | None = None) -> float:
    """``value`` as a ``float`` in ``[0, 1]``."""
    value = check_number(value, name, fn)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{_where(fn)}{name} must be a probability in [0, 1], got {value!r}")
    return value


def check_choice(value: object, name: str, fn: str | None, choices: Sequence[Any]) -> Any:
    """``value`` when it is one of ``choices`` (a ``ValueError`` listing them otherwise)."""
    if value not in choices:
        raise ValueError(f"{_where(fn)}{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_tensor(value: object, name: str, fn: str | None = None, *, floating: bool = False,
                 dim: int | None = None) -> Tensor:
    """``value`` when it is a tensor (floating-point with ``floating``; ``dim`` dimensions)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{_where(fn)}{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{_where(fn)}{name} must be a floating-point tensor, got {value.dtype}; use {name}.float()")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{_where(fn)}{name} must have {dim} dimensions, got shape {tuple(value.shape)}")
    return value


def check_model(value: object, fn: str | None = None, *, name: str = "model", needs: Sequence[str] = (),
                example: str = "") -> nn.Module:
    """``value`` when it is an ``nn.Module`` with the attributes ``needs``."""
    if not isinstance(value, nn.Module) or not all(hasattr(value, a) for a in needs):
        what = "a torch.nn.Module" + (f" with {', '.join('.' + a for a in needs)}" if needs else "")
        raise TypeError(f"{_where(fn)}{name} must be {what}{f' (e.g. {example})' if example else ''}, "
                        f"got {type(value).__name__}")
    return value
