"""Seeding and determinism: one seed, identical streams; bad seeds rejected; flags restored."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from labkit.reproducibility import deterministic, make_generator, numpy_rng, seed_everything, seed_worker


@pytest.fixture(autouse=True)
def _restore_global_state(monkeypatch):
    """seed_everything touches env vars and (optionally) torch's flags: put them back."""
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags[2], flags[3]


def _draw() -> tuple:
    return torch.rand(4), torch.randint(0, 1000, (3,)), np.random.rand(4), random.random()


def _same(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and np.array_equal(a[2], b[2]) and a[3] == b[3]


def test_same_seed_identical_streams_in_torch_numpy_and_random() -> None:
    assert seed_everything(11) == 11
    a = _draw()
    _draw()
    seed_everything(11)
    b = _draw()
    assert _same(a, b)
    assert os.environ["PYTHONHASHSEED"] == "11"


def test_different_seeds_differ_in_every_library() -> None:
    seed_everything(1)
    a = _draw()
    seed_everything(2)
    b = _draw()
    assert not torch.equal(a[0], b[0])
    assert not np.array_equal(a[2], b[2])
    assert a[3] != b[3]


def test_numpy_integer_seed_and_bounds() -> None:
    assert seed_everything(np.int64(5)) == 5 and type(seed_everything(np.int64(5))) is int
    assert seed_everything(0) == 0
    assert seed_everything(2**32 - 1) == 2**32 - 1


@pytest.mark.parametrize(
    "seed, exc, msg",
    [
        (-1, ValueError, r"seed must be in \[0, 2\*\*32\), got -1"),
        (2**32, ValueError, r"seed must be in \[0, 2\*\*32\)"),
        (1.0, TypeError, "seed must be an int, got float"),
        (True, TypeError, "seed must be an int, got bool"),
        ("3", TypeError, "seed must be an int, got str"),
        (None, TypeError, "seed must be an int, got NoneType"),
    ],
)
def test_bad_seeds_raise_everywhere(seed, exc, msg: str) -> None:
    for fn in (seed_everything, make_generator, numpy_rng):
        with pytest.raises(exc, match=msg):
            fn(seed)


def test_make_generator_is_independent_of_the_global_stream() -> None:
    g1, g2 = make_generator(3), make_generator(3)
    torch.manual_seed(999)  # the global stream does not matter
    a = torch.rand(5, generator=g1)
    torch.rand(50)
    b = torch.rand(5, generator=g2)
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.rand(5, generator=make_generator(4)))
    assert make_generator(3).initial_seed() == 3


def test_make_generator_gives_a_reproducible_dataloader_order() -> None:
    ds = TensorDataset(torch.arange(20))

    def order(seed: int) -> list[int]:
        loader = DataLoader(ds, batch_size=5, shuffle=True, generator=make_generator(seed))
        return torch.cat([b[0] for b in loader]).tolist()

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(0)) == list(range(20))


def test_numpy_rng_is_a_seeded_pcg64() -> None:
    r = numpy_rng(7)
    assert isinstance(r, np.random.Generator) and isinstance(r.bit_generator, np.random.PCG64)
    assert np.array_equal(numpy_rng(7).random(5), np.random.default_rng(7).random(5))
    assert not np.array_equal(numpy_rng(7).random(5), numpy_rng(8).random(5))


def test_seed_worker_derives_numpy_and_random_from_torch() -> None:
    torch.manual_seed(42)
    seed_worker(0)
    a = (np.random.rand(2), random.random())
    torch.manual_seed(42)
    seed_worker(3)
    b = (np.random.rand(2), random.random())
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    torch.manual_seed(43)
    seed_worker(0)
    assert not np.array_equal(a[0], np.random.rand(2))


def test_seed_everything_deterministic_flag() -> None:
    seed_everything(0, deterministic_algorithms=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_deterministic_context_sets_and_restores_flags() -> None:
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = False
    with deterministic():
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic


def test_deterministic_restores_on_exception_and_keeps_warn_only() -> None:
    torch.use_deterministic_algorithms(True, warn_only=False)
    with pytest.raises(RuntimeError, match="boom"):
        with deterministic(False):
            assert not torch.are_deterministic_algorithms_enabled()
            raise RuntimeError("boom")
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
