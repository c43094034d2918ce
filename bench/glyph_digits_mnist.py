"""How well do glyph digits stand in for MNIST? Train a small CNN on them only, test on real MNIST.

Usage (from the repository root, venv active):

    python bench/glyph_digits_mnist.py                      # 4 epochs x 30,000 fresh glyph digits
    python bench/glyph_digits_mnist.py --split train10k     # evaluate on MNIST train[:10000] (for tuning)

The real MNIST files are read from the mirror (``../shared/datasets/MNIST/raw``, or ``--mnist DIR``):
the idx gzip files are parsed with NumPy, nothing is downloaded. Every epoch draws a fresh set
of glyph digits (seed = ``--seed`` + epoch); no MNIST image is used for training or model
selection. Tune the generator against ``--split train10k`` and report ``--split test``.
Prints the accuracy, per-class accuracies, the most frequent confusions and the timings.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import labkit.datasets as lkd

ROOT = Path(__file__).resolve().parents[1]


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx (ubyte) gzip file: images -> [N, 28, 28] uint8, labels -> [N] uint8."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(raw: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "t10k" if split == "test" else "train"
    x = read_idx(raw / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx(raw / f"{prefix}-labels-idx1-ubyte.gz")
    if split == "train10k":
        x, y = x[:10000], y[:10000]
    return torch.from_numpy(x.astype(np.float32) / 255.0)[:, None], torch.from_numpy(y.astype(np.int64))


class SmallCNN(nn.Module):
    """conv32-pool-conv64-pool-fc128-fc10, about 420k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(self.drop(F.relu(self.fc1(x.flatten(1)))))


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n", type=int, default=30000, help="fresh glyph digits per epoch")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--split", choices=["test", "train10k"], default="test")
    ap.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "datasets" / "MNIST" / "raw")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    xt, yt = load_mnist(args.mnist, args.split)
    model = SmallCNN()
    steps = args.epochs * (args.n // args.batch)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    gen_time = train_time = 0.0
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        data = lkd.glyph_digits(args.n, seed=args.seed * 1000 + epoch)
        gen_time += time.perf_counter() - t0
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(args.n)
        total = 0.0
        for i in range(args.n // args.batch):
            idx = perm[i * args.batch:(i + 1) * args.batch]
            loss = F.cross_entropy(model(data.images[idx]), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        train_time += time.perf_counter() - t0
        acc = (predict(model, xt) == yt).float().mean().item()
        print(f"epoch {epoch + 1}: train loss {total / (args.n // args.batch):.4f}  "
              f"MNIST {args.split} accuracy {acc:.4f}", flush=True)
    pred = predict(model, xt)
    acc = (pred == yt).float().mean().item()
    per_class = [(pred[yt == c] == c).float().mean().item() for c in range(10)]
    conf = torch.zeros(10, 10, dtype=torch.long)
    conf.index_put_((yt, pred), torch.ones_like(yt), accumulate=True)
    off = [(int(conf[i, j]), i, j) for i in range(10) for j in range(10) if i != j]
    off.sort(reverse=True)
    print(f"budget: {args.epochs} epochs x {args.n} fresh glyph digits, batch {args.batch}, Adam one-cycle "
          f"lr {args.lr}, {sum(p.numel() for p in model.parameters())} parameters, {args.threads} threads")
    print(f"generation {gen_time:.1f} s, training {train_time:.1f} s")
    print("per-class accuracy: " + " ".join(f"{c}:{a:.3f}" for c, a in enumerate(per_class)))
    print("top confusions (count true->pred): " + ", ".join(f"{n} {i}->{j}" for n, i, j in off[:8]))
    print(f"MNIST {args.split} accuracy: {acc:.4f}")


if __name__ == "__main__":
    main()
