"""labkit.attribution against Captum 0.9 and pytorch-grad-cam 1.5 on four small random models.

Agreement is required within 1e-5 relative (max |labkit - reference| <= 1e-5 * max |reference|,
per image), in float64; pytorch-grad-cam computes in float32 and is compared on [0, 1] maps.
Differences by definition are tested explicitly (see each test's docstring):

- Captum's ``riemann_trapezoid`` weights are 1/steps (sum (steps-1)/steps): labkit's trapezoid IG
  (weights 1/(steps-1)) is Captum's times steps/(steps-1); the right/left/middle rules are equal.
- Captum's LayerGradCam does not apply the ReLU unless ``relu_attributions=True``, and
  ``LayerAttribution.interpolate`` / GuidedGradCam upsample with ``"nearest"`` by default;
  labkit applies the ReLU and upsamples bilinearly (the paper's choice).
- pytorch-grad-cam min-max normalizes each map (``/(max + 1e-7)``) before and after resizing with
  cv2 (bilinear = torch bilinear with ``align_corners=False``), in float32.
- pytorch-grad-cam on the CPU stores the layer output without copying it, so when an in-place
  op follows the layer (VGG's ``ReLU(inplace=True)`` after a conv) it combines post-ReLU
  activations with pre-ReLU gradients; labkit (and Captum) copy the output and use pre-ReLU values.
- Occlusion: Captum's map is input-sized, each pixel the mean of (p_clean - p_occluded) over the
  windows covering it; labkit returns the grid of p_occluded, from which Captum's map is rebuilt.
"""

from __future__ import annotations

import copy
import importlib
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labkit as lk



def _test_extra(module: str, package: str):  # noqa: ANN202
    """Import a reference library of the test extras; a missing one FAILS (CI installs the extras)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} is not importable ({exc}): the cross-checks need the test extras, pinned in "
                    f"pyproject.toml ({package}); install them with `pip install -e '.[test]'`", pytrace=False)


captum_attr = _test_extra("captum.attr", "captum==0.9.0")
pgc = _test_extra("pytorch_grad_cam", "grad-cam==1.5.7")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

REL = 1e-5
TARGETS = torch.tensor([1, 4, 7])


class Block(nn.Module):
    """torchvision BasicBlock pattern: one in-place ReLU module applied twice, ``out += x``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


def plain_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    )  # fmt: skip


def bn_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip


def res_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), Block(6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10)
    )


def vgg_like() -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
    )  # fmt: skip
    return nn.Sequential(features, nn.Flatten(), nn.Linear(128, 16), nn.ReLU(inplace=True), nn.Linear(16, 10))


MODELS: dict[str, Callable[[], nn.Module]] = {"plain": plain_cnn, "bn": bn_cnn, "res": res_cnn, "vgg": vgg_like}
# Grad-CAM layers: a ReLU output and a layer whose output is modified in place afterwards
CAM_LAYERS = {"plain": ["4", "3"], "bn": ["6", "4"], "res": ["2", "2.bn2"], "vgg": ["0.6", "0.5"]}
# layers whose output nothing modifies in place (pytorch-grad-cam stores them uncopied on the CPU)
PGC_LAYERS = {"plain": ["4", "3"], "bn": ["6", "4"], "res": ["2"], "vgg": ["0.6"]}


def make(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = MODELS[name]()
    for m in model.modules():  # random running statistics, so eval-mode batch norm is not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.double().eval()


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_rel(ours: torch.Tensor, ref: torch.Tensor, rel: float = REL) -> None:
    """Per image: max |ours - ref| <= rel * max |ref|, and the reference is not all zero."""
    ours, ref = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(ref, dtype=torch.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = ref.flatten(1).abs().amax(1)
    assert (scale > 0).all(), "degenerate reference map (all zero): the comparison would prove nothing"
    err = (ours - ref).flatten(1).abs().amax(1)
    assert (err <= rel * scale).all(), f"relative error {(err / scale).tolist()} > {rel}"


def cam_targets(model: nn.Module, layers: list[str], x: torch.Tensor) -> torch.Tensor:
    """Per image, the class whose Grad-CAM (Captum's, ReLU applied) is most positive at every layer
    (random models often give an all-zero map for an arbitrary class, which would compare nothing)."""
    best = None
    for layer in layers:
        lgc = captum_attr.LayerGradCam(model, lk.get_layer(model, layer))
        peaks = torch.stack(
            [lgc.attribute(x.clone(), target=k, relu_attributions=True).flatten(1).amax(1) for k in range(10)], 1
        )
        peaks = peaks / peaks.amax(1, keepdim=True).clamp(min=1e-300)
        best = peaks if best is None else torch.minimum(best, peaks)
    return best.argmax(1)


@pytest.fixture(autouse=True)
def _quiet_captum():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Input Tensor 0 did not already require gradients"
        yield


@pytest.fixture(params=list(MODELS))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


# --------------------------------------------------------------------------------------------- Captum


def test_saliency_and_input_x_gradient(name: str) -> None:
    model, x = make(name), inputs()
    ref = captum_attr.Saliency(model).attribute(x.clone(), target=TARGETS, abs=True).amax(1)
    assert_rel(lk.saliency(model, x, TARGETS), ref)
    assert_rel(lk.gradient_x_input(model, x, TARGETS), captum_attr.InputXGradient(model).attribute(x.clone(), target=TARGETS))


@pytest.mark.parametrize("method", ["right", "left", "middle"])
def test_integrated_gradients(name: str, method: str) -> None:
    model, x = make(name), inputs()
    base = torch.full_like(x, -0.3)
    ref = captum_attr.IntegratedGradients(model).attribute(
        x.clone(), baselines=base, target=TARGETS, n_steps=9, method=f"riemann_{method}"
    )
    assert_rel(lk.integrated_gradients(model, x, TARGETS, baseline=-0.3, steps=9, method=method), ref)


def test_integrated_gradients_trapezoid_differs_by_steps_over_steps_minus_one(name: str) -> None:
    """Captum's riemann_trapezoid uses weights 1/n on linspace(0, 1, n) (sum (n-1)/n); labkit 1/(n-1)."""
    model, x = make(name), inputs()
    n = 9
    ref = captum_attr.IntegratedGradients(model).attribute(
        x.clone(), target=TARGETS, n_steps=n, method="riemann_trapezoid"
    )
    ours = lk.integrated_gradients(model, x, TARGETS, steps=n)
    assert_rel(ours * (n - 1) / n, ref)
    assert ((ours - ref).abs().amax() > 1e-3 * ref.abs().amax()).item()  # the difference is real


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_guided_backprop_and_deconvnet(name: str, rule: str) -> None:
    """Captum's GuidedBackprop / Deconvolution (ReLU module backward hooks) on the same models,
    in-place and reused ReLUs included; Captum's Deconvolution = relu(grad_out) = Springenberg's rule."""
    model, x = make(name), inputs()
    if rule == "guided":
        ref, ours = captum_attr.GuidedBackprop(model).attribute(x.clone(), target=TARGETS), lk.guided_backprop
    else:
        ref, ours = captum_attr.Deconvolution(model).attribute(x.clone(), target=TARGETS), lk.deconvnet
    assert_rel(ours(model, x, TARGETS), ref)


def test_grad_cam_against_layer_grad_cam(name: str) -> None:
    model, x = make(name), inputs()
    t = cam_targets(model, CAM_LAYERS[name], x)
    for layer in CAM_LAYERS[name]:
        lgc = captum_attr.LayerGradCam(model, lk.get_layer(model, layer))
        negative = False
        for k in (0, 5, 9):  # Captum's default has no ReLU: labkit = relu(Captum)
            raw = lgc.attribute(x.clone(), target=k)[:, 0]
            low = lk.grad_cam(model, x, layer, k, upsample=False)
            assert (low - raw.clamp(min=0)).abs().amax() <= REL * raw.abs().amax()
            negative |= bool((raw < 0).any())
        assert negative  # the ReLU difference is real on these models
        relu = lgc.attribute(x.clone(), target=t, relu_attributions=True)
        for mode in ("bilinear", "nearest"):
            ref = captum_attr.LayerAttribution.interpolate(relu, (16, 16), interpolate_mode=mode)[:, 0]
            assert_rel(lk.grad_cam(model, x, layer, t, mode=mode), ref)


def test_guided_grad_cam(name: str) -> None:
    model, x = make(name), inputs()
    layer = CAM_LAYERS[name][0]
    t = cam_targets(model, [layer], x)
    ggc = captum_attr.GuidedGradCam(model, lk.get_layer(model, layer))
    assert_rel(lk.guided_grad_cam(model, x, layer, t), ggc.attribute(x.clone(), target=t, interpolate_mode="bilinear"))
    # Captum's default upsampling is "nearest"
    assert_rel(lk.guided_grad_cam(model, x, layer, t, mode="nearest"), ggc.attribute(x.clone(), target=t))


# --------------------------------------------------------------------------------------------- pytorch-grad-cam


def _pgc_normalize(cam: torch.Tensor) -> torch.Tensor:
    cam = cam - cam.amin((1, 2), keepdim=True)
    return cam / (1e-7 + cam.amax((1, 2), keepdim=True))


def _pgc_pipeline(low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """pytorch-grad-cam's post-processing: normalize, cv2 bilinear resize, normalize again."""
    up = F.interpolate(_pgc_normalize(low)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return _pgc_normalize(up)


def _run_pgc(model: nn.Module, layer: str, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    model = copy.deepcopy(model).float()  # GradCAM sets eval() and fills .grad: work on a copy
    with pgc.GradCAM(model, [lk.get_layer(model, layer)]) as cam:
        return cam(x.float(), targets=[ClassifierOutputTarget(int(t)) for t in targets])


def test_grad_cam_against_pytorch_grad_cam(name: str) -> None:
    model, x = make(name), inputs()
    t = cam_targets(model, PGC_LAYERS[name], x)
    for layer in PGC_LAYERS[name]:
        ref = torch.from_numpy(_run_pgc(model, layer, x, t))
        low = lk.grad_cam(model, x, layer, t, upsample=False)
        assert_rel(_pgc_pipeline(low, (16, 16)), ref)


def test_pytorch_grad_cam_mixes_post_relu_activations_after_an_inplace_relu() -> None:
    """VGG-like, layer "0.5" = conv followed by ReLU(inplace=True): on the CPU pytorch-grad-cam keeps
    the conv output uncopied, the ReLU overwrites it, and its map uses relu(A) with dscore/dA."""
    model, x = make("vgg"), inputs()
    t = cam_targets(model, ["0.5"], x)
    ref = torch.from_numpy(_run_pgc(model, "0.5", x, t))
    with lk.capture(model, "0.5", gradients=True) as cap:
        model(x).gather(1, t[:, None]).sum().backward()
    a, g = cap.activations["0.5"].detach(), cap.gradients["0.5"]
    mixed = (g.mean((2, 3), keepdim=True) * a.clamp(min=0)).sum(1).clamp(min=0)
    assert_rel(_pgc_pipeline(mixed, (16, 16)), ref)
    ours = _pgc_pipeline(lk.grad_cam(model, x, "0.5", t, upsample=False), (16, 16))
    assert (ours - ref).abs().max() > 0.05  # a real difference, not rounding
    twin = copy.deepcopy(model)  # the same weights with out-of-place ReLUs: pytorch-grad-cam agrees with us
    for m in twin.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    assert_rel(ours, torch.from_numpy(_run_pgc(twin, "0.5", x, t)))


# --------------------------------------------------------------------------------------------- occlusion


def _brute_force_occlusion(model: nn.Module, x: torch.Tensor, target: torch.Tensor, window: int, stride: int,
                           baseline: float) -> torch.Tensor:  # fmt: skip
    b, _, h, w = x.shape
    rows = range(0, h - window + 1, stride)
    cols = range(0, w - window + 1, stride)
    out = torch.zeros(b, len(rows), len(cols), dtype=x.dtype)
    with torch.no_grad():
        for n in range(b):
            for i, y0 in enumerate(rows):
                for j, x0 in enumerate(cols):
                    copy_ = x[n : n + 1].clone()
                    copy_[:, :, y0 : y0 + window, x0 : x0 + window] = baseline
                    out[n, i, j] = torch.softmax(model(copy_), 1)[0, target[n]]
    return out


@pytest.mark.parametrize(
    ("model_name", "window", "stride"),
    [(n, 5, 3) for n in MODELS] + [("plain", 4, 4), ("vgg", 6, 2), ("res", 16, 1)],
)
def test_occlusion_against_brute_force(model_name: str, window: int, stride: int) -> None:
    model, x = make(model_name), inputs()[:2]
    ref = _brute_force_occlusion(model, x, TARGETS[:2], window, stride, 0.25)
    assert_rel(lk.occlusion(model, x, TARGETS[:2], window=window, stride=stride, baseline=0.25, batch_size=7), ref)


@pytest.mark.parametrize(("window", "stride"), [(6, 2)])
def test_occlusion_against_captum(name: str, window: int, stride: int) -> None:
    """Rebuild Captum's input-sized map from labkit's grid: mean of (p_clean - p_occluded) over covering windows."""
    model, x = make(name), inputs()

    def prob(v: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(v), 1)

    ref = captum_attr.Occlusion(prob).attribute(
        x.clone(), sliding_window_shapes=(3, window, window), strides=(3, stride, stride), target=TARGETS,
        baselines=0.0, perturbations_per_eval=16,
    )  # fmt: skip
    grid = lk.occlusion(model, x, TARGETS, window=window, stride=stride)
    with torch.no_grad():
        clean = prob(x).gather(1, TARGETS[:, None])[:, 0]
    total = torch.zeros(3, 16, 16, dtype=x.dtype)
    count = torch.zeros(16, 16, dtype=x.dtype)
    for i in range(grid.shape[1]):
        for j in range(grid.shape[2]):
            total[:, i * stride : i * stride + window, j * stride : j * stride + window] += (clean - grid[:, i, j])[:, None, None]
            count[i * stride : i * stride + window, j * stride : j * stride + window] += 1
    rebuilt = (total / count)[:, None].expand(-1, 3, -1, -1)
    assert_rel(rebuilt, ref)
