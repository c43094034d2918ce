"""Figures of the course: image grids, heatmap overlays, curves, embeddings, bar charts.

The only labkit module that imports matplotlib. Every function returns the matplotlib
``Figure`` (a notebook displays it); pass ``ax=`` to draw into an existing axes where offered.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence


import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = ["to_numpy_image", "show_images", "show_heatmaps", "overlay", "plot_history", "plot_curves",
           "plot_embedding", "plot_bars", "plot_filters", "normalize_map", "close_figure", "plot_matrix",
           "show_mosaic", "overlay_rgb"]


def to_numpy_image(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[C,H,W]`` or ``[H,W]`` tensor/array -> ``[H,W,3]`` or ``[H,W]`` float array for imshow."""
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu().numpy()
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    return img


def normalize_map(m: torch.Tensor | np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1] per image (constant maps become 0)."""
    m = to_numpy_image(m).astype(np.float32)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def _fit_tile(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """``img`` scaled (aspect kept) to fit an ``h x w`` cell, centred on white."""
    ih, iw = img.shape[:2]
    if (ih, iw) != (h, w):
        k = min(h / ih, w / iw)
        nh, nw = max(1, round(ih * k)), max(1, round(iw * k))
        t = torch.from_numpy(np.ascontiguousarray(img)).float()
        t = t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]
        t = torch.nn.functional.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False,
                                            antialias=k < 1).clamp(0, 1)[0]
        img = t[0].numpy() if img.ndim == 2 else t.permute(1, 2, 0).numpy()
        cell = np.ones((h, w) + img.shape[2:], dtype=np.float32)
        top, left = (h - nh) // 2, (w - nw) // 2
        cell[top:top + nh, left:left + nw] = img
        img = cell
    return img


def show_images(images: torch.Tensor | Sequence[Any], titles: Sequence[str] | None = None, *,
                ncols: int | None = None, size: float = 1.4, cmap: str = "gray", suptitle: str | None = None,
                normalize: bool = False, legend: dict[str, Sequence[float]] | None = None) -> Figure:
    """A grid of images (``[N,C,H,W]`` tensor or a list), optionally titled; ``size`` inches per image.

    ``legend``: ``{name: RGB colour in [0, 1]}`` drawn as colour patches under the grid, e.g. the
    classes of label maps (``{n: c for n, c in zip(names, lk.SEGMENTATION_PALETTE)}``).

    Drawn as ONE picture on one axes with the titles as text (every lab): one subplot per
    image made the figures of a smoke run cost seconds (a 48-image grid: 0.85 s against 0.2 s).
    Images of other sizes than the largest are scaled to fit its cell; one-channel images are
    coloured by ``cmap`` (clipped to [0, 1], or each scaled to [0, 1] with ``normalize=True``).
    """
    n = len(images)
    if n == 0:
        raise ValueError("show_images needs at least one image")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries for {n} images")
    if isinstance(ncols, bool) or (ncols is not None and (not isinstance(ncols, int) or ncols < 1)):
        raise ValueError(f"ncols must be a positive int or None (8), got {ncols!r}")
    pics = [normalize_map(images[i]) if normalize else np.clip(to_numpy_image(images[i]), 0, 1) for i in range(n)]
    for i, p in enumerate(pics):
        if p.ndim not in (2, 3) or (p.ndim == 3 and p.shape[2] != 3):
            raise ValueError(f"images[{i}] must be [H, W], [1, H, W] or [3, H, W], got shape {p.shape}")
    grey = all(p.ndim == 2 for p in pics)
    if not grey:  # colour the one-channel images as imshow would
        colours = plt.get_cmap(cmap)
        pics = [colours(p)[..., :3].astype(np.float32) if p.ndim == 2 else p for p in pics]
    h, w = max(p.shape[0] for p in pics), max(p.shape[1] for p in pics)
    ncols = min(n, ncols or 8)
    nrows = -(-n // ncols)
    inch = size / w  # inches per pixel: every image is ``size`` inches wide, as one subplot was
    gap = max(1, round(0.1 / inch))
    lines = max((str(t).count("\n") + 1 for t in titles), default=0) if titles is not None else 0
    band = round((0.03 + 0.13 * lines) / inch) if lines else 0  # the title's band above each image
    cell_h, cell_w = band + h + gap, w + gap
    canvas = np.ones((nrows * cell_h, ncols * cell_w - gap) + (() if grey else (3,)), dtype=np.float32)
    for i, p in enumerate(pics):
        r, c = divmod(i, ncols)
        y, x = r * cell_h + band, c * cell_w
        canvas[y:y + h, x:x + w] = _fit_tile(p, h, w)
    canvas = canvas[:nrows * cell_h - gap]
    if legend is not None and (not isinstance(legend, dict) or not legend):
        raise ValueError(f"legend must be a non-empty dict {{name: (r, g, b)}}, got {legend!r}")
    top = 0.45 if suptitle else 0.0
    bottom = 0.3 * (-(-len(legend) // 6)) if legend else 0.0  # one row of patches per six names
    fig = plt.figure(figsize=(canvas.shape[1] * inch, canvas.shape[0] * inch + top + bottom))
    frac = canvas.shape[0] * inch / fig.get_figheight()
    ax = fig.add_axes((0.0, bottom / fig.get_figheight(), 1.0, frac))
    ax.imshow(canvas, cmap=cmap if grey else None, vmin=0, vmax=1, aspect="auto",
              extent=(0, canvas.shape[1], canvas.shape[0], 0))
    ax.set_xlim(0, canvas.shape[1])
    ax.set_ylim(canvas.shape[0], 0)
    ax.axis("off")
    if titles is not None:
        for i, t in enumerate(titles):
            r, c = divmod(i, ncols)
            ax.text(c * cell_w + w / 2, r * cell_h + band - 0.02 / inch, str(t), fontsize=8,
                    ha="center", va="bottom", linespacing=1.0)
    if suptitle:
        fig.suptitle(suptitle, y=1.0 - 0.08 / fig.get_figheight(), va="top")
    if legend:
        from matplotlib.patches import Patch

        handles = [Patch(facecolor=tuple(float(v) for v in colour), edgecolor="0.5", label=str(name))
                   for name, colour in legend.items()]
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False,
                   handlelength=1.2, columnspacing=1.0, borderaxespad=0.1)
    return fig


def _heat(image: np.ndarray, heatmap: Any) -> np.ndarray:
    """``heatmap`` as a 2-D map resized (bilinear) to ``image``'s size and scaled to [0, 1]."""
    hm = torch.as_tensor(np.asarray(heatmap.detach().float().cpu() if isinstance(heatmap, torch.Tensor) else heatmap,
                                    dtype=np.float32))
    while hm.dim() > 2 and hm.shape[0] == 1:  # [1, H, W] maps (one channel) are 2-D maps
        hm = hm[0]
    if hm.dim() != 2:
        raise ValueError(f"heatmap must be [H, W] (or [1, H, W]), got shape {tuple(hm.shape)}")
    if tuple(hm.shape) != tuple(image.shape[:2]):  # resize (e.g. a 7x7 Grad-CAM map) to the image
        hm = torch.nn.functional.interpolate(hm[None, None], size=image.shape[:2], mode="bilinear",
                                             align_corners=False)[0, 0]
    return normalize_map(hm)


def overlay(ax: Any, image: torch.Tensor, heatmap: torch.Tensor, *, alpha: float = 0.5, cmap: str = "jet") -> None:
    """Draw ``image`` with a normalized ``heatmap`` on top (Grad-CAM style)."""
    img = np.clip(to_numpy_image(image), 0, 1)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    ax.imshow(_heat(img, heatmap), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    ax.axis("off")


def overlay_rgb(image: torch.Tensor, heatmap: torch.Tensor, *, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """The picture ``overlay`` draws, as an ``[H, W, 3]`` array: ``(1 - alpha) * image + alpha * cmap(map)``."""
    img = np.clip(to_numpy_image(image), 0, 1)
    rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
    heat = plt.get_cmap(cmap)(_heat(img, heatmap))[..., :3]
    return ((1.0 - alpha) * rgb + alpha * heat).astype(np.float32)


def show_heatmaps(images: torch.Tensor, maps: Mapping[str, torch.Tensor] | torch.Tensor, *,
                  overlay_maps: bool = True, size: float = 1.6, cmap: str = "jet",
                  row_titles: Sequence[str] | None = None) -> Figure:
    """One row per image: the image, then each method's map (overlaid or alone), titled by method.

    One picture (``show_images``): the maps are blended into the images as ``overlay_rgb`` does.
    """
    if isinstance(maps, (torch.Tensor, np.ndarray)):
        maps = {"map": maps}
    n = len(images)
    if n == 0:
        raise ValueError("show_heatmaps needs at least one image")
    for name, m in maps.items():
        if len(m) != n:
            raise ValueError(f"maps[{name!r}] has {len(m)} maps for {n} images; give one map per image")
    if row_titles is not None and len(row_titles) != n:
        raise ValueError(f"row_titles has {len(row_titles)} entries for {n} images")
    tiles: list[np.ndarray] = []
    titles: list[str] = []
    for i in range(n):
        img = np.clip(to_numpy_image(images[i]), 0, 1)
        tiles.append(img)
        titles.append(str(row_titles[i]) if row_titles is not None else "")
        for name, m in maps.items():
            tiles.append(overlay_rgb(images[i], m[i], cmap=cmap) if overlay_maps else normalize_map(m[i]))
            titles.append(name if i == 0 else "")
    return show_images(tiles, titles, ncols=1 + len(maps), size=size)


def plot_history(histories: Mapping[str, Any] | Any, *, metrics: Sequence[str] = ("loss", "acc"),
                 size: tuple[float, float] = (4.0, 3.0)) -> Figure:
    """Learning curves (train dashed, validation solid) of one or several ``History`` objects."""
    if not isinstance(histories, Mapping):
        histories = {"": histories}
    fig, axes = plt.subplots(1, len(metrics), figsize=(size[0] * len(metrics), size[1]), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics):
        for k, (label, h) in enumerate(histories.items()):
            c = colors[k % len(colors)]
            tr, va = getattr(h, f"train_{metric}"), getattr(h, f"val_{metric}")
            ep = np.arange(1, len(tr) + 1)
            ax.plot(ep, tr, "--", color=c, label=f"{label} train".strip())
            if va:
                ax.plot(ep, va, "-", color=c, label=f"{label} val".strip())
        ax.set_xlabel("epoch")
        ax.set_ylabel({"acc": "accuracy"}.get(metric, metric))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_curves(curves: Mapping[str, Sequence[float]], *, x: Sequence[float] | None = None, xlabel: str = "",
                ylabel: str = "", title: str = "", logx: bool = False, logy: bool = False,
                size: tuple[float, float] = (4.5, 3.0), marker: str = "o") -> Figure:
    """Several named y-series over a shared x axis (sweeps, attack strength, ...); ``logy`` for
    quantities spanning decades (an FID falling from thousands to tens, gradient norms)."""
    fig, ax = plt.subplots(figsize=size)
    for name, ys in curves.items():
        xs = list(x) if x is not None else list(range(len(ys)))
        ax.plot(xs, list(ys), marker=marker, ms=3, label=name)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_embedding(points: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, *,
                   class_names: Sequence[str] | None = None, title: str = "", ax: Any = None,
                   markers: torch.Tensor | np.ndarray | None = None, size: float = 4.0) -> Figure:
    """2-D scatter coloured by class (t-SNE / PCA / latent spaces); ``markers`` splits e.g. domains."""
    pts = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points)
    lab = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must be [N, 2], got shape {pts.shape}")
    fig = ax.figure if ax is not None else plt.figure(figsize=(size, size))
    ax = ax or fig.add_subplot(111)
    groups = np.zeros(len(pts), int) if markers is None else np.asarray(markers)
    symbols = ["o", "^", "s", "x"]
    cmap = plt.get_cmap("tab10" if lab.max(initial=0) < 10 else "tab20")
    for g in np.unique(groups):
        sel = groups == g
        ax.scatter(pts[sel, 0], pts[sel, 1], c=[cmap(int(v) % cmap.N) for v in lab[sel]], s=6,
                   marker=symbols[int(g) % len(symbols)], alpha=0.7, linewidths=0)
    if class_names is not None:
        for k, name in enumerate(class_names):
            if (lab == k).any():
                ax.scatter([], [], color=cmap(k % cmap.N), label=str(name), s=12)
        ax.legend(fontsize=6, markerscale=1.5, loc="best", ncol=2)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def plot_bars(values: Mapping[str, float] | Mapping[str, Mapping[str, float]], *, ylabel: str = "", title: str = "",
              ylim: tuple[float, float] | None = None, size: tuple[float, float] = (4.5, 3.0), annotate: bool = True,
              reference: tuple[float, str] | None = None) -> Figure:
    """A labelled bar chart of named numbers (accuracies per method, hit rates per layer, ...).

    ``values`` maps names to numbers, or groups to ``{series: number}`` for grouped bars (one
    colour per series, with a legend), e.g. ``{"saliency": {"clean": 0.01, "biased": 0.25}}``.
    ``reference=(y, label)`` draws a dashed horizontal line, e.g. the score of a blind baseline.
    """
    if not isinstance(values, Mapping) or not values:
        raise ValueError("values must be a non-empty mapping of names to numbers (or to {series: number})")
    grouped = all(isinstance(v, Mapping) for v in values.values())
    if not grouped and any(isinstance(v, Mapping) for v in values.values()):
        raise TypeError("values must map every name to a number, or every name to a {series: number} mapping")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=size)
    names = [str(k) for k in values]
    bars = []
    if grouped:
        series = list(dict.fromkeys(s for v in values.values() for s in v))
        width = 0.8 / len(series)
        x = np.arange(len(names))
        for j, s in enumerate(series):
            vals = [float(v.get(s, np.nan)) for v in values.values()]
            drawn = ax.bar(x + (j - (len(series) - 1) / 2) * width, vals, width, label=str(s),
                           color=colours[j % len(colours)])
            bars += list(zip(drawn, vals))
        ax.set_xticks(x, names)
    else:
        vals = [float(v) for v in values.values()]
        bars = list(zip(ax.bar(names, vals, color=[colours[i % len(colours)] for i in range(len(vals))]), vals))
    if annotate:
        for b, v in bars:
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    if reference is not None:
        ax.axhline(float(reference[0]), color="0.3", linestyle="--", linewidth=1, label=str(reference[1]))
    if grouped or reference is not None:
        ax.legend(fontsize=7)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.tight_layout()
    return fig


def plot_filters(weight: torch.Tensor, *, ncols: int = 8, size: float = 0.8, title: str = "") -> Figure:
    """First-layer conv filters ``[out, in, k, k]`` as small images (each normalized on its own)."""
    w = weight.detach().float().cpu()
    if w.dim() != 4:
        raise ValueError(f"weight must be [out, in, k, k], got shape {tuple(w.shape)}")
    tiles = [normalize_map(w[i] if w.shape[1] in (1, 3) else w[i].mean(0, keepdim=True)) for i in range(w.shape[0])]
    fig = show_images(tiles, ncols=ncols, size=size)
    fig.axes[0].images[0].set_interpolation("nearest")
    if title:
        fig.suptitle(title, fontsize=9, y=1.0, va="bottom")
    return fig


def close_figure(fig: Figure) -> None:
    """Release a figure that has been displayed (keeps memory flat in loops and explorers)."""
    plt.close(fig)


def plot_matrix(matrix: torch.Tensor | np.ndarray, *, row_labels: Sequence[str] | None = None,
                col_labels: Sequence[str] | None = None, xlabel: str = "predicted", ylabel: str = "true",
                title: str = "", fmt: str = "d", size: float = 4.0, cmap: str = "Blues") -> Figure:
    """A matrix (confusion matrix, metric table) as an annotated heatmap."""
    m = np.asarray(matrix.detach().cpu() if isinstance(matrix, torch.Tensor) else matrix)
    if m.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {m.shape}")
    fig, ax = plt.subplots(figsize=(size, size * m.shape[0] / max(m.shape[1], 1) + 0.3))
    ax.imshow(m, cmap=cmap)
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=7,
                color="white" if v > 0.6 * m.max() else "black")
    ax.set_xticks(range(m.shape[1]), labels=col_labels or range(m.shape[1]), rotation=45, fontsize=7)
    ax.set_yticks(range(m.shape[0]), labels=row_labels or range(m.shape[0]), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def show_mosaic(images: torch.Tensor, *, nrow: int, row_titles: Sequence[str] | None = None, title: str = "",
                scale: float = 0.6, pad: int = 1) -> Figure:
    """Images ``[N, C, H, W]`` in ``[0, 1]`` tiled ``nrow`` per row into ONE picture (grey gaps), titled per row.

    Much faster to draw than one subplot per image, and the figure keeps the mosaic's aspect
    (``scale`` inches per image). Rows of samples, interpolations, reconstructions (labs 07, 10).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty [N, C, H, W] tensor, got {shape}")
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be a positive int (images per row), got {nrow!r}")
    n, c, h, w = images.shape
    if c not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {c}")
    rows = -(-n // nrow)
    if row_titles is not None and len(row_titles) != rows:
        raise ValueError(f"row_titles has {len(row_titles)} entries for {rows} rows")
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 0.5, dtype=np.float32)
    pics = images.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, k = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        canvas[y:y + h, x:x + w] = pics[i]
    label_width = 1.5 if row_titles is not None else 0.0
    fig, ax = plt.subplots(figsize=(scale * nrow + label_width, scale * rows + (0.4 if title else 0.1)))
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    if row_titles is not None:
        ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(rows)], labels=[str(t) for t in row_titles],
                      fontsize=8)
        ax.tick_params(axis="y", length=0)
    else:
        ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
