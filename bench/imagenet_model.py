"""EfficientNet-Lite0 (``lk.imagenet_model``): accuracy on the mirror and speed (prints only).

Usage (from the repository root, venv active):

    python bench/imagenet_model.py --data ../shared/datasets            # 2 threads, 7 repeats
    python bench/imagenet_model.py --data ../shared/datasets --threads 1

Prints top-1/top-5 on the 300 ImageNet validation images of the mirror with labkit's loader
(shorter side to 224, centre crop) and with the TensorFlow evaluation's (bicubic, shorter side to
256, centre crop 224), the top-3 of the photos that ship with packages, and the median wall-clock
time of a forward and of a forward+backward pass per 224-pixel image (batches of 8 and of 1).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import labkit as lk


def _tf_eval(root: Path) -> torch.Tensor:
    import csv

    from PIL import Image
    from torchvision import transforms as T

    folder = root / "imagenet_samples"
    tf = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor()])
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return torch.stack([tf(Image.open(folder / "val" / r["filename"]).convert("RGB")) for r in rows]).clamp(0, 1)


def _accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = torch.cat([model(images[i:i + 50]) for i in range(0, len(images), 50)])
    top5 = logits.topk(5, dim=1).indices
    return (top5[:, 0] == labels).float().mean().item(), (top5 == labels[:, None]).any(1).float().mean().item()


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="data root holding imagenet_samples (the mirror)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, names = lk.imagenet_model(), lk.imagenet_classes()
    print(f"EfficientNet-Lite0: {lk.count_parameters(model):,} parameters; torch {torch.__version__}, "
          f"{args.threads} threads")
    if args.data is not None:
        data = lk.imagenet_samples(root=args.data, size=224)
        print("300 ImageNet images, labkit loader (short side 224, bilinear): top-1 %.3f, top-5 %.3f"
              % _accuracy(model, data.images, data.labels))
        print("300 ImageNet images, TF evaluation (short side 256, bicubic, crop 224): top-1 %.3f, top-5 %.3f"
              % _accuracy(model, _tf_eval(args.data), data.labels))
    photos = lk.photos(size=224)
    with torch.no_grad():
        probs = torch.softmax(model(torch.stack(list(photos.values()))), dim=1)
    for name, p in zip(photos, probs):
        top = p.topk(3)
        print(f"  {name:>22}: " + ", ".join(f"{names[i]} {float(v):.2f}" for v, i in zip(top.values, top.indices)))
    for batch in (8, 1):
        x = torch.rand(batch, 3, 224, 224)

        def forward():
            with torch.no_grad():
                model(x)

        def backward():
            xg = x.clone().requires_grad_(True)
            model(xg)[:, 0].sum().backward()

        f, b = _median_time(forward, args.repeats), _median_time(backward, args.repeats)
        print(f"batch {batch}: forward {1000 * f / batch:.1f} ms per image, forward+backward {1000 * b / batch:.1f} ms "
              f"per image (median of {args.repeats})")


if __name__ == "__main__":
    main()
