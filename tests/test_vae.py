"""labkit.vae and the VAE models of labkit.models.generative (lab 07): hand-checked ELBO pieces."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import labkit as lk
from labkit import vae as V
from labkit.models.generative import VAE, ConvVAE, MLPVAE


class ConstantVAE(VAE):
    """A VAE whose posterior is N(mu_value, exp(logvar_value)) and whose decoder ignores z.

    The decoder's logits are the constant ``logit`` (learnable, so that training has something
    to fit); hand-checkable ELBOs and imputations.
    """

    def __init__(self, shape=(1, 2, 2), latent_dim=1, mu_value=0.0, logvar_value=0.0, logit=0.0):
        super().__init__()
        self.in_shape, self.latent_dim, self.num_classes = shape, latent_dim, 0
        self.mu_value, self.logvar_value = mu_value, logvar_value
        self.logit = nn.Parameter(torch.full(shape, float(logit)))
        self.relu = nn.ReLU()

    def encode(self, x, y=None):
        b = len(x)
        return (torch.full((b, self.latent_dim), self.mu_value) + 0 * x.flatten(1)[:, :1],
                torch.full((b, self.latent_dim), self.logvar_value))

    def decode(self, z, y=None):
        return self.logit.expand(len(z), *self.in_shape) + 0 * z[:, :1, None, None]


class IdentityVAE(VAE):
    """Linear 'VAE' on 1x1x2 images: mu = logit(x) clipped, decoder logits = z (so it reconstructs x)."""

    def __init__(self):
        super().__init__()
        self.in_shape, self.latent_dim, self.num_classes = (1, 1, 2), 2, 0
        self.enc = nn.Linear(2, 2)
        self.dec = nn.Linear(2, 2)
        self.act = nn.ReLU()
        with torch.no_grad():
            self.enc.weight.copy_(torch.eye(2))
            self.enc.bias.zero_()
            self.dec.weight.copy_(torch.eye(2))
            self.dec.bias.zero_()

    def encode(self, x, y=None):
        mu = self.enc(x.flatten(1))
        return mu, torch.full_like(mu, -40.0)

    def decode(self, z, y=None):
        return self.dec(z).view(len(z), 1, 1, 2)


# --------------------------------------------------------------------------- KL and reparameterization
def test_kl_of_standard_normal_is_zero():
    mu, logvar = torch.zeros(3, 5), torch.zeros(3, 5)
    assert torch.equal(lk.kl_divergence(mu, logvar), torch.zeros(3))


def test_kl_hand_value_and_against_torch_distributions():
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)]])
    # 0.5 * (1 + 1 - 1 - 0) + 0.5 * (0 + 2 - 1 - log 2)
    expected = 0.5 + 0.5 * (1 - math.log(2.0))
    assert lk.kl_divergence(mu, logvar).item() == pytest.approx(expected, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    ref = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(lk.kl_divergence(mu, logvar), ref, atol=1e-5)
    assert lk.kl_divergence(mu, logvar, reduction="mean").item() == pytest.approx(ref.mean().item(), abs=1e-5)
    assert lk.kl_divergence(mu, logvar, reduction="sum").item() == pytest.approx(ref.sum().item(), abs=1e-5)


def test_kl_rejects_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        lk.kl_divergence(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="reduction"):
        lk.kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3), reduction="avg")
    with pytest.raises(TypeError, match="floating"):
        lk.kl_divergence(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))


def test_reparameterization_gradient_flows_to_mu_and_logvar():
    mu = torch.tensor([[0.5, -1.0]], requires_grad=True)
    logvar = torch.tensor([[0.0, math.log(4.0)]], requires_grad=True)
    z = lk.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(1, 2, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(z, mu + torch.tensor([[1.0, 2.0]]) * eps)
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.ones(1, 2))  # dz/dmu = 1
    assert torch.allclose(logvar.grad, 0.5 * torch.tensor([[1.0, 2.0]]) * eps)  # dz/dlogvar = sigma eps / 2


def test_reparameterized_samples_have_the_posterior_moments():
    mu, logvar = torch.full((20000, 1), 3.0), torch.full((20000, 1), math.log(0.25))
    z = lk.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(3.0, abs=0.02)
    assert z.std().item() == pytest.approx(0.5, abs=0.02)


# --------------------------------------------------------------------------- reconstruction terms and ELBO
def test_bernoulli_elbo_hand_value():
    x = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    logits = torch.tensor([math.log(3.0), 0.0]).view(1, 1, 1, 2)  # p = 0.75, 0.5
    mu, logvar = torch.tensor([[1.0]]), torch.tensor([[0.0]])  # KL = 0.5
    rec = -math.log(0.75) - math.log(0.5)
    out = lk.elbo_loss(logits, x, mu, logvar)
    assert out.reconstruction.item() == pytest.approx(rec, abs=1e-6)
    assert out.kl.item() == pytest.approx(0.5, abs=1e-6)
    assert out.loss.item() == pytest.approx(rec + 0.5, abs=1e-6)
    loss, r, k = lk.elbo_loss(logits, x, mu, logvar, beta=4.0)  # a NamedTuple unpacks
    assert loss.item() == pytest.approx(rec + 2.0, abs=1e-6)


def test_gaussian_nll_hand_value_and_against_normal_log_prob():
    x = torch.tensor([1.0]).view(1, 1, 1, 1)
    logits = torch.zeros(1, 1, 1, 1)  # mean 0.5
    expected = 0.25 / (2 * 0.25) + 0.5 * math.log(2 * math.pi * 0.25)
    got = lk.reconstruction_nll(logits, x, likelihood="gaussian", sigma=0.5)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    g = torch.Generator().manual_seed(1)
    x, logits = torch.rand(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    ref = -torch.distributions.Normal(torch.sigmoid(logits), 0.1).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(lk.reconstruction_nll(logits, x, likelihood="gaussian", sigma=0.1), ref, atol=1e-3)
    ref_b = -torch.distributions.Bernoulli(logits=logits).log_prob((x > 0.5).float()).flatten(1).sum(1)
    assert torch.allclose(lk.reconstruction_nll(logits, (x > 0.5).float()), ref_b, atol=1e-5)


def test_reconstruction_nll_rejects_bad_arguments():
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="likelihood"):
        lk.reconstruction_nll(x, x, likelihood="laplace")
    with pytest.raises(ValueError, match="sigma"):
        lk.reconstruction_nll(x, x, likelihood="gaussian", sigma=0)
    with pytest.raises(ValueError, match="same"):
        lk.reconstruction_nll(x, torch.zeros(2, 1, 2, 3))
    with pytest.raises(ValueError, match="beta"):
        lk.elbo_loss(x, x, torch.zeros(2, 1), torch.zeros(2, 1), beta=-1.0)


def test_evaluate_elbo_matches_hand_value():
    model = ConstantVAE(mu_value=1.0, logvar_value=0.0, logit=0.0)
    x = torch.tensor([1.0, 0.0, 1.0, 1.0]).view(1, 1, 2, 2).repeat(3, 1, 1, 1)
    ev = lk.evaluate_elbo(model, x, samples=2)
    assert ev["reconstruction"] == pytest.approx(4 * math.log(2.0), abs=1e-5)
    assert ev["kl"] == pytest.approx(0.5, abs=1e-6)
    assert ev["elbo"] == pytest.approx(-(4 * math.log(2.0) + 0.5), abs=1e-5)
    assert ev["loss"] == pytest.approx(-ev["elbo"], abs=1e-9)
    assert lk.evaluate_elbo(model, x, beta=2.0)["loss"] == pytest.approx(4 * math.log(2.0) + 1.0, abs=1e-5)


# --------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", ["mlp_vae", "conv_vae"])
def test_models_shapes_and_eval_mode_uses_the_mean(name):
    torch.manual_seed(0)
    model = lk.get_model(name, latent_dim=3)
    x = torch.rand(5, 1, 28, 28)
    model.eval()
    logits, mu, logvar = model(x)
    assert logits.shape == x.shape and mu.shape == logvar.shape == (5, 3)
    assert torch.equal(model(x)[0], logits)  # z = mu in eval mode: deterministic
    assert torch.equal(model.decode(mu), logits)
    model.train()
    assert not torch.equal(model(x)[0], logits)  # a sampled z in training mode


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_conditional_vae_needs_labels(arch):
    torch.manual_seed(0)
    model = lk.get_model("cvae", arch=arch, latent_dim=2, num_classes=10).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 3, 9, 1])
    logits, mu, _ = model(x, y)
    assert logits.shape == x.shape and mu.shape == (4, 2)
    # the label changes the decoded image for the same z
    assert not torch.allclose(model.decode(mu, y), model.decode(mu, (y + 1) % 10))
    with pytest.raises(ValueError, match="conditional"):
        model(x)
    with pytest.raises(ValueError, match="outside"):
        model(x, torch.tensor([0, 3, 10, 1]))
    with pytest.raises(ValueError, match="unconditional"):
        lk.get_model("mlp_vae")(x, y)


def test_model_arguments_are_validated():
    with pytest.raises(ValueError, match="divisible"):
        ConvVAE((1, 30, 30), widths=(16, 32))
    with pytest.raises(ValueError, match="latent_dim"):
        MLPVAE(latent_dim=0)
    with pytest.raises(ValueError, match="in_shape"):
        MLPVAE(in_shape=(28, 28))
    with pytest.raises(ValueError, match="arch"):
        lk.get_model("cvae", arch="rnn")
    assert ConvVAE((3, 32, 32), widths=(8, 8, 8), latent_dim=4)(torch.rand(2, 3, 32, 32))[0].shape == (2, 3, 32, 32)


# --------------------------------------------------------------------------- training
def _tiny_digits(n=96):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    x = torch.zeros(n, 1, 8, 8)
    x[labels == 0, :, 2:6, 2:4] = 1.0  # a bar
    x[labels == 1, :, 2:4, 2:6] = 1.0  # a lying bar
    x = (x + 0.05 * torch.rand(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, labels


def test_train_vae_learns_and_is_reproducible(monkeypatch):
    monkeypatch.setenv("LABKIT_PROGRESS", "none")
    x, y = _tiny_digits()
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # same initial weights; the run's own randomness comes from `seed`
        model = MLPVAE((1, 8, 8), latent_dim=2, hidden=(32,))
        hist = lk.train_vae(model, x, x[:32], epochs=8, lr=1e-2, batch_size=48, device="cpu", seed=5)
        runs.append((model, hist))
    (m1, h1), (m2, h2) = runs
    assert h1.epochs == 8 and len(h1.val_loss) == 8
    assert h1.train_loss[-1] < 0.5 * h1.train_loss[0]
    assert h1.train_loss == h2.train_loss
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert not m1.training
    # the loss is reconstruction + kl
    assert h1.train_loss[-1] == pytest.approx(h1.train_rec[-1] + h1.train_kl[-1], rel=1e-6)
    # the two classes end up apart in the latent space
    mu = lk.latent_means(m1, x)
    assert mu.shape == (len(x), 2)
    gap = (mu[y == 0].mean(0) - mu[y == 1].mean(0)).norm()
    assert gap > mu[y == 0].std(0).norm()


def test_train_vae_conditional_and_denoising(monkeypatch):
    monkeypatch.setenv("LABKIT_PROGRESS", "none")
    x, y = _tiny_digits(64)
    model = MLPVAE((1, 8, 8), latent_dim=2, hidden=(16,), num_classes=2)
    with pytest.raises(ValueError, match="conditional"):
        lk.train_vae(model, x, epochs=1, device="cpu")
    hist = lk.train_vae(model, (x, y), (x, y), epochs=2, noise_std=0.3, device="cpu")
    assert hist.epochs == 2 and hist.val_loss
    with pytest.raises(ValueError, match="epochs"):
        lk.train_vae(model, (x, y), epochs=-1)
    with pytest.raises(TypeError, match="VAE"):
        lk.train_vae(nn.Linear(2, 2), x, epochs=1)


# --------------------------------------------------------------------------- helpers
def test_add_noise_is_seeded_clipped_and_copies():
    x = torch.full((2, 1, 4, 4), 0.5)
    a, b = lk.add_noise(x, std=0.3, seed=1), lk.add_noise(x, std=0.3, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, lk.add_noise(x, std=0.3, seed=2))
    assert a.min() >= 0 and a.max() <= 1 and torch.equal(x, torch.full((2, 1, 4, 4), 0.5))
    assert (lk.add_noise(x, std=10.0, seed=0, clip=False).abs() > 1).any()


def test_decode_latents_sample_and_grid():
    model = IdentityVAE()
    z = torch.tensor([[0.0, math.log(3.0)]])
    assert torch.allclose(lk.decode_latents(model, z), torch.tensor([0.5, 0.75]).view(1, 1, 1, 2))
    s1, s2 = lk.sample_vae(model, 4, seed=0), lk.sample_vae(model, 4, seed=0)
    assert s1.shape == (4, 1, 1, 2) and torch.equal(s1, s2)
    images, coords = lk.decode_grid(model, n=3, quantiles=(0.1, 0.9))
    q = 1.2815515655446004  # Phi^-1(0.9)
    assert images.shape == (9, 1, 1, 2)
    assert torch.allclose(coords[0], torch.tensor([-q, q]), atol=1e-5)  # top left: low z1, high z2
    assert torch.allclose(coords[4], torch.zeros(2), atol=1e-6)
    assert torch.allclose(coords[8], torch.tensor([q, -q]), atol=1e-5)
    assert torch.allclose(images[0].flatten(), torch.sigmoid(torch.tensor([-q, q])), atol=1e-5)
    with pytest.raises(ValueError, match="dims"):
        lk.decode_grid(model, dims=(0, 0))
    with pytest.raises(ValueError, match="quantiles"):
        lk.decode_grid(model, quantiles=(0.0, 0.9))


def test_interpolate_endpoints_are_the_reconstructions():
    model = IdentityVAE()
    a, b = torch.tensor([0.2, 0.4]).view(1, 1, 2), torch.tensor([0.8, -0.4]).view(1, 1, 2)
    path = lk.interpolate(model, a, b, steps=5)
    assert path.shape == (1, 5, 1, 1, 2)
    assert torch.allclose(path[0, 0].flatten(), torch.sigmoid(torch.tensor([0.2, 0.4])))
    assert torch.allclose(path[0, -1].flatten(), torch.sigmoid(torch.tensor([0.8, -0.4])))
    assert torch.allclose(path[0, 2].flatten(), torch.sigmoid(torch.tensor([0.5, 0.0])))  # the midpoint
    slerp = lk.interpolate(model, a, b, steps=5, method="slerp")
    assert torch.allclose(slerp[0, 0], path[0, 0], atol=1e-5) and torch.allclose(slerp[0, -1], path[0, -1], atol=1e-5)
    with pytest.raises(ValueError, match="method"):
        lk.interpolate(model, a, b, method="cubic")


def test_impute_keeps_visible_pixels_and_fills_the_decoder_mean():
    model = ConstantVAE(shape=(1, 2, 2), logit=math.log(3.0))  # decoder mean 0.75 everywhere
    x = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 1, 2, 2)
    visible = torch.tensor([[True, False], [True, False]])
    for method in ("iterate", "optimize"):
        out = lk.impute(model, x, visible, method=method, steps=3)
        assert torch.allclose(out, torch.tensor([0.1, 0.75, 0.3, 0.75]).view(1, 1, 2, 2), atol=1e-6)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert torch.equal(x, torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 1, 2, 2))
    with pytest.raises(TypeError, match="bool"):
        lk.impute(model, x, visible.float())
    with pytest.raises(ValueError, match="broadcast"):
        lk.impute(model, x, torch.ones(3, 3, dtype=torch.bool))


def test_impute_with_an_autoencoder_recovers_a_hidden_pixel():
    """IdentityVAE reconstructs sigmoid(x): the iteration converges to the fixed point p = sigmoid(p)."""
    model = IdentityVAE()
    x = torch.tensor([0.3, 0.9]).view(1, 1, 1, 2)
    visible = torch.tensor([[True, False]])
    out = lk.impute(model, x, visible, steps=60)
    p = torch.tensor(0.5)
    for _ in range(200):
        p = torch.sigmoid(p)
    assert out[0, 0, 0, 0].item() == pytest.approx(0.3) and out[0, 0, 0, 1].item() == pytest.approx(p.item(), abs=1e-3)


def test_region_target_and_area_guided_backprop():
    out = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    target = lk.region_target(1, 2, 2, 2)
    assert torch.equal(target(out), torch.tensor([6.0 + 7 + 10 + 11, 22.0 + 23 + 26 + 27]))
    with pytest.raises(ValueError, match="leaves"):
        lk.region_target(3, 3, 2, 2)(out)
    with pytest.raises(ValueError, match="height"):
        lk.region_target(0, 0, 0, 2)
    torch.manual_seed(0)
    vae = ConvVAE((1, 8, 8), latent_dim=2, widths=(4,), hidden=8)
    vae.train()
    rec = V.Reconstructor(vae)
    x = torch.rand(3, 1, 8, 8)
    x0 = x.clone()
    gb = lk.guided_backprop(rec, x, target=lk.region_target(0, 0, 4, 4))
    assert gb.shape == x.shape and gb.abs().sum() > 0
    assert torch.equal(x, x0) and vae.training  # input and mode untouched
    with pytest.raises(ValueError, match="unconditional"):
        V.Reconstructor(MLPVAE((1, 8, 8), num_classes=2))


def test_conditional_helpers_validate_labels():
    model = MLPVAE((1, 8, 8), latent_dim=2, hidden=(8,), num_classes=3)
    assert lk.sample_vae(model, 4, labels=2).shape == (4, 1, 8, 8)
    assert lk.sample_vae(model, 3, labels=torch.tensor([0, 1, 2])).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="conditional"):
        lk.sample_vae(model, 2)
    with pytest.raises(ValueError, match="0..2"):
        lk.sample_vae(model, 2, labels=5)
    with pytest.raises(ValueError, match="not conditional"):
        lk.sample_vae(MLPVAE((1, 8, 8), latent_dim=2), 2, labels=1)


def test_kl_per_dimension_sums_to_the_kl_term():
    model = ConstantVAE(latent_dim=3, mu_value=1.0, logvar_value=0.0)
    x = torch.rand(5, 1, 2, 2)
    per_dim = lk.kl_per_dimension(model, x, batch_size=2)
    assert torch.allclose(per_dim, torch.full((3,), 0.5))
    assert per_dim.sum().item() == pytest.approx(lk.evaluate_elbo(model, x)["kl"], abs=1e-6)
