"""labkit.transfer: few-shot subsets, multi-layer features, linear SVMs, new heads, meta architectures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import labkit as lk
from labkit import transfer


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3),
    )


def _blobs(n_per_class: int = 20, seed: int = 0, spread: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    y = torch.arange(3).repeat_interleave(n_per_class)
    x = centres[y] + spread * torch.randn(len(y), 2, generator=g)
    return x, y


def test_names_are_public():
    for name in transfer.__all__:
        assert getattr(lk, name) is getattr(transfer, name)


# --------------------------------------------------------------------------- few_shot_indices
def test_few_shot_indices_balanced_sorted_deterministic():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    idx = lk.few_shot_indices(labels, 2, seed=3)
    assert torch.equal(idx, idx.sort().values)
    assert torch.bincount(labels[idx]).tolist() == [2, 2, 2]
    assert torch.equal(idx, lk.few_shot_indices(labels, 2, seed=3))
    state = torch.get_rng_state()
    lk.few_shot_indices(labels, 1, seed=0)
    assert torch.equal(state, torch.get_rng_state()), "the global RNG must not be used"


def test_few_shot_indices_errors():
    labels = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match="class 1 has only 1"):
        lk.few_shot_indices(labels, 2)
    with pytest.raises(ValueError, match="per_class"):
        lk.few_shot_indices(labels, 0)
    with pytest.raises(TypeError, match="integer"):
        lk.few_shot_indices(labels.float(), 1)


# --------------------------------------------------------------------------- layer_features
def test_layer_features_matches_extract_features_and_restores_mode():
    model = _tiny_cnn().train()
    x = torch.rand(7, 3, 6, 6)
    feats, labels = lk.layer_features(model, x, ["0", "2", "5"], batch_size=3)
    assert labels is None and model.training
    for name in ("0", "2", "5"):
        ref, _ = lk.extract_features(model, x, name, pool="avg")
        assert torch.allclose(feats[name], ref, atol=1e-6)
    assert feats["0"].shape == (7, 4) and feats["5"].shape == (7, 5)
    flat, _ = lk.layer_features(model, x, ["0"], pool=None)
    assert flat["0"].shape == (7, 4 * 36)


def test_layer_features_labels_from_imageset():
    data = lk.ImageSet(torch.rand(5, 3, 6, 6), torch.tensor([0, 1, 2, 1, 0]), ["a", "b", "c"])
    feats, labels = lk.layer_features(_tiny_cnn(), data, ["7"], batch_size=2)
    assert torch.equal(labels, data.labels) and feats["7"].shape == (5, 3)


def test_layer_features_errors():
    model = _tiny_cnn()
    with pytest.raises(ValueError, match="non-empty list"):
        lk.layer_features(model, torch.rand(2, 3, 6, 6), "0")
    with pytest.raises(ValueError, match="nope"):
        lk.layer_features(model, torch.rand(2, 3, 6, 6), ["nope"])
    with pytest.raises(ValueError, match="pool"):
        lk.layer_features(model, torch.rand(2, 3, 6, 6), ["0"], pool="mean")


# --------------------------------------------------------------------------- SVMs
def test_svm_separable_blobs_perfect_and_predict_shape():
    x, y = _blobs()
    xt, yt = _blobs(seed=1)
    assert lk.svm_accuracy(x, y, xt, yt) == 1.0
    pred = lk.svm_predict(x, y, xt, C=1.0)
    assert pred.dtype == torch.int64 and torch.equal(pred, yt)
    assert lk.svm_accuracy(x.numpy(), y.numpy(), xt.numpy(), yt.numpy(), standardize=False) == 1.0


def test_svm_c_sweep_and_cross_validation():
    x, y = _blobs(spread=1.2)
    xt, yt = _blobs(seed=1, spread=1.2)
    sweep = lk.svm_c_sweep(x, y, xt, yt, Cs=[1e-3, 1.0])
    assert sweep == {C: lk.svm_accuracy(x, y, xt, yt, C=C) for C in (1e-3, 1.0)}
    cv = lk.svm_cross_validation(x, y, Cs=[1e-3, 1.0], folds=4)
    assert list(cv) == [1e-3, 1.0] and all(0.5 <= v <= 1 for v in cv.values())
    assert cv == lk.svm_cross_validation(x, y, Cs=[1e-3, 1.0], folds=4)  # deterministic
    # with 2 folds on 2 samples per class, each fold trains on one sample per class
    tiny_x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    tiny_y = torch.tensor([0, 0, 1, 1])
    assert lk.svm_cross_validation(tiny_x, tiny_y, Cs=[1.0], folds=2) == {1.0: 1.0}


def test_layer_sweep_per_layer():
    x, y = _blobs()
    xt, yt = _blobs(seed=1)
    noise = torch.randn(len(x), 2, generator=torch.Generator().manual_seed(5))
    noise_t = torch.randn(len(xt), 2, generator=torch.Generator().manual_seed(6))
    out = lk.layer_sweep({"good": x, "noise": noise}, y, {"good": xt, "noise": noise_t}, yt, C=1.0)
    assert out["good"] == 1.0 and out["noise"] < 0.7


def test_svm_errors():
    x, y = _blobs()
    with pytest.raises(ValueError, match="C must be"):
        lk.svm_accuracy(x, y, x, y, C=0)
    with pytest.raises(ValueError, match="rows"):
        lk.svm_accuracy(x, y[:-1], x, y)
    with pytest.raises(ValueError, match="dimensions"):
        lk.svm_accuracy(x, y, x[:, :1], y)
    with pytest.raises(ValueError, match="two classes"):
        lk.svm_accuracy(x[:5], torch.zeros(5, dtype=torch.long), x, y)
    with pytest.raises(ValueError, match="folds"):
        lk.svm_cross_validation(x, y, Cs=[1.0], folds=50)
    with pytest.raises(ValueError, match="lacks the layers"):
        lk.layer_sweep({"a": x}, y, {"b": x}, y)


# --------------------------------------------------------------------------- transfer_model
def test_transfer_model_new_head_copy_and_freeze():
    model = _tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = lk.transfer_model(model, 2, head="7")
    assert tuned[7].out_features == 2 and model[7].out_features == 3
    assert all(p.requires_grad for p in tuned.parameters())
    assert torch.equal(tuned[0].weight, model[0].weight) and tuned[0].weight is not model[0].weight
    frozen = lk.transfer_model(model, 2, head="7", freeze=True)
    # only the new head trains: 5 * 2 weights + 2 biases
    assert lk.count_parameters(frozen, trainable_only=True) == 12
    assert type(frozen[1]).__name__ == "FrozenBatchNorm2d"
    for k, v in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, before[k])
    assert all(p.requires_grad for p in model.parameters()) and isinstance(model[1], nn.BatchNorm2d)
    # same seed, same head; the global RNG is not advanced
    state = torch.get_rng_state()
    again = lk.transfer_model(model, 2, head="7", freeze=True)
    assert torch.equal(state, torch.get_rng_state()) and torch.equal(again[7].weight, frozen[7].weight)


def test_transfer_model_frozen_body_computes_source_features_in_train_mode():
    model = _tiny_cnn()
    x = torch.rand(4, 3, 6, 6)
    with torch.no_grad():
        model.train()
        model(torch.rand(8, 3, 6, 6) * 3)  # give the BN layer non-trivial running statistics
        model.eval()
        ref = model[:7](x)
    frozen = lk.transfer_model(model, 2, head="7", freeze=True).train()
    with torch.no_grad():
        assert torch.allclose(frozen[:7](x), ref, atol=1e-5)  # batch statistics are NOT used


def test_transfer_model_named_head_and_errors():
    resnet_like = nn.Sequential()
    resnet_like.add_module("body", nn.Conv2d(3, 2, 1))
    resnet_like.add_module("fc", nn.Linear(2, 10))
    out = lk.transfer_model(resnet_like, 4, head="fc")
    assert out.fc.out_features == 4
    with pytest.raises(ValueError, match="not an nn.Linear"):
        lk.transfer_model(resnet_like, 4, head="body")
    with pytest.raises(ValueError, match="num_classes"):
        lk.transfer_model(resnet_like, 0, head="fc")
    with pytest.raises(TypeError, match="freeze"):
        lk.transfer_model(resnet_like, 2, head="fc", freeze="yes")


def test_unfreeze_layers_trains_the_named_layers_and_keeps_batchnorm_frozen():
    model = _tiny_cnn()
    frozen = lk.transfer_model(model, 2, head="7", freeze=True)
    out = lk.unfreeze_layers(frozen, ["0", "5"])
    assert out is frozen  # in place
    # conv 3*4*9 + 4, linear 4*5 + 5, new head 5*2 + 2
    assert lk.count_parameters(frozen, trainable_only=True) == 112 + 25 + 12
    assert type(frozen[1]).__name__ == "FrozenBatchNorm2d"  # its statistics stay the source's
    assert all(p.requires_grad for p in model.parameters())  # the source model is untouched
    x = torch.rand(4, 3, 6, 6)
    frozen.train()(x).sum().backward()
    assert frozen[0].weight.grad is not None and frozen[7].weight.grad is not None
    with pytest.raises(ValueError, match="unknown layer"):
        lk.unfreeze_layers(frozen, ["nope"])
    with pytest.raises(ValueError, match="no parameters"):
        lk.unfreeze_layers(frozen, ["2"])  # the ReLU
    with pytest.raises(ValueError, match="non-empty list"):
        lk.unfreeze_layers(frozen, "0")
    with pytest.raises(ValueError, match="non-empty list"):
        lk.unfreeze_layers(frozen, [])
    with pytest.raises(TypeError, match="nn.Module"):
        lk.unfreeze_layers("model", ["0"])


# --------------------------------------------------------------------------- architecture, augmentation
def test_torchvision_architecture_vgg16_counts():
    vgg = lk.torchvision_architecture("vgg16")
    assert next(vgg.parameters()).device.type == "meta"
    fc = 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert lk.count_parameters(vgg.classifier) == fc == 123_642_856
    assert lk.count_parameters(vgg) == 138_357_544
    with pytest.raises(ValueError, match="torchvision.models"):
        lk.torchvision_architecture("vgg17")


def test_train_shapes_classifier_dropout_option():
    """lk.train_shapes_classifier(dropout=...) (lab 01's regularized scratch network)."""
    from labkit.training import train_shapes_classifier

    data = lk.shapes(8, size=32, seed=0, classes=["circle", "square"])
    model, _ = train_shapes_classifier(data, epochs=0, dropout=0.5)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 1 and drops[0].p == 0.5
    plain, _ = train_shapes_classifier(data, epochs=0)
    assert [m.p for m in plain.modules() if isinstance(m, nn.Dropout)] == [0.0]
