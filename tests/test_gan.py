"""labkit.gan and the DCGAN models (lab 10): losses, training loop, sampling (its measures, the Frechet
distance and class coverage, are tested in test_metrics)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import labkit as lk
from labkit import gan
from labkit.models.generative import DCGANDiscriminator, DCGANGenerator


@pytest.fixture(autouse=True)
def _one_thread():
    """The models here are tiny: a second intra-op thread only adds synchronization (on a busy
    2-core machine, 8 training steps took 14 s with 2 threads and 0.04 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- losses
def test_losses_at_an_undecided_discriminator() -> None:
    zero = torch.zeros(5)
    assert math.isclose(float(lk.discriminator_loss(zero, zero)), 2 * math.log(2), rel_tol=1e-6)
    assert math.isclose(float(lk.generator_loss(zero)), math.log(2), rel_tol=1e-6)
    assert math.isclose(float(lk.generator_loss(zero, loss="saturating")), -math.log(2), rel_tol=1e-6)


def test_losses_match_their_definitions_and_stay_finite() -> None:
    real = torch.tensor([2.0, -1.0, 0.5])
    fake = torch.tensor([-3.0, 0.2])
    d = lambda t: torch.sigmoid(t)  # noqa: E731
    expected_d = -(torch.log(d(real)).mean() + torch.log(1 - d(fake)).mean())
    assert torch.allclose(lk.discriminator_loss(real, fake), expected_d, atol=1e-6)
    assert torch.allclose(lk.generator_loss(fake), -torch.log(d(fake)).mean(), atol=1e-6)
    assert torch.allclose(lk.generator_loss(fake, loss="saturating"), torch.log(1 - d(fake)).mean(), atol=1e-6)
    extreme = torch.tensor([-200.0, 200.0])
    for value in (lk.discriminator_loss(extreme, extreme), lk.generator_loss(extreme),
                  lk.generator_loss(extreme, loss="saturating")):
        assert torch.isfinite(value)


def test_saturating_gradient_vanishes_when_d_rejects_the_fakes() -> None:
    """d/dl log(1 - sigmoid(l)) = -sigmoid(l) ~ 0 at l = -6; the non-saturating one is ~ -1."""
    grads = {}
    for kind in lk.GAN_LOSSES:
        logit = torch.tensor([-6.0], requires_grad=True)
        lk.generator_loss(logit, loss=kind).backward()
        grads[kind] = float(logit.grad)
    assert math.isclose(grads["saturating"], -torch.sigmoid(torch.tensor(-6.0)).item(), rel_tol=1e-5)
    assert math.isclose(grads["non_saturating"], -(1 - torch.sigmoid(torch.tensor(-6.0)).item()), rel_tol=1e-5)
    assert abs(grads["saturating"]) < 0.003 < 0.99 < abs(grads["non_saturating"])


def test_loss_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="loss must be one of"):
        lk.generator_loss(torch.zeros(2), loss="minimax")
    with pytest.raises(TypeError, match="real_logits"):
        lk.discriminator_loss(torch.zeros(2, dtype=torch.long), torch.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        lk.generator_loss(torch.zeros(0))


# --------------------------------------------------------------------------- models
def test_dcgan_models_shapes_ranges_and_registry() -> None:
    assert {"dcgan_generator", "dcgan_discriminator"} <= set(lk.list_models())
    g = lk.get_model("dcgan_generator", latent_dim=8)
    d = lk.get_model("dcgan_discriminator")
    x = g(torch.randn(4, 8))
    x = x.detach()
    assert x.shape == (4, 1, 28, 28) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert d(x).shape == (4,)
    cg = DCGANGenerator(8, out_shape=(3, 16, 16), widths=(8, 4), num_classes=3)
    cd = DCGANDiscriminator((3, 16, 16), widths=(4, 8), num_classes=3)
    y = torch.tensor([0, 2])
    assert cd(cg(torch.randn(2, 8), y), y).shape == (2,)
    assert cd.embed is not None and DCGANDiscriminator(num_classes=3, projection=False).embed is None


def test_conditional_discriminator_uses_the_label() -> None:
    torch.manual_seed(0)
    for projection in (False, True):
        cd = DCGANDiscriminator((1, 8, 8), widths=(4, 8), num_classes=3, projection=projection).eval()
        x = torch.rand(2, 1, 8, 8)
        assert not torch.allclose(cd(x, torch.tensor([0, 0])), cd(x, torch.tensor([1, 2])))


def test_dcgan_models_validate_their_inputs() -> None:
    g = DCGANGenerator(8, num_classes=2)
    with pytest.raises(ValueError, match="conditional"):
        g(torch.randn(2, 8))
    with pytest.raises(ValueError, match="outside"):
        g(torch.randn(2, 8), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"\[B, 8\]"):
        g(torch.randn(2, 7), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unconditional"):
        DCGANDiscriminator()(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="divisible"):
        DCGANGenerator(out_shape=(1, 30, 30))
    with pytest.raises(ValueError, match="batch of images"):
        DCGANDiscriminator()(torch.rand(2, 1, 32, 32))


# --------------------------------------------------------------------------- training and sampling
def _tiny(k: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return (DCGANGenerator(4, out_shape=(1, 8, 8), widths=(8, 4), num_classes=k),
            DCGANDiscriminator((1, 8, 8), widths=(4, 8), num_classes=k))


def test_train_gan_history_snapshots_scores_and_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_PROGRESS", "none")
    g, d = _tiny()
    data = torch.rand(70, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    calls = []
    h = lk.train_gan(g, d, data, epochs=2, batch_size=16, n_fixed=6, device="cpu",
                     score_fn=lambda gen: calls.append(gen.training) or float(len(calls)))
    assert h.steps == 2 * (70 // 16) and h.epoch_steps == [4, 8] and h.epochs == 2
    assert all(len(getattr(h, k)) == 8 for k in ("d_loss", "g_loss", "d_real", "d_fake", "g_grad_norm"))
    assert h.scores == [1.0, 2.0, 3.0] and calls == [False, False, False]
    assert len(h.snapshots) == 3 and h.snapshots[0].shape == (6, 1, 8, 8)
    assert not g.training and not d.training
    assert all(0 <= v <= 1 for v in h.d_real + h.d_fake)
    assert len(h.epoch_means("d_loss")) == 2 and len(h.smoothed("g_loss", 3)) == 8
    assert h.smoothed("d_loss", 1) == pytest.approx(h.d_loss)
    assert set(h.to_dict()) >= {"d_loss", "g_loss", "scores", "loss"}


def test_train_gan_is_reproducible_and_learns_the_data_brightness(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real images are all 0.8; G starts near 0.5 and must move its mean output towards 0.8."""
    monkeypatch.setenv("LABKIT_PROGRESS", "none")
    data = torch.full((256, 1, 8, 8), 0.8)
    runs = []
    for _ in range(2):
        g, d = _tiny()
        before = float(lk.sample_gan(g, 64).mean())
        h = lk.train_gan(g, d, data, epochs=12, batch_size=32, lr_g=2e-3, lr_d=2e-3, device="cpu", seed=3)
        runs.append((h.d_loss, float(lk.sample_gan(g, 64).mean()), before))
    assert runs[0][0] == runs[1][0], "same seed, same losses"
    (_, after, before) = runs[0]
    assert abs(before - 0.5) < 0.1 and abs(after - 0.8) < 0.1, (before, after)


def test_train_gan_conditional_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_PROGRESS", "none")
    images = torch.rand(32, 1, 8, 8)
    labels = torch.arange(32) % 3
    g, d = _tiny(3)
    h = lk.train_gan(g, d, (images, labels), epochs=1, batch_size=8, n_fixed=6, device="cpu")
    assert h.fixed_labels.tolist() == [0, 1, 2, 0, 1, 2] and h.steps == 4
    with pytest.raises(ValueError, match="labels"):
        lk.train_gan(g, d, images, epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="num_classes"):
        lk.train_gan(g, _tiny()[1], (images, labels), epochs=1, batch_size=8)
    g0, d0 = _tiny()
    with pytest.raises(ValueError, match="loss"):
        lk.train_gan(g0, d0, images, epochs=1, loss="wasserstein")
    with pytest.raises(ValueError, match="batch_size"):
        lk.train_gan(g0, d0, images, epochs=1, batch_size=64)
    with pytest.raises(ValueError, match="betas"):
        lk.train_gan(g0, d0, images, epochs=1, batch_size=8, betas=(0.5, 1.5))
    with pytest.raises(ValueError, match="lr_d"):
        lk.train_gan(g0, d0, images, epochs=1, batch_size=8, lr_d=-1e-3)
    with pytest.raises(ValueError, match="both 0"):
        lk.train_gan(g0, d0, images, epochs=1, batch_size=8, lr_d=0, lr_g=0)
    with pytest.raises(TypeError, match="latent_dim"):
        lk.train_gan(d0, d0, images, epochs=1, batch_size=8)


def test_a_zero_learning_rate_trains_one_player_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_PROGRESS", "none")
    images = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    for frozen in ("d", "g"):
        g, d = _tiny()
        before = {"g": [p.clone() for p in g.parameters()], "d": [p.clone() for p in d.parameters()]}
        h = lk.train_gan(g, d, images, epochs=1, batch_size=8, device="cpu",
                         lr_d=0.0 if frozen == "d" else 1e-2, lr_g=0.0 if frozen == "g" else 1e-2)
        still = all(torch.equal(a, b) for a, b in zip(before[frozen], (d if frozen == "d" else g).parameters()))
        moved = any(not torch.equal(a, b) for a, b in zip(before["g" if frozen == "d" else "d"],
                                                          (g if frozen == "d" else d).parameters()))
        assert still and moved, frozen
        assert h.steps == 4 and all(math.isnan(v) for v in h.g_grad_norm) == (frozen == "g")


def test_sample_gan_seeds_labels_and_mode() -> None:
    g, _ = _tiny(3)
    g.train()
    a = lk.sample_gan(g, 5, labels=1, seed=4)
    assert torch.equal(a, lk.sample_gan(g, 5, labels=[1] * 5, seed=4)) and g.training
    assert not torch.equal(a, lk.sample_gan(g, 5, labels=1, seed=5))
    z = torch.randn(3, 4)
    assert lk.sample_gan(g, z=z, labels=torch.tensor([0, 1, 2])).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="pass labels"):
        lk.sample_gan(g, 5)
    with pytest.raises(ValueError, match="ints in 0..2"):
        lk.sample_gan(g, 2, labels=[0, 3])
    with pytest.raises(ValueError, match="rows"):
        lk.sample_gan(g, 4, z=z, labels=0)
    with pytest.raises(ValueError, match="unconditional"):
        lk.sample_gan(_tiny()[0], 2, labels=0)


def test_public_names_are_exported() -> None:
    for name in gan.__all__:
        assert getattr(lk, name) is getattr(gan, name)
