"""labkit.hooks: layer lookup, capture, ReLU backward rules, state preservation (hand-checked)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labkit as lk
from labkit.hooks import capture, count_hooks, eval_mode, get_layer, layer_names, preserve_state, relu_rule


def _fn_stack() -> int:
    return torch._C._len_torch_function_stack()


def tiny_mlp(*, inplace: bool = False) -> nn.Sequential:
    """x -> W1 x -> relu -> w2 . h with hand-picked weights (no biases)."""
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(inplace=inplace), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        net[2].weight.copy_(torch.tensor([[2.0, -3.0]]))
    return net


class TwiceReLU(nn.Module):
    """One ReLU module applied twice: y = w2 . relu(W1 relu(x)) (like torchvision's BasicBlock)."""

    def __init__(self, *, inplace: bool = False) -> None:
        super().__init__()
        self.lin1 = nn.Linear(2, 2, bias=False)
        self.lin2 = nn.Linear(2, 1, bias=False)
        self.relu = nn.ReLU(inplace=inplace)
        with torch.no_grad():
            self.lin1.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 2.0]]))
            self.lin2.weight.copy_(torch.tensor([[1.0, -1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.relu(self.lin1(self.relu(x))))


class FunctionalReLU(nn.Module):
    def __init__(self, *, with_module: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.relu = nn.ReLU() if with_module else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x)
        if self.relu is not None:
            h = self.relu(h)
        return self.lin(h)


def _input_grad(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    model(x).sum().backward()
    return x.grad


# --------------------------------------------------------------------------------------------- names


def test_get_layer_by_dotted_name_and_module() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), nn.Conv2d(2, 2, 1)))
    assert get_layer(net, "1.1") is net[1][1]
    assert get_layer(net, "0") is net[0]
    assert get_layer(net, net[1][0]) is net[1][0]
    assert lk.get_layer is get_layer  # public through the lazy namespace


def test_get_layer_unknown_name_lists_valid_names() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with pytest.raises(ValueError, match=r"unknown layer 'features.3'.*'0', '1'"):
        get_layer(net, "features.3")
    with pytest.raises(ValueError, match="unknown layer ''"):
        get_layer(net, "")


def test_get_layer_abbreviates_long_lists() -> None:
    net = nn.Sequential(*[nn.Identity() for _ in range(200)])
    with pytest.raises(ValueError) as info:
        get_layer(net, "nope")
    msg = str(info.value)
    assert "'0'" in msg and "'199'" in msg and "more" in msg and "'100'" not in msg


def test_get_layer_rejects_foreign_module_and_bad_types() -> None:
    net = nn.Sequential(nn.ReLU())
    with pytest.raises(ValueError, match="not a submodule"):
        get_layer(net, nn.ReLU())
    with pytest.raises(TypeError, match="name must be"):
        get_layer(net, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model must be"):
        get_layer("net", "0")  # type: ignore[arg-type]


def test_layer_names_with_kind() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)))
    assert layer_names(net) == ["0", "1", "2", "2.0", "2.1"]
    assert layer_names(net, kind=nn.Conv2d) == ["0", "2.0"]
    assert layer_names(net, kind=(nn.ReLU, nn.BatchNorm2d)) == ["1", "2.1"]
    with pytest.raises(TypeError, match="kind"):
        layer_names(net, kind="conv")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- capture


def test_capture_activation_and_gradient_by_hand() -> None:
    net = tiny_mlp()
    x = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    with capture(net, ["0", "1"], gradients=True) as cap:
        net(x).sum().backward()
    torch.testing.assert_close(cap.activations["0"], x)  # W1 = identity
    torch.testing.assert_close(cap.activations["1"], x.clamp(min=0))
    # d(sum y)/d relu-output = w2 for every row; d/d(linear output) = w2 * [x > 0]
    torch.testing.assert_close(cap.gradients["1"], torch.tensor([[2.0, -3.0], [2.0, -3.0]]))
    torch.testing.assert_close(cap.gradients["0"], torch.tensor([[2.0, 0.0], [2.0, -3.0]]))
    assert cap.calls == {"0": 1, "1": 1}
    assert count_hooks(net) == 0


def test_capture_survives_inplace_relu_after_layer() -> None:
    """The captured conv output keeps its negative values although an in-place ReLU follows."""
    net = tiny_mlp(inplace=True)
    x = torch.tensor([[1.0, -2.0]])
    with capture(net, "0", gradients=True) as cap:
        y = net(x)
        y.sum().backward()
    torch.testing.assert_close(cap.activations["0"], x)  # not overwritten by relu_
    torch.testing.assert_close(cap.gradients["0"], torch.tensor([[2.0, 0.0]]))
    torch.testing.assert_close(y, torch.tensor([[2.0]]))  # the forward result is unchanged


def test_capture_reused_module_keeps_last_call() -> None:
    net = TwiceReLU()
    x = torch.tensor([[2.0, 1.0]])  # relu(x) = x; lin1 -> [1, 0]; relu -> [1, 0]; y = 1
    with capture(net, "relu", gradients=True) as cap:
        net(x).sum().backward()
    assert cap.calls["relu"] == 2
    torch.testing.assert_close(cap.activations["relu"], torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(cap.gradients["relu"], torch.tensor([[1.0, -1.0]]))  # = w2, the second output


def test_capture_detach_and_require_grad() -> None:
    net = tiny_mlp()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.tensor([[1.0, 2.0]])
    with capture(net, "1", detach=True) as cap:
        net(x)
    assert not cap.activations["1"].requires_grad
    with capture(net, "1", require_grad=True) as cap:
        y = net(x)
    (g,) = torch.autograd.grad(y.sum(), cap.activations["1"])
    torch.testing.assert_close(g, torch.tensor([[2.0, -3.0]]))


def test_capture_removes_hooks_on_error_and_validates() -> None:
    net = tiny_mlp()
    with pytest.raises(RuntimeError, match="boom"):
        with capture(net, ["0", "2"], gradients=True):
            net(torch.ones(1, 2, requires_grad=True))
            raise RuntimeError("boom")
    assert count_hooks(net) == 0
    with pytest.raises(ValueError, match="unknown layer"):
        with capture(net, "9"):
            pass
    with pytest.raises(ValueError, match="duplicates"):
        with capture(net, ["0", net[0]]):
            pass
    with pytest.raises(ValueError, match="non-empty"):
        with capture(net, []):
            pass


def test_capture_rejects_non_tensor_outputs() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    net = nn.Sequential(Pair())
    with pytest.raises(TypeError, match="returned tuple"):
        with capture(net, "0"):
            net(torch.ones(1, 2))
    assert count_hooks(net) == 0


# --------------------------------------------------------------------------------------------- relu rules

# tiny_mlp at x = [1, -2]: h = x, relu mask [1, 0], w2 = [2, -3].
#   gradient:  d/dx = w2 * mask               = [2, 0]
#   guided:    relu(w2) * mask                = [2, 0]
#   deconvnet: relu(w2)                       = [2, 0]
# at x = [-1, 2]: mask [0, 1]:
#   gradient [0, -3]; guided [0, 0]; deconvnet [2, 0]
CASES = [
    ([1.0, -2.0], {"gradient": [2.0, 0.0], "guided": [2.0, 0.0], "deconvnet": [2.0, 0.0]}),
    ([-1.0, 2.0], {"gradient": [0.0, -3.0], "guided": [0.0, 0.0], "deconvnet": [2.0, 0.0]}),
]


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("rule", ["gradient", "guided", "deconvnet"])
def test_relu_rules_by_hand(rule: str, inplace: bool) -> None:
    net = tiny_mlp(inplace=inplace)
    for x, expected in CASES:
        with relu_rule(net, rule):
            g = _input_grad(net, torch.tensor([x]))
        torch.testing.assert_close(g, torch.tensor([expected[rule]]))
    assert net[1].inplace is inplace and count_hooks(net) == 0 and _fn_stack() == 0


@pytest.mark.parametrize("inplace", [False, True])
def test_relu_rules_on_a_reused_relu(inplace: bool) -> None:
    """TwiceReLU at x = [1, -1]: z = relu(x) = [1, 0]; u = W1 z = [1, -1]; relu(u) = [1, 0]; y = 1.

    gradient:  dy/du = w2 * [u>0] = [1, 0]; dy/dz = W1^T [1, 0] = [1, -1]; dy/dx = [1, 0] * [1, -1] = [1, 0]
    guided:    dy/du = relu([1, -1]) * [1, 0] = [1, 0]; dy/dz = [1, -1]; dy/dx = relu([1, -1]) * [1, 0] = [1, 0]
    deconvnet: dy/du = relu(w2) = [1, 0]; dy/dz = [1, -1]; dy/dx = relu([1, -1]) = [1, 0]
    x = [-1, 1]: z = [0, 1]; u = [-1, 2]; relu(u) = [0, 2]; y = -2.
    gradient:  dy/du = [0, -1]; dy/dz = W1^T [0, -1] = [1, -2]; dy/dx = [0, -2]
    guided:    dy/du = relu([1, -1]) * [0, 1] = [0, 0] -> dy/dx = [0, 0]
    deconvnet: dy/du = [1, 0]; dy/dz = [1, -1]; dy/dx = relu([1, -1]) = [1, 0]
    """
    expected = {
        (1.0, -1.0): {"gradient": [1.0, 0.0], "guided": [1.0, 0.0], "deconvnet": [1.0, 0.0]},
        (-1.0, 1.0): {"gradient": [0.0, -2.0], "guided": [0.0, 0.0], "deconvnet": [1.0, 0.0]},
    }
    net = TwiceReLU(inplace=inplace)
    for x, rules in expected.items():
        for rule, want in rules.items():
            with relu_rule(net, rule):
                g = _input_grad(net, torch.tensor([x]))
            torch.testing.assert_close(g, torch.tensor([want]), msg=f"{rule} at {x}")
    assert net.relu.inplace is inplace and count_hooks(net) == 0


@pytest.mark.parametrize("inplace", [False, True])
def test_relu6_rules_by_hand(inplace: bool) -> None:
    """y = w . relu6(x) with w = [1, -1, 1, 1, -1] at x = [2, 3, -1, 7, 8] (EfficientNet-Lite's ReLU6).

    gradient:  w * [0 < x < 6] = [1, -1, 0, 0, 0]
    guided:    relu(w) * [0 < x < 6] = [1, 0, 0, 0, 0]
    deconvnet: relu(w) = [1, 0, 1, 1, 0] (the mask ignored); the forward still clamps to [0, 6]
    """
    net = nn.Sequential(nn.ReLU6(inplace=inplace), nn.Linear(5, 1, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, -1.0, 1.0, 1.0, -1.0]]))
    x = torch.tensor([[2.0, 3.0, -1.0, 7.0, 8.0]])
    expected = {"gradient": [1.0, -1.0, 0.0, 0.0, 0.0], "guided": [1.0, 0.0, 0.0, 0.0, 0.0],
                "deconvnet": [1.0, 0.0, 1.0, 1.0, 0.0]}
    for rule, want in expected.items():
        with relu_rule(net, rule):
            torch.testing.assert_close(net(x), torch.tensor([[2.0 - 3.0 + 0.0 + 6.0 - 6.0]]), msg=rule)
            g = _input_grad(net, x)
        torch.testing.assert_close(g, torch.tensor(want)[None], msg=rule)
    assert net[0].inplace is inplace and count_hooks(net) == 0


def test_relu_rule_gradient_equals_autograd_on_a_cnn() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten())
    x = torch.randn(2, 3, 8, 8)
    plain = _input_grad(net, x)
    with relu_rule(net, "gradient"):
        ruled = _input_grad(net, x)
    torch.testing.assert_close(ruled, plain)
    with relu_rule(net, "guided"):
        guided = _input_grad(net, x)
    assert not torch.allclose(guided, plain)  # the rule really changed something


def test_relu_rule_rejects_functional_relu_and_bad_rules() -> None:
    with pytest.raises(ValueError, match="no nn.ReLU or nn.ReLU6 module"):
        with relu_rule(FunctionalReLU(with_module=False), "guided"):
            pass
    mixed = FunctionalReLU(with_module=True)
    with pytest.raises(RuntimeError, match="functionally"):
        with relu_rule(mixed, "guided"):
            mixed(torch.ones(1, 2))
    assert count_hooks(mixed) == 0 and _fn_stack() == 0
    net = tiny_mlp()
    with relu_rule(net, "guided"):  # relu outside the model's forward is not the model's business
        torch.testing.assert_close(torch.relu(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))
        net(torch.ones(1, 2))
    with pytest.raises(ValueError, match="rule must be one of"):
        with relu_rule(tiny_mlp(), "zeiler"):
            pass


def test_relu_rule_restores_on_error() -> None:
    net = tiny_mlp(inplace=True)
    with pytest.raises(KeyError):
        with relu_rule(net, "deconvnet"):
            net(torch.ones(1, 2))
            raise KeyError("x")
    assert net[1].inplace is True and count_hooks(net) == 0 and _fn_stack() == 0
    g = _input_grad(net, torch.tensor([[-1.0, 2.0]]))  # plain gradient again
    torch.testing.assert_close(g, torch.tensor([[0.0, -3.0]]))


# --------------------------------------------------------------------------------------------- state


def test_preserve_state_restores_modes_and_flags_on_error() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.Linear(2, 1))
    net.train()
    net[1].eval()
    net[2].weight.requires_grad_(False)
    with pytest.raises(ZeroDivisionError):
        with preserve_state(net):
            net.eval()
            for p in net.parameters():
                p.requires_grad_(not p.requires_grad)
            1 / 0  # noqa: B018
    assert [m.training for m in net.modules()] == [True, True, False, True]
    assert [p.requires_grad for p in net.parameters()] == [True, True, False, True]


def test_count_hooks_counts_every_kind() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    assert count_hooks(net) == 0
    handles = [
        net.register_forward_hook(lambda *a: None),
        net[0].register_forward_pre_hook(lambda *a: None),
        net[1].register_full_backward_hook(lambda *a: None),
        net[1].register_full_backward_pre_hook(lambda *a: None),
        net[0].register_forward_hook(lambda *a, **k: None, with_kwargs=True),
    ]
    assert count_hooks(net) == 5
    for h in handles:
        h.remove()
    assert count_hooks(net) == 0


def _mixed_model() -> nn.Module:
    """A training model whose BatchNorm is frozen in eval mode, with one frozen parameter."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    net.train()
    net[1].eval()
    net[0].bias.requires_grad_(False)
    return net


def _state(net: nn.Module) -> list:
    return [m.training for m in net.modules()] + [p.requires_grad for p in net.parameters()]


@pytest.mark.parametrize("freeze", [False, True])
def test_eval_mode_restores_every_submodule(freeze: bool) -> None:
    net = _mixed_model()
    before = _state(net)
    with eval_mode(net, freeze=freeze):
        assert not any(m.training for m in net.modules())
        assert all(not p.requires_grad for p in net.parameters()) == freeze
    assert _state(net) == before
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError("boom")
    assert _state(net) == before
    with pytest.raises(TypeError, match="eval_mode"):
        with eval_mode("net"):
            pass


def test_predict_and_evaluate_keep_a_frozen_batchnorm_frozen() -> None:
    """model.train(was_training) would set the eval-mode BatchNorm back to training."""
    import labkit as lk

    net = _mixed_model()
    before = _state(net)
    x, y = torch.rand(5, 3, 6, 6), torch.tensor([0, 1, 2, 0, 1])
    lk.predict(net, x)
    assert _state(net) == before
    lk.evaluate(net, (x, y))
    assert _state(net) == before
