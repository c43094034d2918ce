"""fit / evaluate / predict / History / train_or_load on tiny problems with known answers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import labkit.training as training
from labkit.datasets import shapes
from labkit.datasets.base import ImageSet
from labkit.models import get_model
from labkit.training import History, as_loader, evaluate, fit, predict, progress_mode, train_or_load


@pytest.fixture(autouse=True)
def _one_thread_quiet_progress(monkeypatch):
    """Tiny models run fastest on one thread (two threads on a busy 2-core box are ~100x slower
    per step); progress output off unless a test asks for it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("LABKIT_PROGRESS", "none")
    monkeypatch.delenv("LABKIT_DEVICE", raising=False)
    yield
    torch.set_num_threads(n)


def sign_task(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """2-class 1x8x8 images: class 1 has mean +0.5, class 0 mean -0.5, pixel noise 0.3."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3 + (y.float() * 2 - 1).view(-1, 1, 1, 1) * 0.5
    return x, y


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return get_model("small_cnn", in_channels=1, num_classes=2, widths=(4,), hidden=8)


def fixed_linear() -> nn.Linear:
    """Logits equal the 2-D input: Linear with identity weight and zero bias."""
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
        lin.bias.zero_()
    return lin


# --- fit ----------------------------------------------------------------------------------------

def test_fit_learns_a_separable_task_and_fills_the_history() -> None:
    x, y = sign_task()
    model = tiny_cnn()
    hist = fit(model, (x, y), (x[:32], y[:32]), epochs=4, lr=1e-2, batch_size=16)
    assert hist.epochs == 4
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "seconds"):
        assert len(getattr(hist, key)) == 4, key
    assert hist.train_acc[-1] > 0.95 and hist.val_acc[-1] > 0.95
    assert hist.train_loss[-1] < hist.train_loss[0]
    assert all(s > 0 for s in hist.seconds)
    assert hist.last() == hist.val_acc[-1] and hist.last("train_loss") == hist.train_loss[-1]
    assert evaluate(model, (x, y))["accuracy"] > 0.95
    assert not model.training  # fit leaves the model in eval mode


def test_history_without_validation_and_round_trip() -> None:
    x, y = sign_task(16)
    hist = fit(tiny_cnn(), (x, y), epochs=2, batch_size=8)
    assert len(hist.train_loss) == 2 and hist.val_loss == [] and hist.val_acc == []
    with pytest.raises(ValueError, match="History has no val_acc values"):
        hist.last()
    d = hist.to_dict()
    assert set(d) == {"train_loss", "train_acc", "val_loss", "val_acc", "seconds"}
    assert History.from_dict({**d, "unknown": [1.0]}) == hist
    assert History().epochs == 0


def test_fit_with_zero_epochs_changes_nothing() -> None:
    model = tiny_cnn()
    before = copy.deepcopy(model.state_dict())
    hist = fit(model, sign_task(8), epochs=0)
    assert hist.epochs == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fit_same_seed_same_weights_other_seed_other_weights() -> None:
    data = sign_task(32)
    a, b, c = tiny_cnn(), tiny_cnn(), tiny_cnn()
    for model, seed in ((a, 5), (b, 5), (c, 6)):
        fit(model, data, epochs=2, batch_size=8, seed=seed)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)  # another shuffling order


def test_fit_accepts_imageset_dataset_and_dataloader() -> None:
    x, y = sign_task(16)
    ims = ImageSet(x, y, ["neg", "pos"])
    for data in (ims, TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=4)):
        assert fit(tiny_cnn(), data, ims, epochs=1).epochs == 1


def test_fit_calls_augment_and_on_epoch_end() -> None:
    x, y = sign_task(12)
    batches, epochs = [], []

    def augment(batch: torch.Tensor) -> torch.Tensor:
        batches.append(batch.shape[0])
        return batch.flip(-1)

    fit(tiny_cnn(), (x, y), epochs=2, batch_size=5, augment=augment,
        on_epoch_end=lambda e, m, h: epochs.append((e, h.epochs)))
    assert batches == [5, 5, 2, 5, 5, 2]
    assert epochs == [(0, 1), (1, 2)]


def test_cosine_scheduler_anneals_the_learning_rate_to_zero() -> None:
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, sign_task(8), epochs=2, batch_size=4, optimizer=opt, scheduler="cosine")
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_optimizer_names(name: str, cls: type, monkeypatch) -> None:
    made = []
    real = training._make_optimizer
    monkeypatch.setattr(training, "_make_optimizer", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    fit(tiny_cnn(), sign_task(4), epochs=1, optimizer=name, lr=0.5, weight_decay=0.1)
    assert type(made[0]) is cls
    assert made[0].param_groups[0]["lr"] == 0.5 and made[0].param_groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(epochs=-1), "epochs must be a non-negative int, got -1"),
        (dict(epochs=1.5), "epochs must be a non-negative int"),
        (dict(epochs=True), "epochs must be a non-negative int"),
        (dict(epochs=1, lr=0), "lr must be positive, got 0"),
        (dict(epochs=1, lr=-1e-3), "lr must be positive"),
        (dict(epochs=1, lr=float("nan")), "lr must be positive"),
        (dict(epochs=1, optimizer="rmsprop"), "optimizer must be 'adam', 'adamw', 'sgd' or a torch.optim.Optimizer"),
        (dict(epochs=1, scheduler="step"), "scheduler must be None or 'cosine'"),
    ],
)
def test_fit_invalid_options_raise(kwargs: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        fit(tiny_cnn(), sign_task(4), **kwargs)


def test_fit_frozen_model_and_bad_data_raise() -> None:
    model = tiny_cnn()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(model, sign_task(4), epochs=1)
    with pytest.raises(TypeError, match="data must be an ImageSet, Dataset, DataLoader or"):
        fit(tiny_cnn(), 42, epochs=1)


# --- progress -----------------------------------------------------------------------------------

def test_plain_progress_prints_one_line_per_run_and_no_tqdm(monkeypatch, capsys) -> None:
    import tqdm.auto

    def no_tqdm(*args, **kwargs):
        raise AssertionError("tqdm must not be used in plain mode")

    monkeypatch.setattr(tqdm.auto, "tqdm", no_tqdm)
    monkeypatch.setenv("LABKIT_PROGRESS", "plain")
    x, y = sign_task(8)
    fit(tiny_cnn(), (x, y), (x, y), epochs=3, batch_size=4, desc="tiny")
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1  # the page shows the result of the run, not a log of its epochs
    assert lines[0].startswith("tiny: epoch 3/3  train loss ") and "| val loss " in lines[0]
    assert captured.err == ""


def test_epochs_progress_prints_one_line_per_epoch(monkeypatch, capsys) -> None:
    monkeypatch.setenv("LABKIT_PROGRESS", "epochs")
    x, y = sign_task(8)
    fit(tiny_cnn(), (x, y), (x, y), epochs=3, batch_size=4, desc="tiny")
    lines = capsys.readouterr().out.splitlines()
    assert [line[:len("tiny: epoch 1/3")] for line in lines] == ["tiny: epoch 1/3", "tiny: epoch 2/3", "tiny: epoch 3/3"]


def test_bar_progress_uses_tqdm(monkeypatch) -> None:
    import tqdm.auto

    made = []

    class FakeBar:
        def __init__(self, total, **kwargs):
            self.total, self.updates, self.closed = total, 0, False
            made.append(self)

        def set_postfix_str(self, s):
            self.postfix = s

        def update(self, k):
            self.updates += k

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    monkeypatch.setenv("LABKIT_PROGRESS", "bar")
    fit(tiny_cnn(), sign_task(4), epochs=2)
    assert len(made) == 1 and made[0].total == 2 and made[0].updates == 2 and made[0].closed
    assert made[0].postfix.startswith("train loss ")


def test_none_progress_prints_nothing(capsys) -> None:
    fit(tiny_cnn(), sign_task(4), epochs=2)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("value, mode", [("plain", "plain"), ("epochs", "epochs"), ("none", "none"), ("bar", "bar"),
                                         ("junk", "bar")])
def test_progress_mode(monkeypatch, value: str, mode: str) -> None:
    monkeypatch.setenv("LABKIT_PROGRESS", value)
    assert progress_mode() == mode
    monkeypatch.delenv("LABKIT_PROGRESS")
    assert progress_mode() == "bar"


# --- evaluate / predict -------------------------------------------------------------------------

def test_evaluate_by_hand_with_a_fixed_linear_model() -> None:
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]])
    y = torch.tensor([0, 1, 0])
    # logits = x; predictions 0, 1, 1 -> 2 of 3 right
    # cross-entropy of logits (a, b) for class 0 is log(1 + e^(b - a)): e^-2, e^-1, e^2
    expected_loss = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log1p(math.exp(2))) / 3
    for batch_size in (1, 2, 256):  # per-batch means are weighted by batch size
        ev = evaluate(fixed_linear(), (x, y), batch_size=batch_size)
        assert ev["accuracy"] == pytest.approx(2 / 3)
        assert ev["loss"] == pytest.approx(expected_loss, rel=1e-6)


def test_evaluate_with_a_custom_loss() -> None:
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    ev = evaluate(fixed_linear(), (x, y), loss_fn=lambda out, t: out.sum() * 0 + 4.0)
    assert ev == {"loss": 4.0, "accuracy": 1.0}


class ModeSpy(nn.Module):
    """Records self.training at each forward; can fail on demand."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.lin = fixed_linear()
        self.modes: list[bool] = []
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        if self.fail:
            raise RuntimeError("forward failed")
        return self.lin(x)


@pytest.mark.parametrize("fn", [evaluate, predict])
def test_evaluate_and_predict_run_in_eval_mode_and_restore_the_mode(fn) -> None:
    data = (torch.rand(5, 2), torch.zeros(5, dtype=torch.long))
    spy = ModeSpy()
    spy.train()
    fn(spy, data, batch_size=2)
    assert spy.modes == [False, False, False] and spy.training
    spy.eval()
    fn(spy, data)
    assert not spy.training
    failing = ModeSpy(fail=True).train()
    with pytest.raises(RuntimeError, match="forward failed"):
        fn(failing, data)
    assert failing.training  # restored on the exception too


def test_evaluate_and_predict_do_not_track_gradients() -> None:
    lin = fixed_linear()
    out = predict(lin, torch.rand(3, 2))
    assert not out.requires_grad
    evaluate(lin, (torch.rand(3, 2), torch.zeros(3, dtype=torch.long)))
    assert lin.weight.grad is None


def test_evaluate_and_predict_on_empty_data_raise() -> None:
    empty = (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="evaluate: the data is empty"):
        evaluate(fixed_linear(), empty)
    with pytest.raises(ValueError, match="predict: the data is empty"):
        predict(fixed_linear(), empty)


def test_predict_keeps_the_order_for_every_input_kind() -> None:
    x = torch.arange(20.0).view(10, 2)
    y = torch.arange(10) % 2
    lin = fixed_linear()
    for data in ((x, y), ImageSet(x.view(10, 2, 1, 1), y, ["a", "b"]), TensorDataset(x, y), x):
        out = predict(nn.Sequential(nn.Flatten(), lin), data, batch_size=3)
        assert torch.equal(out, x), type(data).__name__
        assert out.device.type == "cpu"


def test_evaluate_and_predict_use_the_models_device(monkeypatch) -> None:
    """With device=None they follow the model (a CPU model on a CUDA machine must not crash)."""
    import labkit.device as device_module

    def cuda_would_be_chosen(prefer="auto"):
        if prefer in ("auto", None):
            return torch.device("cuda")
        return torch.device(prefer)

    monkeypatch.setattr(device_module, "get_device", cuda_would_be_chosen)
    x, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    assert evaluate(fixed_linear(), (x, y))["accuracy"] == 1.0
    assert torch.equal(predict(fixed_linear(), x), x)
    assert device_module.resolve_device(None, fixed_linear(), trains=True) == torch.device("cuda")  # a trainer: auto


def test_as_loader() -> None:
    x, y = torch.rand(5, 2), torch.zeros(5)
    loader = as_loader((x, y), batch_size=2)
    assert [len(b[0]) for b in loader] == [2, 2, 1]
    dl = DataLoader(TensorDataset(x))
    assert as_loader(dl) is dl
    a = torch.cat([b[0] for b in as_loader((x, y), batch_size=1, shuffle=True, seed=1)])
    b = torch.cat([b[0] for b in as_loader((x, y), batch_size=1, shuffle=True, seed=1)])
    assert torch.equal(a, b)
    with pytest.raises(TypeError, match=r"got int"):
        as_loader(3)


# --- train_or_load ------------------------------------------------------------------------------

def test_train_or_load_trains_once_then_loads(tmp_path, monkeypatch, capsys) -> None:
    data = sign_task(16)
    first = tiny_cnn(seed=1)
    h1 = train_or_load("tiny", first, data, data, root=tmp_path, epochs=2, batch_size=8, lr=1e-2)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("tiny-") and files[0].endswith(".pt")

    def no_training(*args, **kwargs):
        raise AssertionError("train_or_load must load the checkpoint, not train again")

    monkeypatch.setattr(training, "fit", no_training)
    monkeypatch.setenv("LABKIT_PROGRESS", "plain")
    second = tiny_cnn(seed=2)  # other initial weights: loading must overwrite them all
    h2 = train_or_load("tiny", second, data, data, root=tmp_path, epochs=2, batch_size=8, lr=1e-2)
    assert f"loaded checkpoint {files[0]}" in capsys.readouterr().out
    assert h2 == h1 and h2.epochs == 2
    s1, s2 = first.state_dict(), second.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not second.training


def test_train_or_load_changed_data_or_options_use_another_file(tmp_path) -> None:
    x, y = sign_task(8)
    common = dict(root=tmp_path, epochs=1, batch_size=8)
    train_or_load("t", tiny_cnn(), (x, y), **common)
    x2 = x.clone()
    x2[0, 0, 0, 0] += 1.0  # one pixel changed
    train_or_load("t", tiny_cnn(), (x2, y), **common)
    train_or_load("t", tiny_cnn(), (x.reshape(8, 1, 4, 16), y), **common)  # same bytes, other shape
    train_or_load("t", tiny_cnn(), (x, y), **{**common, "lr": 5e-3})
    train_or_load("t", tiny_cnn(), (x, y), **{**common, "seed": 1})
    train_or_load("t", tiny_cnn(), (x, y), (x, y), **common)  # validation data is part of the key
    train_or_load("other", tiny_cnn(), (x, y), **common)
    wider = get_model("small_cnn", in_channels=1, num_classes=2, widths=(5,), hidden=8)
    train_or_load("t", wider, (x, y), **common)  # the architecture is part of the key
    assert len(list(tmp_path.glob("*.pt"))) == 8
    assert not list(tmp_path.glob("*.tmp"))


def test_train_or_load_retrain_and_device_not_in_key(tmp_path, monkeypatch) -> None:
    data = sign_task(8)
    train_or_load("r", tiny_cnn(), data, root=tmp_path, epochs=1)
    calls = []
    real_fit = training.fit
    monkeypatch.setattr(training, "fit", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    train_or_load("r", tiny_cnn(), data, root=tmp_path, epochs=1, device="cpu")  # same key: loads
    assert calls == []
    train_or_load("r", tiny_cnn(), data, root=tmp_path, epochs=1, retrain=True)
    assert calls == [1]
    assert len(list(tmp_path.glob("*.pt"))) == 1


@pytest.mark.parametrize("name", ["", "a/b", None])
def test_train_or_load_bad_name(tmp_path, name) -> None:
    with pytest.raises(ValueError, match="name must be a non-empty string without '/'"):
        train_or_load(name, tiny_cnn(), sign_task(4), root=tmp_path, epochs=1)


def test_train_or_load_refuses_uncacheable_options(tmp_path) -> None:
    model = tiny_cnn()
    with pytest.raises(ValueError, match="cannot cache runs with on_epoch_end or an optimizer object"):
        train_or_load("x", model, sign_task(4), root=tmp_path, epochs=1,
                      optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="cannot cache"):
        train_or_load("x", model, sign_task(4), root=tmp_path, epochs=1, on_epoch_end=lambda *a: None)
    assert list(tmp_path.iterdir()) == []


def test_train_or_load_keys_callable_options_by_their_code_and_values(tmp_path, monkeypatch) -> None:
    """Every lambda is named '<lambda>': a changed augment or loss must not load a stale checkpoint."""
    data = sign_task(8)
    common = dict(root=tmp_path, epochs=1, batch_size=8)

    def shift(e: float):
        return lambda t: t + e

    class Scale:
        def __init__(self, k: float) -> None:
            self.k = k

        def __call__(self, t: torch.Tensor) -> torch.Tensor:
            return t * self.k

    for option in (dict(augment=Scale(1.0)), dict(augment=Scale(2.0)),dict(augment=lambda t: t.flip(-1)), dict(augment=lambda t: t.roll(1, -1)),
                   dict(augment=shift(0.1)), dict(augment=shift(0.2)),
                   dict(loss_fn=nn.CrossEntropyLoss()), dict(loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1))):
        train_or_load("c", tiny_cnn(), data, **common, **option)
    assert len(list(tmp_path.glob("*.pt"))) == 8
    monkeypatch.setattr(training, "fit", lambda *a, **k: pytest.fail("should have loaded"))
    # equal code and values (new objects) find the same checkpoints
    train_or_load("c", tiny_cnn(), data, **common, augment=lambda t: t.flip(-1))
    train_or_load("c", tiny_cnn(), data, **common, augment=shift(0.2))
    train_or_load("c", tiny_cnn(), data, **common, loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1))
    train_or_load("c", tiny_cnn(), data, **common, augment=Scale(2.0))


def test_train_or_load_other_trainers_keep_their_history_type(tmp_path, monkeypatch) -> None:
    from labkit.models.generative import MLPVAE
    from labkit.vae import VAEHistory, train_vae

    x = torch.rand(16, 1, 8, 8)

    def vae() -> nn.Module:
        torch.manual_seed(0)
        return MLPVAE((1, 8, 8), latent_dim=2, hidden=(8,))

    h1 = train_or_load("v", vae(), x, trainer=train_vae, root=tmp_path, epochs=1, batch_size=8, device="cpu")
    fitted = train_or_load("v", tiny_cnn(), sign_task(8), root=tmp_path, epochs=1)  # same name, fit: another file
    assert len(list(tmp_path.glob("v-*.pt"))) == 2 and isinstance(fitted, History)
    monkeypatch.setattr("labkit.vae.run_epochs", lambda *a, **k: pytest.fail("must load, not train"))
    model = vae()
    h2 = train_or_load("v", model, x, trainer=train_vae, root=tmp_path, epochs=1, batch_size=8, device="cpu")
    assert isinstance(h2, VAEHistory) and h2 == h1 and not model.training
    with pytest.raises(TypeError, match="trainer must be a labkit trainer"):
        train_or_load("v", vae(), x, trainer="train_vae", root=tmp_path, epochs=1)
    with pytest.raises(TypeError, match="call your own trainer directly"):  # its history could not be restored
        train_or_load("v", vae(), x, trainer=lambda *a, **k: History(), root=tmp_path, epochs=1)


# --- the engine ---------------------------------------------------------------------------------

def test_run_epochs_modes_seconds_lines_and_failure(monkeypatch, capsys) -> None:
    a, b = nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    seen, after = [], []
    hist = History()

    def one_epoch(epoch, progress):
        seen.append((epoch, a.training, b.training, b[1].training))
        return f"epoch line {epoch}"

    monkeypatch.setenv("LABKIT_PROGRESS", "plain")
    training.run_epochs([a, b], 3, one_epoch, history=hist, desc="toy", default_desc="x", after_epoch=after.append)
    assert seen == [(0, True, True, True), (1, True, True, True), (2, True, True, True)]
    assert after == [0, 1, 2] and len(hist.seconds) == 3 and not a.training and not b[1].training
    assert capsys.readouterr().out == "toy: epoch 3/3  epoch line 2\n"  # one static line per run

    def failing(epoch, progress):
        raise RuntimeError("step failed")

    with pytest.raises(RuntimeError, match="step failed"):
        training.run_epochs([a, b], 2, failing, history=History(), desc="toy", default_desc="x")
    assert not a.training and not b.training and not b[1].training
    assert capsys.readouterr().out == ""  # a failed run prints its exception, not a result line


def test_curves_last_names_the_curves() -> None:
    h = History(train_loss=[1.0, 0.5])
    assert h.epochs == 2 and h.last("train_loss") == 0.5
    with pytest.raises(ValueError, match="History has no val_acc values"):
        h.last()
    with pytest.raises(ValueError, match="no curve 'accuracy'; curves: train_loss, train_acc"):
        h.last("accuracy")
    assert History.from_dict({**h.to_dict(), "unknown": [1]}) == h
    from labkit.domain_adaptation import DANNHistory
    from labkit.gan import GANHistory

    with pytest.raises(ValueError, match=r"DANNHistory has no target_acc values \(was the matching validation set"):
        DANNHistory().last()
    with pytest.raises(ValueError, match=r"GANHistory has no scores values \(was a score_fn given\?\)"):
        GANHistory().last()


# --------------------------------------------------------------------------- train_shapes_classifier
@pytest.fixture
def one_thread():
    """Tiny networks: one thread is faster than two on a busy 2-core machine (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_shapes(n: int, seed: int) -> ImageSet:
    return shapes(n, size=32, seed=seed, classes=["circle", "cross"], background="flat", rotate=False)


def test_train_shapes_classifier_is_seeded_and_leaves_the_global_rng_alone(one_thread):
    train, val = _tiny_shapes(64, 0), _tiny_shapes(32, 1)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    m1, h1 = training.train_shapes_classifier(train, val, epochs=1, seed=3, widths=(4, 8))
    after = torch.rand(1)
    assert torch.equal(before, after), "the global RNG must not be advanced"
    torch.manual_seed(999)  # a different global state gives the same model
    m2, h2 = training.train_shapes_classifier(train, val, epochs=1, seed=3, widths=(4, 8))
    for (n1, p1), (_, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(p1, p2), n1
    assert h1.val_acc == h2.val_acc and len(h1.val_acc) == 1
    m3, _ = training.train_shapes_classifier(train, val, epochs=1, seed=4, widths=(4, 8))
    assert not torch.equal(m1.features[0].weight, m3.features[0].weight)


def _bright_vs_dark(n: int, seed: int) -> ImageSet:
    """Class 1 has a bright 8x8 square somewhere, class 0 not: separable after a few steps."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=g) * 0.3
    labels = torch.arange(n) % 2
    for i in torch.nonzero(labels).flatten().tolist():
        y, x = torch.randint(0, 24, (2,), generator=g).tolist()
        images[i, :, y:y + 8, x:x + 8] = 1.0
    return ImageSet(images, labels, ["plain", "square"])


def test_train_shapes_classifier_builds_the_recipe_and_learns(one_thread):
    train, val = _bright_vs_dark(128, 0), _bright_vs_dark(64, 1)
    model, history = training.train_shapes_classifier(train, val, epochs=3, lr=3e-3, batch_size=8, seed=0, widths=(4, 8))
    assert isinstance(model.features[1], nn.BatchNorm2d) and isinstance(model.pool, nn.AdaptiveAvgPool2d)
    assert model.classifier[-1].out_features == 2 and not model.training
    assert history.epochs == 3
    assert history.val_acc[-1] >= 0.9, f"a bright square vs none should be easy: {history.val_acc}"
    flat, _ = training.train_shapes_classifier(train, epochs=0, global_pool=False, batch_norm=False, widths=(4,))
    assert isinstance(flat.pool, nn.Identity) and not any(isinstance(m, nn.BatchNorm2d) for m in flat.modules())


def test_train_shapes_classifier_validates():
    train = _tiny_shapes(16, 0)
    with pytest.raises(TypeError, match="ImageSet"):
        training.train_shapes_classifier((train.images, train.labels), epochs=1)
    with pytest.raises(ValueError, match="same size"):
        training.train_shapes_classifier(train, shapes(8, size=40, classes=["circle", "cross"]), epochs=1)
    with pytest.raises(ValueError, match="seed"):
        training.train_shapes_classifier(train, epochs=1, seed=-1)
