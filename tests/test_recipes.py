"""labkit.recipes: shapes classifier recipe, normalization wrapper, centre-prior maps, randomization cascade."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit import recipes as R
from labkit.attribution import saliency
from labkit.datasets import IMAGENET_MEAN, IMAGENET_STD, ImageSet, shapes


# --------------------------------------------------------------------------- train_shapes_classifier
@pytest.fixture
def one_thread():
    """Tiny networks: one thread is faster than two on a busy 2-core machine (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_shapes(n: int, seed: int) -> ImageSet:
    return shapes(n, size=32, seed=seed, classes=["circle", "cross"], background="flat", rotate=False)


def test_train_shapes_classifier_is_seeded_and_leaves_the_global_rng_alone(one_thread):
    train, val = _tiny_shapes(64, 0), _tiny_shapes(32, 1)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    m1, h1 = R.train_shapes_classifier(train, val, epochs=1, seed=3, widths=(4, 8))
    after = torch.rand(1)
    assert torch.equal(before, after), "the global RNG must not be advanced"
    torch.manual_seed(999)  # a different global state gives the same model
    m2, h2 = R.train_shapes_classifier(train, val, epochs=1, seed=3, widths=(4, 8))
    for (n1, p1), (_, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(p1, p2), n1
    assert h1.val_acc == h2.val_acc and len(h1.val_acc) == 1
    m3, _ = R.train_shapes_classifier(train, val, epochs=1, seed=4, widths=(4, 8))
    assert not torch.equal(m1.features[0].weight, m3.features[0].weight)


def _bright_vs_dark(n: int, seed: int) -> ImageSet:
    """Class 1 has a bright 8x8 square somewhere, class 0 not: separable after a few steps."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=g) * 0.3
    labels = torch.arange(n) % 2
    for i in torch.nonzero(labels).flatten().tolist():
        y, x = torch.randint(0, 24, (2,), generator=g).tolist()
        images[i, :, y:y + 8, x:x + 8] = 1.0
    return ImageSet(images, labels, ["plain", "square"])


def test_train_shapes_classifier_builds_the_recipe_and_learns(one_thread):
    train, val = _bright_vs_dark(128, 0), _bright_vs_dark(64, 1)
    model, history = R.train_shapes_classifier(train, val, epochs=3, lr=3e-3, batch_size=8, seed=0, widths=(4, 8))
    assert isinstance(model.features[1], nn.BatchNorm2d) and isinstance(model.pool, nn.AdaptiveAvgPool2d)
    assert model.classifier[-1].out_features == 2 and not model.training
    assert history.epochs == 3
    assert history.val_acc[-1] >= 0.9, f"a bright square vs none should be easy: {history.val_acc}"
    flat, _ = R.train_shapes_classifier(train, epochs=0, global_pool=False, batch_norm=False, widths=(4,))
    assert isinstance(flat.pool, nn.Identity) and not any(isinstance(m, nn.BatchNorm2d) for m in flat.modules())


def test_train_shapes_classifier_validates():
    train = _tiny_shapes(16, 0)
    with pytest.raises(TypeError, match="ImageSet"):
        R.train_shapes_classifier((train.images, train.labels), epochs=1)
    with pytest.raises(ValueError, match="same size"):
        R.train_shapes_classifier(train, shapes(8, size=40, classes=["circle", "cross"]), epochs=1)
    with pytest.raises(ValueError, match="seed"):
        R.train_shapes_classifier(train, epochs=1, seed=-1)


# --------------------------------------------------------------------------- with_normalization
def test_with_normalization_computes_the_imagenet_transform_and_pixel_gradients():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        lin[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    lin.eval()
    model = R.with_normalization(lin)
    x = torch.tensor([0.5, 0.25, 1.0]).view(1, 3, 1, 1)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    expected = ((x.flatten() - mean) / std * torch.tensor([1.0, 2.0, 3.0])).sum()
    assert torch.allclose(model(x).squeeze(), expected)
    # the pixel gradient of a linear score is weight / std (max |.| over channels in the saliency)
    s = saliency(model, x, 0)
    assert torch.allclose(s.squeeze(), (torch.tensor([1.0, 2.0, 3.0]) / std).max())
    assert model[1] is lin and not lin.training and not model.training


def test_with_normalization_keeps_the_mode_and_shares_parameters():
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Dropout(0.5)).train()
    wrapped = R.with_normalization(net, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert net.training and wrapped.training
    assert wrapped[1][0].weight is net[0].weight
    x = torch.rand(2, 3, 4, 4)
    net.eval()
    assert torch.equal(wrapped(x), net(x))
    with pytest.raises(ValueError, match="positive"):
        R.with_normalization(net, mean=(0.0,), std=(0.0,))
    with pytest.raises(ValueError, match="one value per channel"):
        R.Normalize((0.0, 0.0), (1.0,))
    with pytest.raises(TypeError, match="nn.Module"):
        R.with_normalization(lambda x: x)


# --------------------------------------------------------------------------- centered_gaussian_maps
def test_centered_gaussian_maps_values():
    g = R.centered_gaussian_maps(2, 3, sigma=1.0)
    assert g.shape == (2, 3, 3)
    assert g[0, 1, 1] == 1.0 and torch.allclose(g[1, 0, 1], torch.exp(torch.tensor(-0.5)))
    assert torch.allclose(g[0, 0, 0], torch.exp(torch.tensor(-1.0)))
    even = R.centered_gaussian_maps(1, (2, 4))  # centre between pixels: symmetric
    assert torch.allclose(even[0], even[0].flip(0)) and torch.allclose(even[0], even[0].flip(1))
    g[0, 0, 0] = 5  # copies, not views of one another
    assert g[1, 0, 0] != 5


def test_centered_gaussian_maps_validates():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must"):
            R.centered_gaussian_maps(bad, 4)
    with pytest.raises(TypeError, match="size"):
        R.centered_gaussian_maps(1, "4")
    with pytest.raises(ValueError, match="sigma"):
        R.centered_gaussian_maps(1, 4, sigma=0)


# --------------------------------------------------------------------------- fully_convolutional
def test_fully_convolutional_runs_the_head_at_every_position():
    torch.manual_seed(0)
    from labkit.models import get_model

    model = get_model("small_cnn", num_classes=3, widths=(4, 8), hidden=5, batch_norm=True, dropout=0.5).eval()
    x = torch.rand(2, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense = R.fully_convolutional(model)
    out = dense(x)
    assert out.shape == (2, 3, 4, 4) and not dense.training
    # every position is the classifier applied to that position's feature vector
    feats = model.features(x)
    for i, j in [(0, 0), (1, 3), (3, 2)]:
        expected = model.classifier(feats[:, :, i:i + 1, j:j + 1])
        assert torch.allclose(out[:, :, i, j], expected, atol=1e-5)
    # with a single linear head, the mean of the dense map is the logits (pooling commutes)
    lin = get_model("small_cnn", num_classes=3, widths=(4,), hidden=5).eval()
    lin.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    assert torch.allclose(R.fully_convolutional(lin)(x).mean((2, 3)), lin(x), atol=1e-5)
    # names are kept, the caller's model is untouched and shares nothing
    assert "features.0" in dict(dense.named_modules()) and "head.0" in dict(dense.named_modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.data_ptr() == q.data_ptr() for p in dense.parameters() for q in model.parameters())


def test_fully_convolutional_validates():
    from labkit.models import get_model

    with pytest.raises(TypeError, match="torch.nn.Module"):
        R.fully_convolutional("model")
    with pytest.raises(ValueError, match="global_pool=True"):
        R.fully_convolutional(get_model("small_cnn", num_classes=3, widths=(4,), global_pool=False, input_size=8))
    odd = get_model("small_cnn", num_classes=3, widths=(4,))
    odd.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        R.fully_convolutional(odd)

