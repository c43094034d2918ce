"""Model registry and the small course models: names, shapes, layout, parameter counts, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import labkit.models as models
from labkit.attribution import saliency
from labkit.datasets import IMAGENET_MEAN, IMAGENET_STD
from labkit.models import count_parameters, get_model, list_models, register_model
from labkit.models.small import MLP, SmallCNN


@pytest.fixture
def scratch_registry(monkeypatch):
    """Register test models into a copy of the registry that is thrown away afterwards."""
    models._load_all()
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    monkeypatch.setattr(models, "_DOCS", dict(models._DOCS))


# --- registry -----------------------------------------------------------------------------------

def test_list_models_includes_the_small_models_sorted() -> None:
    names = list_models()
    assert {"small_cnn", "digit_cnn", "mlp"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", ["resnet", "Small_CNN", "", None, 3])
def test_unknown_name_lists_the_valid_ones(name) -> None:
    with pytest.raises(ValueError, match=r"unknown model .*valid names: .*digit_cnn, .*mlp, .*small_cnn"):
        get_model(name)


def test_register_and_duplicate(scratch_registry) -> None:
    @register_model("tiny_test_model")
    def tiny(width: int = 2) -> nn.Module:
        """A tiny linear model.

        More text that is not the summary."""
        return nn.Linear(width, 1)

    assert "tiny_test_model" in list_models()
    assert isinstance(get_model("tiny_test_model", width=5), nn.Linear)
    assert get_model("tiny_test_model", width=5).in_features == 5
    assert models._DOCS["tiny_test_model"] == "A tiny linear model."
    register_model("tiny_test_model")(tiny)  # the same function again (a module re-import) is fine

    def other() -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="model name 'tiny_test_model' is already registered"):
        register_model("tiny_test_model")(other)
    assert get_model("tiny_test_model").in_features == 2  # the first registration is kept


def test_register_without_or_with_blank_docstring(scratch_registry) -> None:
    def undocumented() -> nn.Module:
        return nn.Identity()

    def blank() -> nn.Module:
        """   """
        return nn.Identity()

    register_model("undocumented_test")(undocumented)
    register_model("blank_doc_test")(blank)
    assert models._DOCS["undocumented_test"] == "" and models._DOCS["blank_doc_test"] == ""


def test_the_scratch_registry_was_thrown_away() -> None:
    assert "tiny_test_model" not in list_models()


# --- shapes and layout --------------------------------------------------------------------------

@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_small_cnn_output_shapes(size: int, channels: int) -> None:
    model = get_model("small_cnn", in_channels=channels, num_classes=7, widths=(4, 8, 8), hidden=8)
    assert model(torch.rand(2, channels, size, size)).shape == (2, 7)


def test_digit_cnn_defaults() -> None:
    model = get_model("digit_cnn")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 32), (32, 64)]
    assert model.classifier[1].out_features == 128
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert get_model("digit_cnn", in_channels=3, widths=(4,), num_classes=2)(torch.rand(1, 3, 28, 28)).shape == (1, 2)


def test_features_classifier_layout_is_addressable_by_dotted_names() -> None:
    model = get_model("small_cnn", widths=(4, 6), hidden=5, num_classes=3)
    named = dict(model.named_modules())
    assert [type(named[f"features.{i}"]) for i in range(6)] == [
        nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU, nn.MaxPool2d]
    assert named["features.3"].out_channels == 6
    assert [type(m) for m in model.classifier] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    bn = get_model("small_cnn", widths=(4, 6), batch_norm=True)
    assert [type(bn.features[i]) for i in range(4)] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert isinstance(bn.features[4], nn.Conv2d)


def test_forward_by_hand_with_fixed_weights() -> None:
    """1x1 conv (w=2) -> ReLU -> max-pool -> global average -> Linear(w=3, b=1) -> ReLU -> Linear(w=.5, b=-1)."""
    model = SmallCNN(1, 1, widths=(1,), hidden=1, first_kernel=1)
    with torch.no_grad():
        model.features[0].weight.fill_(2.0)
        model.features[0].bias.zero_()
        model.classifier[1].weight.fill_(3.0)
        model.classifier[1].bias.fill_(1.0)
        model.classifier[4].weight.fill_(0.5)
        model.classifier[4].bias.fill_(-1.0)
    x = torch.ones(1, 1, 4, 4)
    # conv: 2 everywhere; pools keep 2; hidden: 3 * 2 + 1 = 7; output: 0.5 * 7 - 1 = 2.5
    assert model(x).item() == pytest.approx(2.5)
    x[0, 0, 0, 0] = 5.0  # one max-pool window of 2x2 now holds 10, the three others 2: mean 4
    assert model(x).item() == pytest.approx(0.5 * (3 * 4 + 1) - 1)


def test_without_global_pool_the_head_is_sized_for_input_size() -> None:
    model = SmallCNN(1, 4, widths=(3, 5), hidden=6, global_pool=False, input_size=28)
    assert model.classifier[1].in_features == 5 * 7 * 7
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 4)
    strided = SmallCNN(3, 2, widths=(3,), first_kernel=5, first_stride=2, global_pool=False, input_size=32)
    assert strided.classifier[1].in_features == 3 * 8 * 8  # 32 -> conv/2 -> 16 -> pool -> 8
    assert strided.features[0].kernel_size == (5, 5) and strided.features[0].stride == (2, 2)


def test_mlp_layout_and_output() -> None:
    m = get_model("mlp", in_features=12, num_classes=3, hidden=(5, 4))
    assert [type(l) for l in m.net] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert m(torch.rand(2, 3, 2, 2)).shape == (2, 3)
    linear = MLP(6, 2, hidden=())
    assert [type(l) for l in linear.net] == [nn.Flatten, nn.Linear]


# --- parameter counts ---------------------------------------------------------------------------

def test_count_parameters_by_hand() -> None:
    model = get_model("small_cnn", in_channels=1, num_classes=2, widths=(2,), hidden=3)
    conv = 1 * 2 * 3 * 3 + 2  # weights (in * out * k * k) + biases = 20
    fc1 = 2 * 3 + 3  # global pool leaves 2 features -> 3 hidden = 9
    fc2 = 3 * 2 + 2  # 3 hidden -> 2 classes = 8
    assert count_parameters(model) == conv + fc1 + fc2 == 37
    for p in model.features.parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == fc1 + fc2
    assert count_parameters(model) == 37


def test_count_parameters_with_batch_norm_and_mlp() -> None:
    bn = get_model("small_cnn", in_channels=1, num_classes=2, widths=(2,), hidden=3, batch_norm=True)
    assert count_parameters(bn) == 37 + 2 * 2  # BatchNorm adds a weight and a bias per channel
    assert count_parameters(MLP(4, 2, hidden=(3,))) == (4 * 3 + 3) + (3 * 2 + 2)


# --- invalid arguments --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, error, msg",
    [
        (dict(in_channels=0), ValueError, "in_channels must be an int >= 1, got 0"),
        (dict(num_classes=True), TypeError, r"num_classes must be an int >= 1, got bool \(True\)"),
        (dict(num_classes=2.0), TypeError, r"num_classes must be an int >= 1, got float \(2.0\)"),
        (dict(widths=()), ValueError, "widths must name at least one conv block"),
        (dict(widths=(4, 0)), ValueError, r"widths\[1\] must be an int >= 1, got 0"),
        (dict(hidden=0), ValueError, "hidden must be an int >= 1, got 0"),
        (dict(dropout=1.0), ValueError, r"dropout must be in \[0, 1\), got 1.0"),
        (dict(dropout=-0.1), ValueError, r"dropout must be in \[0, 1\)"),
        (dict(first_kernel=0), ValueError, "first_kernel must be an int >= 1"),
        (dict(first_stride=-1), ValueError, "first_stride must be an int >= 1"),
    ],
)
def test_small_cnn_invalid_arguments(kwargs: dict, error: type, msg: str) -> None:
    """A wrong type is a TypeError, a wrong value a ValueError; both name the argument and the value."""
    with pytest.raises(error, match=msg):
        get_model("small_cnn", **kwargs)


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(in_features=0), "in_features must be an int >= 1"),
        (dict(hidden=(8, -1)), r"hidden\[1\] must be an int >= 1, got -1"),
        (dict(num_classes=0), "num_classes must be an int >= 1"),
    ],
)
def test_mlp_invalid_arguments(kwargs: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        get_model("mlp", **kwargs)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="widthz"):
        get_model("small_cnn", widthz=(4,))


def test_zf_cnn_first_layers_and_names() -> None:
    for k, s, side in [(11, 4, 2), (7, 2, 4)]:
        model = get_model("zf_cnn", num_classes=5, first_kernel=k, first_stride=s, widths=(4, 6, 8), hidden=8)
        conv = model.features[0]
        assert conv.kernel_size == (k, k) and conv.stride == (s, s)
        assert isinstance(model.features[1], torch.nn.ReLU) and isinstance(model.features[7], torch.nn.ReLU)
        assert model.features(torch.rand(2, 3, 64, 64)).shape == (2, 8, side, side)
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 5)
        assert float(model.features[0].bias.detach().abs().sum()) == 0.0  # He init: zero biases
    with pytest.raises(ValueError, match="init"):
        get_model("zf_cnn", init="xavier")
    with pytest.raises(ValueError, match="widths"):
        get_model("zf_cnn", widths=(4, 6))


# --------------------------------------------------------------------------- with_normalization
def test_with_normalization_computes_the_imagenet_transform_and_pixel_gradients():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        lin[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    lin.eval()
    model = models.with_normalization(lin)
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
    wrapped = models.with_normalization(net, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert net.training and wrapped.training
    assert wrapped[1][0].weight is net[0].weight
    x = torch.rand(2, 3, 4, 4)
    net.eval()
    assert torch.equal(wrapped(x), net(x))
    with pytest.raises(ValueError, match="positive"):
        models.with_normalization(net, mean=(0.0,), std=(0.0,))
    with pytest.raises(ValueError, match="one value per channel"):
        models.Normalize((0.0, 0.0), (1.0,))
    with pytest.raises(TypeError, match="nn.Module"):
        models.with_normalization(lambda x: x)


# --------------------------------------------------------------------------- fully_convolutional
def test_fully_convolutional_runs_the_head_at_every_position():
    torch.manual_seed(0)
    from labkit.models import get_model

    model = get_model("small_cnn", num_classes=3, widths=(4, 8), hidden=5, batch_norm=True, dropout=0.5).eval()
    x = torch.rand(2, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense = models.fully_convolutional(model)
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
    assert torch.allclose(models.fully_convolutional(lin)(x).mean((2, 3)), lin(x), atol=1e-5)
    # names are kept, the caller's model is untouched and shares nothing
    assert "features.0" in dict(dense.named_modules()) and "head.0" in dict(dense.named_modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.data_ptr() == q.data_ptr() for p in dense.parameters() for q in model.parameters())


def test_fully_convolutional_validates():
    from labkit.models import get_model

    with pytest.raises(TypeError, match="torch.nn.Module"):
        models.fully_convolutional("model")
    with pytest.raises(ValueError, match="global_pool=True"):
        models.fully_convolutional(get_model("small_cnn", num_classes=3, widths=(4,), global_pool=False, input_size=8))
    odd = get_model("small_cnn", num_classes=3, widths=(4,))
    odd.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        models.fully_convolutional(odd)
