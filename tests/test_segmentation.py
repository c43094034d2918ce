"""FCN models (labkit.models.segmentation) and the segmentation helpers (labkit.segmentation), lab 08."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labkit as lk
from labkit.models.segmentation import (FCN, EncoderClassifier, ResNetEncoder, VGGEncoder, bilinear_kernel,
                                        bilinear_upsampler)


# --------------------------------------------------------------------------- bilinear upsampling
def test_bilinear_kernel_factor_2_by_hand():
    w = bilinear_kernel(2, 2)
    assert w.shape == (2, 2, 4, 4)
    profile = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(w[0, 0], profile[:, None] * profile[None, :])
    assert torch.equal(w[0, 1], torch.zeros(4, 4)) and torch.equal(w[1, 0], torch.zeros(4, 4))


def test_bilinear_upsampler_1d_hand_case():
    # one row [0, 4] upsampled x2 with align_corners=False: interior [1, 3], borders 0.75*0 and 0.75*4
    up = bilinear_upsampler(1, 2)
    x = torch.tensor([[[[0.0, 4.0], [0.0, 4.0]]]])
    y = up(x)
    assert y.shape == (1, 1, 4, 4)
    # rows: the middle rows see both input rows (weights .75 + .25 = 1), the border rows only .75
    assert torch.allclose(y[0, 0, 1], torch.tensor([0.0, 1.0, 3.0, 3.0]))
    assert torch.allclose(y[0, 0, 0], 0.75 * torch.tensor([0.0, 1.0, 3.0, 3.0]))


@pytest.mark.parametrize("factor", [2, 4, 8, 32])
@pytest.mark.parametrize("depthwise", [False, True])
def test_bilinear_upsampler_matches_interpolate_inside(factor, depthwise):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 4)
    up = bilinear_upsampler(3, factor, depthwise=depthwise)
    y = up(x)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert y.shape == ref.shape == (2, 3, 5 * factor, 4 * factor)
    m = factor // 2  # half a coarse pixel at the border lacks its outer neighbour
    assert torch.allclose(y[..., m:-m, m:-m], ref[..., m:-m, m:-m], atol=1e-5)
    assert up.weight.requires_grad
    assert not bilinear_upsampler(3, factor, learnable=False).weight.requires_grad


def test_bilinear_upsampler_rejects_odd_factor():
    with pytest.raises(ValueError, match="factor must be even"):
        bilinear_upsampler(2, 3)


# --------------------------------------------------------------------------- encoders and FCN
@pytest.mark.parametrize("enc_cls", [VGGEncoder, ResNetEncoder])
def test_encoder_strides(enc_cls):
    enc = enc_cls(widths=(4, 4, 6, 8, 10))
    feats = enc(torch.zeros(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, 6, 8, 12), (2, 8, 4, 6), (2, 10, 2, 3)]
    assert enc.out_channels == (6, 8, 10)


@pytest.mark.parametrize("head", ["32s", "16s", "8s"])
@pytest.mark.parametrize("size", [(64, 64), (50, 70)])
def test_fcn_output_shape(head, size):
    torch.manual_seed(0)
    model = FCN(VGGEncoder(widths=(4, 4, 6, 8, 10)), 5, head=head, hidden=8)
    out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 5, *size)
    assert model.stride == int(head[:-1])


def test_fcn_skips_start_at_zero_so_finer_heads_start_as_32s():
    """With zero skip scores and bilinear x2 layers, 16s/8s at initialization are 32s upsampled in stages."""
    torch.manual_seed(0)
    enc = VGGEncoder(widths=(4, 4, 6, 8, 10)).eval()
    m32 = FCN(enc, 3, head="32s", hidden=8).eval()
    m8 = FCN(enc, 3, head="8s", hidden=8).eval()
    m8.fc.load_state_dict(m32.fc.state_dict())
    m8.score.load_state_dict(m32.score.state_dict())
    x = torch.rand(1, 3, 128, 128)
    s = m32.score(m32.fc(enc(x)[-1]))  # [1, 3, 4, 4]
    staged = m8.up_final(m8.up2_b(m8.up2_a(s)))
    assert torch.allclose(m8(x), staged, atol=1e-5)
    # in the interior, staged bilinear x2, x2, x8 is close to one bilinear x32 (same coarse scores)
    assert torch.allclose(m8(x)[..., 48:80, 48:80], m32(x)[..., 48:80, 48:80], atol=0.05 * s.abs().max().item() + 1e-5)


def test_fcn_tiny_hand_case():
    """An identity-like encoder: the 32s net predicts the class of each 32x32 block, upsampled."""
    class BlockMeans(nn.Module):
        out_channels = (2, 2, 2)

        def forward(self, x):
            return [F.avg_pool2d(x[:, :2], s) for s in (8, 16, 32)]

    model = FCN(BlockMeans(), 2, head="32s", hidden=2)
    with torch.no_grad():
        for conv in (model.fc[0], model.fc[3], model.score):
            conv.weight.zero_()
            conv.bias.zero_()
        model.fc[0].weight[0, 0, 1, 1] = 1.0  # channel 0 mean passes through the 3x3 centre tap
        model.fc[0].weight[1, 1, 1, 1] = 1.0
        model.fc[3].weight[:, :, 0, 0] = torch.eye(2)
        model.score.weight[:, :, 0, 0] = torch.eye(2)
    x = torch.zeros(1, 3, 64, 64)
    x[:, 0, :, :32] = 1.0  # left half: channel 0 -> class 0
    x[:, 1, :, 32:] = 1.0  # right half: channel 1 -> class 1
    pred = lk.predict_segmentation(model, x)
    assert pred.shape == (1, 64, 64)
    assert (pred[0, :, :28] == 0).all() and (pred[0, :, 36:] == 1).all()


def test_encoder_classifier_and_registry():
    m = lk.get_model("vgg_encoder_classifier", num_classes=4, widths=(4, 4, 6, 8, 10))
    assert isinstance(m, EncoderClassifier) and m(torch.rand(3, 3, 32, 32)).shape == (3, 4)
    r = lk.get_model("resnet_encoder_classifier", num_classes=4, widths=(4, 4, 6, 8, 10))
    assert r(torch.rand(3, 3, 32, 32)).shape == (3, 4)
    f = lk.get_model("fcn", encoder=r.encoder, num_classes=3, head="16s", hidden=4)
    assert f(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="head must be one of"):
        lk.get_model("fcn", encoder="vgg", head="4s")
    with pytest.raises(TypeError, match="encoder must be"):
        FCN(nn.Conv2d(3, 3, 1), 2)


def test_torchvision_encoder_random_weights():
    from labkit.models.segmentation import TorchvisionEncoder

    torch.manual_seed(0)
    enc = TorchvisionEncoder("resnet18", weights="random")
    feats = enc(torch.rand(1, 3, 64, 64))
    assert [f.shape[1:] for f in feats] == [(128, 8, 8), (256, 4, 4), (512, 2, 2)]
    with pytest.raises(ValueError, match="arch must be one of"):
        TorchvisionEncoder("alexnet", weights="random")


def test_efficientnet_encoder_is_the_imagenet_network_cut_at_strides_8_16_32():
    """The pip-shipped ImageNet weights, offline: the three stages chained give what the classifier's
    own blocks give, at strides 8, 16 and 32 of a 96-pixel image."""
    enc = lk.EfficientNetEncoder()
    net = lk.imagenet_model()
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s8, s16, s32 = enc(x)
        whole = net._blocks(net.stem_act(net._bn0(net._conv_stem(net.scale(x)))))
    assert [tuple(f.shape[1:]) for f in (s8, s16, s32)] == [(40, 12, 12), (112, 6, 6), (320, 3, 3)]
    assert enc.out_channels == (40, 112, 320)
    torch.testing.assert_close(s32, whole)
    fcn = FCN(lk.EfficientNetEncoder(weights="random"), 3, head="8s", hidden=4)
    assert fcn(x[:1]).shape == (1, 3, 96, 96)


# --------------------------------------------------------------------------- training and scores
def _toy(n, seed):
    """Images whose red square marks class 1 and green square class 2 (8-pixel squares on 32 px)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, 32, 32)
    y = torch.zeros(n, 32, 32, dtype=torch.long)
    for i in range(n):
        for c in (1, 2):
            r, q = torch.randint(0, 24, (2,), generator=g).tolist()
            x[i, c - 1, r:r + 8, q:q + 8] = 1.0
            y[i, r:r + 8, q:q + 8] = c
    return x, y


@pytest.mark.parametrize("freeze", [True, False])
def test_train_segmentation_learns_a_toy_task(freeze):
    torch.manual_seed(0)
    model = FCN(VGGEncoder(widths=(4, 8, 8, 8, 8)), 3, head="8s", hidden=8)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    enc_state = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    train, val = _toy(48, 0), _toy(16, 1)
    hist = lk.train_segmentation(model, train, val, epochs=12, lr=2e-2, batch_size=16, freeze_encoder=freeze, seed=0)
    assert hist.epochs == 12 and len(hist.val_mean_iou) == 12
    assert hist.train_loss[-1] < hist.train_loss[0]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert not model.training
    if freeze:  # the encoder (weights and batch-norm statistics) is untouched
        assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in enc_state.items())
    scores = lk.evaluate_segmentation(model, val)
    assert scores["mean_iou"] > (0.25 if freeze else 0.3) and 0 <= scores["boundary_f1"] <= 1
    assert scores["confusion"].sum() == 16 * 32 * 32


def test_train_segmentation_is_seeded():
    train = _toy(16, 0)
    out = []
    for _ in range(2):
        torch.manual_seed(0)
        model = FCN(VGGEncoder(widths=(4, 4, 4, 4, 4)), 3, head="16s", hidden=4)
        lk.train_segmentation(model, train, epochs=2, batch_size=8, seed=3)
        out.append(lk.predict_segmentation(model, train[0], scores=True))
    assert torch.equal(out[0], out[1])


def test_train_segmentation_argument_errors():
    model = FCN(VGGEncoder(widths=(4, 4, 4, 4, 4)), 3, head="32s", hidden=4)
    x, y = _toy(4, 0)
    with pytest.raises(TypeError, match="masks must be an int64 label map"):
        lk.train_segmentation(model, (x, y.float()), epochs=1)
    with pytest.raises(ValueError, match="epochs must be"):
        lk.train_segmentation(model, (x, y), epochs=-1)
    with pytest.raises(ValueError, match="freeze_encoder=True needs"):
        lk.train_segmentation(nn.Conv2d(3, 3, 1), (x, y), epochs=1)


def test_evaluate_segmentation_perfect_and_per_class():
    class Oracle(nn.Module):
        num_classes = 3

        def forward(self, x):
            return x * 10  # channel c is high exactly where the label is c (one-hot images)

    y = torch.tensor([[[0, 1], [2, 2]]])
    x = F.one_hot(y, 3).permute(0, 3, 1, 2).float()
    s = lk.evaluate_segmentation(Oracle(), (x, y))
    assert s["pixel_accuracy"] == 1.0 and s["mean_iou"] == 1.0 and s["boundary_f1"] == 1.0
    cm = torch.tensor([[3, 1], [0, 2]])
    assert torch.allclose(lk.per_class_iou(cm), torch.tensor([0.75, 2 / 3]))


def test_segment_target_and_area_grad_cam():
    out = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    region = torch.tensor([[True, False], [False, True]])
    t = lk.segment_target(1, region)
    assert torch.equal(t(out), out[:, 1, 0, 0] + out[:, 1, 1, 1])
    assert torch.equal(lk.segment_target(0)(out), out[:, 0].sum((1, 2)))
    with pytest.raises(ValueError, match="out of range"):
        lk.segment_target(5)(out)
    torch.manual_seed(0)
    model = FCN(VGGEncoder(widths=(4, 4, 4, 4, 4)), 3, head="8s", hidden=4)
    x = torch.rand(2, 3, 64, 64)
    reg = torch.zeros(64, 64, dtype=torch.bool)
    reg[10:20, 10:20] = True
    cam = lk.grad_cam(model, x, "encoder.block4", target=lk.segment_target(1, reg))
    assert cam.shape == (2, 64, 64) and (cam >= 0).all()


def test_label_to_rgb():
    rgb = lk.label_to_rgb(torch.tensor([[0, 1], [2, 13]]))
    assert rgb.shape == (3, 2, 2)
    assert torch.equal(rgb[:, 0, 0], torch.zeros(3))
    assert torch.equal(rgb[:, 1, 1], rgb[:, 0, 1])  # 13 wraps onto 1 with 12 colours


def test_photo_scenes(mirror_root):
    data = lk.photo_scenes(6, size=32, seed=0, root=mirror_root, classes=["circle", "square"],
                            objects=(1, 2))
    ref = lk.scenes(6, size=32, seed=0, classes=["circle", "square"], objects=(1, 2))
    assert torch.equal(data.masks, ref.masks)
    fg = (ref.masks > 0)[:, None].expand_as(ref.images)
    assert torch.equal(data.images[fg], ref.images[fg])
    assert not torch.equal(data.images, ref.images)
    with pytest.raises(FileNotFoundError, match="BSDS500"):
        lk.photo_scenes(2, size=32, root=mirror_root / "nowhere")
    # lab 08's real-data mode (standard and full profiles) draws 128-px scenes
    big = lk.photo_scenes(3, size=128, seed=1, root=mirror_root, classes=["circle", "square"], objects=(1, 2))
    assert big.images.shape == (3, 3, 128, 128) and big.masks.shape == (3, 128, 128)
    assert torch.equal(big.masks, lk.scenes(3, size=128, seed=1, classes=["circle", "square"], objects=(1, 2)).masks)
