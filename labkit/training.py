"""Training: the one engine of every trainer, and the classifier's ``fit``, ``evaluate``, ``predict``,
``History``, ``train_or_load`` and ``train_shapes_classifier``.

:func:`run_epochs` is the epoch loop under ``fit``, ``train_vae``, ``train_gan``, ``train_dann`` and
``train_segmentation`` (each of them states only its epoch's step), :class:`Curves` the base of their
histories. Progress goes through :class:`labkit.progress.EpochProgress`: a live tqdm bar in JupyterLab,
one static line per training run under papermill (``LABKIT_PROGRESS=plain``, set by ``labkit run``).
Used by every lab that trains a network.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from .device import autocast, resolve_device, to_device
from .hooks import eval_mode
from .progress import EpochProgress, progress_mode
from .reproducibility import make_generator

__all__ = ["History", "fit", "evaluate", "predict", "train_or_load", "as_loader", "progress_mode",
           "train_shapes_classifier"]

Batch = tuple[Tensor, Tensor]
DataLike = Any  # ImageSet, Dataset, DataLoader or a (images, labels) pair


# ---------------------------------------------------------------------------------------------
# The training engine: every trainer of labkit (fit, train_vae, train_gan, train_dann,
# train_segmentation) is its own step inside this one epoch loop and keeps its curves in a
# ``Curves`` subclass.


class Curves:
    """Base of the trainers' histories (dataclasses of per-epoch lists): ``epochs``, ``last``,
    ``to_dict``, ``from_dict``. ``_EPOCH_KEY`` names the curve that has one value per epoch."""

    _EPOCH_KEY = "train_loss"
    _DEFAULT_LAST = "val_acc"
    _EMPTY_HINT = "was validation data given?"

    @property
    def epochs(self) -> int:
        return len(getattr(self, self._EPOCH_KEY))

    def last(self, key: str | None = None) -> float:
        """The final value of a curve (``ValueError`` naming the curves when ``key`` is not one,
        or saying why when it was not measured)."""
        key = self._DEFAULT_LAST if key is None else key
        values = getattr(self, key, None)
        name = type(self).__name__
        if not isinstance(values, list):
            curves = ", ".join(k for k, v in asdict(self).items() if isinstance(v, list))
            raise ValueError(f"{name} has no curve {key!r}; curves: {curves}")
        if not values:
            raise ValueError(f"{name} has no {key} values ({self._EMPTY_HINT})")
        return values[-1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        return cls(**{k: (list(v) if isinstance(v, list) else v) for k, v in d.items()
                      if k in cls.__dataclass_fields__})


def to_training_device(device: torch.device | str | None, *models: nn.Module) -> torch.device:
    """The device a trainer trains on (``device=None``: the best one, see
    :func:`labkit.device.resolve_device`), with every model moved there."""
    dev = resolve_device(device, models[0], trains=True)
    for m in models:
        m.to(dev)
    return dev


def run_epochs(models: Sequence[nn.Module], epochs: int, one_epoch: Callable[[int, EpochProgress], str], *,
               history: Any, desc: str, default_desc: str,
               after_epoch: Callable[[int], None] | None = None) -> None:
    """The epoch loop of every trainer.

    Each epoch: every model in train mode, ``line = one_epoch(epoch, progress)`` (the trainer's
    batches, validation and curves; ``line`` is the epoch's summary), the epoch's wall time into
    ``history.seconds``, the line to :class:`labkit.progress.EpochProgress` (a live bar in
    JupyterLab, one static line per run under papermill), then ``after_epoch(epoch)``. Every model
    ends in eval mode, also when a step raises.
    """
    try:
        with EpochProgress(desc, epochs, default_desc=default_desc) as progress:
            for epoch in range(epochs):
                t0 = time.perf_counter()
                for m in models:
                    m.train()
                line = one_epoch(epoch, progress)
                history.seconds.append(time.perf_counter() - t0)
                progress.update(line)
                if after_epoch is not None:
                    after_epoch(epoch)
    finally:
        for m in models:
            m.eval()


@dataclass
class History(Curves):
    """Per-epoch curves of one :func:`fit` run."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def as_loader(data: DataLike, *, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader | Iterable[Batch]:
    """Accept an ImageSet / Dataset / DataLoader / ``(x, y)`` pair and return something to iterate."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        data = TensorDataset(*data)
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise TypeError(f"data must be an ImageSet, Dataset, DataLoader or (images, labels) pair, got {type(data).__name__}")
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle,
                      generator=make_generator(seed) if shuffle else None)


def _accuracy_count(logits: Tensor, y: Tensor) -> int:
    return int((logits.argmax(1) == y).sum())


@torch.no_grad()
def evaluate(model: nn.Module, data: DataLike, *, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
             device: torch.device | str | None = None, batch_size: int = 256) -> dict[str, float]:
    """Mean loss and accuracy of a classifier on ``data`` (eval mode; the mode is restored).

    ``device=None`` uses the device the model's parameters are on.
    """
    device = resolve_device(device, model, trains=False)
    loss_fn = loss_fn or nn.functional.cross_entropy
    total, loss_sum, correct = 0, 0.0, 0
    with eval_mode(model):
        for x, y in as_loader(data, batch_size=batch_size):
            x, y = to_device((x, y), device)
            with autocast(device):
                out = model(x)
            loss_sum += float(loss_fn(out.float(), y)) * len(y)
            correct += _accuracy_count(out, y)
            total += len(y)
    if total == 0:
        raise ValueError("evaluate: the data is empty")
    return {"loss": loss_sum / total, "accuracy": correct / total}


@torch.no_grad()
def predict(model: nn.Module, data: DataLike, *, device: torch.device | str | None = None,
            batch_size: int = 256) -> Tensor:
    """Logits for every sample of ``data`` (on the CPU), in order; ``device=None``: the model's device."""
    device = resolve_device(device, model, trains=False)
    outs = []
    with eval_mode(model):
        for batch in as_loader(data, batch_size=batch_size):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            with autocast(device):
                outs.append(model(to_device(x, device)).float().cpu())
    if not outs:
        raise ValueError("predict: the data is empty")
    return torch.cat(outs)


def _make_optimizer(model: nn.Module, optimizer: str | torch.optim.Optimizer, lr: float,
                    weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam', 'adamw', 'sgd' or a torch.optim.Optimizer, got {optimizer!r}")


def fit(model: nn.Module, train: DataLike, val: DataLike | None = None, *, epochs: int, lr: float = 1e-3,
        optimizer: str | torch.optim.Optimizer = "adam", weight_decay: float = 0.0, momentum: float = 0.9,
        batch_size: int = 64, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        augment: Callable[[Tensor], Tensor] | None = None, scheduler: str | None = None,
        device: torch.device | str | None = None, seed: int = 0, desc: str = "",
        on_epoch_end: Callable[[int, nn.Module, History], None] | None = None) -> History:
    """Train a classifier with mini-batch gradient descent; returns the per-epoch :class:`History`.

    ``augment`` is applied to each training batch (on the device). ``scheduler="cosine"``
    anneals the learning rate to 0. On CUDA, forward passes run under autocast (bf16/fp16)
    with non-blocking transfers; on the CPU, in plain float32. The model ends in eval mode.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if scheduler not in (None, "cosine"):
        raise ValueError(f"scheduler must be None or 'cosine', got {scheduler!r}")
    device = to_training_device(device, model)
    loss_fn = loss_fn or nn.functional.cross_entropy
    opt = _make_optimizer(model, optimizer, lr, weight_decay, momentum)
    loader = as_loader(train, batch_size=batch_size, shuffle=True, seed=seed)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(loader))) if scheduler else None
    use_scaler = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    history = History()

    def one_epoch(epoch: int, progress: EpochProgress) -> str:
        total, loss_sum, correct = 0, 0.0, 0
        for x, y in loader:
            x, y = to_device((x, y), device)
            if augment is not None:
                x = augment(x)
            with autocast(device):
                out = model(x)
                loss = loss_fn(out.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if sched is not None:
                sched.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += _accuracy_count(out.detach(), y)
            total += len(y)
        history.train_loss.append(loss_sum / max(total, 1))
        history.train_acc.append(correct / max(total, 1))
        line = f"train loss {history.train_loss[-1]:.3f} acc {history.train_acc[-1]:.3f}"
        if val is not None:
            ev = evaluate(model, val, loss_fn=loss_fn, device=device)
            history.val_loss.append(ev["loss"])
            history.val_acc.append(ev["accuracy"])
            line += f" | val loss {history.val_loss[-1]:.3f} acc {history.val_acc[-1]:.3f}"
        return line

    run_epochs([model], epochs, one_epoch, history=history, desc=desc, default_desc="training",
               after_epoch=None if on_epoch_end is None else lambda epoch: on_epoch_end(epoch, model, history))
    return history


def train_shapes_classifier(train: Any, val: Any = None, *, epochs: int, lr: float = 1e-3, batch_size: int = 32,
                            seed: int = 0, device: torch.device | str | None = None, desc: str = "",
                            batch_norm: bool = True, global_pool: bool = True, widths: Sequence[int] = (16, 32, 64),
                            dropout: float = 0.0, **fit_options: Any) -> tuple[nn.Module, Any]:
    """Build and train ``small_cnn`` on an ``ImageSet`` (e.g. ``lk.shapes``); returns ``(model, history)``.

    The recipe: three conv blocks with batch norm (without it the network can sit at chance for
    several epochs on mixed shapes), a global average pool (so the head does not depend on the
    input size), Adam at 1e-3 with a cosine learning-rate schedule (Loshchilov & Hutter 2017),
    batch size 32. At 2e-3 the network sat at chance for the first epochs at some seeds and ended
    near 0.52 test accuracy (lab 02/06's 5 epochs at seed 8, lab 04's 8 epochs at seed 9); at 1e-3
    the lowest over seeds 0-10 was 0.86 and 0.95. Initialization and training run under ``torch.manual_seed(seed)`` inside a forked
    CPU RNG, so the same call gives the same model whatever ran before, and the caller's global
    CPU RNG is not advanced. ``fit_options`` go to ``lk.fit`` (e.g. ``weight_decay``, ``augment``,
    ``on_epoch_end``). ``dropout``: dropout probability before the last layer (lab 01's regularized
    scratch model). Used in labs 01, 02, 04 and 06.
    """
    from .models import get_model

    for name, data in (("train", train), ("val", val)):
        if data is None and name == "val":
            continue
        if not (hasattr(data, "images") and hasattr(data, "classes") and hasattr(data, "labels")):
            raise TypeError(f"{name} must be an lk.ImageSet (e.g. lk.shapes(...)), got {type(data).__name__}")
    if train.images.ndim != 4:
        raise ValueError(f"train.images must be [N, C, H, W], got shape {tuple(train.images.shape)}")
    if val is not None and tuple(val.images.shape[1:]) != tuple(train.images.shape[1:]):
        raise ValueError(f"val images are {tuple(val.images.shape[1:])} but train images are "
                         f"{tuple(train.images.shape[1:])}; draw both with the same size")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if "scheduler" not in fit_options:
        fit_options["scheduler"] = "cosine"
    _, c, h, w = train.images.shape
    if h != w:
        raise ValueError(f"small_cnn expects square images, got {h}x{w}; draw square images (size=...)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_model("small_cnn", in_channels=c, num_classes=train.num_classes, widths=tuple(widths),
                          batch_norm=batch_norm, global_pool=global_pool, input_size=h, dropout=dropout)
        history = fit(model, train, val, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
                      desc=desc, **fit_options)
    return model, history


def _fingerprint(obj: Any) -> str:
    """A content hash of tensors / ImageSets / nested structures (for checkpoint keys)."""
    h = hashlib.sha256()

    def feed(o: Any) -> None:
        if isinstance(o, Tensor):
            t = o.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
        elif hasattr(o, "images") and hasattr(o, "labels"):
            feed(o.images)
            feed(o.labels)
        elif isinstance(o, (list, tuple)):
            for v in o:
                feed(v)
        elif isinstance(o, dict):
            for k in sorted(o):
                h.update(str(k).encode())
                feed(o[k])
        else:
            h.update(repr(o).encode())

    feed(obj)
    return h.hexdigest()[:16]


def _code_key(code: Any) -> list[Any]:
    """Bytecode, names and constants of a function body (nested code objects recursively)."""
    return [code.co_code.hex(), list(code.co_names), [_value_key(c) for c in code.co_consts]]


def _value_key(v: Any) -> Any:
    """A stable stand-in for ``v`` in a key: no memory addresses, no hash-randomized set order."""
    if hasattr(v, "co_code"):
        return _code_key(v)
    if isinstance(v, Tensor) or (hasattr(v, "images") and hasattr(v, "labels")):
        return _fingerprint(v)
    if callable(v):
        return _callable_key(v)
    if isinstance(v, (list, tuple)):
        return [_value_key(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _value_key(x) for k, x in v.items()}
    if isinstance(v, (set, frozenset)):
        return sorted(repr(_value_key(x)) for x in v)
    r = repr(v)
    return type(v).__qualname__ if " at 0x" in r else r


def _callable_key(fn: Any) -> Any:
    """What identifies a callable option (``augment``, ``loss_fn``) in a checkpoint key.

    The name alone is not enough: every lambda is called ``<lambda>``, and two
    ``nn.CrossEntropyLoss`` with other options share a name. Functions are keyed by their
    bytecode, referenced names, constants, defaults and closure values; modules by their
    repr, public settings and weights. Functions they call are not followed (rename the
    function or pass ``retrain=True`` after changing one).
    """
    if isinstance(fn, nn.Module):
        settings = {k: _value_key(v) for k, v in sorted(vars(fn).items())
                    if not k.startswith("_") and k != "training"}
        return [repr(fn), settings, _fingerprint(dict(fn.state_dict()))]
    if isinstance(fn, functools.partial):
        return ["partial", _callable_key(fn.func), _value_key(list(fn.args)), _value_key(dict(fn.keywords))]
    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    code = getattr(fn, "__code__", None)
    if code is None:  # builtins, classes, callable objects (then their attributes count)
        has_state = not isinstance(fn, type) and isinstance(getattr(fn, "__dict__", None), dict)
        return [name, _value_key(vars(fn))] if has_state else name
    cells = []
    for cell in fn.__closure__ or ():
        try:
            cells.append(cell.cell_contents)
        except ValueError:  # an empty cell
            cells.append(None)
    if any(c is fn for c in cells):  # a recursive inner function refers to itself
        cells = [None if c is fn else c for c in cells]
    return [name, _fingerprint(repr(_code_key(code))), _fingerprint(repr(_value_key([cells, fn.__defaults__ or ()])))]


def train_or_load(name: str, model: nn.Module, train: DataLike, val: DataLike | None = None, *,
                  trainer: Callable[..., Curves] | None = None, root: str | os.PathLike | None = None,
                  retrain: bool = False, **train_kwargs: Any) -> Curves:
    """Load ``model``'s weights from the checkpoint cache when present, else train and save.

    ``trainer`` is :func:`fit` by default, or any labkit trainer called as
    ``trainer(model, train, val, **train_kwargs)`` (``lk.train_vae``, ``lk.train_segmentation``).
    The cache key combines ``name``, the model's architecture, the trainer, the training options
    (``train_kwargs``, seed included) and a content hash of the training and validation data, so
    a changed lab never loads a stale checkpoint. Files live under
    ``labkit.storage.checkpoint_root()`` (``$LABKIT_CHECKPOINTS``). Returns the trainer's history.
    """
    from .storage import checkpoint_root

    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"train_or_load: name must be a non-empty string without '/', got {name!r}")
    if trainer is not None and not (callable(trainer) and getattr(trainer, "__module__", "").startswith("labkit.")):
        raise TypeError(f"train_or_load: trainer must be a labkit trainer such as lk.train_vae (or None for lk.fit), "
                        f"got {trainer!r}; a checkpoint can only restore labkit's histories, so call your own "
                        "trainer directly")
    if "on_epoch_end" in train_kwargs or isinstance(train_kwargs.get("optimizer"), torch.optim.Optimizer):
        raise ValueError("train_or_load cannot cache runs with on_epoch_end or an optimizer object; call fit()")
    options = {k: (_callable_key(v) if callable(v) else v) for k, v in sorted(train_kwargs.items()) if k != "device"}
    parts = [name, repr(model), json.dumps(options, sort_keys=True, default=repr),
             _fingerprint(train) if not isinstance(train, DataLoader) else repr(train.dataset),
             _fingerprint(val) if val is not None and not isinstance(val, DataLoader) else repr(val)]
    if trainer is not None and trainer is not fit:  # fit's keys are those of the checkpoints made before trainer=
        parts.append(f"{trainer.__module__}.{trainer.__qualname__}")
    key = _fingerprint(parts)
    folder = Path(root) if root is not None else checkpoint_root()
    path = folder / f"{name}-{key}.pt"
    if path.exists() and not retrain:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        to_training_device(train_kwargs.get("device"), model)
        model.eval()
        if progress_mode() != "none":
            print(f"loaded checkpoint {path.name}")
        return _history_type(state.get("history_type")).from_dict(state["history"])
    history = (trainer or fit)(model, train, val, **train_kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "history": history.to_dict(), "options": options,
                "history_type": f"{type(history).__module__}:{type(history).__qualname__}"}, tmp)
    os.replace(tmp, path)
    return history


def _history_type(spec: str | None) -> type[Curves]:
    """The history class a checkpoint names (``module:Class``, a labkit module); ``History`` when absent."""
    if spec is None:
        return History
    module, _, qualname = spec.partition(":")
    if not module.startswith("labkit."):
        raise ValueError(f"train_or_load: the checkpoint names the history class {spec!r}, not one of labkit's; "
                         "delete the file or pass retrain=True")
    cls = getattr(importlib.import_module(module), qualname, None)
    if not (isinstance(cls, type) and issubclass(cls, Curves)):
        raise ValueError(f"train_or_load: the checkpoint's history class {spec!r} is unknown to this labkit; "
                         "pass retrain=True")
    return cls
