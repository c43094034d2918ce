"""Data sets of the course: embedded generators (no files, no network) and real loaders.

``list_datasets()`` names them all; ``load_dataset(name, **kw)`` calls one by name.
Embedded: ``shapes``, ``scenes``, ``glyph_digits``, ``uci_digits``, ``photos``.
Real (found under the data root, see ``labkit.storage``): ``mnist``, ``mnist_m``,
``hymenoptera``, ``imagenet_samples`` (and ``photo_scenes``, scenes on BSDS500 photos).
``make_augment`` (``labkit.datasets.augment``): seeded batch augmentations for ``lk.fit(augment=...)``.
"""

from __future__ import annotations

from typing import Any, Callable

from .augment import make_augment
from .base import ImageSet
from .embedded import *  # noqa: F401,F403
from .embedded import __all__ as _embedded_all
from .real import *  # noqa: F401,F403
from .real import __all__ as _real_all

EMBEDDED = ("shapes", "scenes", "glyph_digits", "uci_digits", "photos")
REAL = ("mnist", "mnist_m", "hymenoptera", "imagenet_samples")

__all__ = ["ImageSet", "make_augment", *_embedded_all, *_real_all, "list_datasets", "load_dataset", "EMBEDDED", "REAL"]


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, embedded first."""
    return [*EMBEDDED, *REAL]


def load_dataset(name: str, **kwargs: Any) -> Any:
    """Call the data set function ``name`` with ``kwargs``; unknown names list the valid ones."""
    if name not in list_datasets():
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(list_datasets())}")
    fn: Callable[..., Any] = globals()[name]
    return fn(**kwargs)
