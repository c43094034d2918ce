"""labkit.deconv: a deconvnet projection computed by hand, and the backward-pass identity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.deconv import deconv_projection, receptive_field, top_patches
from labkit.hooks import capture, count_hooks, relu_rule


def _tiny() -> nn.Module:
    conv = nn.Conv2d(1, 1, 2, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, -1.0], [0.0, 2.0]]]]))
        conv.bias.fill_(0.5)  # dropped by the deconvnet (it is not part of the transposed filter)
    model = nn.Module()
    model.features = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2, stride=1))
    model.forward = lambda x: model.features(x)
    return model


X = torch.tensor([[[[1.0, 0.0, 2.0, 0.0],
                    [0.0, 1.0, 0.0, 3.0],
                    [2.0, 0.0, 2.0, 0.0],
                    [0.0, 1.0, 0.0, 1.0]]]])


def test_hand_computed_projection():
    # Conv W = [[1, -1], [0, 2]], no padding: Y[i,j] = X[i,j] - X[i,j+1] + 2 X[i+1,j+1] (+ bias 0.5)
    #   Y00 = 1-0+2 = 3    Y01 = 0-2+0 = -2   Y02 = 2-0+6 = 8
    #   Y10 = 0-1+0 = -1   Y11 = 1-0+4 = 5    Y12 = 0-3+0 = -3
    #   Y20 = 2-0+2 = 4    Y21 = 0-2+0 = -2   Y22 = 2-0+2 = 4
    # ReLU (with the bias, +0.5 everywhere it stays positive):
    #   R = [[3.5, 0, 8.5], [0, 5.5, 0], [4.5, 0, 4.5]]
    # MaxPool 2x2, stride 1 (overlapping windows), switches in R:
    #   P00 = 5.5 @ (1,1)   P01 = 8.5 @ (0,2)   P10 = 5.5 @ (1,1)   P11 = 5.5 @ (1,1)
    model = _tiny()
    # top=1: keep only P01 = 8.5. Unpool -> U = 8.5 at (0,2); rectify (no change);
    # transposed conv: Z[0+a, 2+b] += 8.5 * W[a,b] -> Z[0,2] = 8.5, Z[0,3] = -8.5, Z[1,3] = 17
    z = deconv_projection(model, X, "features.2", 0)
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 0, 2], expected[0, 0, 0, 3], expected[0, 0, 1, 3] = 8.5, -8.5, 17.0
    assert torch.allclose(z, expected)
    # top=None: the whole map. Three windows share the switch (1,1): unpooling adds them,
    # U[1,1] = 3 * 5.5 = 16.5, U[0,2] = 8.5. Transposed conv adds, from U[1,1]:
    # Z[1,1] += 16.5, Z[1,2] += -16.5, Z[2,2] += 33
    z_all = deconv_projection(model, X, "features.2", 0, top=None)
    expected[0, 0, 1, 1], expected[0, 0, 1, 2], expected[0, 0, 2, 2] = 16.5, -16.5, 33.0
    assert torch.allclose(z_all, expected)
    # from the conv output itself (before the ReLU), top=1 keeps Y02 + 0.5 = 8.5 at (0,2): same projection
    assert torch.allclose(deconv_projection(model, X, "features.0", 0), z)


def test_rectification_matters():
    # With a negative value sent down, the ReLU of the deconvnet zeroes it: from the conv layer
    # "features.0" with top=None, the map holds negatives (Y01 = -1.5), which the transposed conv
    # propagates; from "features.1" (after the ReLU) they are gone.
    model = _tiny()
    below = deconv_projection(model, X, "features.0", 0, top=None)
    above = deconv_projection(model, X, "features.1", 0, top=None)
    assert not torch.allclose(below, above)
    # "features.1": R = [[3.5, 0, 8.5], [0, 5.5, 0], [4.5, 0, 4.5]] transposed through W, e.g.
    # Z[0,0] = R00 * W00 = 3.5; Z[0,1] = R00 * W01 + R01 * W00 = -3.5; Z[1,1] = R00*W11 + R11*W00 = 7 + 5.5
    assert above[0, 0, 0, 0].item() == pytest.approx(3.5)
    assert above[0, 0, 0, 1].item() == pytest.approx(-3.5)
    assert above[0, 0, 1, 1].item() == pytest.approx(12.5)


class _VGGish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),                        # overlapping, AlexNet-style
            nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, dilation=1), nn.ReLU()),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 2 * 2, 4))

    def forward(self, x):
        return self.classifier(self.features(x))


def _vggish() -> nn.Module:
    torch.manual_seed(0)
    model = _VGGish()
    with torch.no_grad():
        model.features[1].running_mean.uniform_(-0.3, 0.3)
        model.features[1].running_var.uniform_(0.5, 2.0)
        model.features[1].weight.uniform_(0.5, 1.5)
    return model.eval()


def _deconvnet_backward(model, images, layer, channel, top):
    """Independent reference: the backward pass with Springenberg's deconvnet ReLU rule, seeded with
    the selected activations (unpooling = max-pool gradient, transposed filters = conv gradient)."""
    x = images.clone().requires_grad_(True)
    with relu_rule(model, "deconvnet"), capture(model, layer) as cap:
        model(x)
        a = cap.activations[layer]
        seed = torch.zeros_like(a)
        sel = a[:, channel].detach()
        if top is not None:
            flat = sel.flatten(1)
            idx = flat.topk(top, dim=1).indices
            sel = torch.zeros_like(flat).scatter_(1, idx, flat.gather(1, idx)).view_as(sel)
        seed[:, channel] = sel
        (g,) = torch.autograd.grad(a, x, grad_outputs=seed)
    return g


@pytest.mark.parametrize("layer", ["features.0", "features.1", "features.2", "features.3", "features.5",
                                   "features.6.1", "features.7"])
@pytest.mark.parametrize("top", [1, 3, None])
def test_projection_equals_deconvnet_backward_pass(layer, top):
    model = _vggish()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ours = deconv_projection(model, images, layer, 1, top=top)
    ref = _deconvnet_backward(model, images, layer, 1, top)
    assert ours.shape == images.shape
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_unsupported_architectures_and_arguments():
    model = _vggish()
    images = torch.rand(2, 3, 16, 16)

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return x + self.conv1(x)

    with pytest.raises(ValueError, match="not inside an nn.Sequential"):
        deconv_projection(Res(), images, "conv1", 0)
    odd = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match="Sigmoid"):
        deconv_projection(odd, images, "2", 0)
    shifted = nn.Sequential(nn.Identity(), nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    shifted.forward = lambda x: shifted[1](x * 2)  # the Sequential does not see the images themselves
    with pytest.raises(ValueError, match="does not take the images directly"):
        deconv_projection(shifted, images, "1.1", 0)
    with pytest.raises(ValueError, match="valid names"):
        deconv_projection(model, images, "features.99", 0)
    with pytest.raises(ValueError, match="channel must lie"):
        deconv_projection(model, images, "features.0", 6)
    with pytest.raises(ValueError, match="top"):
        deconv_projection(model, images, "features.0", 0, top=0)


def test_receptive_field_by_hand():
    model = _vggish()
    # conv3 p1: size 3, offset -1; pool3 s2 p1: size 5, offset -2, stride 2;
    # conv3 s2 p1: size 5 + 2*2 = 9, offset -2 - 2 = -4, stride 4; conv3 p1: 9 + 2*4 = 17, offset -8;
    # pool2 s2: 17 + 4 = 21, stride 8, offset -8
    assert receptive_field(model, "features.0") == {"size": (3, 3), "stride": (1, 1), "offset": (-1, -1)}
    assert receptive_field(model, "features.3") == {"size": (5, 5), "stride": (2, 2), "offset": (-2, -2)}
    assert receptive_field(model, "features.7") == {"size": (21, 21), "stride": (8, 8), "offset": (-8, -8)}


def test_top_patches_finds_the_strongest_images_and_crops_them():
    model = _tiny()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(20, 1, 4, 4, generator=g)
    images[7] = X[0]                       # the hand case: strongest pooled value 8.5 at (0, 1)
    images[13] = X[0] * 2                  # twice as strong
    hooks = count_hooks(model)
    out = top_patches(model, images, "features.2", 0, k=3, batch_size=6)
    assert out["indices"][:2].tolist() == [13, 7]
    assert out["values"][:2].tolist() == pytest.approx([16.5, 8.5])   # 2 * 8 + 0.5 and 8 + 0.5
    assert out["locations"][1].tolist() == [0, 1]
    # receptive field of a pooled position: conv 2 then pool 2 (stride 1) -> 3x3, stride 1, offset 0
    assert out["receptive_field"] == (3, 3) and out["stride"] == (1, 1)
    assert out["boxes"][1].tolist() == [0, 1, 3, 4]
    assert torch.equal(out["patches"][1], X[0, :, 0:3, 1:4])
    full = deconv_projection(model, X, "features.2", 0)
    assert torch.allclose(out["projections"][1], full[0, :, 0:3, 1:4])
    # the projection lies inside the receptive field: nothing is lost by the crop
    assert out["projections"][1].abs().sum().item() == pytest.approx(full.abs().sum().item())
    assert count_hooks(model) == hooks
    with pytest.raises(ValueError, match="k must be"):
        top_patches(model, images, "features.2", 0, k=21)


def test_crop_pads_outside_the_image_and_model_state_restored():
    model = _vggish().train()
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    before = images.clone()
    stats = model.features[1].running_mean.clone()
    out = top_patches(model, images, "features.0", 2, k=5)
    assert out["patches"].shape == (5, 3, 3, 3)
    for box, patch, i in zip(out["boxes"].tolist(), out["patches"], out["indices"].tolist()):
        t, l, b, r = box
        for yy in range(t, b):
            for xx in range(l, r):
                inside = 0 <= yy < 16 and 0 <= xx < 16
                want = images[i, :, yy, xx] if inside else torch.zeros(3)
                assert torch.equal(patch[:, yy - t, xx - l], want)
    deconv_projection(model, images, "features.5", 0)
    assert model.training and torch.equal(model.features[1].running_mean, stats)
    assert torch.equal(images, before)
    assert model.features[2].inplace  # in-place ReLU flags untouched


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
def test_deconv_on_cuda_matches_cpu():
    model = _vggish()
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    cpu = deconv_projection(model, images, "features.5", 2, top=None)
    cpu_top = top_patches(model, images, "features.3", 1, k=2)
    model.cuda()
    gpu = deconv_projection(model, images.cuda(), "features.5", 2, top=None)
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
    gpu_top = top_patches(model, images, "features.3", 1, k=2)   # CPU data, CUDA model
    assert torch.equal(gpu_top["indices"], cpu_top["indices"])
    assert torch.allclose(gpu_top["projections"], cpu_top["projections"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="move them"):
        deconv_projection(model, images, "features.5", 2)


# --------------------------------------------------------------------------- active_fraction, occlusion_drop_by_mask
def test_active_fraction_counts_positive_outputs():
    from labkit.deconv import active_fraction

    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.zero_()
    model = nn.Sequential(conv, nn.ReLU()).train()
    x = torch.tensor([1.0, -2.0, 3.0, 0.0]).view(1, 1, 2, 2).repeat(3, 1, 1, 1)
    # channel 0 = relu(x): 2 of 4 positive; channel 1 = relu(-x): 1 of 4 positive
    frac = active_fraction(model, x, "1", batch_size=2)
    assert torch.allclose(frac, torch.tensor([0.5, 0.25]))
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="batch_size"):
        active_fraction(model, x, "1", batch_size=0)
    with pytest.raises(ValueError):
        active_fraction(model, x, "nope")
    with pytest.raises(TypeError, match="data"):
        active_fraction(model, [1, 2], "1")


class _Bright(nn.Module):
    """Two classes: score of class 0 = 10 * mean of the top-left 2x2 pixels; class 1 fixed at 0."""

    def forward(self, x):
        s = 10 * x[:, 0, :2, :2].mean((1, 2))
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_occlusion_drop_by_mask_hand_example():
    from labkit.deconv import occlusion_drop_by_mask

    x = torch.zeros(1, 1, 4, 4)
    x[:, :, :2, :2] = 1.0  # the "object": the top-left quarter
    masks = x[:, 0] > 0
    res = occlusion_drop_by_mask(_Bright(), x, masks, 0, window=2, stride=2, baseline=0.0)
    p_clean = torch.softmax(torch.tensor([10.0, 0.0]), 0)[0]
    # windows: (0,0) hides the object -> scores (0, 0) -> p = 0.5; the other three change nothing
    assert res["n_object"] == 1 and res["n_background"] == 3
    assert abs(res["object"] - (p_clean - 0.5).item()) < 1e-6
    assert abs(res["background"]) < 1e-6
    assert res["drop"].shape == (1, 2, 2) and torch.allclose(res["coverage"], torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
    with pytest.raises(ValueError, match="masks"):
        occlusion_drop_by_mask(_Bright(), x, masks[:, :3], 0, window=2, stride=2)
    with pytest.raises(ValueError, match="object_min"):
        occlusion_drop_by_mask(_Bright(), x, masks, 0, window=2, stride=2, object_min=0.0)
