"""Where data and checkpoints live, hash-checked downloads, and one clear error for missing data.

The data root is ``$LABKIT_DATA`` when set, else a user cache folder
(``$XDG_CACHE_HOME/labkit`` or ``~/.cache/labkit``). Real data sets (MNIST, BSDS500,
hymenoptera, ImageNet samples) and torchvision weights are looked up under it; when they are
absent and there is no network, :class:`DataNotFoundError` says which data set is missing,
where it was looked for and how to provide it. Used by every lab with ``DATA="real"``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

__all__ = [
    "DataNotFoundError",
    "data_root",
    "checkpoint_root",
    "sha256sum",
    "verify",
    "download",
    "require",
]

_HEX = re.compile(r"^[0-9a-f]+$")
_CHUNK = 1 << 20

#: How to provide missing real data, appended to every :class:`DataNotFoundError` by default.
PROVIDE_HINT = (
    "To provide it, copy the course's data mirror into the data root "
    "(`labkit data --from-mirror ../shared/datasets --root {root}`, or `cp -r ../shared/datasets/. {root}/`), "
    "or point LABKIT_DATA at a writable copy of it (`export LABKIT_DATA=/path/to/datasets-copy`)."
)


class DataNotFoundError(FileNotFoundError):
    """A data set (or weights file) is not where labkit looked, and could not be fetched.

    The message says which data set, the full paths looked for, and how to provide it.
    ``dataset``, ``looked_for`` and ``how`` are kept as attributes.
    """

    def __init__(self, dataset: str, looked_for: Sequence[str | os.PathLike] | str | os.PathLike = (),
                 how: str | None = None) -> None:
        if isinstance(looked_for, (str, os.PathLike)):
            looked_for = [looked_for]
        self.dataset = str(dataset)
        self.looked_for = [str(p) for p in looked_for]
        self.how = how
        super().__init__(self._compose())

    def _compose(self) -> str:
        lines = [f"data set {self.dataset!r} not found."]
        if self.looked_for:
            lines.append("Looked for:")
            lines.extend(f"  {p}" for p in self.looked_for)
        how = self.how if self.how is not None else PROVIDE_HINT.format(root=_display_root())
        if how:
            lines.append(how)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.args[0] if self.args else ""

    def __reduce__(self):  # keep the message intact through pickling (e.g. worker processes)
        return (self.__class__, (self.dataset, self.looked_for, self.how))


def _display_root() -> str:
    try:
        return str(data_root())
    except Exception:  # pragma: no cover - a broken HOME must not hide the real error
        return "$LABKIT_DATA"


def data_root() -> Path:
    """The data root: ``$LABKIT_DATA``, else ``$XDG_CACHE_HOME/labkit`` or ``~/.cache/labkit``.

    Not created here; writers create what they need (``mkdir(parents=True)``).
    """
    env = os.environ.get("LABKIT_DATA", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return (base / "labkit").resolve()


def checkpoint_root() -> Path:
    """Where ``train_or_load`` keeps checkpoints: ``$LABKIT_CHECKPOINTS``, else ``data_root()/checkpoints``."""
    env = os.environ.get("LABKIT_CHECKPOINTS", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return data_root() / "checkpoints"


def _as_path(path: str | os.PathLike, arg: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{arg} must be a str or Path, got {type(path).__name__} ({path!r})")
    return Path(path).expanduser()


def _check_hash(sha256: object) -> str:
    """A lower-case hex SHA-256 or a prefix of one (at least 8 characters, torchvision's style)."""
    if not isinstance(sha256, str):
        raise TypeError(f"sha256 must be a hex string, got {type(sha256).__name__} ({sha256!r})")
    h = sha256.strip().lower()
    if not (8 <= len(h) <= 64) or not _HEX.match(h):
        raise ValueError(
            f"sha256 must be 8 to 64 hex characters (a full SHA-256 or a prefix of one), got {sha256!r}"
        )
    return h


def sha256sum(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB chunks."""
    p = _as_path(path, "path")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | os.PathLike, sha256: str) -> bool:
    """True when ``path`` is a file whose SHA-256 starts with ``sha256`` (a full digest or a prefix)."""
    expected = _check_hash(sha256)
    p = _as_path(path, "path")
    if not p.is_file():
        return False
    return sha256sum(p).startswith(expected)


def download(url: str, dest: str | os.PathLike, *, sha256: str, desc: str | None = None,
             timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` once, checking its SHA-256 (a full digest or a prefix of >= 8 chars).

    A file already at ``dest`` with the right hash is returned at once (no network). Otherwise
    the data goes to a temporary file beside ``dest``, is hashed, and is renamed into place
    atomically; a wrong hash deletes the temporary file and raises ``ValueError`` with both
    hashes; a network failure raises :class:`DataNotFoundError` with the URL and the exact
    destination, so the file can be fetched by hand.
    """
    if not isinstance(url, str) or not url:
        raise TypeError(f"url must be a non-empty str, got {url!r}")
    expected = _check_hash(sha256)
    dest = _as_path(dest, "dest")
    name = desc or dest.name
    if verify(dest, expected):
        return dest
    how = (f"Could not download it from {url}. On a machine with internet run\n"
           f"  curl -L --create-dirs -o {dest} {url}\n"
           f"and copy the file to exactly {dest} (SHA-256 starting with {expected[:16]}).")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataNotFoundError(name, [dest], f"Cannot create {dest.parent}: {exc}. " + how) from exc
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DataNotFoundError(name, [dest], f"Download failed ({reason}). " + how) from exc
        got = h.hexdigest()
        if not got.startswith(expected):
            raise ValueError(
                f"SHA-256 mismatch for {name} downloaded from {url}: expected {expected}, got {got}. "
                f"The download was deleted; check the URL or fetch the file by hand to {dest}."
            )
        os.replace(tmp, dest)
        return dest
    finally:
        if tmp.exists():
            tmp.unlink()


def require(name: str, relative_paths: str | os.PathLike | Sequence[str | os.PathLike], *,
            root: str | os.PathLike | None = None, hint: str = "") -> Path:
    """The data root holding every one of ``relative_paths``, else :class:`DataNotFoundError` for ``name``.

    ``root`` defaults to :func:`data_root`; ``hint`` is prepended to the how-to-fix text.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str (the data set's name), got {name!r}")
    if isinstance(relative_paths, (str, os.PathLike)):
        relative_paths = [relative_paths]
    rels = [Path(p) for p in relative_paths]
    if not rels:
        raise ValueError("relative_paths must name at least one file or folder under the data root")
    for p in rels:
        if p.is_absolute():
            raise ValueError(f"relative_paths must be relative to the data root, got the absolute path {p}")
    base = data_root() if root is None else _as_path(root, "root").resolve()
    missing = [base / p for p in rels if not (base / p).exists()]
    if not missing:
        return base
    how = PROVIDE_HINT.format(root=base)
    raise DataNotFoundError(name, missing, f"{hint} {how}".strip() if hint else how)
