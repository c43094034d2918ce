"""labkit.adversarial: FGSM and PGD cross-checked against captum.robust; constraints; targeted attacks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from captum.robust import FGSM, PGD
from torch import nn

from labkit import adversarial as A
from labkit.hooks import count_hooks

# Captum warns that it switched requires_grad on for our inputs; expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))

    def forward(self, x):
        h = self.relu(self.conv1(x))
        return self.head(self.relu(h + self.conv2(h)))


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(6 * 4 * 4, 5))
    bn = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                       nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    with torch.no_grad():  # non-trivial running statistics
        bn[1].running_mean.uniform_(-0.5, 0.5)
        bn[1].running_var.uniform_(0.5, 2.0)
    return {"plain": plain.eval(), "batchnorm": bn.eval(), "residual": _Residual().eval()}


MODELS = _models()


def _ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


def _data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_matches_captum(name, targeted):
    model = MODELS[name]
    x, y = _data()
    ours = A.fgsm(model, x, y, 0.03, targeted=targeted)
    attack = FGSM(model, loss_func=_ce, lower_bound=0.0, upper_bound=1.0)
    attack.zero_thresh = 0.0  # captum leaves |grad| <= 1e-6 unperturbed by default (see below)
    theirs = attack.perturb(x, 0.03, y, targeted=targeted)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    assert not torch.equal(ours, x)


def test_fgsm_definitional_difference_with_captum_zero_threshold():
    """Captum skips pixels whose gradient is <= 1e-6 in magnitude; labkit uses sign(g) everywhere
    (sign(0) = 0). The two agree exactly except on those tiny-gradient pixels."""
    model = MODELS["plain"]
    x, y = _data()
    x = x * 1e-3  # small inputs: some gradients become tiny
    ours = A.fgsm(model, x, y, 0.01, clamp=None)
    theirs = FGSM(model, loss_func=_ce).perturb(x, 0.01, y)
    xg = x.clone().requires_grad_(True)
    F.cross_entropy(model(xg), y, reduction="sum").backward()
    tiny = (xg.grad.abs() <= 1e-6) & (xg.grad != 0)
    differ = (ours - theirs).abs() > 1e-7
    assert torch.equal(differ, tiny)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_linf_matches_captum_without_random_start(name, targeted):
    model = MODELS[name]
    x, y = _data(2)
    ours = A.pgd(model, x, y, 0.05, alpha=0.01, steps=7, targeted=targeted, random_start=False)
    attack = PGD(model, loss_func=_ce, lower_bound=0.0, upper_bound=1.0)
    attack.fgsm.zero_thresh = 0.0
    theirs = attack.perturb(x, radius=0.05, step_size=0.01, step_num=7, target=y, targeted=targeted)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_pgd_l2_step_differs_from_captum_by_definition():
    """Madry's L2 PGD steps along g / ||g||_2 (labkit); Captum's "L2" PGD keeps the sign step and
    only projects onto the L2 ball. One step in a ball too large to project shows the difference."""
    model = MODELS["plain"]
    x, y = _data(3)
    x = x * 0.5 + 0.25
    ours = A.pgd(model, x, y, 100.0, alpha=0.1, steps=1, norm="l2", random_start=False, clamp=None)
    theirs = PGD(model, loss_func=_ce).perturb(x, radius=100.0, step_size=0.1, step_num=1, target=y, norm="L2")
    xg = x.clone().requires_grad_(True)
    F.cross_entropy(model(xg), y, reduction="sum").backward()
    g = xg.grad
    expected_ours = x + 0.1 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(ours, expected_ours, atol=1e-6)
    assert torch.allclose(theirs, x + 0.1 * g.sign(), atol=1e-6)
    assert torch.allclose((ours - x).flatten(1).norm(dim=1), torch.full((8,), 0.1), atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_constraints_with_random_start(norm):
    model = MODELS["batchnorm"]
    x, y = _data(4)
    eps = 0.03 if norm == "linf" else 0.5
    adv = A.pgd(model, x, y, eps, alpha=eps / 4, steps=10, norm=norm, seed=3)
    d = (adv - x).flatten(1)
    if norm == "linf":
        assert d.abs().max() <= eps + 1e-6
        assert d.abs().max() > eps * 0.9  # the ball is used
    else:
        assert (d.norm(dim=1) <= eps + 1e-5).all()
        assert d.norm(dim=1).max() > eps * 0.9
    assert adv.min() >= 0 and adv.max() <= 1
    # seeded: same start, same result; another seed, another start
    assert torch.equal(adv, A.pgd(model, x, y, eps, alpha=eps / 4, steps=10, norm=norm, seed=3))
    assert not torch.equal(adv, A.pgd(model, x, y, eps, alpha=eps / 4, steps=10, norm=norm, seed=4))


def test_pgd_l2_projection_matches_captum_renorm():
    """With a step that leaves the ball, the L2 projections agree (Captum: torch.renorm)."""
    model = MODELS["residual"]
    x, y = _data(5)
    x = x * 0.5 + 0.25
    ours = A.pgd(model, x, y, 0.2, alpha=1.0, steps=1, norm="l2", random_start=False, clamp=None)
    xg = x.clone().requires_grad_(True)
    F.cross_entropy(model(xg), y, reduction="sum").backward()
    stepped = x + 1.0 * xg.grad / xg.grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(ours, x + torch.renorm(stepped - x, 2, 0, 0.2), atol=1e-6)


def test_per_channel_clamp_for_normalized_inputs():
    model = MODELS["plain"]
    x, y = _data(6)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    xn = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    adv = A.pgd(model, xn, y, 0.5, alpha=0.2, steps=5, clamp=(lo, hi))
    assert (adv >= lo.view(1, 3, 1, 1) - 1e-6).all() and (adv <= hi.view(1, 3, 1, 1) + 1e-6).all()
    assert ((adv - xn).abs() <= 0.5 + 1e-6).all()
    with pytest.raises(ValueError, match="outside clamp"):
        A.fgsm(model, xn, y, 0.1)  # normalized images with the default (0, 1) range


def _linear_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5)).eval()


def test_targeted_attacks_reach_the_target():
    model = _linear_model()
    x, _ = _data(7)
    target = (model(x).argmax(1) + 1) % 5
    adv = A.pgd(model, x, target, 0.3, alpha=0.05, steps=20, targeted=True)
    assert (model(adv).argmax(1) == target).all()
    adv1 = A.fgsm(model, x, target, 0.3, targeted=True)
    assert (model(adv1).argmax(1) == target).float().mean() >= 0.75
    # untargeted: away from the true label
    y = model(x).argmax(1)
    assert (model(A.pgd(model, x, y, 0.3, alpha=0.05, steps=20)).argmax(1) != y).all()


def test_minimal_targeted_attack_stops_at_the_target():
    model = _linear_model()
    x, _ = _data(8)
    pred = model(x).argmax(1)
    target = (pred + 2) % 5
    target[0] = pred[0]  # already predicted: 0 steps, no perturbation
    delta, steps = A.minimal_targeted_attack(model, x, target, step_size=0.02, max_steps=300)
    assert steps[0] == 0 and delta[0].abs().max() == 0
    assert (steps > 0)[1:].all()
    assert (model(x + delta).argmax(1) == target).all()
    # minimal: the step before the last one did not reach the target yet, so the norm is about steps * size
    norms = delta.flatten(1).norm(dim=1)
    assert (norms <= steps.float() * 0.02 + 1e-5).all()
    # a single image, min_prob, and an unreachable budget
    d1, s1 = A.minimal_targeted_attack(model, x[1], int(target[1]), step_size=0.02, max_steps=600, min_prob=0.7)
    assert d1.shape == x[1].shape and int(s1) >= int(steps[1])
    assert model(x[1:2] + d1).softmax(1)[0, target[1]] >= 0.7
    _, s0 = A.minimal_targeted_attack(model, x[1:2], target[1:2], step_size=1e-6, max_steps=3)
    assert s0.tolist() == [-1]


def test_attacks_leave_model_and_images_as_found():
    model = copy.deepcopy(MODELS["batchnorm"]).train()
    model[0].weight.requires_grad_(False)  # a partly frozen model
    x, y = _data(9)
    x0 = x.clone()
    stats = model[1].running_mean.clone()
    hooks = count_hooks(model)
    A.fgsm(model, x, y, 0.1)
    A.pgd(model, x, y, 0.1, alpha=0.02, steps=3)
    A.minimal_targeted_attack(model, x, 0, max_steps=3)
    assert torch.equal(x, x0)
    assert model.training and model[1].training
    assert torch.equal(model[1].running_mean, stats)        # eval mode during the attack
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert count_hooks(model) == hooks
    with pytest.raises(ValueError, match="labels must lie"):
        A.pgd(model, x, torch.full((8,), 9), 0.1, alpha=0.02, steps=2)
    assert model.training and model[0].bias.requires_grad  # restored after the error too
    with pytest.raises(ValueError, match="norm"):
        A.pgd(model, x, y, 0.1, alpha=0.02, steps=2, norm="l1")
    with pytest.raises(ValueError, match="entries"):
        A.fgsm(model, x, y[:3], 0.1)


def test_adversarial_training_step_trains_on_pgd_examples():
    model = copy.deepcopy(MODELS["batchnorm"]).eval()
    x, y = _data(10)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = A.adversarial_training_step(model, opt, x, y, eps=0.05, alpha=0.02, steps=3, seed=0)
    # the loss is the train-mode cross-entropy on the PGD examples of the model before the update
    adv = A.pgd(twin, x, y, 0.05, alpha=0.02, steps=3, seed=0)
    expected = F.cross_entropy(twin.train()(adv), y).item()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert not model.training                                  # mode restored
    assert not torch.equal(model[0].weight, twin[0].weight)    # parameters updated
    mixed = A.adversarial_training_step(model, opt, x, y, eps=0.05, alpha=0.02, steps=3, clean_weight=0.5)
    assert mixed > 0
    with pytest.raises(ValueError, match="clean_weight"):
        A.adversarial_training_step(model, opt, x, y, eps=0.05, alpha=0.02, steps=1, clean_weight=2.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
def test_attacks_on_cuda_match_cpu():
    model = copy.deepcopy(MODELS["batchnorm"])
    x, y = _data(11)
    calls = {
        "fgsm": lambda m, v, t: A.fgsm(m, v, t, 0.03),
        "pgd": lambda m, v, t: A.pgd(m, v, t, 0.03, alpha=0.01, steps=3, seed=1),
        "pgd_l2": lambda m, v, t: A.pgd(m, v, t, 0.5, alpha=0.1, steps=3, norm="l2", seed=1),
        "minimal": lambda m, v, t: A.minimal_targeted_attack(m, v, (t + 1) % 5, max_steps=20)[0],
    }
    cpu = {k: f(model, x, y) for k, f in calls.items()}
    model.cuda()
    for k, f in calls.items():
        got = f(model, x.cuda(), y.cuda())
        assert got.device.type == "cuda", k
        # sign steps can flip where a gradient is ~0: compare the share of differing pixels
        assert ((got.cpu() - cpu[k]).abs() > 1e-4).float().mean() < 0.01, k
    with pytest.raises(ValueError, match="move them"):
        A.fgsm(model, x, y, 0.1)


# --------------------------------------------------------------------------- lab 03 helpers
def _linear_pair() -> nn.Module:
    """Logits (s, -s) with s = x0 + x1: class 0 iff x0 + x1 > 0; FGSM of size eps moves s by 2 eps."""
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
    return lin.eval()


def test_sign_noise_has_the_attack_norm():
    x = torch.full((3, 1, 4, 4), 0.5)
    before = x.clone()
    noisy = A.sign_noise(x, 0.1, seed=3, clamp=None)
    assert torch.equal(x, before)
    assert torch.allclose((noisy - x).abs(), torch.full_like(x, 0.1))
    assert torch.equal(noisy, A.sign_noise(x, 0.1, seed=3, clamp=None))
    assert not torch.equal(noisy, A.sign_noise(x, 0.1, seed=4, clamp=None))
    assert 0.3 < ((noisy - x) > 0).float().mean().item() < 0.7
    clipped = A.sign_noise(torch.zeros(2, 1, 3, 3), 0.2, seed=0)
    assert torch.equal(clipped.unique(), torch.tensor([0.0, 0.2]))
    with pytest.raises(ValueError, match="eps"):
        A.sign_noise(x, -0.1)


def test_robust_accuracy_on_a_linear_model_by_hand():
    model = _linear_pair()
    margins = torch.tensor([0.1, 0.3, 0.5])  # x0 + x1 = m, all class 0
    x = torch.stack([margins / 2, margins / 2], 1)
    y = torch.zeros(3, dtype=torch.long)
    attack = lambda m, xb, yb, e: A.fgsm(m, xb, yb, e, clamp=None)  # noqa: E731
    # the logit gap 2m falls by 4 eps: an image flips when eps > m / 2
    acc = A.robust_accuracy(model, x, y, attack, [0.0, 0.1, 0.2, 0.3], batch_size=2)
    assert acc == pytest.approx({0.0: 1.0, 0.1: 2 / 3, 0.2: 1 / 3, 0.3: 0.0})
    noise = A.robust_accuracy(model, x, y, lambda m, xb, yb, e: A.sign_noise(xb, e, clamp=None), [0.3])
    assert 0.0 <= noise[0.3] <= 1.0
    with pytest.raises(TypeError, match="attack"):
        A.robust_accuracy(model, x, y, "fgsm", [0.1])
    with pytest.raises(ValueError, match="epsilons"):
        A.robust_accuracy(model, x, y, attack, [])
    with pytest.raises(ValueError, match="attack must return"):
        A.robust_accuracy(model, x, y, lambda m, xb, yb, e: xb[:1], [0.1])


def test_transfer_success_rate_by_hand():
    model = _linear_pair()
    x = torch.tensor([[0.05, 0.05], [0.2, 0.2], [-0.3, -0.3]])
    y = torch.tensor([0, 0, 1])
    adv = A.fgsm(model, x, y, 0.15, clamp=None)  # moves s = x0 + x1 by 0.3 towards the other class
    # s = 0.1 -> -0.2: fooled; s = 0.4 -> 0.1: not fooled; s = -0.6 -> -0.3: not fooled
    assert A.transfer_success_rate(model, model, x, adv, y) == 1.0
    constant = nn.Linear(2, 2)
    with torch.no_grad():
        constant.weight.zero_()
        constant.bias.copy_(torch.tensor([1.0, 0.0]))  # always class 0
    # the only eligible image must be correct for both: the first (class 0); the constant model is not fooled
    assert A.transfer_success_rate(model, constant, x, adv, y) == 0.0
    assert torch.isnan(torch.tensor(A.transfer_success_rate(model, model, x, x, y)))  # nothing fooled
    with pytest.raises(ValueError, match="shape"):
        A.transfer_success_rate(model, model, x, adv[:2], y)


def test_adversarial_training_is_seeded_and_helps():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 4, 4, generator=g)
    y = (x[:, 0, :2].mean((1, 2)) > x[:, 0, 2:].mean((1, 2))).long()  # top half brighter than the bottom half

    def fresh():
        torch.manual_seed(1)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))

    attack = lambda m, xb, yb, e: A.pgd(m, xb, yb, e, alpha=e / 2, steps=3)  # noqa: E731
    a, b = fresh(), fresh()
    state = torch.get_rng_state()
    losses = A.adversarial_training(a, (x, y), epochs=3, eps=0.05, alpha=0.025, steps=2, lr=0.05, batch_size=16)
    assert torch.equal(state, torch.get_rng_state()), "the global RNG is not used"
    A.adversarial_training(b, (x, y), epochs=3, eps=0.05, alpha=0.025, steps=2, lr=0.05, batch_size=16)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert not a.training
    assert A.robust_accuracy(a, x, y, attack, [0.05])[0.05] > A.robust_accuracy(fresh(), x, y, attack, [0.05])[0.05]
    short = fresh()
    A.adversarial_training(short, (x, y), epochs=1, eps=0.05, alpha=0.025, steps=1, batch_size=16, max_batches=1)
    with pytest.raises(ValueError, match="epochs"):
        A.adversarial_training(fresh(), (x, y), epochs=-1, eps=0.05, alpha=0.025, steps=1)
