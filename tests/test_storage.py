"""labkit.storage: roots, hashes, hash-checked download, clear missing-data errors."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest

from labkit import storage
from labkit.storage import DataNotFoundError, checkpoint_root, data_root, download, require, sha256sum, verify

PAYLOAD = b"seeing inside deep networks\n" * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    p = tmp_path / "src" / "payload.bin"
    p.parent.mkdir()
    p.write_bytes(PAYLOAD)
    return p


def test_data_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "d"))
    assert data_root() == (tmp_path / "d").resolve()
    assert not (tmp_path / "d").exists()  # not created just by asking
    monkeypatch.delenv("LABKIT_CHECKPOINTS", raising=False)
    assert checkpoint_root() == (tmp_path / "d" / "checkpoints").resolve()
    monkeypatch.setenv("LABKIT_CHECKPOINTS", str(tmp_path / "ck"))
    assert checkpoint_root() == (tmp_path / "ck").resolve()


def test_data_root_default_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("LABKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root() == (tmp_path / "xdg" / "labkit").resolve()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == (tmp_path / "home" / ".cache" / "labkit").resolve()


def test_sha256sum_and_verify(source, monkeypatch):
    monkeypatch.setattr(storage, "_CHUNK", 7)  # many small chunks: streaming gives the same digest
    assert sha256sum(source) == PAYLOAD_SHA
    assert verify(source, PAYLOAD_SHA)
    assert verify(source, PAYLOAD_SHA[:8].upper())  # torchvision-style prefix, any case
    assert not verify(source, "0" * 64)
    assert not verify(source.with_name("absent"), PAYLOAD_SHA)
    with pytest.raises(ValueError, match="sha256"):
        verify(source, "abc")  # too short to mean anything
    with pytest.raises(ValueError, match="sha256"):
        verify(source, "z" * 64)


def test_download_file_url(source, tmp_path):
    dest = tmp_path / "out" / "deep" / "payload.bin"
    got = download(source.as_uri(), dest, sha256=PAYLOAD_SHA)
    assert got == dest and dest.read_bytes() == PAYLOAD
    assert [p.name for p in dest.parent.iterdir()] == ["payload.bin"]  # no temp file left


def test_download_skips_when_present(source, tmp_path, monkeypatch):
    dest = tmp_path / "payload.bin"
    download(source.as_uri(), dest, sha256=PAYLOAD_SHA)
    os.utime(dest, ns=(1_000_000_000, 1_000_000_000))
    mtime = dest.stat().st_mtime_ns

    def no_network(*a, **k):
        raise AssertionError("download() opened the URL although the file was present")

    monkeypatch.setattr(storage.urllib.request, "urlopen", no_network)
    assert download(source.as_uri(), dest, sha256=PAYLOAD_SHA) == dest
    assert dest.stat().st_mtime_ns == mtime


def test_download_replaces_a_corrupt_file(source, tmp_path):
    dest = tmp_path / "payload.bin"
    dest.write_bytes(b"truncated")
    download(source.as_uri(), dest, sha256=PAYLOAD_SHA[:12])
    assert dest.read_bytes() == PAYLOAD


def test_download_hash_mismatch(source, tmp_path):
    dest = tmp_path / "out" / "payload.bin"
    wrong = "ab" * 32
    with pytest.raises(ValueError) as err:
        download(source.as_uri(), dest, sha256=wrong)
    assert wrong in str(err.value) and PAYLOAD_SHA in str(err.value)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # the temporary file was deleted


@pytest.mark.parametrize("url", ["file:///nonexistent/labkit/payload.bin", "http://127.0.0.1:9/payload.bin"])
def test_download_unreachable(url, tmp_path):
    dest = tmp_path / "payload.bin"
    with pytest.raises(DataNotFoundError) as err:
        download(url, dest, sha256=PAYLOAD_SHA, desc="tiny payload", timeout=5)
    msg = str(err.value)
    assert "tiny payload" in msg and url in msg and str(dest) in msg
    assert isinstance(err.value, FileNotFoundError)
    assert list(tmp_path.iterdir()) == []


def test_download_bad_arguments(source, tmp_path):
    with pytest.raises(TypeError, match="url"):
        download(None, tmp_path / "x", sha256=PAYLOAD_SHA)
    with pytest.raises(ValueError, match="sha256"):
        download(source.as_uri(), tmp_path / "x", sha256="not-a-hash")


def test_require(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "c.txt").write_text("x")
    assert require("demo", ["a/b", "c.txt"], root=tmp_path) == tmp_path.resolve()
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    assert require("demo", "c.txt") == tmp_path.resolve()
    with pytest.raises(DataNotFoundError) as err:
        require("demo set", ["a/b", "missing/file.gz"], root=tmp_path, hint="Run the fetch step.")
    msg = str(err.value)
    assert "demo set" in msg and str(tmp_path.resolve() / "missing" / "file.gz") in msg
    assert str(tmp_path.resolve() / "a" / "b") not in msg  # only what is missing is listed
    assert "Run the fetch step." in msg and "LABKIT_DATA" in msg
    with pytest.raises(ValueError, match="relative"):
        require("demo", ["/etc/passwd"], root=tmp_path)


def test_error_survives_pickling(tmp_path):
    err = DataNotFoundError("mnist", [tmp_path / "MNIST"], "copy it")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.dataset == "mnist"
