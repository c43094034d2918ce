"""Features of a network as points: extraction at a layer, PCA, t-SNE.

Used in lab 01 (features of a pretrained network for a linear SVM; t-SNE / PCA of
pretrained vs scratch features) and lab 09 (t-SNE of DANN features before/after adaptation).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .hooks import capture, get_layer, preserve_state

__all__ = ["extract_features", "pca", "tsne"]


def _batches(data: object, batch_size: int) -> Iterable[tuple[Tensor, Tensor | None]]:
    """(images, labels or None) batches from an ImageSet / Dataset, a DataLoader or a tensor."""
    if isinstance(data, Tensor):
        if data.dim() < 2:
            raise ValueError(f"data as a tensor must be a batch of inputs [N, ...], got {tuple(data.shape)}")
        for i in range(0, len(data), batch_size):
            yield data[i:i + batch_size], None
        return
    if isinstance(data, DataLoader):
        loader = data
    elif hasattr(data, "images") and hasattr(data, "labels") and isinstance(data.images, Tensor):  # ImageSet
        for i in range(0, len(data.images), batch_size):
            yield data.images[i:i + batch_size], data.labels[i:i + batch_size]
        return
    elif isinstance(data, torch.utils.data.Dataset):
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    else:
        raise TypeError(f"data must be an ImageSet, a Dataset, a DataLoader or a tensor, got {type(data).__name__}")
    for batch in loader:
        if isinstance(batch, Tensor):
            yield batch, None
        elif isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[0], Tensor):
            yield batch[0], torch.as_tensor(batch[1])
        elif isinstance(batch, (list, tuple)) and len(batch) == 1:
            yield batch[0], None
        else:
            raise TypeError("the DataLoader must yield images or (images, labels) batches")


def extract_features(model: nn.Module, data: object, layer: str | None, *, batch_size: int = 256,
                     flatten: bool = True, pool: str | None = None) -> tuple[Tensor, Tensor | None]:
    """The activations of ``layer`` (dotted name; None = the model's output) for every sample.

    ``data``: an ImageSet, a Dataset or DataLoader of ``(image, label)``, or a tensor of images.
    ``pool``: ``"avg"`` or ``"max"`` global pooling over the spatial dimensions first;
    ``flatten``: one row per sample. The model runs in eval mode without gradients (its mode is
    restored), on its own device. Returns ``(features [N, D] float32 on the CPU, labels [N] or
    None for a tensor)``. Used in labs 01 and 09.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if pool not in (None, "avg", "max"):
        raise ValueError(f"pool must be None, 'avg' or 'max', got {pool!r}")
    if layer is not None:
        get_layer(model, layer)  # unknown names raise ValueError listing the valid ones
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    with preserve_state(model), torch.no_grad():
        model.eval()
        for x, y in _batches(data, batch_size):
            x = x.to(device, non_blocking=True)
            if layer is None:
                a = model(x)
            else:
                with capture(model, layer, detach=True) as cap:
                    model(x)
                a = cap.activations[layer]
            if pool is not None and a.dim() > 2:
                a = a.flatten(2).mean(2) if pool == "avg" else a.flatten(2).amax(2)
            if flatten:
                a = a.flatten(1)
            feats.append(a.float().cpu())
            if y is not None:
                labels.append(y.cpu())
    if not feats:
        raise ValueError("data is empty: no features to extract")
    out = torch.cat(feats)
    if labels and len(labels) != len(feats):
        raise ValueError("some batches of data had labels and others not")
    return out, (torch.cat(labels) if labels else None)


def _as_matrix(features: object, name: str = "features") -> Tensor:
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, Tensor):
        raise TypeError(f"{name} must be a tensor (or NumPy array) [N, D], got {type(features).__name__}")
    if features.dim() != 2:
        raise ValueError(f"{name} must be [N, D], got {tuple(features.shape)}; flatten it first")
    if len(features) < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {len(features)}")
    return features.detach().double()


def pca(features: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Principal component analysis by SVD of the centred features (Pearson 1901).

    Returns ``(projected [N, k], explained_variance_ratio [k])``, float32 on the input's device
    (the ratio is over all components, as scikit-learn's). Component signs are fixed so that the largest-magnitude loading of each
    component is positive (deterministic; scikit-learn may differ by a sign). Used in lab 01.
    """
    x = _as_matrix(features)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(x.shape):
        raise ValueError(f"k must be an int in [1, {min(x.shape)}] (min of N and D), got {k!r}")
    x = x - x.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    v = vh[:k]
    signs = torch.sign(v.gather(1, v.abs().argmax(1, keepdim=True)))
    v = v * torch.where(signs == 0, torch.ones_like(signs), signs)
    var = s**2
    ratio = var[:k] / var.sum().clamp_min(1e-300)
    return (x @ v.T).float(), ratio.float()


def tsne(features: Tensor, *, dim: int = 2, perplexity: float = 30.0, seed: int = 0, pca_first: int | None = 50,
         max_iter: int = 1000, threads: int = 1) -> Tensor:
    """t-SNE embedding (van der Maaten & Hinton 2008) with scikit-learn, deterministic for a ``seed``.

    Features with more than ``pca_first`` dimensions are first reduced by :func:`pca` (the usual
    speed-up; None disables). ``perplexity`` must be below the number of samples. ``threads``
    caps scikit-learn's OpenMP threads: one by default, because on a busy 2-core machine two
    threads made t-SNE of 1000 points five times slower (spinning threads), not faster. Returns
    ``[N, dim]`` float32 on the CPU. Used in labs 01 and 09.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = _as_matrix(features)
    n = len(x)
    if not 0 < perplexity < n:
        raise ValueError(f"perplexity must lie in (0, {n}) for {n} samples, got {perplexity!r}; "
                         "use about N / 4 or fewer for small sets")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if pca_first is not None:
        if isinstance(pca_first, bool) or not isinstance(pca_first, int) or pca_first < 1:
            raise ValueError(f"pca_first must be a positive int or None, got {pca_first!r}")
        if x.shape[1] > pca_first:
            x = pca(x, min(pca_first, n))[0].double()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    emb = TSNE(n_components=dim, perplexity=float(perplexity), random_state=seed, init="pca",
               learning_rate="auto", max_iter=max_iter, method="barnes_hut" if dim < 4 else "exact")
    with threadpool_limits(limits=threads):
        out = emb.fit_transform(x.cpu().numpy())
    return torch.from_numpy(out).float()
