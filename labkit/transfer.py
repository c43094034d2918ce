"""Transfer learning: features of a pretrained network + a linear SVM, new heads, frozen copies.

The recipe of Razavian et al. 2014 / Donahue et al. 2014 (RDFIA practical 3-a): run a network
trained on a large source task up to some layer, use the activations as a fixed representation
and train a linear SVM on the few labelled images of the target task; or replace the network's
last layer and train the new head alone (frozen body) or everything (fine-tuning, Yosinski et
al. 2014). Used in lab 01; the helpers (few-shot subsets, multi-layer features, new heads) are
meant for any lab that transfers a network.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._checks import is_int
from .hooks import capture, get_layer, preserve_state

__all__ = ["few_shot_indices", "layer_features", "svm_predict", "svm_accuracy", "svm_c_sweep", "svm_cross_validation",
           "layer_sweep", "transfer_model", "unfreeze_layers", "torchvision_architecture"]


def _labels(labels: object, name: str) -> Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be a 1-D tensor of class indices, got {shape}")
    if labels.dtype.is_floating_point:
        raise TypeError(f"{name} must hold integer class indices, got dtype {labels.dtype}; use .long()")
    return labels.long().cpu()


def _features(x: object, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a tensor or NumPy array [N, D], got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {x.shape}; flatten or pool it first")
    return x.astype(np.float64, copy=False)


def _check_pair(x: object, y: object, what: str) -> tuple[np.ndarray, np.ndarray]:
    xs = _features(x, f"{what}_features")
    ys = _labels(y, f"{what}_labels").numpy()
    if len(xs) != len(ys):
        raise ValueError(f"{what}_features has {len(xs)} rows but {what}_labels has {len(ys)} entries")
    if len(xs) == 0:
        raise ValueError(f"{what}_features is empty")
    return xs, ys


def _check_c(C: object) -> float:
    if isinstance(C, bool) or not isinstance(C, (int, float)) or not np.isfinite(C) or C <= 0:
        raise ValueError(f"C must be a positive finite number (e.g. 1.0 or 1e-2), got {C!r}")
    return float(C)


# --------------------------------------------------------------------------- data
def few_shot_indices(labels: Tensor, per_class: int, *, seed: int = 0) -> Tensor:
    """Indices of ``per_class`` samples of every class present in ``labels``, drawn without replacement.

    Deterministic in ``seed`` (its own generator; the global RNG is untouched); sorted indices.
    A class with fewer samples raises ``ValueError``. Used in lab 01 (few labelled target images).
    """
    y = _labels(labels, "labels")
    if not is_int(per_class) or per_class < 1:
        raise ValueError(f"per_class must be a positive int, got {per_class!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten()
        if len(idx) < per_class:
            raise ValueError(f"class {c} has only {len(idx)} samples, fewer than per_class={per_class}; "
                             "lower per_class or draw more data")
        picked.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picked).sort().values


def layer_features(model: nn.Module, data: object, layers: Sequence[str], *, pool: str | None = "avg",
                   batch_size: int = 256) -> tuple[dict[str, Tensor], Tensor | None]:
    """Activations of several layers in ONE pass over ``data``: ``({layer: [N, D]}, labels)``.

    Like :func:`labkit.extract_features` (eval mode, no gradients, the model's mode restored) but
    for a list of dotted layer names. ``pool``: ``"avg"``, ``"max"`` (global pooling of conv maps,
    the usual way to get one vector per image from a conv layer) or None (flatten the maps).
    Features are float32 on the CPU. Used in lab 01 (the layer sweep).
    """
    from .embeddings import _batches

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"layers must be a non-empty list of dotted layer names, got {layers!r}")
    if pool not in (None, "avg", "max"):
        raise ValueError(f"pool must be None, 'avg' or 'max', got {pool!r}")
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    layers = list(layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers has duplicates: {layers}")
    for name in layers:
        get_layer(model, name)  # unknown names raise ValueError listing the valid ones
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    feats: dict[str, list[Tensor]] = {name: [] for name in layers}
    labels: list[Tensor] = []
    n_batches = 0
    with preserve_state(model), torch.no_grad():
        model.eval()
        for x, y in _batches(data, batch_size):
            n_batches += 1
            with capture(model, layers, detach=True) as cap:
                model(x.to(device))
            for name in layers:
                a = cap.activations[name]
                if pool is not None and a.dim() > 2:
                    a = a.flatten(2).mean(2) if pool == "avg" else a.flatten(2).amax(2)
                feats[name].append(a.flatten(1).float().cpu())
            if y is not None:
                labels.append(torch.as_tensor(y).cpu())
    if n_batches == 0:
        raise ValueError("data is empty: no features to extract")
    if labels and len(labels) != n_batches:
        raise ValueError("some batches of data had labels and others not")
    return {k: torch.cat(v) for k, v in feats.items()}, (torch.cat(labels) if labels else None)


# --------------------------------------------------------------------------- linear SVM
def _svm(C: float, standardize: bool) -> Any:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    svm = LinearSVC(C=C, max_iter=20000, random_state=0)
    return make_pipeline(StandardScaler(), svm) if standardize else svm


def svm_predict(train_features: Tensor, train_labels: Tensor, test_features: Tensor, *, C: float = 1.0,
                standardize: bool = True) -> Tensor:
    """Predicted classes ``[M]`` (int64) of a linear SVM (scikit-learn's ``LinearSVC``, one-vs-rest,
    hinge loss; Cortes & Vapnik 1995) trained on ``train_features`` ``[N, D]``, for ``test_features`` ``[M, D]``.

    ``standardize``: scale each feature to zero mean and unit variance on the training set first
    (the SVM's ``C`` then means the same thing for every layer). Deterministic. Used in lab 01.
    """
    xa, ya = _check_pair(train_features, train_labels, "train")
    xb = _features(test_features, "test_features")
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"train_features have {xa.shape[1]} dimensions but test_features {xb.shape[1]}")
    if len(np.unique(ya)) < 2:
        raise ValueError("train_labels must contain at least two classes")
    if not isinstance(standardize, bool):
        raise TypeError(f"standardize must be True or False, got {standardize!r}")
    clf = _svm(_check_c(C), standardize).fit(xa, ya)
    return torch.from_numpy(np.asarray(clf.predict(xb))).long()


def svm_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor, *,
                 C: float = 1.0, standardize: bool = True) -> float:
    """Test accuracy of :func:`svm_predict` (a linear SVM trained on features). Used in lab 01."""
    _, yb = _check_pair(test_features, test_labels, "test")
    pred = svm_predict(train_features, train_labels, test_features, C=C, standardize=standardize)
    return float((pred.numpy() == yb).mean())


def svm_c_sweep(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor, *,
                Cs: Sequence[float], standardize: bool = True) -> dict[float, float]:
    """``{C: test accuracy}`` of :func:`svm_accuracy` for every ``C`` in ``Cs`` (lab 01's C sweep)."""
    if isinstance(Cs, (str, bytes)) or not isinstance(Cs, Sequence) or not Cs:
        raise ValueError(f"Cs must be a non-empty list of positive numbers, got {Cs!r}")
    return {float(C): svm_accuracy(train_features, train_labels, test_features, test_labels, C=C,
                                   standardize=standardize) for C in Cs}


def svm_cross_validation(features: Tensor, labels: Tensor, *, Cs: Sequence[float], folds: int = 5,
                         standardize: bool = True, seed: int = 0) -> dict[float, float]:
    """``{C: mean accuracy}`` over stratified ``folds``-fold cross-validation on the TRAINING set.

    The honest way to choose ``C`` (or a layer) without looking at the test set; with few samples
    per class ``folds`` must not exceed the smallest class size. Used in lab 01.
    """
    from sklearn.model_selection import StratifiedKFold

    x, y = _check_pair(features, labels, "train")
    if isinstance(Cs, (str, bytes)) or not isinstance(Cs, Sequence) or not Cs:
        raise ValueError(f"Cs must be a non-empty list of positive numbers, got {Cs!r}")
    smallest = int(min(np.sum(y == c) for c in np.unique(y)))
    if not is_int(folds) or not 2 <= folds <= smallest:
        raise ValueError(f"folds must be an int in [2, {smallest}] (the smallest class has {smallest} samples), "
                         f"got {folds!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y))
    out = {}
    for C in Cs:
        accs = [svm_accuracy(x[a], torch.from_numpy(y[a]), x[b], torch.from_numpy(y[b]), C=C, standardize=standardize)
                for a, b in splits]
        out[float(C)] = float(np.mean(accs))
    return out


def layer_sweep(train_features: Mapping[str, Tensor], train_labels: Tensor, test_features: Mapping[str, Tensor],
                test_labels: Tensor, *, C: float = 1.0, standardize: bool = True) -> dict[str, float]:
    """``{layer: test accuracy}`` of a linear SVM on each layer's features (outputs of :func:`layer_features`)."""
    if not isinstance(train_features, Mapping) or not isinstance(test_features, Mapping) or not train_features:
        raise TypeError("train_features and test_features must be non-empty dicts {layer: [N, D] tensor}, "
                        "e.g. from lk.layer_features")
    missing = [k for k in train_features if k not in test_features]
    if missing:
        raise ValueError(f"test_features lacks the layers {missing}; extract the same layers for both sets")
    return {k: svm_accuracy(v, train_labels, test_features[k], test_labels, C=C, standardize=standardize)
            for k, v in train_features.items()}


# --------------------------------------------------------------------------- new heads, frozen bodies
def _freeze_batchnorm(module: nn.Module) -> None:
    """Replace every BatchNorm2d below ``module`` by torchvision's FrozenBatchNorm2d (running stats, no updates)."""
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d) and child.track_running_stats and child.running_mean is not None:
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                if child.affine:
                    frozen.weight.copy_(child.weight)
                    frozen.bias.copy_(child.bias)
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen.to(child.running_mean.device))
        else:
            _freeze_batchnorm(child)


def transfer_model(model: nn.Module, num_classes: int, *, head: str, freeze: bool = False, seed: int = 0) -> nn.Module:
    """A COPY of ``model`` whose layer ``head`` (an ``nn.Linear``) is replaced by a new one with ``num_classes`` outputs.

    - ``freeze=False``: every parameter trainable (fine-tuning).
    - ``freeze=True``: only the new head is trainable; every BatchNorm2d of the body becomes a
      ``FrozenBatchNorm2d`` (it keeps normalizing with the source statistics in train mode, so
      the body computes exactly the features an SVM would see).

    The new head is initialized like PyTorch's default under ``torch.manual_seed(seed)`` in a forked
    RNG (the caller's RNG is not advanced). ``model`` itself is not modified. Used in lab 01.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(freeze, bool):
        raise TypeError(f"freeze must be True or False, got {freeze!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if not isinstance(head, str) or not head:
        raise ValueError(f"head must be the dotted name of the last nn.Linear (e.g. 'classifier.4' or 'fc'), got {head!r}")
    old = get_layer(model, head)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"head {head!r} is a {type(old).__name__}, not an nn.Linear; name the network's last "
                         "linear layer")
    new_model = copy.deepcopy(model)
    parent_name, _, leaf = head.rpartition(".")
    parent = get_layer(new_model, parent_name) if parent_name else new_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new_head = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    new_head = new_head.to(device=old.weight.device, dtype=old.weight.dtype)
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and leaf.isdigit():
        parent[int(leaf)] = new_head
    else:
        setattr(parent, leaf, new_head)
    for p in new_model.parameters():
        p.requires_grad_(not freeze)
    if freeze:
        _freeze_batchnorm(new_model)
        for p in new_head.parameters():
            p.requires_grad_(True)
    return new_model


def unfreeze_layers(model: nn.Module, layers: Sequence[str]) -> nn.Module:
    """Make the parameters of the named layers (dotted names, with everything below them) trainable
    again, in place; returns ``model``.

    Meant for a :func:`transfer_model` copy made with ``freeze=True``: fine-tune the last blocks and
    the new head, keep the rest fixed. Its ``FrozenBatchNorm2d`` layers stay frozen (their statistics
    and affine terms are buffers), so batches of a few images never replace the source statistics.
    Used in lab 01 (real-data mode: the last block of EfficientNet-Lite0 and its head convolution).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"layers must be a non-empty list of dotted layer names, got {layers!r}")
    modules = [get_layer(model, name) for name in layers]  # unknown names raise ValueError listing the valid ones
    for name, module in zip(layers, modules):
        if next(module.parameters(), None) is None:
            raise ValueError(f"layer {name!r} ({type(module).__name__}) has no parameters to train")
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(True)
    return model


def torchvision_architecture(arch: str, **kwargs: Any) -> nn.Module:
    """A torchvision architecture (e.g. ``"vgg16"``) built on the ``meta`` device: shapes, no memory, no weights.

    For counting parameters from the architecture (``lk.count_parameters``) without allocating
    VGG16's 138 million weights. Used in lab 01 (the VGG16 parameter-count question).
    """
    import torchvision.models as tvm

    if not isinstance(arch, str) or not hasattr(tvm, arch) or not callable(getattr(tvm, arch)):
        raise ValueError(f"arch must name a torchvision.models builder (e.g. 'vgg16', 'resnet18', 'alexnet'), got {arch!r}")
    with torch.device("meta"):
        return getattr(tvm, arch)(weights=None, **kwargs)
