"""labkit.embeddings: feature extraction by hand, PCA against scikit-learn, t-SNE determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from torch import nn

from labkit.datasets import ImageSet
from labkit.embeddings import extract_features, pca, tsne
from labkit.hooks import count_hooks


def _model() -> nn.Sequential:
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.zero_()
    return nn.Sequential(conv, nn.ReLU(), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))


def test_extract_features_by_hand_and_all_input_kinds():
    model = _model().train()
    x = torch.tensor([[[[1.0, -2.0], [3.0, 0.5]]], [[[-1.0, 0.0], [2.0, -3.0]]], [[[0.0, 1.0], [1.0, 1.0]]]])
    labels = torch.tensor([0, 2, 1])
    stats = model[2].running_mean.clone()
    hooks = count_hooks(model)
    # layer "1" = relu(conv(x)): channel 0 = relu(x), channel 1 = relu(-x)
    expected = torch.cat([x.clamp(min=0), (-x).clamp(min=0)], 1)
    feats, y = extract_features(model, ImageSet(x, labels, ["a", "b", "c"]), "1", batch_size=2)
    assert torch.equal(feats, expected.flatten(1)) and torch.equal(y, labels)
    avg, _ = extract_features(model, x, "1", pool="avg")
    assert torch.allclose(avg, expected.mean((2, 3)))
    mx, none = extract_features(model, x, "1", pool="max")
    assert torch.equal(mx, expected.amax((2, 3))) and none is None
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=1)
    f2, y2 = extract_features(model, loader, "1")
    assert torch.equal(f2, feats) and torch.equal(y2, labels)
    unflat, _ = extract_features(model, x, "1", flatten=False)
    assert unflat.shape == (3, 2, 2, 2)
    logits, _ = extract_features(model, x, None)
    model.eval()
    assert torch.allclose(logits, model(x).detach())
    model.train()
    # the model is left as found: train mode, BatchNorm statistics untouched, no hooks
    assert model.training and torch.equal(model[2].running_mean, stats) and count_hooks(model) == hooks
    assert all(p.requires_grad for p in model.parameters())


def test_extract_features_errors():
    model = _model()
    with pytest.raises(ValueError, match="valid names"):
        extract_features(model, torch.rand(2, 1, 2, 2), "conv9")
    with pytest.raises(ValueError, match="pool"):
        extract_features(model, torch.rand(2, 1, 2, 2), "1", pool="mean")
    with pytest.raises(TypeError, match="ImageSet"):
        extract_features(model, [1, 2, 3], "1")


def test_pca_matches_sklearn_up_to_sign():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8))
    proj, ratio = pca(torch.from_numpy(x).float(), 3)
    ref = PCA(n_components=3).fit(x)
    ref_proj = ref.transform(x)
    assert np.allclose(ratio.numpy(), ref.explained_variance_ratio_, atol=1e-5)
    for j in range(3):
        a, b = proj[:, j].numpy(), ref_proj[:, j]
        sign = np.sign(a @ b)
        assert sign != 0 and np.allclose(a, sign * b, atol=1e-3)
    assert ratio[0] >= ratio[1] >= ratio[2]
    with pytest.raises(ValueError, match="k must be"):
        pca(torch.rand(5, 3), 4)


def test_pca_on_hand_made_points():
    # points on the x axis: one component explains everything; projections are the centred x values
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [6.0, 0.0]])
    proj, ratio = pca(x, 2)
    assert ratio.tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    assert proj[:, 0].tolist() == pytest.approx([-2.0, -1.0, 0.0, 3.0], abs=1e-5)  # sign: largest loading > 0


def test_tsne_is_deterministic_for_a_seed_and_separates_clusters():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 60, generator=g)
    b = torch.randn(30, 60, generator=g) + 8.0
    feats = torch.cat([a, b])
    e1 = tsne(feats, perplexity=10, seed=0, pca_first=20, max_iter=300)
    e2 = tsne(feats, perplexity=10, seed=0, pca_first=20, max_iter=300)
    assert e1.shape == (60, 2) and torch.equal(e1, e2)
    # the two clusters do not mix: every point is nearer its own cluster's centre
    ca, cb = e1[:30].mean(0), e1[30:].mean(0)
    near_a = (e1 - ca).norm(dim=1) < (e1 - cb).norm(dim=1)
    assert near_a[:30].all() and not near_a[30:].any()
    with pytest.raises(ValueError, match="perplexity"):
        tsne(feats[:10], perplexity=30)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
def test_extract_features_on_cuda_model():
    model = _model().eval()
    x = torch.rand(5, 1, 2, 2)
    cpu, _ = extract_features(model, x, "1")
    gpu, _ = extract_features(model.cuda(), x, "1")       # CPU data, CUDA model: batches moved
    assert gpu.device.type == "cpu" and torch.allclose(gpu, cpu, atol=1e-6)
    proj, ratio = pca(torch.rand(20, 4).cuda(), 2)
    assert proj.device.type == "cuda" and ratio.shape == (2,)
