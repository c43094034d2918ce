"""labkit.models.pretrained: torchvision architectures, offline ImageNet weights with hash checks."""

from __future__ import annotations

import hashlib
import pickle
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from labkit.models import pretrained
from labkit.models.pretrained import WeightsNotFoundError, find_weights, torchvision_model, weights_url
from labkit.storage import DataNotFoundError


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Point the data root and torch hub at empty folders, and make any network use fail loudly."""
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(pretrained, "_VERIFIED", set())


def _fake_checkpoint(folder: Path, *, seed: int = 1, prefix: str | None = None) -> tuple[Path, dict]:
    """A random resnet18 state_dict saved as ``resnet18-<sha256 prefix>.pth`` (or a given, wrong prefix)."""
    torch.manual_seed(seed)
    state = torchvision_model("resnet18", weights="random").state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"resnet18-{prefix or digest[:8]}.pth"
    tmp.rename(path)
    return path, state


def _use_url_of(monkeypatch, path: Path, base: str = "https://download.pytorch.org/models") -> None:
    monkeypatch.setattr(pretrained, "weights_url", lambda arch: f"{base}/{path.name}")


def test_weights_urls_are_torchvisions():
    assert weights_url("resnet18").endswith("/resnet18-f37072fd.pth")
    assert weights_url("vgg16").endswith("/vgg16-397923af.pth")
    assert weights_url("alexnet").endswith("/alexnet-owt-7be5be79.pth")


def test_random_weights_shapes_and_seed():
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(0)
    a = torchvision_model("resnet18", weights="random")
    torch.manual_seed(0)
    b = torchvision_model("resnet18", weights="random")
    assert not a.training
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with torch.no_grad():
        assert a(x).shape == (2, 1000)
    head = torchvision_model("resnet18", weights="random", num_classes=5)
    assert head.fc.weight.shape == (5, 512)
    alex = torchvision_model("alexnet", weights="random", num_classes=3)
    with torch.no_grad():
        assert head(x).shape == (2, 5) and alex(x).shape == (2, 3)
    vgg = torchvision_model("vgg16", weights="random")  # 13 conv + 3 fully connected layers
    assert sum(p.numel() for p in vgg.parameters()) == 138_357_544
    assert sum(isinstance(m, torch.nn.Conv2d) for m in vgg.modules()) == 13


def test_missing_imagenet_weights(tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        torchvision_model("resnet18", root=tmp_path / "mine")
    e = err.value
    assert isinstance(e, DataNotFoundError) and isinstance(e, FileNotFoundError)
    msg = str(e)
    assert "resnet18-f37072fd.pth" in msg and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    for folder in (tmp_path / "mine" / "weights", tmp_path / "data" / "weights", tmp_path / "torch" / "hub" / "checkpoints"):
        assert str(folder.resolve()) in msg
    assert "curl" in msg and "weights='random'" in msg
    assert not (tmp_path / "mine").exists()  # nothing written, nothing downloaded
    assert str(pickle.loads(pickle.dumps(e))) == msg


def test_fake_checkpoint_loads(tmp_path, monkeypatch):
    path, state = _fake_checkpoint(tmp_path / "root" / "weights")
    _use_url_of(monkeypatch, path)
    assert find_weights("resnet18", root=tmp_path / "root") == path.resolve()
    torch.manual_seed(99)  # a different seed: the loaded weights must not depend on it
    model = torchvision_model("resnet18", root=tmp_path / "root")
    got = model.state_dict()
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    ten = torchvision_model("resnet18", root=tmp_path / "root", num_classes=10)
    assert ten.fc.weight.shape == (10, 512)
    assert torch.equal(ten.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_weights_found_in_data_root_and_torch_hub(tmp_path, monkeypatch):
    path, _ = _fake_checkpoint(tmp_path / "torch" / "hub" / "checkpoints")
    _use_url_of(monkeypatch, path)
    assert find_weights("resnet18") == path.resolve()
    torchvision_model("resnet18")
    path2, _ = _fake_checkpoint(tmp_path / "data" / "weights", seed=2)
    _use_url_of(monkeypatch, path2)
    assert find_weights("resnet18") == path2.resolve()


def test_wrong_hash_prefix_is_refused(tmp_path):
    folder = tmp_path / "root" / "weights"
    _fake_checkpoint(folder, prefix="f37072fd")  # the official name, but not the official bytes
    with pytest.raises(ValueError, match="f37072fd") as err:
        torchvision_model("resnet18", root=tmp_path / "root")
    assert "SHA-256" in str(err.value)


def test_download_is_explicit_and_hash_checked(tmp_path, monkeypatch):
    src, state = _fake_checkpoint(tmp_path / "server")
    _use_url_of(monkeypatch, src, base=(tmp_path / "server").as_uri())
    with pytest.raises(WeightsNotFoundError):  # no download unless asked
        torchvision_model("resnet18", root=tmp_path / "root")
    monkeypatch.undo()  # restore urlopen (file:// is local); keep the test's folders
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _use_url_of(monkeypatch, src, base=(tmp_path / "server").as_uri())
    model = torchvision_model("resnet18", root=tmp_path / "root", download=True)
    assert (tmp_path / "root" / "weights" / src.name).read_bytes() == src.read_bytes()
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    bad = src.with_name("resnet18-00000000.pth")  # served bytes do not match the name's prefix
    src.rename(bad)
    _use_url_of(monkeypatch, bad, base=(tmp_path / "server").as_uri())
    with pytest.raises(ValueError, match="mismatch"):
        torchvision_model("resnet18", root=tmp_path / "other", download=True)
    assert list((tmp_path / "other" / "weights").iterdir()) == []


@pytest.mark.parametrize("kwargs, match", [
    ({"arch": "resnet50"}, "resnet18"),
    ({"arch": "resnet18", "weights": "imagenet1k"}, "weights"),
    ({"arch": "resnet18", "weights": "random", "num_classes": 0}, "num_classes"),
    ({"arch": "resnet18", "download": "yes"}, "download"),
])
def test_bad_arguments(kwargs, match):
    arch = kwargs.pop("arch")
    with pytest.raises((ValueError, TypeError), match=match):
        torchvision_model(arch, **kwargs)
