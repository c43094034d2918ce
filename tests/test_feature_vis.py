"""labkit.feature_vis: the ascent raises the target, reaches a trained class, leaves the model as found."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from labkit.feature_vis import activation_maximization, class_visualization, gaussian_blur
from labkit.hooks import count_hooks


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3)).eval()


def test_gaussian_blur_matches_scipy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 9, 11, generator=g, dtype=torch.float64)
    ours = gaussian_blur(x, 1.0)
    ref = np.stack([[gaussian_filter(c, 1.0, mode="nearest", truncate=3.0) for c in im] for im in x.numpy()])
    assert np.allclose(ours.numpy(), ref, atol=1e-12)
    assert torch.equal(gaussian_blur(x, 0), x)
    assert torch.allclose(gaussian_blur(torch.full((3, 5, 5), 0.3), 2.0), torch.full((3, 5, 5), 0.3))


def test_class_score_rises_monotonically_in_expectation():
    model = _cnn()
    histories = []
    for seed in range(4):
        _, h = class_visualization(model, 1, shape=(1, 8, 8), steps=30, lr=0.5, l2=1e-3, seed=seed,
                                   return_history=True)
        assert h.shape == (1, 31)
        histories.append(h[0])
    mean = torch.stack(histories).mean(0)
    assert mean[-1] > mean[0] + 0.05
    assert (mean[1:] > mean[:-1]).float().mean() >= 0.9          # mostly monotone
    assert all((h[-1] > h[0]).item() for h in histories)


def test_activation_maximization_raises_the_channel_and_the_unit():
    model = _cnn()
    for layer, channel in (("3", 2), ("6", 0)):  # a conv channel (mean) and a dense unit
        img, h = activation_maximization(model, layer, [channel, (channel + 1) % 3], shape=(1, 8, 8), steps=25,
                                         lr=0.5, seed=1, return_history=True)
        assert img.shape == (2, 1, 8, 8)
        assert (h[:, -1] > h[:, 0]).all()
    with pytest.raises(ValueError, match="valid names"):
        activation_maximization(model, "conv9", 0, shape=(1, 8, 8), steps=1)
    with pytest.raises(ValueError, match="channel must lie"):
        activation_maximization(model, "3", 6, shape=(1, 8, 8), steps=1)


def _bright_side_data(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: the left half is brighter; class 1: the right half."""
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.5
    y = torch.randint(0, 2, (n,), generator=g)
    left = y == 0
    x[left, :, :, :4] += 0.5
    x[~left, :, :, 4:] += 0.5
    return x, y


def test_visualization_of_a_trained_class_reaches_high_probability():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    g = torch.Generator().manual_seed(0)
    x, y = _bright_side_data(256, g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    xt, yt = _bright_side_data(128, g)
    assert (model(xt).argmax(1) == yt).float().mean() > 0.95      # the task is learnt
    imgs = class_visualization(model, [0, 1], shape=(1, 8, 8), steps=15, lr=0.5, l2=1e-3, blur_every=4,
                               blur_sigma=0.5, jitter=1, seed=0)
    probs = model(imgs).softmax(1)
    assert probs[0, 0] > 0.9 and probs[1, 1] > 0.9
    # the class model shows the cue: class 0's image is brighter on the left, class 1's on the right
    assert imgs[0, 0, :, :4].mean() > imgs[0, 0, :, 4:].mean()
    assert imgs[1, 0, :, 4:].mean() > imgs[1, 0, :, :4].mean()
    assert imgs.min() >= 0 and imgs.max() <= 1


def test_regularizers_and_options():
    model = _cnn()
    init = torch.rand(1, 8, 8)
    init0 = init.clone()
    # lr = 0: no step; jitter is undone, so the image is the initial one
    same = class_visualization(model, 0, steps=5, lr=0.0, jitter=2, init=init)
    assert torch.allclose(same[0], init0) and torch.equal(init, init0)
    # clipping at the 50th percentile writes the reference colour (grey) into at least half the pixels
    clipped = class_visualization(model, 0, steps=3, lr=0.5, clip_percentile=50, init=init)
    assert ((clipped - 0.5).abs() < 1e-6).float().mean() >= 0.5
    # blur smooths: total variation lower than without it
    def tv(im):
        return (im[..., 1:, :] - im[..., :-1, :]).abs().sum() + (im[..., 1:] - im[..., :-1]).abs().sum()
    sharp = class_visualization(model, 0, shape=(1, 8, 8), steps=10, lr=0.5, seed=0)
    smooth = class_visualization(model, 0, shape=(1, 8, 8), steps=10, lr=0.5, seed=0, blur_every=1, blur_sigma=1.0)
    assert tv(smooth) < tv(sharp)
    # mean / std: the ascent runs in normalized space, the image comes back in pixel space in [0, 1]
    out = class_visualization(model, 2, shape=(1, 8, 8), steps=10, lr=2.0, mean=[0.4], std=[0.2], seed=0)
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    calls = []
    class_visualization(model, 0, shape=(1, 8, 8), steps=3, callback=lambda step, im: calls.append(step))
    assert calls == [0, 1, 2]
    with pytest.raises(ValueError, match="target classes"):
        class_visualization(model, 7, shape=(1, 8, 8), steps=1)
    with pytest.raises(ValueError, match="clip_percentile"):
        class_visualization(model, 0, shape=(1, 8, 8), clip_percentile=100)
    with pytest.raises(ValueError, match="mean and std"):
        class_visualization(model, 0, shape=(1, 8, 8), mean=[0.5])


def test_model_left_as_found_also_on_errors():
    model = _cnn().train()
    model[0].weight.requires_grad_(False)
    hooks = count_hooks(model)
    class_visualization(model, 0, shape=(1, 8, 8), steps=2)
    activation_maximization(model, "3", 0, shape=(1, 8, 8), steps=2)
    with pytest.raises(ValueError):
        activation_maximization(model, "3", 99, shape=(1, 8, 8), steps=2)
    assert model.training and all(m.training for m in model.modules())
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad
    assert count_hooks(model) == hooks
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
def test_feature_vis_on_cuda_matches_cpu():
    model = _cnn()
    kw = dict(shape=(1, 8, 8), steps=5, lr=0.5, jitter=1, blur_every=2, clip_percentile=10, seed=0)
    cpu = class_visualization(model, [0, 2], **kw)
    cpu_am = activation_maximization(model, "3", 1, **kw)
    model.cuda()
    gpu = class_visualization(model, [0, 2], **kw)
    gpu_am = activation_maximization(model, "3", 1, **kw)
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, atol=1e-4)
    assert torch.allclose(gpu_am.cpu(), cpu_am, atol=1e-4)
    assert torch.allclose(gaussian_blur(cpu.cuda(), 1.0).cpu(), gaussian_blur(cpu, 1.0), atol=1e-6)


class _Shifted(nn.Module):
    """features does not see the images themselves: the truncated forward must not be used."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 2))

    def forward(self, x):
        return self.head(self.features(2 * x - 1))


@pytest.mark.parametrize("shift", [False, True])
def test_truncated_forward_gives_the_full_models_answer(shift, monkeypatch):
    import labkit.feature_vis as fv

    model = _Shifted().eval()
    if not shift:
        model.forward = lambda x: model.head(model.features(x))
    kw = dict(shape=(1, 8, 8), steps=6, lr=0.5, seed=0, return_history=True)
    fast_img, fast_h = activation_maximization(model, "features.2", 1, **kw)
    monkeypatch.setattr(fv, "_prefix", lambda m, layer: None)  # always the whole model
    slow_img, slow_h = activation_maximization(model, "features.2", 1, **kw)
    assert torch.allclose(fast_img, slow_img, atol=1e-6) and torch.allclose(fast_h, slow_h, atol=1e-6)


def test_high_frequency_share_on_hand_checkable_images():
    from labkit.feature_vis import high_frequency_share

    n = 16
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    checker = ((yy + xx) % 2).float()[None, None]              # all power at (0.5, 0.5): radius 0.707
    slow = torch.cos(2 * torch.pi * xx / n).float()[None, None]  # one cycle per image: 1/16 cycles per pixel
    flat = torch.full((1, 3, n, n), 0.3)
    stripes = torch.cos(torch.pi * xx).float()[None, None]      # 0.5 cycles per pixel along x
    # the Nyquist cosine puts all its power in one FFT bin, the slow one splits it over +-1/16:
    # mean squares 1 vs 1/2, so the sum has 2/3 of its power above the cutoff
    both = slow + stripes
    out = high_frequency_share(torch.cat([checker, slow, stripes, both]))
    assert torch.allclose(out, torch.tensor([1.0, 0.0, 1.0, 2 / 3]), atol=1e-6)
    assert float(high_frequency_share(flat)[0]) == 0.0
    assert high_frequency_share(checker[0]).shape == (1,)     # [C, H, W] accepted
    # blurring lowers the share
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(2, 3, n, n, generator=g)
    assert (high_frequency_share(gaussian_blur(noise, 1.0)) < high_frequency_share(noise)).all()
    with pytest.raises(ValueError, match="cutoff"):
        high_frequency_share(noise, cutoff=0.8)
    with pytest.raises(TypeError, match="torch.Tensor"):
        high_frequency_share(noise.numpy())


def test_activation_maximization_of_a_head_unit_behind_a_non_sequential_forward():
    """A dense unit in ``classifier`` (a Sequential that does not start at the images) uses the full model."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(x))

    torch.manual_seed(1)  # seed 0 leaves the hidden ReLUs dead on grey noise (no gradient)
    net = Net().eval()
    img, h = activation_maximization(net, "classifier.3", [0, 2], shape=(1, 8, 8), steps=15, lr=0.5, seed=0,
                                     return_history=True)
    assert img.shape == (2, 1, 8, 8) and (h[:, -1] > h[:, 0]).all()
    with torch.no_grad():  # the history is the unit's value on the final images
        assert torch.allclose(net(img)[[0, 1], [0, 2]], h[:, -1], atol=1e-5)


def test_log_softmax_objective_beats_a_class_that_shares_the_evidence():
    """Two pixels; class 0 scores x1 + x2, class 1 scores 3 x1. Ascending S_0 drives both pixels to 1,
    where S_1 = 3 > S_0 = 2 (p_0 = 1 / (1 + e) = 0.27); ascending log p_0 drives x1 to 0 and x2 to 1,
    where S_0 = 1 > S_1 = 0 (p_0 = e / (1 + e) = 0.73)."""
    lin = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0], [3.0, 0.0]]))
    model = torch.nn.Sequential(torch.nn.Flatten(), lin).eval()
    kw = dict(shape=(1, 1, 2), steps=60, lr=0.1, l2=0.0, seed=0)
    score = class_visualization(model, 0, **kw)
    logp = class_visualization(model, 0, objective="log_softmax", **kw)
    assert torch.allclose(score.flatten(), torch.tensor([1.0, 1.0]))
    assert torch.allclose(logp.flatten(), torch.tensor([0.0, 1.0]))
    p = lambda x: torch.softmax(model(x), 1)[0, 0].item()  # noqa: E731
    assert p(score) == pytest.approx(1 / (1 + math.e), abs=1e-6) and p(logp) == pytest.approx(math.e / (1 + math.e), abs=1e-6)
    with pytest.raises(ValueError, match="objective must be 'score'.*got 'softmax'"):
        class_visualization(model, 0, objective="softmax", **kw)
