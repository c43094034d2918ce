"""The one hook mechanism of labkit: layer lookup, activation/gradient capture, ReLU rules.

Every explainer of labkit (``attribution``, ``deconv``, ``feature_vis``, ``adversarial``,
``embeddings``, ``metrics``) reaches inside a network through the functions below, and
every hook they install is removed in a ``finally`` block, so a model leaves a call exactly
as it entered it (mode, ``requires_grad`` flags, hooks), also when the call raises.

- :func:`get_layer` / :func:`layer_names`: modules by dotted name (``"features.3"``).
- :func:`capture`: forward activations and the gradient reaching a layer's output
  (a tensor hook on the output, as pytorch-grad-cam does, not a module backward hook).
- :func:`relu_rule`: the ReLU backward rules of Springenberg et al. 2015, "Striving for
  simplicity: the all convolutional net" (gradient, guided backpropagation, deconvnet).
- :func:`preserve_state`, :func:`count_hooks`: state restoration and leak checks.

Used in labs 02-09 (through the explainers) and directly in labs 05 and 06.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ._checks import check_model

__all__ = ["get_layer", "layer_names", "capture", "Capture", "relu_rule", "preserve_state", "eval_mode", "count_hooks"]

_MAX_LISTED = 40  # names shown in an "unknown layer" error before abbreviating


def _format_names(names: Sequence[str]) -> str:
    if len(names) <= _MAX_LISTED:
        return ", ".join(repr(n) for n in names)
    head = ", ".join(repr(n) for n in names[: _MAX_LISTED - 5])
    tail = ", ".join(repr(n) for n in names[-5:])
    return f"{head}, ... ({len(names) - _MAX_LISTED} more) ..., {tail}"


def layer_names(model: nn.Module, *, kind: type | tuple[type, ...] | None = None) -> list[str]:
    """Dotted names of the submodules of ``model`` (the model itself excluded), in order.

    ``kind`` keeps only modules of that type, e.g. ``layer_names(model, kind=nn.Conv2d)``.
    Used in labs 05 and 06 (Grad-CAM per layer).
    """
    check_model(model, "layer_names")
    if kind is not None:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not kinds or not all(isinstance(k, type) for k in kinds):
            raise TypeError(f"layer_names: kind must be a type or a tuple of types (e.g. nn.Conv2d), got {kind!r}")
    return [name for name, mod in model.named_modules() if name and (kind is None or isinstance(mod, kind))]


def get_layer(model: nn.Module, name: str | nn.Module) -> nn.Module:
    """The submodule of ``model`` with dotted name ``name`` (``"features.3"``, ``"layer4.1.conv2"``).

    A module that is a submodule of ``model`` is returned as is. An unknown name raises
    ``ValueError`` listing the valid names. Used in labs 05 and 06.
    """
    check_model(model, "get_layer")
    if isinstance(name, nn.Module):
        if any(m is name for m in model.modules()):
            return name
        raise ValueError(
            f"get_layer: the module {type(name).__name__} passed as layer is not a submodule of the model; "
            "pass a dotted name instead (see lk.layer_names(model))"
        )
    if not isinstance(name, str):
        raise TypeError(f"get_layer: name must be a dotted layer name (str) or a submodule, got {type(name).__name__}")
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    valid = [n for n in modules if n]
    raise ValueError(f"get_layer: unknown layer {name!r}; valid names are: {_format_names(valid)}")


def _layer_key(model: nn.Module, layer: str | nn.Module) -> str:
    """Dotted name of ``layer`` (used as the key of :class:`Capture` dictionaries)."""
    if isinstance(layer, nn.Module):
        get_layer(model, layer)  # validates membership
        for n, m in model.named_modules():
            if m is layer:
                return n
    get_layer(model, layer)
    return layer  # type: ignore[return-value]


@dataclass
class Capture:
    """What :func:`capture` records: layer name -> tensor.

    ``activations[name]`` is the layer's output of its LAST call in the forward pass (a layer
    applied twice, like the ReLU of a torchvision ResNet block, keeps the second output);
    it is the live tensor of the graph (detach it to keep it), protected from later in-place
    operations. ``gradients[name]`` is d(whatever was back-propagated)/d(that output).
    ``calls[name]`` counts the calls of the layer.
    """

    activations: dict[str, Tensor] = field(default_factory=dict)
    gradients: dict[str, Tensor] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def capture(
    model: nn.Module,
    layers: str | nn.Module | Sequence[str | nn.Module],
    *,
    gradients: bool = False,
    detach: bool = False,
    require_grad: bool = False,
) -> Iterator[Capture]:
    """Record the outputs (and, with ``gradients=True``, their gradients) of ``layers``.

    ``with lk.capture(model, "features.3", gradients=True) as cap: model(x)[:, 5].sum().backward()``
    then ``cap.activations["features.3"]`` and ``cap.gradients["features.3"]``.

    Gradients come from a tensor hook on the layer output (as in pytorch-grad-cam), so they are
    exactly d(back-propagated quantity)/d(output). The recorded output is handed on as a copy,
    so in-place operations after the layer (``nn.ReLU(inplace=True)``, ResNet's ``out += identity``)
    do not alter what was captured. ``detach=True`` stores detached outputs (feature
    extraction); ``require_grad=True`` turns an output that does not require grad into a leaf
    that does (Grad-CAM on a frozen network). All hooks are removed on exit, also on errors.
    Used in labs 01, 05, 06, 08, 09 (directly and through the explainers).
    """
    check_model(model, "capture")
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if not isinstance(layers, Sequence) or len(layers) == 0:
        raise ValueError(f"capture: layers must be a dotted name or a non-empty sequence of names, got {layers!r}")
    keys = [_layer_key(model, layer) for layer in layers]
    if len(set(keys)) != len(keys):
        raise ValueError(f"capture: layers contains duplicates: {keys}")
    record = Capture()
    handles: list[Any] = []
    tensor_handles: dict[str, Any] = {}

    def make_hook(key: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"capture: layer {key!r} returned {type(output).__name__}, not a tensor; capture a layer "
                    "that returns a single tensor (e.g. one of its submodules)"
                )
            record.calls[key] = record.calls.get(key, 0) + 1
            if detach:
                record.activations[key] = output.detach().clone()
                return None
            if require_grad and not output.requires_grad and torch.is_grad_enabled():
                output = output.detach().requires_grad_(True)
            record.activations[key] = output
            if gradients and output.requires_grad:
                old = tensor_handles.pop(key, None)
                if old is not None:  # a layer called again: keep the gradient of its last output
                    old.remove()
                    record.gradients.pop(key, None)

                def grad_hook(grad: Tensor) -> None:
                    record.gradients[key] = grad

                tensor_handles[key] = output.register_hook(grad_hook)
            # hand a copy downstream, so later in-place ops cannot overwrite the recorded tensor
            return output.clone()

        return hook

    try:
        for key in keys:
            handles.append(get_layer(model, key).register_forward_hook(make_hook(key)))
        yield record
    finally:
        for h in handles:
            h.remove()
        for h in tensor_handles.values():
            h.remove()


# ---------------------------------------------------------------------------------------------
# ReLU backward rules (Springenberg et al. 2015)

_RULES = ("gradient", "guided", "deconvnet")


class _PositiveGrad(torch.autograd.Function):
    """Identity forward; backward keeps only positive gradients: g_in = relu(g_out).

    Placed after a ReLU, whose own backward then applies the forward mask [x > 0], it gives
    guided backpropagation: g_in = relu(g_out) * [x > 0] (Springenberg et al. 2015, Fig. 1).
    """

    @staticmethod
    def forward(ctx: Any, out: Tensor) -> Tensor:
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.clamp(min=0)


class _DeconvReLU(torch.autograd.Function):
    """relu(x) (or relu6(x) with ``upper=6``) forward; deconvnet backward g_in = relu(g_out), the
    forward mask ignored."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, upper: float | None = None) -> Tensor:
        return x.clamp(min=0, max=upper)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad.clamp(min=0), None


_FUNCTIONAL_RELUS = {
    torch.relu,
    torch.relu_,
    torch.nn.functional.relu,
    torch.nn.functional.relu_,
    Tensor.relu,
    Tensor.relu_,
    torch.nn.functional.relu6,
}


class _FunctionalReluGuard(TorchFunctionMode):
    """Raises when the model's forward calls a relu outside an ``nn.ReLU`` module while a rule is active."""

    def __init__(self) -> None:
        super().__init__()
        self.in_model = 0  # depth of the model's own forward (code around it may use relu freely)
        self.inside = 0  # depth inside an nn.ReLU module

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func in _FUNCTIONAL_RELUS and self.in_model > 0 and self.inside == 0:
            raise RuntimeError(
                "relu_rule: the model calls relu functionally (torch.relu / F.relu / x.relu()), outside an "
                "nn.ReLU module, so the backward rule cannot be applied there and the map would be wrong; "
                "use nn.ReLU modules in the model"
            )
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def relu_rule(model: nn.Module, rule: str) -> Iterator[None]:
    """Inside the block, every ``nn.ReLU`` (and ``nn.ReLU6``) of ``model`` back-propagates with ``rule``.

    ``rule`` is ``"gradient"`` (the true gradient), ``"guided"`` (guided backpropagation) or
    ``"deconvnet"`` (Springenberg et al. 2015; Zeiler & Fergus 2014). A forward hook on each
    ReLU acts at every call, so a ReLU module applied several times per forward pass
    (torchvision's ResNet blocks) gets the rule each time. Guided: the output passes through an
    identity whose backward keeps positive gradients, then the ReLU's own backward applies the
    forward mask. Deconvnet: the output is replaced by a custom function of the ReLU *input*
    that ignores the mask. ``nn.ReLU6`` (MobileNet, EfficientNet-Lite) gets the same rules with its
    own mask: guided passes ``relu(g)`` where ``0 < x < 6``, deconvnet passes ``relu(g)``
    everywhere (the forward still clamps to ``[0, 6]``). In-place ReLUs (VGG) are switched to out-of-place for the block (an
    in-place ReLU overwrites its input, whose graph would still apply the mask) and switched
    back on exit. A relu called functionally (``F.relu``) by the model's forward inside the block
    raises ``RuntimeError`` instead of giving a silently wrong map (code outside the model's
    forward may use relu); a model without any ``nn.ReLU`` raises ``ValueError``. The rules live
    in the graph built by the forward pass, so the backward may run after the block.
    Used in labs 05, 06, 07 (guided backprop, deconvnet).
    """
    check_model(model, "relu_rule")
    if rule not in _RULES:
        raise ValueError(f"relu_rule: rule must be one of {_RULES}, got {rule!r}")
    relus = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    if not relus:
        raise ValueError(
            f"relu_rule: the model ({type(model).__name__}) has no nn.ReLU or nn.ReLU6 module, so the {rule!r} rule "
            "cannot be applied (a model calling torch.relu / F.relu functionally would silently get plain "
            "gradients); build it with nn.ReLU modules"
        )
    guard = _FunctionalReluGuard()

    def pre_hook(module: nn.Module, args: tuple) -> None:
        guard.inside += 1

    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        guard.inside -= 1
        if rule == "guided":  # relu's own backward masks, then keep the positive part
            return _PositiveGrad.apply(output)
        if rule == "deconvnet":  # a function of the input, bypassing relu's mask
            return _DeconvReLU.apply(args[0], 6.0 if isinstance(module, nn.ReLU6) else None)
        return None  # "gradient": the true gradient

    def enter_model(module: nn.Module, args: tuple) -> None:
        guard.in_model += 1

    def leave_model(module: nn.Module, args: tuple, output: Any) -> None:
        guard.in_model -= 1

    handles: list[Any] = []
    inplace = [(m, m.inplace) for m in relus]
    try:
        handles.append(model.register_forward_pre_hook(enter_model))
        handles.append(model.register_forward_hook(leave_model))
        for m in relus:
            m.inplace = False  # deconvnet needs the input intact; out-of-place is also safer on leaves
            handles.append(m.register_forward_pre_hook(pre_hook))
            handles.append(m.register_forward_hook(hook))
        with guard:
            yield
    finally:
        for h in handles:
            h.remove()
        for m, flag in inplace:
            m.inplace = flag


# ---------------------------------------------------------------------------------------------
# State


@contextlib.contextmanager
def preserve_state(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every submodule's ``training`` flag and every parameter's ``requires_grad`` on exit.

    ``with lk.preserve_state(model): model.eval(); ...`` -- also restored when the block raises.
    Used by every explainer of labkit.
    """
    check_model(model, "preserve_state")
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def eval_mode(model: nn.Module, *, freeze: bool = False) -> Iterator[nn.Module]:
    """``model.eval()`` for the block (and ``requires_grad=False`` on every parameter with
    ``freeze=True``); on exit every submodule's own mode and every parameter's flag are restored.

    ``model.train(was_training)`` is not a restore: it sets every submodule to the top-level mode,
    so a frozen, eval-mode BatchNorm inside a training model would come back training.
    Used by every function of labkit that evaluates or explains a model.
    """
    check_model(model, "eval_mode")
    with preserve_state(model):
        model.eval()
        if freeze:
            for p in model.parameters():
                p.requires_grad_(False)
        yield model


def count_hooks(model: nn.Module) -> int:
    """Number of forward, forward-pre, backward and backward-pre hooks on ``model`` and its submodules.

    The leak tests assert this is unchanged by every explainer call.
    """
    check_model(model, "count_hooks")
    total = 0
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            total += len(getattr(m, attr, {}) or {})
    return total
