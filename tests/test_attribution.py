"""labkit.attribution on tiny models with hand-checkable answers (the library cross-checks live in
test_crosscheck.py, the leak checks in test_no_hook_leaks.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import labkit as lk
from labkit.attribution import resolve_target

C, H, W, K = 2, 4, 4, 3


def linear_model() -> tuple[nn.Module, torch.Tensor]:
    """score_k(x) = <Wk, x> + b_k: every gradient map is a row of W (hand-checkable)."""
    torch.manual_seed(0)
    weight = torch.randn(K, C * H * W, dtype=torch.float64)
    lin = nn.Linear(C * H * W, K).double()
    with torch.no_grad():
        lin.weight.copy_(weight)
    return nn.Sequential(nn.Flatten(), lin), weight.view(K, C, H, W)


def small_cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
    ).double()


def gap_model() -> nn.Module:
    """conv -> ReLU -> global average pool -> linear: Grad-CAM = relu(sum_c W[t, c] A_c) / (h w)."""
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    ).double()


def images(b: int = 3, c: int = 3, h: int = 8, w: int = 8, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------------------------- targets


def test_resolve_target_forms() -> None:
    out = torch.tensor([[0.0, 2.0, 1.0], [5.0, -1.0, 0.0]])
    torch.testing.assert_close(resolve_target(out, None), torch.tensor([2.0, 5.0]))
    torch.testing.assert_close(resolve_target(out, 2), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(resolve_target(out, torch.tensor([0, 1])), torch.tensor([0.0, -1.0]))
    torch.testing.assert_close(resolve_target(out, [2, 2]), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(resolve_target(out, torch.tensor(1)), torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(resolve_target(out, lambda o: o.sum(1)), torch.tensor([3.0, 4.0]))


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        (3, ValueError, "out of range for 3 classes"),
        (-1, ValueError, "out of range"),
        (torch.tensor([0, 1, 2]), ValueError, "one class per image"),
        (torch.tensor([0, 7]), ValueError, "outside 0..2"),
        (torch.tensor([0.0, 1.0]), TypeError, "integer classes"),
        (True, TypeError, "bool"),
        ("cat", TypeError, "target must be"),
        (lambda o: o, ValueError, "one score per image"),
    ],
)
def test_resolve_target_errors(target: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        resolve_target(torch.zeros(2, 3), target)


def test_class_target_on_dense_output_asks_for_a_callable() -> None:
    with pytest.raises(ValueError, match="callable"):
        resolve_target(torch.zeros(2, 3, 4, 4), 1)


# --------------------------------------------------------------------------------------------- gradient maps


def test_gradient_maps_of_a_linear_model() -> None:
    model, weight = linear_model()
    x = images(3, C, H, W)
    t = torch.tensor([0, 2, 1])
    torch.testing.assert_close(lk.saliency(model, x, t), weight[t].abs().amax(1))
    torch.testing.assert_close(lk.gradient_x_input(model, x, t), weight[t] * x)
    for method in ("trapezoid", "right", "left", "middle"):  # constant gradient: every rule is exact
        ig = lk.integrated_gradients(model, x, t, steps=5, method=method)
        torch.testing.assert_close(ig, weight[t] * x)
    base = torch.full((C, 1, 1), 0.5, dtype=torch.float64)
    torch.testing.assert_close(lk.integrated_gradients(model, x, t, baseline=base, steps=3), weight[t] * (x - 0.5))


def test_saliency_explains_the_predicted_class_by_default() -> None:
    model, weight = linear_model()
    x = images(4, C, H, W)
    pred = model(x).argmax(1)
    torch.testing.assert_close(lk.saliency(model, x), weight[pred].abs().amax(1))
    torch.testing.assert_close(lk.saliency(model, x, 1), weight[[1, 1, 1, 1]].abs().amax(1))


def test_gradients_work_under_no_grad_and_in_float32() -> None:
    model = small_cnn().float()
    x = images().float()
    with torch.no_grad():
        sal = lk.saliency(model, x, 1)
    assert sal.shape == (3, 8, 8) and sal.dtype == torch.float32 and sal.abs().sum() > 0
    with torch.inference_mode():
        x_inf = x.clone()
        torch.testing.assert_close(lk.saliency(model, x_inf, 1), sal)
        assert lk.grad_cam(model, x_inf, "4", 1).abs().sum() > 0
        assert lk.guided_backprop(model, x_inf, 1).abs().sum() > 0


def test_integrated_gradients_completeness() -> None:
    """sum of the map = score(x) - score(baseline) up to the quadrature error (Sundararajan et al., Prop. 1)."""
    model = small_cnn()
    x = images()
    t = torch.tensor([0, 3, 4])
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, t[:, None]).squeeze(1)
    errors = {}
    for steps in (50, 800):
        ig = lk.integrated_gradients(model, x, t, steps=steps)
        errors[steps] = float((ig.sum((1, 2, 3)) - gap).abs().max())
    # ReLU/max-pool kinks make the path integrand discontinuous: the error falls like 1/steps
    assert errors[800] < 2e-3 * float(gap.abs().max())
    assert errors[800] < errors[50] / 5


def test_integrated_gradients_chunking_and_validation() -> None:
    model = small_cnn()
    x = images()
    ref = lk.integrated_gradients(model, x, steps=6)
    for bs in (1, 5, 1000):
        torch.testing.assert_close(lk.integrated_gradients(model, x, steps=6, batch_size=bs), ref)
    with pytest.raises(ValueError, match="steps must be >= 2"):
        lk.integrated_gradients(model, x, steps=1)
    with pytest.raises(ValueError, match="method must be one of"):
        lk.integrated_gradients(model, x, method="gausslegendre")
    with pytest.raises(ValueError, match="does not broadcast"):
        lk.integrated_gradients(model, x, baseline=torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        lk.integrated_gradients(model, x, batch_size=0)


def test_smoothgrad_is_the_mean_saliency_of_documented_noisy_copies() -> None:
    model = small_cnn()
    x = images()
    b = x.shape[0]
    samples, noise, seed = 4, 0.2, 7
    sigma = noise * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    gen = torch.Generator().manual_seed(seed)
    target = model(x).argmax(1)
    expected = torch.zeros(b, 8, 8, dtype=x.dtype)
    for _ in range(samples):  # sample-major, one draw per image
        eps = torch.stack([torch.randn(x.shape[1:], generator=gen, dtype=x.dtype) for _ in range(b)])
        expected += lk.saliency(model, x + eps * sigma.view(-1, 1, 1, 1), target)
    expected /= samples
    for bs in (None, 1, 5):
        got = lk.smoothgrad(model, x, samples=samples, noise=noise, seed=seed, batch_size=bs)
        torch.testing.assert_close(got, expected)
    other = lk.smoothgrad(model, x, samples=samples, noise=noise, seed=seed + 1)
    assert not torch.allclose(other, expected)


def test_smoothgrad_without_noise_is_saliency() -> None:
    model = small_cnn()
    x = images()
    torch.testing.assert_close(lk.smoothgrad(model, x, 2, samples=3, noise=0.0), lk.saliency(model, x, 2))
    with pytest.raises(ValueError, match="noise"):
        lk.smoothgrad(model, x, noise=-0.1)
    with pytest.raises(ValueError, match="samples must be an int >= 1"):
        lk.smoothgrad(model, x, samples=0)


def test_guided_backprop_and_deconvnet_are_the_ruled_gradients() -> None:
    model = small_cnn()
    x = images()
    for fn, rule in ((lk.guided_backprop, "guided"), (lk.deconvnet, "deconvnet")):
        v = x.clone().requires_grad_(True)
        with lk.relu_rule(model, rule):
            model(v)[:, 1].sum().backward()
        got = fn(model, x, 1)
        assert got.shape == x.shape and got.abs().sum() > 0
        torch.testing.assert_close(got, v.grad)
    assert not torch.allclose(lk.guided_backprop(model, x, 1), lk.deconvnet(model, x, 1))
    assert all(p.requires_grad for p in model.parameters())  # not left frozen
    model.zero_grad()


def test_callable_target_on_a_tuple_output_like_a_vae() -> None:
    """Area guided backprop on a reconstruction (lab 07): the callable receives the model's tuple."""

    class TinyVAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.dec = nn.Conv2d(4, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            h = self.enc(x)
            return torch.sigmoid(self.dec(h)), h.mean((2, 3)), h.std((2, 3))

    torch.manual_seed(5)
    vae = TinyVAE().double()
    x = images()

    def region(out: tuple) -> torch.Tensor:
        return out[0][:, :, 2:5, 2:5].relu().sum((1, 2, 3))  # a relu outside the model is fine

    v = x.clone().requires_grad_(True)
    with lk.relu_rule(vae, "guided"):
        out = vae(v)
    region(out).sum().backward()
    torch.testing.assert_close(lk.guided_backprop(vae, x, region), v.grad)
    with pytest.raises(TypeError, match="callable target"):
        lk.guided_backprop(vae, x, 1)
    with pytest.raises(ValueError, match="one score per image"):
        lk.saliency(vae, x, lambda out: out[0].sum())


def test_functional_relu_in_the_model_raises_for_guided_backprop() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.relu(self.conv(x))).mean((2, 3))

    model = Functional().double()
    with pytest.raises(RuntimeError, match="functionally"):
        lk.guided_backprop(model, images(), 0)
    lk.saliency(model, images(), 0)  # plain gradients are fine with functional relus


# --------------------------------------------------------------------------------------------- Grad-CAM


def test_grad_cam_on_a_gap_head_is_the_class_activation_map() -> None:
    model = gap_model()
    x = images()
    t = torch.tensor([0, 4, 2])
    acts = model[1](model[0](x))  # [B, 4, 8, 8]
    w = model[4].weight  # [5, 4]
    expected = (w[t][:, :, None, None] * acts).sum(1).clamp(min=0) / 64
    torch.testing.assert_close(lk.grad_cam(model, x, "1", t, upsample=False), expected.detach())
    torch.testing.assert_close(lk.grad_cam(model, x, model[1], t), expected.detach())  # same size: no-op


def test_grad_cam_upsampling_and_layer_resolution() -> None:
    model = small_cnn()
    x = images()
    low = lk.grad_cam(model, x, "4", upsample=False)
    assert low.shape == (3, 4, 4) and (low >= 0).all()
    up = lk.grad_cam(model, x, "4")
    assert up.shape == (3, 8, 8)
    near = lk.grad_cam(model, x, "4", mode="nearest")
    torch.testing.assert_close(near, low.repeat_interleave(2, 1).repeat_interleave(2, 2))
    with pytest.raises(ValueError, match="mode must be one of"):
        lk.grad_cam(model, x, "4", mode="cubic")


def test_grad_cam_on_a_conv_followed_by_inplace_relu_uses_pre_relu_activations() -> None:
    model = small_cnn()  # "2" is a conv followed by ReLU(inplace=True)
    x = images()
    with lk.capture(model, "2", gradients=True) as cap:
        model(x)[:, 1].sum().backward()
    a, g = cap.activations["2"].detach(), cap.gradients["2"]
    assert (a < 0).any()  # the capture kept the pre-ReLU values
    expected = (g.mean((2, 3), keepdim=True) * a).sum(1).clamp(min=0)
    torch.testing.assert_close(lk.grad_cam(model, x, "2", 1, upsample=False), expected)
    model.zero_grad()


def test_area_grad_cam_with_a_callable_target() -> None:
    torch.manual_seed(4)
    seg = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).double()  # dense [B,2,H,W]
    x = images()

    def region(out: torch.Tensor) -> torch.Tensor:
        return out[:, 1, 2:5, 2:6].sum((1, 2))

    with lk.capture(seg, "1", gradients=True) as cap:
        region(seg(x)).sum().backward()
    a, g = cap.activations["1"].detach(), cap.gradients["1"]
    expected = (g.mean((2, 3), keepdim=True) * a).sum(1).clamp(min=0)
    torch.testing.assert_close(lk.grad_cam(seg, x, "1", region), expected)
    with pytest.raises(ValueError, match="callable"):
        lk.grad_cam(seg, x, "1", 1)
    with pytest.raises(ValueError, match="one score per image"):
        lk.grad_cam(seg, x, "1", lambda out: out.sum())
    seg.zero_grad()


def test_grad_cam_errors() -> None:
    model = small_cnn()
    x = images()
    with pytest.raises(ValueError, match="unknown layer 'features.4'"):
        lk.grad_cam(model, x, "features.4")
    with pytest.raises(ValueError, match=r"feature map \[B, C, h, w\]"):
        lk.grad_cam(model, x, "6")

    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Conv2d(3, 2, 3)
            self.unused = nn.Conv2d(3, 2, 3)
            self.spare = nn.Conv2d(3, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.unused(x)
            return self.used(x).mean((2, 3))

    with pytest.raises(ValueError, match="does not depend on layer 'unused'"):
        lk.grad_cam(Branch().double(), x, "unused")
    with pytest.raises(ValueError, match="was not called"):
        lk.grad_cam(Branch().double(), x, "spare")


def test_guided_grad_cam_is_the_product() -> None:
    model = small_cnn()
    x = images()
    expected = lk.guided_backprop(model, x, 2) * lk.grad_cam(model, x, "4", 2)[:, None]
    torch.testing.assert_close(lk.guided_grad_cam(model, x, "4", 2), expected)


# --------------------------------------------------------------------------------------------- occlusion


def test_occlusion_grid_shape_and_values_by_hand() -> None:
    """A model that reads one pixel: occluding it flips the prediction, elsewhere nothing changes."""

    class OnePixel(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = x[:, 0, 5, 6]
            return torch.stack([v, torch.zeros_like(v)], 1)  # logits [v, 0]

    x = torch.full((1, 1, 10, 10), 2.0, dtype=torch.float64)
    occ = lk.occlusion(OnePixel(), x, 0, window=3, stride=2)
    assert occ.shape == (1, 4, 4)  # (10 - 3) // 2 + 1
    p_clean = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))
    expected = torch.full((4, 4), float(p_clean), dtype=torch.float64)
    expected[2, 2] = expected[2, 3] = 0.5  # windows at rows 4..6 covering (5, 6): x0 in {4, 6}
    expected[1, 2] = expected[1, 3] = float(p_clean)  # rows 2..4 do not reach row 5
    torch.testing.assert_close(occ[0], expected)
    tall = lk.occlusion(OnePixel(), x, 0, window=(6, 1), stride=(4, 1))
    assert tall.shape == (1, 2, 10)


def test_occlusion_options_and_chunking() -> None:
    model = small_cnn()
    x = images()
    ref = lk.occlusion(model, x, window=3, stride=2)
    assert ref.shape == (3, 3, 3) and ((ref >= 0) & (ref <= 1)).all()
    for bs in (1, 4, 10_000):
        torch.testing.assert_close(lk.occlusion(model, x, window=3, stride=2, batch_size=bs), ref)
    mean_colour = x.mean((0, 2, 3))[:, None, None]
    assert not torch.allclose(lk.occlusion(model, x, window=3, stride=2, baseline=mean_colour), ref)
    logit = lk.occlusion(model, x, lambda out: out[:, 0], window=3, stride=2)
    assert logit.shape == ref.shape and (logit < 0).any()  # logits, not probabilities
    with pytest.raises(ValueError, match="larger than the images"):
        lk.occlusion(model, x, window=9, stride=1)
    with pytest.raises(TypeError, match="window must be"):
        lk.occlusion(model, x, window=2.5, stride=1)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        lk.occlusion(model, x, window=2, stride=0)
    with pytest.raises(ValueError, match="out of range"):
        lk.occlusion(model, x, 9, window=2, stride=2)


def test_occlusion_activation_against_a_loop() -> None:
    model = small_cnn()
    x = images(2)
    got = lk.occlusion_activation(model, x, "1", 4, window=4, stride=4, reduce="max")
    assert got.shape == (2, 2, 2)
    for b in range(2):
        for i in range(2):
            for j in range(2):
                xo = x[b : b + 1].clone()
                xo[..., 4 * i : 4 * i + 4, 4 * j : 4 * j + 4] = 0
                want = model[1](model[0](xo))[0, 4].amax()
                torch.testing.assert_close(got[b, i, j], want.detach())
    strongest = model[1](model[0](x)).mean((2, 3)).argmax(1)
    auto = lk.occlusion_activation(model, x, "1", window=4, stride=4)
    for b in range(2):
        torch.testing.assert_close(
            auto[b], lk.occlusion_activation(model, x[b : b + 1], "1", int(strongest[b]), window=4, stride=4)[0]
        )
    with pytest.raises(ValueError, match="channel=6 is out of range"):
        lk.occlusion_activation(model, x, "1", 6, window=4, stride=4)
    with pytest.raises(ValueError, match="reduce must be"):
        lk.occlusion_activation(model, x, "1", 0, window=4, stride=4, reduce="sum")


# --------------------------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("name", ["saliency", "grad_cam", "occlusion"])
def test_input_validation(name: str) -> None:
    model = small_cnn()
    call = {
        "saliency": lambda x: lk.saliency(model, x),
        "grad_cam": lambda x: lk.grad_cam(model, x, "4"),
        "occlusion": lambda x: lk.occlusion(model, x, window=2, stride=2),
    }[name]
    with pytest.raises(ValueError, match="unsqueeze"):
        call(images()[0])
    with pytest.raises(TypeError, match="floating-point"):
        call(torch.zeros(1, 3, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        call(images().numpy())
    with pytest.raises(TypeError, match="nn.Module"):
        lk.saliency(lambda x: x, images())  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
def test_explainers_on_cuda_match_cpu() -> None:
    model = small_cnn()
    x = images()
    calls = {
        "saliency": lambda m, v: lk.saliency(m, v, 1),
        "gradient_x_input": lambda m, v: lk.gradient_x_input(m, v, 1),
        "smoothgrad": lambda m, v: lk.smoothgrad(m, v, 1, samples=3),
        "integrated_gradients": lambda m, v: lk.integrated_gradients(m, v, 1, steps=5),
        "guided_backprop": lambda m, v: lk.guided_backprop(m, v, 1),
        "deconvnet": lambda m, v: lk.deconvnet(m, v, 1),
        "grad_cam": lambda m, v: lk.grad_cam(m, v, "4", 1),
        "guided_grad_cam": lambda m, v: lk.guided_grad_cam(m, v, "4", 1),
        "occlusion": lambda m, v: lk.occlusion(m, v, 1, window=3, stride=2),
        "occlusion_activation": lambda m, v: lk.occlusion_activation(m, v, "1", 2, window=3, stride=2),
    }
    cpu = {k: f(model, x) for k, f in calls.items()}
    model.cuda()
    for k, f in calls.items():
        got = f(model, x.cuda())
        assert got.device.type == "cuda", k
        torch.testing.assert_close(got.cpu(), cpu[k], rtol=1e-6, atol=1e-9, msg=k)
    with pytest.raises(ValueError, match="move them"):
        lk.saliency(model, x)
