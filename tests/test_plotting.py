"""Figures: each function returns a Figure with the expected axes and images; bad input is refused."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported by labkit.plotting

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from labkit import plotting as P  # noqa: E402
from labkit.training import History  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _visible(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def _n_images(fig: Figure) -> int:
    return sum(len(ax.images) for ax in fig.axes)


# --- array helpers ------------------------------------------------------------------------------

def test_to_numpy_image_layouts() -> None:
    assert P.to_numpy_image(torch.zeros(3, 4, 5)).shape == (4, 5, 3)
    assert P.to_numpy_image(torch.zeros(1, 4, 5)).shape == (4, 5)
    assert P.to_numpy_image(np.zeros((4, 5))).shape == (4, 5)
    assert P.to_numpy_image(np.zeros((4, 5, 1))).shape == (4, 5)
    out = P.to_numpy_image(torch.ones(2, 2, requires_grad=True))
    assert out.dtype == np.float32 and out.tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_normalize_map() -> None:
    m = P.normalize_map(torch.tensor([[1.0, 3.0], [2.0, 5.0]]))
    assert m.tolist() == [[0.0, 0.5], [0.25, 1.0]]
    assert P.normalize_map(np.full((2, 2), 7.0)).tolist() == [[0.0, 0.0], [0.0, 0.0]]


# --- image grids --------------------------------------------------------------------------------

def test_show_images_is_one_picture_with_the_images_in_a_grid_and_titles_above() -> None:
    imgs = torch.rand(5, 3, 8, 8)
    fig = P.show_images(imgs, [f"t{i}" for i in range(5)], ncols=3, suptitle="five")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1 and _n_images(fig) == 1 and not fig.axes[0].axison
    canvas = np.asarray(fig.axes[0].images[0].get_array())
    # 1.4-inch images of 8 px: a gap of round(0.1 / (1.4 / 8)) = 1 px, a title band of round(0.16 / 0.175) = 1 px
    band, gap = 1, 1
    assert canvas.shape == (2 * (band + 8 + gap) - gap, 3 * (8 + gap) - gap, 3)
    for i in range(5):
        r, c = divmod(i, 3)
        y, x = r * (band + 8 + gap) + band, c * (8 + gap)
        assert np.allclose(canvas[y:y + 8, x:x + 8], imgs[i].permute(1, 2, 0).numpy())
    assert canvas[-8:, -8:].min() == 1.0  # the sixth cell is empty (white)
    texts = fig.axes[0].texts
    assert [t.get_text() for t in texts] == ["t0", "t1", "t2", "t3", "t4"]
    assert texts[4].get_position()[0] == pytest.approx((8 + gap) + 4)  # centred over its image
    assert fig._suptitle.get_text() == "five"
    assert fig.get_figwidth() == pytest.approx(canvas.shape[1] * 1.4 / 8)


def test_show_images_legend_names_each_colour_under_the_grid() -> None:
    plain = P.show_images(torch.rand(2, 3, 8, 8), ncols=2)
    colours = {"background": (0.0, 0.0, 0.0), "circle": (1.0, 0.0, 0.0), "square": (0.0, 0.5, 1.0)}
    fig = P.show_images(torch.rand(2, 3, 8, 8), ncols=2, legend=colours)
    (leg,) = fig.legends
    assert [t.get_text() for t in leg.get_texts()] == list(colours)
    assert [tuple(h.get_facecolor()[:3]) for h in leg.legend_handles] == list(colours.values())
    assert fig.get_figheight() == pytest.approx(plain.get_figheight() + 0.3)  # one row of patches
    assert fig.axes[0].get_position().y0 > 0  # the grid sits above the legend
    with pytest.raises(ValueError, match="legend must be a non-empty dict"):
        P.show_images(torch.rand(1, 3, 8, 8), legend={})
    plt.close("all")


def test_show_images_clips_or_normalizes() -> None:
    img = torch.full((1, 1, 2, 2), 2.0)
    img[0, 0, 0, 0] = -1.0
    clipped = np.asarray(P.show_images(img).axes[0].images[0].get_array())
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    normed = np.asarray(P.show_images(img, normalize=True).axes[0].images[0].get_array())
    assert normed.tolist() == [[0.0, 1.0], [1.0, 1.0]]


def test_show_images_accepts_a_list_of_greyscale_arrays() -> None:
    fig = P.show_images([np.zeros((4, 4)), np.ones((4, 4))])
    assert _n_images(fig) == 1 and fig.axes[0].images[0].get_cmap().name == "gray"
    canvas = np.asarray(fig.axes[0].images[0].get_array())
    assert canvas.ndim == 2 and canvas[:, :4].max() == 0.0 and canvas[:, -4:].min() == 1.0


def test_show_images_mixes_sizes_and_channels() -> None:
    grey = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    fig = P.show_images([torch.zeros(3, 8, 8), grey, torch.ones(1, 2, 8)], cmap="viridis")
    canvas = np.asarray(fig.axes[0].images[0].get_array())
    assert canvas.ndim == 3 and canvas.shape[0] == 8  # RGB, the cell of the largest image
    gap = 1
    tile = canvas[:, 8 + gap:16 + gap]  # the 4x4 map scaled to 8x8 and coloured by viridis
    assert np.allclose(tile[0, 0], plt.get_cmap("viridis")(0.0)[:3], atol=0.02)
    wide = canvas[:, 2 * (8 + gap):]  # ones [2, 8] scaled to fit 8x8: a 2-row band of viridis(1) on white
    assert np.allclose(wide[3:5], plt.get_cmap("viridis")(1.0)[:3], atol=1e-5)
    assert np.allclose(wide[:3], 1.0) and np.allclose(wide[5:], 1.0)


def test_show_images_input_errors() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        P.show_images(torch.zeros(0, 3, 4, 4))
    with pytest.raises(ValueError, match="titles has 1 entries for 2 images"):
        P.show_images(torch.zeros(2, 3, 4, 4), ["only one"])
    with pytest.raises(ValueError, match="ncols must be a positive int"):
        P.show_images(torch.zeros(2, 3, 4, 4), ncols=0)
    with pytest.raises(ValueError, match=r"images\[0\] must be"):
        P.show_images(torch.zeros(1, 2, 4, 4))


# --- heatmaps -----------------------------------------------------------------------------------

def _tile(fig: Figure, row: int, col: int, h: int, w: int, size: float = 1.6) -> np.ndarray:
    """Tile (row, col) of a one-picture grid with one-line titles, ``size`` inches per image."""
    canvas = np.asarray(fig.axes[0].images[0].get_array())
    inch = size / w
    gap, band = max(1, round(0.1 / inch)), round(0.16 / inch)
    y, x = row * (band + h + gap) + band, col * (w + gap)
    return canvas[y:y + h, x:x + w]


def test_show_heatmaps_layout() -> None:
    images = torch.rand(3, 3, 8, 8)
    maps = {"saliency": torch.rand(3, 8, 8), "gradcam": torch.rand(3, 2, 2)}
    fig = P.show_heatmaps(images, maps, row_titles=["a", "b", "c"])
    assert len(fig.axes) == 1 and _n_images(fig) == 1
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[:3] == ["a", "saliency", "gradcam"] and texts[3] == "b" and texts[4:6] == ["", ""]
    assert np.allclose(_tile(fig, 1, 0, 8, 8), images[1].permute(1, 2, 0).numpy())
    # the 2x2 Grad-CAM map is resized to the 8x8 image and blended in with alpha 0.5
    assert np.allclose(_tile(fig, 2, 2, 8, 8), P.overlay_rgb(images[2], maps["gradcam"][2]))


def test_overlay_rgb_blends_like_overlay() -> None:
    img = torch.rand(1, 4, 4)
    hm = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    out = P.overlay_rgb(img, hm, alpha=0.3, cmap="gray")
    heat = P._heat(P.to_numpy_image(img), hm)
    assert out.shape == (4, 4, 3) and heat.min() == 0.0 and heat.max() == 1.0
    assert np.allclose(out[..., 1], 0.7 * img[0].numpy() + 0.3 * heat, atol=1.01 / 255)  # 256-entry colormap


def test_show_heatmaps_single_tensor_and_no_overlay() -> None:
    fig = P.show_heatmaps(torch.rand(2, 1, 6, 6), torch.rand(2, 6, 6))
    assert [t.get_text() for t in fig.axes[0].texts] == ["", "map", "", ""]
    maps = {"m": np.random.rand(2, 6, 6), "rgb": torch.rand(2, 3, 6, 6)}
    fig = P.show_heatmaps(torch.rand(2, 3, 6, 6), maps, overlay_maps=False)
    assert _n_images(fig) == 1
    m = P.normalize_map(maps["m"][1])
    assert np.allclose(_tile(fig, 1, 1, 6, 6), np.repeat(m[..., None], 3, axis=2), atol=1.01 / 255)  # grey


def test_show_heatmaps_column0_uses_a_fixed_scale() -> None:
    dark = torch.full((1, 1, 4, 4), 0.1)
    dark[..., 0, 0] = 0.2
    fig = P.show_heatmaps(dark, torch.rand(1, 4, 4))
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)
    assert np.allclose(_tile(fig, 0, 0, 4, 4), np.repeat(dark[0, 0].numpy()[..., None], 3, axis=2), atol=1.01 / 255)  # dark


def test_show_heatmaps_input_errors() -> None:
    with pytest.raises(ValueError, match=r"maps\['a'\] has 2 maps for 3 images"):
        P.show_heatmaps(torch.rand(3, 3, 4, 4), {"a": torch.rand(2, 4, 4)})
    with pytest.raises(ValueError, match="at least one image"):
        P.show_heatmaps(torch.rand(0, 3, 4, 4), {"a": torch.rand(0, 4, 4)})
    with pytest.raises(ValueError, match="row_titles has 1 entries for 2 images"):
        P.show_heatmaps(torch.rand(2, 3, 4, 4), torch.rand(2, 4, 4), row_titles=["x"])


def test_overlay_resizes_and_normalizes_the_heatmap() -> None:
    fig, ax = plt.subplots()
    P.overlay(ax, torch.rand(3, 8, 8), torch.tensor([[0.0, 2.0], [4.0, 4.0]]), alpha=0.3)
    img, hm = ax.images
    assert img.get_array().shape == (8, 8, 3)
    arr = hm.get_array()
    assert arr.shape == (8, 8) and arr.min() == pytest.approx(0.0) and arr.max() == pytest.approx(1.0)
    assert hm.get_alpha() == 0.3
    ax2 = fig.add_subplot(212)
    P.overlay(ax2, torch.rand(1, 8, 8), torch.rand(1, 4, 4))  # a [1, h, w] map
    P.overlay(ax2, torch.rand(1, 8, 8), np.random.rand(4, 4))  # a NumPy map of another size
    assert [im.get_array().shape for im in ax2.images] == [(8, 8), (8, 8), (8, 8), (8, 8)]
    with pytest.raises(ValueError, match=r"heatmap must be \[H, W\]"):
        P.overlay(ax2, torch.rand(3, 8, 8), torch.rand(3, 8, 8))


# --- curves, embeddings, bars, filters ---------------------------------------------------------

def test_plot_history_one_and_several() -> None:
    h = History(train_loss=[1.0, 0.5, 0.2], train_acc=[0.5, 0.7, 0.9], val_loss=[1.1, 0.6, 0.4],
                val_acc=[0.4, 0.6, 0.8])
    fig = P.plot_history(h)
    assert len(fig.axes) == 2
    loss_ax, acc_ax = fig.axes
    assert len(loss_ax.lines) == 2 and acc_ax.get_ylabel() == "accuracy" and loss_ax.get_ylabel() == "loss"
    assert loss_ax.lines[0].get_xdata().tolist() == [1, 2, 3]
    assert loss_ax.lines[0].get_ydata().tolist() == [1.0, 0.5, 0.2]
    assert loss_ax.lines[0].get_linestyle() == "--" and loss_ax.lines[1].get_linestyle() == "-"
    no_val = History(train_loss=[1.0], train_acc=[0.5])
    fig = P.plot_history({"a": h, "b": no_val}, metrics=("loss",))
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 3
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a train", "a val", "b train"]


def test_plot_curves() -> None:
    fig = P.plot_curves({"fgsm": [0.9, 0.5, 0.1], "pgd": [0.9, 0.3, 0.0]}, x=[0, 0.01, 0.1], logx=True,
                        xlabel="eps", ylabel="acc", title="attacks")
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and len(ax.lines) == 2 and ax.get_xscale() == "log"
    assert ax.get_title() == "attacks" and ax.get_xlabel() == "eps" and ax.get_legend() is not None
    one = P.plot_curves({"only": [3, 2, 1]}).axes[0]
    assert one.lines[0].get_xdata().tolist() == [0, 1, 2] and one.get_legend() is None
    assert one.get_yscale() == "linear" and P.plot_curves({"fid": [900, 90, 9]}, logy=True).axes[0].get_yscale() == "log"


def test_plot_embedding() -> None:
    pts = torch.rand(12, 2)
    labels = torch.arange(12) % 3
    fig = P.plot_embedding(pts, labels, class_names=["a", "b", "c"], title="t")
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and ax.get_title() == "t"
    assert sum(len(c.get_offsets()) for c in ax.collections) == 12
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]
    fig2, ax2 = plt.subplots()
    assert P.plot_embedding(np.random.rand(6, 2), np.zeros(6), markers=np.array([0, 0, 0, 1, 1, 1]), ax=ax2) is fig2
    assert len(ax2.collections) == 2  # one scatter per marker group
    with pytest.raises(ValueError, match=r"points must be \[N, 2\], got shape \(5, 3\)"):
        P.plot_embedding(np.zeros((5, 3)), np.zeros(5))


def test_plot_bars() -> None:
    fig = P.plot_bars({"saliency": 0.5, "gradcam": 0.75}, ylabel="hit rate", ylim=(0, 1), title="pointing")
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [0.5, 0.75]
    assert [t.get_text() for t in ax.texts] == ["0.50", "0.75"]
    assert ax.get_ylim() == (0.0, 1.0)
    assert not P.plot_bars({"a": 1.0}, annotate=False).axes[0].texts


def test_plot_bars_grouped_with_reference() -> None:
    values = {"saliency": {"clean": 0.1, "biased": 0.4}, "IG": {"clean": 0.2, "biased": 0.6}}
    fig = P.plot_bars(values, reference=(0.05, "cue area"))
    ax = fig.axes[0]
    # series by series: clean (saliency, IG), then biased (saliency, IG), side by side in each group
    assert [round(p.get_height(), 2) for p in ax.patches] == [0.1, 0.2, 0.4, 0.6]
    xs = [p.get_x() for p in ax.patches]
    assert xs[0] < xs[2] < xs[1] < xs[3]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cue area", "clean", "biased"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["saliency", "IG"]
    assert ax.lines[0].get_ydata()[0] == 0.05
    # a series missing from a group leaves a gap, not an error or a label "nan"
    fig = P.plot_bars({"a": {"x": 1.0}, "b": {"y": 2.0}})
    assert [t.get_text() for t in fig.axes[0].texts] == ["1.00", "2.00"]
    with pytest.raises(TypeError, match="every name"):
        P.plot_bars({"a": 1.0, "b": {"x": 2.0}})
    with pytest.raises(ValueError, match="non-empty"):
        P.plot_bars({})


def test_plot_filters() -> None:
    fig = P.plot_filters(torch.rand(10, 3, 5, 5), ncols=4, title="conv1")
    assert len(fig.axes) == 1 and _n_images(fig) == 1 and fig._suptitle.get_text() == "conv1"
    canvas = np.asarray(fig.axes[0].images[0].get_array())
    gap = 1  # 0.8-inch tiles of 5 px
    assert canvas.shape == (3 * (5 + gap) - gap, 4 * (5 + gap) - gap, 3)
    assert canvas[:5, :5].min() == 0.0 and canvas[:5, :5].max() == 1.0  # each filter normalized on its own
    deep = P.plot_filters(torch.rand(2, 6, 3, 3))  # more than 3 input channels: averaged
    tile = np.asarray(deep.axes[0].images[0].get_array())
    assert tile.ndim == 2 and tile.shape[0] == 3
    with pytest.raises(ValueError, match=r"weight must be \[out, in, k, k\]"):
        P.plot_filters(torch.rand(4, 3, 3))


def test_close_figure() -> None:
    fig = P.show_images(torch.rand(1, 3, 4, 4))
    assert plt.fignum_exists(fig.number)
    P.close_figure(fig)
    assert not plt.fignum_exists(fig.number)


def test_show_mosaic_tiles_one_image_with_row_titles() -> None:
    images = torch.zeros(5, 1, 4, 4)
    images[3] = 1.0  # row 1, column 1 with nrow=2
    fig = P.show_mosaic(images, nrow=2, row_titles=["a", "b", "c"], title="t", pad=1)
    assert _n_images(fig) == 1
    canvas = fig.axes[0].images[0].get_array()
    assert canvas.shape == (3 * 5 + 1, 2 * 5 + 1)
    assert canvas[6:10, 6:10].min() == 1.0 and canvas[1:5, 1:5].max() == 0.0  # the white tile, a black one
    assert canvas[0, 0] == 0.5 and canvas[11:15, 6:10].min() == 0.5  # grey gaps and the empty last cell
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b", "c"]
    rgb = P.show_mosaic(torch.rand(3, 3, 4, 4), nrow=3)
    assert rgb.axes[0].images[0].get_array().shape == (6, 16, 3)
    with pytest.raises(ValueError, match="row_titles"):
        P.show_mosaic(images, nrow=2, row_titles=["a"])
    with pytest.raises(ValueError, match="nrow"):
        P.show_mosaic(images, nrow=0)
    with pytest.raises(ValueError, match="N, C, H, W"):
        P.show_mosaic(torch.rand(4, 4), nrow=2)
