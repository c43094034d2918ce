"""lk.setup: parameter validation, seeding, profile picks and the run's metadata."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from labkit.config import DATA_MODES, PROFILES, LabConfig, setup
from labkit.results import get_results


@pytest.fixture(autouse=True)
def _keep_threads(monkeypatch):
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)  # seed_everything sets it; restored after the test
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_defaults_and_printed_line(capsys) -> None:
    cfg = setup(device="cpu")
    assert cfg == LabConfig("standard", "embedded", 0, torch.device("cpu"))
    assert not cfg.real
    out = capsys.readouterr().out
    assert out.startswith("profile=standard  data=embedded  seed=0  device=cpu")


@pytest.mark.parametrize("profile", ["fast", "Smoke", "", None])
def test_bad_profile_names_the_allowed_values(profile) -> None:
    with pytest.raises(ValueError, match=r"PROFILE must be one of \('smoke', 'standard', 'full'\)"):
        setup(profile, quiet=True)
    assert get_results()["meta"] == {}  # nothing recorded for a rejected setup


@pytest.mark.parametrize("data", ["imagenet", "REAL", None])
def test_bad_data_names_the_allowed_values(data) -> None:
    with pytest.raises(ValueError, match=r"DATA must be one of \('embedded', 'real'\)"):
        setup("smoke", data, quiet=True)


def test_constants() -> None:
    assert PROFILES == ("smoke", "standard", "full")
    assert DATA_MODES == ("embedded", "real")


@pytest.mark.parametrize("seed, exc", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("0", TypeError)])
def test_bad_seed_raises(seed, exc) -> None:
    with pytest.raises(exc, match="seed must be"):
        setup(seed=seed, quiet=True)


def test_same_seed_gives_identical_random_streams() -> None:
    setup(seed=123, quiet=True)
    a = (torch.rand(5), np.random.rand(3), random.random())
    torch.rand(100)  # move the streams on
    setup(seed=123, quiet=True)
    b = (torch.rand(5), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    setup(seed=124, quiet=True)
    assert not torch.equal(a[0], torch.rand(5))


@pytest.mark.parametrize(
    "profile, expected",
    [("smoke", 1), ("standard", 2), ("full", 3)],
)
def test_pick_per_profile(profile: str, expected: int) -> None:
    cfg = setup(profile, quiet=True, device="cpu")
    assert cfg.pick(smoke=1, standard=2, full=3) == expected


def test_pick_full_defaults_to_standard_and_keeps_falsy_values() -> None:
    full = setup("full", quiet=True, device="cpu")
    assert full.pick(smoke=1, standard=2) == 2
    assert full.pick(smoke=1, standard=2, full=0) == 0  # 0 is a value, not "missing"
    assert setup("smoke", quiet=True).pick(smoke=0, standard=5) == 0


def test_pick_is_keyword_only() -> None:
    cfg = setup("smoke", quiet=True)
    with pytest.raises(TypeError):
        cfg.pick(1, 2, 3)  # type: ignore[misc]


def test_config_is_frozen() -> None:
    cfg = setup(quiet=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.profile = "full"  # type: ignore[misc]


def test_meta_is_stored_with_extra_parameters() -> None:
    cfg = setup("smoke", "real", 7, device="cpu", quiet=True, weights="random", n_steps=np.int64(5))
    assert cfg.real and cfg.seed == 7
    assert get_results()["meta"] == {
        "profile": "smoke", "data": "real", "seed": 7, "device": "cpu", "weights": "random", "n_steps": 5,
    }


def test_threads_are_set_and_validated() -> None:
    setup(threads=1, quiet=True)
    assert torch.get_num_threads() == 1
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive int"):
            setup(threads=bad, quiet=True)


def test_device_is_validated_and_env_override(monkeypatch) -> None:
    with pytest.raises(ValueError, match="device must be one of"):
        setup(device="gpu", quiet=True)
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")
    assert setup(quiet=True).device == torch.device("cpu")
