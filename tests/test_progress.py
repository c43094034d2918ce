"""labkit.progress: the one progress mechanism of the trainers, in each mode, and with every trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import labkit as lk
from labkit.models.generative import DCGANDiscriminator, DCGANGenerator, MLPVAE
from labkit.models.segmentation import FCN, VGGEncoder
from labkit.progress import EpochProgress


def run(epochs: int, *, fail_at: int | None = None) -> None:
    with EpochProgress("demo", epochs) as p:
        for e in range(epochs):
            if e == fail_at:
                raise RuntimeError("stop")
            p.update(f"loss {e}")


def test_plain_prints_the_last_epoch_once(monkeypatch, capsys) -> None:
    monkeypatch.setenv("LABKIT_PROGRESS", "plain")
    run(4)
    assert capsys.readouterr().out == "demo: epoch 4/4  loss 3\n"


def test_plain_prints_nothing_for_a_failed_or_empty_run(monkeypatch, capsys) -> None:
    monkeypatch.setenv("LABKIT_PROGRESS", "plain")
    with pytest.raises(RuntimeError):
        run(4, fail_at=2)
    run(0)
    assert capsys.readouterr().out == ""


def test_epochs_mode_and_none_mode(monkeypatch, capsys) -> None:
    monkeypatch.setenv("LABKIT_PROGRESS", "epochs")
    run(2)
    assert capsys.readouterr().out == "demo: epoch 1/2  loss 0\ndemo: epoch 2/2  loss 1\n"
    monkeypatch.setenv("LABKIT_PROGRESS", "none")
    run(2)
    assert capsys.readouterr().out == ""


def test_message_is_shown_in_every_mode_but_bar_goes_through_tqdm(monkeypatch, capsys) -> None:
    monkeypatch.setenv("LABKIT_PROGRESS", "none")
    with EpochProgress(None, 1) as p:
        p.message("diverged")
    assert capsys.readouterr().out == "diverged\n"


def test_bar_mode_closes_its_bar_on_failure(monkeypatch) -> None:
    import tqdm.auto

    bars = []

    class FakeBar:
        def __init__(self, total, **kwargs):
            self.total, self.n, self.closed, self.desc = total, 0, False, kwargs.get("desc")
            bars.append(self)

        def set_postfix_str(self, s):
            self.postfix = s

        def update(self, k):
            self.n += k

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    monkeypatch.setenv("LABKIT_PROGRESS", "bar")
    with pytest.raises(RuntimeError):
        run(3, fail_at=1)
    assert len(bars) == 1 and bars[0].n == 1 and bars[0].closed and bars[0].desc == "demo"


def _trainers():
    """Each trainer of labkit on a tiny problem, with a desc: all must show one line under plain."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0.5).long()

    def classifier():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 2))

    yield "fit", lambda: lk.fit(classifier(), (x, y), epochs=2, batch_size=4, desc="t")
    yield "train_vae", lambda: lk.train_vae(MLPVAE((1, 8, 8), latent_dim=2, hidden=(8,)), x, epochs=2,
                                            batch_size=4, device="cpu", desc="t")
    yield "train_gan", lambda: lk.train_gan(DCGANGenerator(4, out_shape=(1, 8, 8), widths=(8, 4)),
                                            DCGANDiscriminator((1, 8, 8), widths=(4, 8)), x, epochs=2,
                                            batch_size=4, device="cpu", desc="t")
    src = lk.ImageSet(x, y, ["a", "b"], name="src")
    dann = lk.get_model("dann", in_channels=1, num_classes=2, widths=(4,), kernel=3, input_size=8, hidden=(8,),
                        domain_hidden=(8,))
    yield "train_dann", lambda: lk.train_dann(dann, src, src, epochs=2, steps_per_epoch=2, batch_size=4, desc="t")
    xs = torch.rand(8, 3, 32, 32, generator=g)
    masks = (xs[:, 0] > 0.5).long()
    fcn = FCN(VGGEncoder(widths=(4, 4, 4, 4, 4)), 2, head="32s", hidden=4)
    yield "train_segmentation", lambda: lk.train_segmentation(fcn, (xs, masks), epochs=2, batch_size=4, desc="t")

@pytest.mark.parametrize("name, train", list(_trainers()))
def test_every_trainer_prints_one_line_under_plain(name, train, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LABKIT_PROGRESS", "plain")
    train()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("t: epoch 2/2  "), (name, lines)
