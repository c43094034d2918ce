"""Training progress: the one mechanism every trainer (``fit``, ``train_vae``, ``train_gan``,
``train_dann``, ``train_segmentation``) uses to show its epochs.

``LABKIT_PROGRESS`` chooses what is shown:

- ``"bar"`` (default): a live tqdm bar in JupyterLab or a terminal, the last epoch's numbers beside it;
- ``"plain"`` (set by ``labkit run`` and the grader, so under papermill): one static line per
  training run, written when it ends: ``desc: epoch 25/25  train loss ... | val loss ...``. A page
  shows the result, not a log of every epoch (the per-epoch numbers are in the returned history);
- ``"epochs"``: a line per epoch (a terminal, when watching a long run);
- ``"none"``: nothing.
"""

from __future__ import annotations

import os
from types import TracebackType

__all__ = ["progress_mode", "EpochProgress", "PROGRESS_MODES"]

PROGRESS_MODES = ("bar", "plain", "epochs", "none")


def progress_mode() -> str:
    """The progress mode from ``LABKIT_PROGRESS`` (one of :data:`PROGRESS_MODES`; unknown values: ``"bar"``)."""
    mode = os.environ.get("LABKIT_PROGRESS", "bar")
    return mode if mode in PROGRESS_MODES else "bar"


class EpochProgress:
    """Shows a training run's epochs: ``with EpochProgress(desc, epochs) as p: ... p.update(line)``.

    ``update`` is called once per finished epoch with that epoch's summary line. In ``"plain"``
    mode the last line is printed once, when the run ends without an error (a run stopped by an
    exception shows the exception instead).
    """

    def __init__(self, desc: str | None, epochs: int, *, default_desc: str = "training") -> None:
        self.desc = desc
        self.label = desc or default_desc
        self.epochs = int(epochs)
        self.mode = progress_mode()
        self.done = 0
        self.last = ""
        self._bar = None

    def _line(self) -> str:
        prefix = f"{self.desc}: " if self.desc else ""
        return f"{prefix}epoch {self.done}/{self.epochs}  {self.last}"

    def __enter__(self) -> "EpochProgress":
        if self.mode == "bar" and self.epochs > 0:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.epochs, desc=self.label, unit="epoch", leave=True)
        return self

    def update(self, line: str) -> None:
        """One epoch finished; ``line`` holds its numbers."""
        self.done += 1
        self.last = line
        if self._bar is not None:
            self._bar.set_postfix_str(line)
            self._bar.update(1)
        elif self.mode == "epochs":
            print(self._line(), flush=True)

    def message(self, text: str) -> None:
        """A message the user must see whatever the mode (e.g. a diverged run), above the bar."""
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "plain" and exc_type is None and self.done:
            print(self._line(), flush=True)
