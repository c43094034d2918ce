"""Benchmark labkit's explainers against Captum and pytorch-grad-cam (issue 3), on the CPU.

    python bench/explainers.py            # everything (the batch occlusion takes long)
    python bench/explainers.py --quick    # batch occlusion on 4 images only, fewer repeats

Setups: ResNet-18 (torchvision, random weights) on a batch of 16 at 224x224, and the course's
``small_cnn`` on a batch of 256 at 32x32; torch threads = 2. Every method gets one warm-up call,
then the libraries run round-robin (so load changes on a shared machine hit them alike) and
the median is kept. Printed and written to bench/RESULTS.md: time, images/s, the ratio to the
floor of one forward + one backward pass, and the goals of issue 3. Text after the line
``<!-- notes -->`` in an existing RESULTS.md is kept (hand-written analysis).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

import labkit as lk

warnings.filterwarnings("ignore")
from captum.attr import (  # noqa: E402
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTES_MARKER = "<!-- notes -->"


def setups(quick: bool) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    small = lk.get_model("small_cnn").eval()
    return [
        dict(name="ResNet-18", model=resnet, x=torch.rand(16, 3, 224, 224, generator=g), classes=1000,
             layer="layer4", window=32, stride=16, ig_steps=8, sg_samples=8, occ_batch=4 if quick else 16,
             repeats=dict(cheap=5, heavy=1, occ1=3, occn=1) if quick else dict(cheap=7, heavy=3, occ1=3, occn=1)),
        dict(name="small_cnn", model=small, x=torch.rand(256, 3, 32, 32, generator=g), classes=10,
             layer="features.7", window=8, stride=4, ig_steps=32, sg_samples=25, occ_batch=256,
             repeats=dict(cheap=15, heavy=3, occ1=15, occn=1) if quick else dict(cheap=21, heavy=5, occ1=21, occn=3)),
    ]  # fmt: skip


def run_group(entries: dict[str, Callable[[], object]], repeats: int, warmup: bool) -> dict[str, tuple[float, float]]:
    """Median (wall seconds, process CPU seconds) per entry; entries alternate inside every repeat."""
    if warmup:
        for fn in entries.values():
            fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in entries}
    for _ in range(repeats):
        for k, fn in entries.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[k].append((time.perf_counter() - t0, time.process_time() - c0))
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}


def bench_setup(s: dict, log: Callable[[str], None]) -> list[dict]:
    reps = s["repeats"]
    model, x, layer = s["model"], s["x"], s["layer"]
    b = len(x)
    t = torch.randint(0, s["classes"], (b,), generator=torch.Generator().manual_seed(1))
    chunk_g = max(1, 2**22 // x[0].numel())  # labkit's default rows per pass with gradients
    module = lk.get_layer(model, layer)
    rows: list[dict] = []

    def record(group: str, result: dict[str, tuple[float, float]], n_images: int) -> None:
        for lib, (sec, cpu) in result.items():
            rows.append(dict(group=group, lib=lib, sec=sec, cpu=cpu, ips=n_images / sec))
            log(f"  {s['name']:10s} {group:34s} {lib:42s} {sec:8.3f} s {cpu:8.3f} cpu-s {n_images / sec:9.1f} img/s")

    def floor() -> None:
        v = x.clone().requires_grad_(True)
        out = model(v)
        out.gather(1, t[:, None]).sum().backward()
        for p in model.parameters():
            p.grad = None

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def pgc_gradcam() -> object:
        with GradCAM(model, [module]) as cam:
            out = cam(x, targets=[ClassifierOutputTarget(int(c)) for c in t])
        for p in model.parameters():
            p.grad = None
        return out

    cheap = {
        "floor": {"forward + backward": floor, "forward only": forward},
        "saliency": {
            "labkit": lambda: lk.saliency(model, x, t),
            "captum Saliency": lambda: Saliency(model).attribute(x, target=t, abs=True).amax(1),
        },
        "gradient_x_input": {
            "labkit": lambda: lk.gradient_x_input(model, x, t),
            "captum InputXGradient": lambda: InputXGradient(model).attribute(x, target=t),
        },
        "guided_backprop": {
            "labkit": lambda: lk.guided_backprop(model, x, t),
            "captum GuidedBackprop": lambda: GuidedBackprop(model).attribute(x, target=t),
        },
        "deconvnet": {
            "labkit": lambda: lk.deconvnet(model, x, t),
            "captum Deconvolution": lambda: Deconvolution(model).attribute(x, target=t),
        },
        "grad_cam": {
            "labkit": lambda: lk.grad_cam(model, x, layer, t),
            "captum LayerGradCam+interpolate": lambda: LayerAttribution.interpolate(
                LayerGradCam(model, module).attribute(x, target=t, relu_attributions=True), x.shape[-2:], "bilinear"
            ),
            "pytorch-grad-cam GradCAM": pgc_gradcam,
        },
        "guided_grad_cam": {
            "labkit": lambda: lk.guided_grad_cam(model, x, layer, t),
            "captum GuidedGradCam": lambda: GuidedGradCam(model, module).attribute(
                x, target=t, interpolate_mode="bilinear"
            ),
        },
    }
    for group, entries in cheap.items():
        record(group, run_group(entries, reps["cheap"], warmup=True), b)

    steps, samples = s["ig_steps"], s["sg_samples"]
    sigma = 0.15 * float((x.flatten(1).amax(1) - x.flatten(1).amin(1)).mean())
    heavy = {
        f"integrated_gradients ({steps} steps)": {
            "labkit": lambda: lk.integrated_gradients(model, x, t, steps=steps),
            f"captum IG trapezoid, batch {chunk_g}": lambda: IntegratedGradients(model).attribute(
                x, target=t, n_steps=steps, method="riemann_trapezoid", internal_batch_size=chunk_g
            ),
        },
        f"smoothgrad ({samples} samples)": {
            "labkit": lambda: lk.smoothgrad(model, x, t, samples=samples),
            f"captum NoiseTunnel(Saliency), batch {max(1, chunk_g // b)}": lambda: NoiseTunnel(Saliency(model))
            .attribute(x, nt_type="smoothgrad", nt_samples=samples, stdevs=sigma,
                       nt_samples_batch_size=max(1, chunk_g // b), target=t, abs=True)
            .amax(1),
        },
    }  # fmt: skip
    for group, entries in heavy.items():
        record(group, run_group(entries, reps["heavy"], warmup=False), b)

    win, st = s["window"], s["stride"]

    def prob(v: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(v), 1)

    def occ_entries(v: torch.Tensor, tv: torch.Tensor) -> dict[str, Callable[[], object]]:
        def captum(ppe: int) -> Callable[[], object]:
            return lambda: Occlusion(prob).attribute(
                v, sliding_window_shapes=(3, win, win), strides=(3, st, st), target=tv, baselines=0.0,
                perturbations_per_eval=ppe,
            )  # fmt: skip

        return {
            "labkit": lambda: lk.occlusion(model, v, tv, window=win, stride=st),
            "captum Occlusion ppe=1 (default)": captum(1),
            "captum Occlusion ppe=64": captum(64),
        }

    n = s["occ_batch"]
    record(f"occlusion {win}/{st}, 1 image", run_group(occ_entries(x[:1], t[:1]), reps["occ1"], warmup=False), 1)
    record(f"occlusion {win}/{st}, {n} images", run_group(occ_entries(x[:n], t[:n]), reps["occn"], warmup=False), n)
    return rows


def goals(name: str, rows: list[dict]) -> list[str]:
    """Goal rows, judged on the wall-clock median and, as a less load-sensitive check, on CPU time."""
    wall = {(r["group"], r["lib"]): r["sec"] for r in rows}
    cpu = {(r["group"], r["lib"]): r["cpu"] for r in rows}
    out = []

    def line(goal: str, ours: float, ref: float, ours_c: float, ref_c: float, limit: float, what: str) -> None:
        r, rc = ours / ref, ours_c / ref_c
        ok, ok_c = ("met" if r <= limit else "MISSED"), ("met" if rc <= limit else "MISSED")
        out.append(f"| {name} | {goal} | {r:.2f}x {what} (CPU {rc:.2f}x) | {ok} (CPU: {ok_c}) |")

    groups = sorted({r["group"] for r in rows if r["group"] != "floor"}, key=[r["group"] for r in rows].index)
    floor = ("floor", "forward + backward")
    for g in groups:
        peers = {lib: v for (gg, lib), v in wall.items() if gg == g and lib != "labkit"}
        best_lib = min(peers, key=peers.get)
        line(f"{g}: labkit <= fastest peer ({best_lib})", wall[(g, "labkit")], wall[(g, best_lib)],
             cpu[(g, "labkit")], cpu[(g, best_lib)], 1.0, "the peer's time")
        if g in ("saliency", "guided_backprop"):
            line(f"{g}: within 1.15x of the floor", wall[(g, "labkit")], wall[floor], cpu[(g, "labkit")], cpu[floor],
                 1.15, "the floor")
        if g == "grad_cam":
            ref = (g, "captum LayerGradCam+interpolate")
            line(f"{g}: at most Captum's LayerGradCam", wall[(g, "labkit")], wall[ref], cpu[(g, "labkit")], cpu[ref],
                 1.0, "Captum's time")
        if g.startswith("occlusion") and "1 image" in g:
            ref = (g, "captum Occlusion ppe=1 (default)")
            line(f"{g}: >= 2x faster than Captum's default (ppe=1)", wall[(g, "labkit")], wall[ref],
                 cpu[(g, "labkit")], cpu[ref], 0.5, "Captum's time")
    return out  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch occlusion on 4 ResNet images, fewer repeats")
    ap.add_argument("--only", default=None, help="run one setup: ResNet-18 or small_cnn")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    command = "python bench/explainers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    started = datetime.datetime.now().astimezone()
    load0 = os.getloadavg()
    print(f"{command}\nstarted {started:%Y-%m-%d %H:%M %Z}, load average {load0[0]:.1f}, torch threads 2", flush=True)

    table, goal_rows, described = [], [], []
    for s in setups(args.quick):
        if args.only and s["name"] != args.only:
            continue
        rows = bench_setup(s, lambda line: print(line, flush=True))
        floor = next(r["sec"] for r in rows if r["group"] == "floor" and r["lib"] == "forward + backward")
        for r in rows:
            ratio = f"{r['sec'] / floor:.2f}" if not r["group"].startswith("occlusion") else "-"
            table.append(
                f"| {s['name']} | {r['group']} | {r['lib']} | {r['sec']:.3f} | {r['cpu']:.3f} | {r['ips']:.1f} | {ratio} |"
            )
        goal_rows += goals(s["name"], rows)
        described.append(
            f"- {s['name']}: batch {len(s['x'])} at {s['x'].shape[-1]}x{s['x'].shape[-1]}, Grad-CAM layer "
            f"`{s['layer']}`, IG {s['ig_steps']} steps, SmoothGrad {s['sg_samples']} samples, occlusion window "
            f"{s['window']} stride {s['stride']} on 1 image and on {s['occ_batch']} images; timed runs (median): "
            f"{s['repeats']['cheap']} for the single-pass methods (after one warm-up), {s['repeats']['heavy']} for IG "
            f"and SmoothGrad, {s['repeats']['occ1']} for single-image and {s['repeats']['occn']} for batch occlusion"
        )
    load1 = os.getloadavg()
    ended = datetime.datetime.now().astimezone()

    notes = ""
    if args.out.exists():
        old = args.out.read_text()
        if NOTES_MARKER in old:
            notes = old[old.index(NOTES_MARKER):]
    text = "\n".join(
        [
            "# Explainer benchmark: labkit vs Captum vs pytorch-grad-cam (CPU)",
            "",
            f"Command: `{command}` (written by the script).  ",
            f"Run: {started:%Y-%m-%d %H:%M} to {ended:%H:%M %Z}; {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs shared with other jobs (load average {load0[0]:.1f} at the start, "
            f"{load1[0]:.1f} at the end), torch {torch.__version__} with 2 threads, "
            f"captum {__import__('captum').__version__}, pytorch-grad-cam "
            f"{getattr(__import__('pytorch_grad_cam'), '__version__', '1.5.x')}.  ",
            "Medians of several timed runs (counts below); the libraries alternate inside each repeat. "
            "Floor = one forward + one backward (input and weight gradients). "
            "CPU s = process CPU time (both threads), less sensitive to the other jobs than the wall clock.",
            "",
            *described,
            "",
            "| model | method | implementation | median s | CPU s | images/s | / floor |",
            "|---|---|---|---:|---:|---:|---:|",
            *table,
            "",
            "## Goals (issue 3)",
            "",
            "| model | goal | measured (wall; CPU) | verdict |",
            "|---|---|---|---|",
            *goal_rows,
            "",
            notes or NOTES_MARKER + "\n",
        ]
    )
    args.out.write_text(text)
    print("\n".join(["", *goal_rows, "", f"wrote {args.out}"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
