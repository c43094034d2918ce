"""labkit: the helper package of the course *Seeing inside deep networks*.

Every lab does ``import labkit as lk`` and calls ``lk.<name>``. Names are looked up
lazily in the modules listed in ``_MODULES`` (each declares its public names in
``__all__``), so ``import labkit`` is fast and does not import matplotlib or torchvision
until a lab needs them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

# Order matters only for speed of lookup; a name must be public in exactly one module. The namespace
# holds what labs and students use; the runner, the reference bands and the grader are imported
# from their modules (labkit.runner, labkit.reference, labkit.grading) by the command line.
_MODULES = (
    "results",
    "config",
    "device",
    "reproducibility",
    "storage",
    "datasets",
    "models",
    "training",
    "hooks",
    "attribution",
    "deconv",
    "feature_vis",
    "style",
    "adversarial",
    "embeddings",
    "metrics",
    "transfer",
    "vae",
    "gan",
    "domain_adaptation",
    "segmentation",
    "plotting",
    "widgets",
)

_cache: dict[str, object] = {}


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:  # a module not written yet must not break the others
        if exc.name == f"{__name__}.{name}":
            return None
        raise


def __getattr__(name: str) -> object:
    if name.startswith("__"):
        raise AttributeError(name)
    if name in _cache:
        return _cache[name]
    for mod_name in _MODULES:
        mod = _module(mod_name)
        if mod is not None and name in getattr(mod, "__all__", ()):
            value = getattr(mod, name)
            _cache[name] = value
            return value
    raise AttributeError(f"labkit has no attribute {name!r}; see dir(labkit) for the public names")


def __dir__() -> list[str]:
    names = set(globals())
    for mod_name in _MODULES:
        mod = _module(mod_name)
        if mod is not None:
            names.update(getattr(mod, "__all__", ()))
    return sorted(names)
