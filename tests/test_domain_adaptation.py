"""DANN (lab 09): gradient reversal by hand, the paper's schedules, the training loop on toy domains."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import labkit as lk
from labkit.domain_adaptation import DANNHistory, MODES


# --------------------------------------------------------------------------- gradient reversal
@pytest.mark.parametrize("coeff", [1.0, 0.5, 0.0, -2.0])
def test_grad_reverse_is_identity_forward_and_minus_coeff_backward(coeff: float):
    x = torch.tensor([[1.0, -2.0, 3.0]], requires_grad=True)
    w = torch.tensor([[0.5, 4.0, -1.0]])
    y = lk.grad_reverse(x, coeff)
    assert torch.equal(y, x.detach())
    (y * w).sum().backward()  # without the GRL, d/dx = w
    assert torch.allclose(x.grad, -coeff * w)


def test_grad_reverse_chain_and_module():
    # d/dx of (GRL(3 x))^2 summed = -lambda * 2 * (3x) * 3 = -18 lambda x
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    grl = lk.GradientReversal(0.25)
    (grl(3 * x) ** 2).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-4.5, -9.0]))
    assert "coeff=0.25" in repr(grl)
    grl.coeff = 2.0  # settable between steps
    x.grad = None
    grl(x).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-2.0, -2.0]))


def test_grad_reverse_leaves_input_alone_and_validates():
    x = torch.ones(3)
    y = lk.grad_reverse(x, 1.0)
    y.add_(1.0)  # the output is a copy: in-place ops on it never reach the caller's tensor
    assert torch.equal(x, torch.ones(3))
    x2 = torch.arange(3.0)
    with pytest.raises(TypeError, match="coeff"):
        lk.grad_reverse(x2, "1")
    with pytest.raises(ValueError, match="coeff"):
        lk.grad_reverse(x2, float("nan"))
    with pytest.raises(TypeError, match="x must be"):
        lk.grad_reverse([1.0], 1.0)


def test_dann_domain_branch_gradient_is_reversed_on_features():
    torch.manual_seed(0)
    model = lk.get_model("dann", in_channels=1, widths=(4,), kernel=3, input_size=8, hidden=(8,), domain_hidden=(8,))
    x = torch.rand(5, 1, 8, 8)
    grads = {}
    for coeff in (1.0, -1.0, 0.0):
        model.zero_grad()
        model.domain_logits(model.features(x), coeff).sum().backward()
        grads[coeff] = (model.features[1].weight.grad.clone(), model.domain_classifier[0].weight.grad.clone())
    assert grads[1.0][0].abs().sum() > 0
    assert torch.allclose(grads[1.0][0], -grads[-1.0][0])  # feature extractor: reversed
    assert torch.equal(grads[0.0][0], torch.zeros_like(grads[0.0][0]))  # lambda = 0 blocks it
    assert torch.allclose(grads[1.0][1], grads[-1.0][1])  # domain classifier: unaffected by the GRL


# --------------------------------------------------------------------------- schedules
def test_lambda_schedule_hand_values():
    assert lk.lambda_schedule(0.0) == 0.0
    # 2 / (1 + e^-1) - 1 with e^-1 = 0.3678794412: 2 / 1.3678794412 - 1 = 0.4621171573
    assert lk.lambda_schedule(0.1) == pytest.approx(0.4621171573, abs=1e-9)
    # 2 / (1 + e^-10) - 1 = 0.9999092043
    assert lk.lambda_schedule(1.0) == pytest.approx(0.9999092043, abs=1e-9)
    for p in (0.03, 0.5, 0.77):  # the identity 2 / (1 + e^-x) - 1 = tanh(x / 2)
        assert lk.lambda_schedule(p) == pytest.approx(math.tanh(5 * p), abs=1e-12)
    assert lk.lambda_schedule(0.5, gamma=2.0) == pytest.approx(math.tanh(0.5), abs=1e-12)


def test_lr_schedule_hand_values():
    assert lk.lr_schedule(0.0) == 0.01
    # 0.01 / 11^0.75; 11^0.75 = sqrt(11) * 11^0.25 = 3.31662479 * 1.82116029 = 6.0401054
    assert lk.lr_schedule(1.0) == pytest.approx(0.01 / 6.0401054, rel=1e-6)
    # p = 0.3: 0.1 / 4^0.75 = 0.1 / (2 * sqrt 2) = 0.03535533906
    assert lk.lr_schedule(0.3, lr0=0.1) == pytest.approx(0.03535533906, rel=1e-9)
    assert lk.lr_schedule(0.7, lr0=0.2, alpha=0.0) == 0.2  # alpha = 0: constant


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_schedules_reject_progress_outside_unit_interval(p: float):
    with pytest.raises(ValueError, match="p is the training progress"):
        lk.lambda_schedule(p)
    with pytest.raises(ValueError, match="p is the training progress"):
        lk.lr_schedule(p)


def test_schedules_reject_bad_options():
    with pytest.raises(TypeError, match="p must be a number"):
        lk.lambda_schedule("0.5")
    with pytest.raises(ValueError, match="gamma"):
        lk.lambda_schedule(0.5, gamma=0.0)
    with pytest.raises(ValueError, match="lr0"):
        lk.lr_schedule(0.5, lr0=-1.0)


# --------------------------------------------------------------------------- the model
def test_dann_model_shapes_and_registry():
    assert "dann" in lk.list_models()
    model = lk.get_model("dann")  # the paper's MNIST network: 28 -> 24 -> 12 -> 8 -> 4, 48 channels
    assert model.feature_dim == 48 * 4 * 4
    x = torch.rand(6, 3, 28, 28)
    assert model(x).shape == (6, 10)
    assert model.features(x).shape == (6, 768)
    assert model.domain_logits(model.features(x)).shape == (6,)


def test_dann_image_standardization_ignores_brightness_and_contrast():
    torch.manual_seed(0)
    model = lk.get_model("dann", in_channels=1, widths=(4,), kernel=3, input_size=8, input_norm="image").eval()
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(model(x), model(2.0 * x + 0.3), atol=1e-4)
    plain = lk.get_model("dann", in_channels=1, widths=(4,), kernel=3, input_size=8).eval()
    assert not torch.allclose(plain(x), plain(2.0 * x + 0.3), atol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    ({"input_norm": "batch"}, "input_norm"),
    ({"widths": ()}, "widths"),
    ({"widths": (8, 0)}, r"widths\[1\]"),
    ({"hidden": (10, -1)}, r"hidden\[1\]"),
    ({"dropout": 1.0}, "dropout"),
    ({"input_size": 8}, "input_size=8 is too small"),
])
def test_dann_model_validates(kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        lk.get_model("dann", **kwargs)


# --------------------------------------------------------------------------- toy domains
def _toy(n: int, *, shift: bool, seed: int) -> lk.ImageSet:
    """2 classes on 8x8: a bright left (0) or right (1) half; the target domain adds a strong
    horizontal stripe pattern and darkens the image (a domain shift the label does not depend on)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = 0.1 * torch.rand(n, 1, 8, 8, generator=g)
    x[y == 0, :, :, :4] += 0.8
    x[y == 1, :, :, 4:] += 0.8
    if shift:
        x = 0.6 * x
        x[:, :, ::2, :] += 0.4
    return lk.ImageSet(x.clamp(0, 1), y, ["left", "right"], name="toy-target" if shift else "toy-source")


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return lk.get_model("dann", in_channels=1, num_classes=2, widths=(4,), kernel=3, input_size=8,
                        hidden=(16,), domain_hidden=(16,))


@pytest.fixture(scope="module")
def toy():
    return {"src": _toy(256, shift=False, seed=0), "tgt": _toy(256, shift=True, seed=1),
            "src_val": _toy(128, shift=False, seed=2), "tgt_val": _toy(128, shift=True, seed=3)}


@pytest.mark.parametrize("mode", MODES)
def test_train_dann_runs_every_mode_and_fills_the_history(toy, mode: str):
    model = _tiny_model()
    model.train()
    h = lk.train_dann(model, toy["src"], toy["tgt"], mode=mode, epochs=3, steps_per_epoch=10, batch_size=32,
                      lr=0.05, source_val=toy["src_val"], target_val=toy["tgt_val"], seed=0)
    assert isinstance(h, DANNHistory) and h.mode == mode and h.epochs == 3
    for key in ("source_acc", "target_acc", "domain_acc", "label_loss", "domain_loss", "train_domain_acc",
                "coeff", "lr", "seconds"):
        assert len(getattr(h, key)) == 3, key
    assert h.steps == [10, 20, 30]
    assert all(0.0 <= a <= 1.0 for a in h.source_acc + h.target_acc + h.domain_acc)
    assert h.last("source_acc") >= 0.9, "the label path learns the easy source task"
    p_last = 29 / 30  # coefficient and rate of the last step
    expected = {"dann": lk.lambda_schedule(p_last), "fixed": 1.0, "no_grl": -lk.lambda_schedule(p_last),
                "source_only": 0.0}[mode]
    assert h.coeff[-1] == pytest.approx(expected)
    assert h.lr[-1] == pytest.approx(lk.lr_schedule(p_last, lr0=0.05))
    assert not model.training
    assert set(h.to_dict()) >= {"mode", "source_acc", "target_acc", "domain_acc"}


def test_source_only_features_never_see_the_domain_loss(toy):
    """With a target set the domain head trains on detached features: the label path is the same
    as training with no target at all (same seed, same source batches)."""
    a, b = _tiny_model(3), _tiny_model(3)
    kw = dict(mode="source_only", epochs=1, steps_per_epoch=6, batch_size=32, lr=0.05, seed=4)
    ha = lk.train_dann(a, toy["src"], toy["tgt"], **kw)
    hb = lk.train_dann(b, toy["src"], None, **kw)
    for name in ("features", "classifier"):
        for pa, pb in zip(getattr(a, name).parameters(), getattr(b, name).parameters()):
            assert torch.allclose(pa, pb, atol=1e-6), name
    assert not torch.allclose(a.domain_classifier[0].weight, b.domain_classifier[0].weight)
    assert ha.domain_loss and not hb.domain_loss and not hb.domain_acc


@pytest.mark.parametrize("mode, lam", [("fixed", 0.7), ("source_only", 0.0)])
def test_one_training_step_matches_the_hand_computed_update(mode: str, lam: float):
    """One full-batch SGD step (no momentum, constant rate): features move along
    dLy/dtheta_f - lambda dLd/dtheta_f, the label predictor along dLy, the domain classifier along dLd."""
    src, tgt = _toy(16, shift=False, seed=5), _toy(16, shift=True, seed=6)
    model, ref = _tiny_model(7), _tiny_model(7)
    lr = 0.1
    f = ref.features(torch.cat([src.images, tgt.images]))
    label_loss = nn.functional.cross_entropy(ref.classifier(f[:16]), src.labels)
    d = ref.domain_classifier(f).squeeze(1)
    domain_loss = nn.functional.binary_cross_entropy_with_logits(d, torch.cat([torch.zeros(16), torch.ones(16)]))
    feats = list(ref.features.parameters())
    heads = list(ref.classifier.parameters()) + list(ref.domain_classifier.parameters())
    g_label = torch.autograd.grad(label_loss, feats + heads, retain_graph=True, allow_unused=True)
    g_domain = torch.autograd.grad(domain_loss, feats + heads, allow_unused=True)
    expected = []
    for i, (p, gl, gd) in enumerate(zip(feats + heads, g_label, g_domain)):
        gl = torch.zeros_like(p) if gl is None else gl
        gd = torch.zeros_like(p) if gd is None else gd
        grad = gl - lam * gd if i < len(feats) else gl + gd
        expected.append(p.detach() - lr * grad)
    lk.train_dann(model, src, tgt, mode=mode, lambda_max=lam if mode == "fixed" else 1.0, epochs=1,
                  steps_per_epoch=1, batch_size=16, lr=lr, momentum=0.0, schedule_lr=False)
    got = list(model.features.parameters()) + list(model.classifier.parameters()) + list(model.domain_classifier.parameters())
    for p, e in zip(got, expected):
        assert torch.allclose(p, e, atol=1e-6)
    assert not torch.allclose(got[0], feats[0]), "the step moved the features"


def test_history_last_explains_missing_values(toy):
    h = lk.train_dann(_tiny_model(), toy["src"], None, mode="source_only", epochs=1, steps_per_epoch=2)
    assert h.last("label_loss") > 0
    with pytest.raises(ValueError, match="no target_acc values"):
        h.last("target_acc")
    with pytest.raises(ValueError, match="no curve 'accuracy'"):
        h.last("accuracy")


def test_train_dann_validates(toy):
    m = _tiny_model()
    with pytest.raises(ValueError, match="mode must be one of"):
        lk.train_dann(m, toy["src"], toy["tgt"], mode="adabn")
    with pytest.raises(ValueError, match="needs unlabelled target"):
        lk.train_dann(m, toy["src"], None, mode="dann")
    with pytest.raises(ValueError, match="same \\[C, H, W\\]"):
        lk.train_dann(m, toy["src"], torch.rand(4, 3, 8, 8))
    with pytest.raises(ValueError, match="source needs labels"):
        lk.train_dann(m, toy["src"].images, toy["tgt"])
    with pytest.raises(ValueError, match="epochs"):
        lk.train_dann(m, toy["src"], toy["tgt"], epochs=-1)
    with pytest.raises(ValueError, match="optimizer"):
        lk.train_dann(m, toy["src"], toy["tgt"], optimizer="rmsprop")
    with pytest.raises(TypeError, match="DANN-like"):
        lk.train_dann(nn.Linear(2, 2), toy["src"], toy["tgt"])
    with pytest.raises(TypeError, match="target must be"):
        lk.train_dann(m, toy["src"], [1, 2, 3])


# --------------------------------------------------------------------------- domain accuracy, pseudo-labels
class _Fixed(nn.Module):
    """features = the flattened image; domain logit = sum of the features - 0.5; logits = the image."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Flatten()
        self.classifier = nn.Identity()
        self.domain_classifier = nn.Linear(3, 1)
        with torch.no_grad():
            self.domain_classifier.weight.fill_(1.0)
            self.domain_classifier.bias.fill_(-0.5)

    def forward(self, x):
        return self.classifier(self.features(x))


def test_domain_accuracy_by_hand():
    model = _Fixed().train()
    source = torch.zeros(4, 1, 1, 3)          # logit -0.5: all called "source" (correct)
    target = torch.zeros(4, 1, 1, 3)
    target[:3] = 1.0                          # logit 2.5 for 3 of 4: 0.75 correct
    assert lk.domain_accuracy(model, source, target) == pytest.approx(0.5 * (1.0 + 0.75))
    assert model.training, "mode restored"


def test_pseudo_label_by_hand():
    model = _Fixed()
    logits = torch.tensor([[math.log(0.95), math.log(0.025), math.log(0.025)],   # class 0, p = 0.95
                           [math.log(0.2), math.log(0.5), math.log(0.3)],        # class 1, p = 0.5
                           [0.0, 0.0, math.log(18.0)]])                          # class 2, p = 0.9
    labels, conf, keep = lk.pseudo_label(model, logits.view(3, 1, 1, 3), threshold=0.9)
    assert labels.tolist() == [0, 1, 2]
    assert torch.allclose(conf, torch.tensor([0.95, 0.5, 0.9]), atol=1e-6)
    assert keep.tolist() == [True, False, True]
    with pytest.raises(ValueError, match="threshold"):
        lk.pseudo_label(model, logits.view(3, 1, 1, 3), threshold=1.5)


def test_self_train_reports_each_round(toy):
    model = _tiny_model(2)
    lk.train_dann(model, toy["src"], toy["tgt"], mode="dann", epochs=2, steps_per_epoch=20, batch_size=32, lr=0.05)
    rows = lk.self_train(model, toy["src"], toy["tgt"], rounds=2, threshold=0.8, target_val=toy["tgt_val"],
                         epochs=1, steps_per_epoch=10, batch_size=32, lr=0.01)
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert 0.0 <= r["selected"] <= 1.0 and 0.0 <= r["target_acc"] <= 1.0
        if r["selected"] > 0:
            assert 0.0 <= r["pseudo_label_acc"] <= 1.0
    with pytest.raises(ValueError, match="rounds"):
        lk.self_train(model, toy["src"], toy["tgt"], rounds=0)


def test_non_finite_loss_stops_training_and_keeps_the_last_weights(capsys):
    src = _toy(16, shift=False, seed=8)
    bad = lk.ImageSet(src.images.clone(), src.labels, src.classes)
    bad.images[3] = float("nan")  # every full batch holds it: the first loss is NaN
    model = _tiny_model(9)
    before = [p.detach().clone() for p in model.parameters()]
    h = lk.train_dann(model, bad, _toy(16, shift=True, seed=9), mode="fixed", epochs=2, steps_per_epoch=3,
                      batch_size=16, source_val=src)
    assert h.diverged_step == 0 and h.steps == [0, 0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert len(h.source_acc) == 2 and math.isnan(h.label_loss[0])
    assert "diverged" in capsys.readouterr().out
