"""Device choice, transfers of nested structures, CPU autocast and the environment report."""

from __future__ import annotations

import functools
from collections import namedtuple
from typing import Any

import pytest
import torch

from labkit import device as device_mod
from labkit.device import autocast, device_report, get_device, to_device


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch):
    monkeypatch.delenv("LABKIT_DEVICE", raising=False)


def _fake(monkeypatch, owner: Any, name: str, value: Any) -> None:
    """Replace ``owner.name`` by a function returning ``value``; ``functools.wraps`` keeps the
    ``__wrapped__`` attribute that torch._dynamo reads from ``torch.cuda.is_available`` on import."""
    orig = getattr(owner, name)

    @functools.wraps(orig)
    def fake(*args: Any, **kwargs: Any) -> Any:
        return value

    monkeypatch.setattr(owner, name, fake)


def _no_accelerators(monkeypatch) -> None:
    _fake(monkeypatch, torch.cuda, "is_available", False)
    _fake(monkeypatch, torch.backends.mps, "is_available", False)


def test_cpu_and_device_objects() -> None:
    assert get_device("cpu") == torch.device("cpu")
    assert get_device("cpu:0") == torch.device("cpu:0")
    d = torch.device("cpu")
    assert get_device(d) is d


def test_auto_falls_back_to_cpu_without_accelerators(monkeypatch) -> None:
    _no_accelerators(monkeypatch)
    assert get_device() == torch.device("cpu")
    assert get_device(None) == torch.device("cpu")
    assert get_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch) -> None:
    _fake(monkeypatch, torch.cuda, "is_available", True)
    assert get_device() == torch.device("cuda")
    _fake(monkeypatch, torch.cuda, "is_available", False)
    _fake(monkeypatch, torch.backends.mps, "is_available", True)
    assert get_device() == torch.device("mps")


@pytest.mark.parametrize("name", ["gpu", "CPU", "", "auto:1", "cuda:x", "tpu:0", 3])
def test_bad_names_raise_listing_the_valid_ones(name) -> None:
    with pytest.raises(ValueError, match=r"device must be one of \('auto', 'cpu', 'cuda', 'mps'\)"):
        get_device(name)


def test_unavailable_accelerators_raise_saying_what_to_use(monkeypatch) -> None:
    _no_accelerators(monkeypatch)
    for name in ("cuda", "cuda:0", "mps"):
        with pytest.raises(ValueError, match=r"is not available; use 'auto' or 'cpu'"):
            get_device(name)


def test_cuda_index_beyond_the_devices_raises(monkeypatch) -> None:
    _fake(monkeypatch, torch.cuda, "is_available", True)
    _fake(monkeypatch, torch.cuda, "device_count", 1)
    assert get_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"only 1 CUDA device"):
        get_device("cuda:3")


def test_labkit_device_overrides_auto_only(monkeypatch) -> None:
    _fake(monkeypatch, torch.cuda, "is_available", True)
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    assert get_device("auto") == torch.device("cpu")
    assert get_device("cuda") == torch.device("cuda")  # an explicit choice wins over the variable


def test_bad_labkit_device_is_named_in_the_error(monkeypatch) -> None:
    monkeypatch.setenv("LABKIT_DEVICE", "gpu")
    with pytest.raises(ValueError, match=r"LABKIT_DEVICE must be one of .* got 'gpu'"):
        get_device()
    assert get_device("cpu") == torch.device("cpu")


def test_to_device_moves_nested_structures_and_keeps_their_types() -> None:
    Pair = namedtuple("Pair", "x y")
    a, b, c = torch.ones(2), torch.zeros(1, dtype=torch.int64), torch.full((3,), 2.0)
    obj = {"a": a, "list": [b, ("text", 3)], "pair": Pair(c, None)}
    out = to_device(obj, "cpu")
    assert set(out) == {"a", "list", "pair"}
    assert isinstance(out["list"], list) and isinstance(out["list"][1], tuple)
    assert out["list"][1] == ("text", 3)
    assert isinstance(out["pair"], Pair) and out["pair"].y is None
    assert torch.equal(out["a"], a) and torch.equal(out["list"][0], b) and torch.equal(out["pair"].x, c)
    assert out["a"].device.type == "cpu"
    assert to_device(5, "cpu") == 5


def test_to_device_on_meta_really_moves_and_leaves_the_input_alone() -> None:
    """The 'meta' device (shapes only) makes a real move observable on a CPU-only machine."""
    x = torch.arange(3.0)
    moved = to_device({"x": [x]}, torch.device("meta"))
    assert moved["x"][0].device.type == "meta" and moved["x"][0].shape == (3,)
    assert x.device.type == "cpu" and x.tolist() == [0.0, 1.0, 2.0]
    m = torch.nn.Linear(2, 1)
    assert to_device(m, "meta") is m and m.weight.device.type == "meta"


def test_to_device_non_blocking_only_for_cuda(monkeypatch) -> None:
    seen = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("non_blocking"))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    to_device([torch.ones(1)], "cpu")
    to_device([torch.ones(1)], "cpu", non_blocking=True)
    assert seen == [False, True]


def test_autocast_is_a_no_op_on_cpu() -> None:
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast("cpu"):
        y = lin(x)
        z = x @ x.T
    assert y.dtype == torch.float32 and z.dtype == torch.float32
    assert torch.equal(y, lin(x))
    with autocast(torch.device("cpu"), enabled=False):
        assert lin(x).dtype == torch.float32


def test_autocast_on_cuda_picks_bf16_or_fp16(monkeypatch) -> None:
    """Without a GPU, check the choice of dtype through a fake torch.autocast."""
    calls = []
    monkeypatch.setattr(torch, "autocast", lambda device_type, dtype: calls.append((device_type, dtype)) or "ctx")
    _fake(monkeypatch, torch.cuda, "is_bf16_supported", True)
    assert autocast("cuda") == "ctx"
    _fake(monkeypatch, torch.cuda, "is_bf16_supported", False)
    autocast("cuda")
    assert calls == [("cuda", torch.bfloat16), ("cuda", torch.float16)]
    assert autocast("cuda", enabled=False) != "ctx"


def test_device_report_keys(monkeypatch) -> None:
    _no_accelerators(monkeypatch)
    info = device_report()
    assert set(info) == {"python", "torch", "torchvision", "numpy", "device", "threads"}
    assert info["torch"] == torch.__version__
    assert info["device"] == "cpu"
    assert info["threads"] == str(torch.get_num_threads())
    assert all(isinstance(v, str) for v in info.values())


def test_device_report_names_the_gpu(monkeypatch) -> None:
    _fake(monkeypatch, torch.cuda, "is_available", True)
    _fake(monkeypatch, torch.cuda, "get_device_name", "Fake GPU")
    assert device_report()["gpu"] == "Fake GPU"


def test_no_module_level_device_global() -> None:
    assert not any(isinstance(v, torch.device) for v in vars(device_mod).values())


# --- the one rule for device=None ----------------------------------------------------------------

def test_resolve_device_rule(monkeypatch) -> None:
    """Trainers go to the best device, everything else stays with the model; explicit choices win."""
    from labkit.device import model_device, resolve_device

    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(device_mod, "get_device", lambda prefer="auto": torch.device("meta") if prefer in (None, "auto")
                        else torch.device(prefer))  # pretend the best device is another one than the model's
    assert resolve_device(None, model, trains=True) == torch.device("meta")
    assert resolve_device(None, model, trains=False) == torch.device("cpu")
    assert resolve_device("cpu", model, trains=True) == torch.device("cpu")
    assert resolve_device(torch.device("cpu"), model, trains=True) == torch.device("cpu")
    with pytest.raises(TypeError, match="device must be None, a name"):
        resolve_device(0, model, trains=False)
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")  # no tensors: the CPU
    buffered = torch.nn.BatchNorm2d(2, affine=False)
    buffered.to("meta")
    assert model_device(buffered) == torch.device("meta")  # a buffer tells where it lives
