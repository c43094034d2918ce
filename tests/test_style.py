"""labkit.style and the inversion additions of labkit.feature_vis: hand-checkable answers, the losses
fall, and every call leaves the model, its hooks and the caller's tensors as found (normal and failing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import labkit as lk
from labkit.feature_vis import features_at, invert_features, optimize_image, total_variation
from labkit.hooks import count_hooks
from labkit.style import (content_loss, cue_conflict_decisions, gram_matrix, shuffle_patches, style_loss,
                          style_targets, style_transfer, synthesize_texture)


class Boom(nn.Module):
    """Identity that raises once armed (a model failing in the middle of a forward pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("boom")
        return x


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1, stride=2),
                         nn.BatchNorm2d(5), nn.ReLU(), Boom(), nn.Conv2d(5, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(6, 3))


def _rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ hand-checked


def test_gram_matrix_of_a_known_map():
    # two channels on a 2x2 grid: a = [[1, 2], [3, 4]], b = [[1, 0], [0, 1]]
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 0.0], [0.0, 1.0]]]])
    g = gram_matrix(f)
    # a.a = 1 + 4 + 9 + 16 = 30, a.b = 1 + 4 = 5, b.b = 2; divided by H W = 4
    assert torch.equal(g, torch.tensor([[[7.5, 1.25], [1.25, 0.5]]]))
    assert torch.equal(gram_matrix(f, normalize=False), torch.tensor([[[30.0, 5.0], [5.0, 2.0]]]))
    # positions do not matter: the same values in another arrangement give the same Gram matrix
    assert torch.equal(gram_matrix(f.flip(-1).transpose(-1, -2)), g)


def test_content_and_style_losses_by_hand():
    f = torch.zeros(1, 1, 2, 2)
    p = torch.tensor([[[[1.0, 1.0], [1.0, 3.0]]]])
    assert torch.equal(content_loss(f, p), torch.tensor([3.0]))  # (1 + 1 + 1 + 9) / 4
    feats = {"a": torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]]])}  # G = [[1]]
    targets = {"a": torch.tensor([[[3.0]]])}
    assert torch.equal(style_loss(feats, targets), torch.tensor([4.0]))  # (1 - 3)^2
    assert torch.equal(style_loss(feats, targets, weights={"a": 0.5}), torch.tensor([2.0]))
    # a batch against one target: one value per image
    two = {"a": torch.stack([feats["a"][0], 2 * feats["a"][0]])}  # G = 1 and 4
    assert torch.equal(style_loss(two, targets), torch.tensor([4.0, 1.0]))


def test_one_step_content_loss_by_hand():
    """One Adam step on a one-pixel image with loss (x - 1)^2 from 0.5 moves it by exactly lr towards 1."""
    model = nn.Sequential(nn.Identity())
    x0 = torch.full((1, 1, 2, 2), 0.5)
    out, hist = optimize_image(model, lambda x: content_loss(x, torch.ones_like(x)), x0, steps=1, lr=0.1,
                               return_history=True)
    assert torch.allclose(out, torch.full_like(x0, 0.6), atol=1e-6)  # Adam's first step is lr * sign(g)
    assert torch.allclose(hist[0], torch.tensor([0.25, 0.16]), atol=1e-6)
    assert torch.equal(x0, torch.full((1, 1, 2, 2), 0.5))  # init not modified


def test_total_variation_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])  # one pixel with both neighbours: dx = 1, dy = 0
    assert torch.allclose(total_variation(x), torch.tensor([1.0]))
    assert torch.allclose(total_variation(x, beta=1.0), torch.tensor([1.0]), atol=1e-6)
    assert torch.equal(total_variation(torch.full((2, 3, 4, 4), 0.3)), torch.zeros(2))
    with pytest.raises(ValueError, match="beta"):
        total_variation(x, beta=0)


def test_shuffle_patches_keeps_the_tiles():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = shuffle_patches(x, grid=2, seed=3)
    tiles = lambda t: sorted(t.reshape(1, 1, 2, 2, 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(4, -1).tolist())
    assert tiles(y) == tiles(x) and y.shape == x.shape
    assert torch.equal(shuffle_patches(x, grid=2, seed=3), y)  # seeded
    assert torch.equal(shuffle_patches(x, grid=1), x)
    with pytest.raises(ValueError, match="divisible"):
        shuffle_patches(x, grid=3)


def test_cue_conflict_decisions_by_hand():
    logits = torch.tensor([[5.0, 1.0, 0.0, 0.0], [0.0, 1.0, 4.0, 0.0], [0.0, 2.0, 1.0, 9.0]])
    d = cue_conflict_decisions(logits, [[0], [0, 1], [0]], [[2], [2], [1, 2]])
    assert d["top1"] == ["shape", "texture", "other"]
    assert (d["shape"], d["texture"], d["other"], d["shape_bias"]) == (1, 1, 1, 0.5)
    assert d["forced"] == ["shape", "texture", "texture"]  # image 2: best texture logit 2 > shape's 0
    assert d["forced_shape_share"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="both"):
        cue_conflict_decisions(logits[:1], [[0, 2]], [[2]])
    with pytest.raises(ValueError, match="shape_classes"):
        cue_conflict_decisions(logits, [[0]], [[2]] * 3)


# ------------------------------------------------------------------------------------ behaviour


def test_features_at_matches_capture_and_stops_early():
    model = _net().eval()
    x = _rand(2, 3, 8, 8)
    with lk.capture(model, ["1", "4"], detach=True) as cap, torch.no_grad():
        model(x)
    feats = features_at(model, x, ["1", "4"])
    assert torch.equal(feats["1"], cap.activations["1"]) and torch.equal(feats["4"], cap.activations["4"])
    model[5].armed = True  # a layer after "4" that would raise: the early stop never reaches it
    assert torch.equal(features_at(model, x, "4")["4"], feats["4"])
    with pytest.raises(RuntimeError, match="boom"):
        features_at(model, x, "4", stop_early=False)
    assert count_hooks(model) == 0
    with pytest.raises(ValueError, match="valid names"):
        features_at(model, x, "nope")
    with pytest.raises(ValueError, match="duplicates"):
        features_at(model, x, ["1", "1"])


def test_inversion_lowers_the_feature_error_and_early_layers_invert_better():
    model = _net().eval()
    x = _rand(1, 3, 8, 8, seed=5)
    errors = {}
    for layer in ("1", "4"):
        rec, hist = invert_features(model, x, layer, steps=60, lr=0.05, tv=0.0, seed=0, return_history=True)
        assert rec.shape == x.shape and rec.min() >= 0 and rec.max() <= 1
        assert hist[0, -1] < 0.5 * hist[0, 0]
        errors[layer] = float((rec - x).pow(2).mean())
    assert errors["1"] < errors["4"]


def test_texture_synthesis_and_style_transfer_lower_their_losses():
    model = _net().eval()
    tex = _rand(3, 8, 8, seed=7)
    out, hist = synthesize_texture(model, tex, ["1", "4"], steps=40, lr=0.05, n=2, seed=1, return_history=True)
    assert out.shape == (2, 3, 8, 8) and (hist[:, -1] < hist[:, 0]).all()
    content = _rand(2, 3, 8, 8, seed=8)
    weak, lw = style_transfer(model, content, tex, content_layer="4", style_layers=["1"], style_weight=0.0, steps=5)
    strong, ls = style_transfer(model, content, tex, content_layer="4", style_layers=["1"], style_weight=100.0,
                                steps=40, lr=0.05)
    assert torch.allclose(weak, content, atol=1e-6) and torch.allclose(lw["content"], torch.zeros(2), atol=1e-10)
    assert (ls["style"] < lw["style"]).all() and (ls["content"] > lw["content"]).all()
    grams = style_targets(model, tex, ["1"])
    assert grams["1"].shape == (1, 4, 4)


def _state(model: nn.Module):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            {k: v.clone() for k, v in model.state_dict().items()}, [p.grad for p in model.parameters()])


CALLS = {
    "features_at": lambda m, x: features_at(m, x, ["1", "7"], detach=False),
    "invert_features": lambda m, x: invert_features(m, x, "7", steps=2, jitter=1, blur_every=1),
    "optimize_image": lambda m, x: optimize_image(m, lambda z: m(z).sum(1), x, steps=2, tv=0.1, jitter=1),
    "style_targets": lambda m, x: style_targets(m, x, ["1", "7"]),
    "synthesize_texture": lambda m, x: synthesize_texture(m, x[0], ["1", "7"], steps=2, tv=0.1, jitter=1),
    "style_transfer": lambda m, x: style_transfer(m, x, x[:1], content_layer="7", style_layers=["1"], steps=2,
                                                  init="noise", jitter=1),
}


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("fail", [False, True])  # the failing model raises after layer "4", before "7"
def test_model_and_inputs_left_as_found(name: str, fail: bool):
    """No hook survives a normal or a failing call; modes, requires_grad, weights, grads and the
    caller's images are as before (the model starts in train mode with BatchNorm in eval and one
    frozen parameter, so a restoration to "all eval" or "all trainable" is caught)."""
    model = _net()
    model.train()
    model[3].eval()
    model[0].weight.requires_grad_(False)
    x = _rand(2, 3, 8, 8)
    x_before, version = x.clone(), x._version
    before = _state(model)
    hooks = count_hooks(model)
    grad_mode = torch.is_grad_enabled()
    if fail:
        model[5].armed = True
        with pytest.raises(RuntimeError, match="boom"):
            CALLS[name](model, x)
    else:
        CALLS[name](model, x)
    after = _state(model)
    assert count_hooks(model) == hooks == 0
    assert after[0] == before[0] and after[1] == before[1]
    assert all(torch.equal(before[2][k], after[2][k]) for k in before[2])
    assert all(g is None for g in after[3])
    assert torch.equal(x, x_before) and x._version == version and not x.requires_grad
    assert torch.is_grad_enabled() == grad_mode


def test_arguments_are_checked_with_the_fix():
    model = _net().eval()
    x = _rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="steps"):
        optimize_image(model, lambda z: z.sum((1, 2, 3)), x, steps=-1)
    with pytest.raises(ValueError, match="one value per image"):
        optimize_image(model, lambda z: z.sum(), x, steps=1)
    with pytest.raises(ValueError, match="init must be 'content' or 'noise'"):
        style_transfer(model, x, x, content_layer="4", style_layers=["1"], init="photo")
    with pytest.raises(ValueError, match="style_weight"):
        style_transfer(model, x, x, content_layer="4", style_layers=["1"], style_weight=-1)
    with pytest.raises(ValueError, match="ONE image"):
        synthesize_texture(model, torch.cat([x, x]), ["1"])
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        gram_matrix(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="same layers"):
        style_loss({"a": torch.zeros(1, 1, 2, 2)}, {"b": torch.zeros(1, 1, 1)})
    with pytest.raises(TypeError, match="layer must be one dotted"):
        invert_features(model, x, ["1"])
