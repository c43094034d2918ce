"""labkit._checks: the one argument-check mechanism (TypeError for a wrong type, ValueError for a
wrong value; the message names the function, the argument, the value and the fix)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from labkit._checks import check_choice, check_int, check_model, check_number, check_prob, check_tensor


def test_check_int_converts_and_names_everything() -> None:
    assert check_int(3, "epochs", "fit", low=0) == 3
    assert type(check_int(np.int64(4), "n", low=1)) is int
    assert check_int(None, "steps", allow_none=True) is None
    with pytest.raises(ValueError, match=r"^fit: epochs must be an int >= 0, got -1$"):
        check_int(-1, "epochs", "fit", low=0)
    with pytest.raises(TypeError, match=r"^fit: epochs must be an int >= 0, got float \(2.0\)$"):
        check_int(2.0, "epochs", "fit", low=0)
    with pytest.raises(TypeError, match=r"got bool \(True\)"):  # a bool is not a count
        check_int(True, "n", low=1)
    with pytest.raises(ValueError, match=r"^k must be an int in \[1, 3\], got 4; pick fewer$"):
        check_int(4, "k", low=1, high=3, hint="; pick fewer")
    with pytest.raises(TypeError, match="must be an int >= 1 or None"):
        check_int("2", "steps", low=1, allow_none=True)


def test_check_number_bounds_and_finiteness() -> None:
    assert check_number(1, "lr", strict=True, low=0.0) == 1.0 and type(check_number(np.float32(0.5), "p")) is float
    with pytest.raises(ValueError, match=r"^train: lr must be > 0.0, got 0$"):
        check_number(0, "lr", "train", low=0.0, strict=True)
    assert check_number(0, "beta", low=0.0) == 0.0
    with pytest.raises(ValueError, match="must be a finite number, got nan"):
        check_number(math.nan, "beta")
    assert check_number(math.inf, "eps", low=0.0, allow_inf=True) == math.inf  # an unbounded attack
    with pytest.raises(ValueError, match="must be a finite number, got nan"):
        check_number(math.nan, "eps", allow_inf=True)
    with pytest.raises(ValueError, match="must be a finite number, got inf"):
        check_number(math.inf, "lr")
    with pytest.raises(TypeError, match=r"must be a number, got str \('1'\)"):
        check_number("1", "beta")
    with pytest.raises(ValueError, match=r"^p must be a probability in \[0, 1\], got 1.5$"):
        check_prob(1.5, "p")
    with pytest.raises(ValueError, match=r"must be <= 1.0, got 1.5"):
        check_number(1.5, "x", high=1.0)


def test_check_choice_tensor_and_model() -> None:
    assert check_choice("sgd", "optimizer", "fit", ("sgd", "adam")) == "sgd"
    with pytest.raises(ValueError, match=r"^fit: optimizer must be one of \('sgd', 'adam'\), got 'lbfgs'$"):
        check_choice("lbfgs", "optimizer", "fit", ("sgd", "adam"))
    x = torch.zeros(2, 3)
    assert check_tensor(x, "x", dim=2, floating=True) is x
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor, got torch.int64; use x.float\(\)"):
        check_tensor(torch.zeros(2, dtype=torch.long), "x", floating=True)
    with pytest.raises(ValueError, match=r"x must have 3 dimensions, got shape \(2, 3\)"):
        check_tensor(x, "x", dim=3)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        check_tensor([1.0], "x")
    lin = nn.Linear(1, 1)
    assert check_model(lin, "f") is lin
    with pytest.raises(TypeError, match=r"^f: model must be a torch.nn.Module with .encode \(e.g. lk.get_model\('mlp_vae'\)\), "
                                        r"got Linear$"):
        check_model(lin, "f", needs=("encode",), example="lk.get_model('mlp_vae')")
