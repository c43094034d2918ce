"""labkit.metrics: every score against a case small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import scipy.linalg
from scipy.stats import spearmanr
from torch import nn

import labkit as lk
from labkit import metrics as M
from labkit.hooks import count_hooks


# --------------------------------------------------------------------------- classification
def test_accuracy_from_logits_and_from_predictions():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.1, 0.2]])  # argmax 0, 1, 0, 1
    labels = torch.tensor([0, 1, 1, 1])
    assert M.accuracy(logits, labels) == pytest.approx(0.75)
    assert M.accuracy(torch.tensor([0, 0, 0, 1]), labels) == pytest.approx(0.5)


def test_accuracy_rejects_ambiguous_inputs():
    with pytest.raises(TypeError, match="integer"):
        M.accuracy(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="does not match labels"):
        M.accuracy(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        M.accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_confusion_matrix_rows_true_columns_predicted():
    preds = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 1, 2, 2, 2, 0])
    cm = M.confusion_matrix(preds, labels, 3)
    # true 0: predicted 0 once, 2 once; true 1: 1 once; true 2: 1 once, 2 twice
    assert cm.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        M.confusion_matrix(preds, labels, 2)
    cm_ignore = M.confusion_matrix(preds, labels, 3, ignore_index=0)
    assert cm_ignore.sum() == 4 and cm_ignore[0].sum() == 0


def test_segmentation_scores_hand_computed():
    # 2x3 label map, 3 classes.
    true = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    # confusion (rows true): t0: [1,1,0]; t1: [0,2,0]; t2: [1,0,1]
    assert M.pixel_accuracy(pred, true) == pytest.approx(4 / 6)
    # per-class accuracy 1/2, 2/2, 1/2 -> mean 2/3
    assert M.mean_accuracy(pred, true, 3) == pytest.approx(2 / 3)
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 1 / (2 + 1 - 1) = 1/2
    assert M.mean_iou(pred, true, 3) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    s = M.segmentation_scores(M.confusion_matrix(pred, true, 3))
    assert s["fw_iou"] == pytest.approx((2 / 6) * (1 / 3) + (2 / 6) * (2 / 3) + (2 / 6) * (1 / 2))
    # scores [B, K, H, W] are arg-maxed over K
    scores = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    assert M.pixel_accuracy(scores, true) == pytest.approx(4 / 6)


def test_mean_iou_leaves_out_absent_classes_but_counts_false_positives():
    true = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 0, 1, 1]])
    # class 2 absent from both: left out, so a perfect prediction scores 1
    assert M.mean_iou(pred, true, 3) == pytest.approx(1.0)
    pred2 = torch.tensor([[0, 0, 1, 2]])
    # class 2 predicted but absent: IoU 0 counted. class 0: 1, class 1: 1/2, class 2: 0
    assert M.mean_iou(pred2, true, 3) == pytest.approx(0.5)
    assert M.pixel_accuracy(pred2, true, ignore_index=1) == pytest.approx(1.0)


# --------------------------------------------------------------------------- masks
def test_iou_per_sample_and_empty_masks():
    p = torch.zeros(3, 2, 2, dtype=torch.bool)
    t = torch.zeros(3, 2, 2, dtype=torch.bool)
    p[0, 0, :] = True          # 2 pixels
    t[0, :, 0] = True          # 2 pixels, 1 shared -> 1 / 3
    t[1, 1, 1] = True          # prediction empty -> 0
    # sample 2: both empty -> 1 by definition
    out = M.iou(p, t)
    assert out.tolist() == pytest.approx([1 / 3, 0.0, 1.0])
    assert M.iou(p, t, reduction="mean") == pytest.approx((1 / 3 + 1) / 3)
    assert M.mean_iou(p, t) == pytest.approx((1 / 3 + 1) / 3)         # boolean masks: binary, per image
    with pytest.raises(ValueError, match="num_classes"):
        M.mean_iou(p.long(), t.long())
    assert M.iou(p, t, empty=0.0)[2] == 0.0
    with pytest.raises(TypeError, match="threshold"):
        M.iou(p.float(), t)
    with pytest.raises(ValueError, match="same"):
        M.iou(p, t[:, :1])


def test_boundary_f1_hand_computed():
    true = torch.zeros(1, 4, 4, dtype=torch.long)
    true[0, :2, :2] = 1
    # Boundary pixels of the 2x2 square in the corner (both sides of the edge):
    # inside (0,1),(1,0),(1,1); outside (0,2),(1,2),(2,0),(2,1): 7 pixels.
    assert M._boundaries(true).sum().item() == 7
    assert M.boundary_f1(true, true).tolist() == [1.0]
    # Prediction shifted one pixel right: square at columns 1-2.
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    pred[0, :2, 1:3] = 1
    # Pred boundary: inside (0,1),(1,1),(1,2),(0,2) [all of the square touches the outside],
    # outside (0,0),(1,0),(0,3),(1,3),(2,1),(2,2): 10 pixels.
    bp = M._boundaries(pred)
    assert bp.sum().item() == 10
    # tolerance 0: exact overlaps of the two boundary sets: (0,1),(1,0),(1,1),(0,2),(1,2),(2,1) = 6
    # precision 6/10, recall 6/7 -> F1 = 2*(0.6*6/7)/(0.6+6/7)
    p, r = 6 / 10, 6 / 7
    assert M.boundary_f1(pred, true, tolerance=0).item() == pytest.approx(2 * p * r / (p + r), rel=1e-6)
    # tolerance 1: every boundary pixel of one is within one pixel of the other's boundary
    # except pred's (0,3),(1,3) [true boundary reaches column 2 only: distance 1 -> inside];
    # all are within 1, so F1 = 1.
    assert M.boundary_f1(pred, true, tolerance=1).item() == pytest.approx(1.0)
    # no boundary in either -> 1; in one only -> 0
    # boolean masks work the same as label maps, and one [H, W] image is a batch of one
    assert M.boundary_f1(pred.bool(), true.bool(), tolerance=0).tolist() == pytest.approx([2 * p * r / (p + r)])
    assert M.boundary_f1(pred[0].bool(), true[0], tolerance=1).tolist() == pytest.approx([1.0])
    flat = torch.zeros(1, 4, 4, dtype=torch.long)
    assert M.boundary_f1(flat, flat).item() == 1.0
    assert M.boundary_f1(flat, true).item() == 0.0


# --------------------------------------------------------------------------- pointing game
def test_pointing_game_hits_misses_ties_and_tolerance():
    maps = torch.zeros(4, 5, 5)
    masks = torch.zeros(4, 5, 5, dtype=torch.bool)
    masks[:, 0, 0] = True
    maps[0, 0, 0] = 1.0        # hit
    maps[1, 4, 4] = 1.0        # miss
    maps[2, 1, 1] = 1.0        # miss at tolerance 0 (distance sqrt 2), hit at tolerance 2
    # sample 3: all-zero map: every pixel ties -> not all on the mask -> miss
    rate, hits = M.pointing_game(maps, masks)
    assert hits.tolist() == [True, False, False, False]
    assert rate == pytest.approx(0.25)
    _, hits1 = M.pointing_game(maps, masks, tolerance=1)   # disk radius 1 does not reach the diagonal
    assert hits1.tolist() == [True, False, False, False]
    _, hits2 = M.pointing_game(maps, masks, tolerance=2)
    assert hits2.tolist() == [True, False, True, False]


def test_pointing_game_skips_empty_masks():
    maps = torch.rand(2, 3, 3)
    masks = torch.zeros(2, 3, 3, dtype=torch.bool)
    masks[0] = True
    rate, hits = M.pointing_game(maps, masks)
    assert hits.tolist() == [True, False] and rate == 1.0
    with pytest.raises(ValueError, match="upsample"):
        M.pointing_game(torch.rand(2, 2, 2), masks)


def test_discriminative_pointing_by_hand():
    # two objects per 1x4 image: pixel 0 is object A, pixel 3 is object B
    a = torch.zeros(4, 1, 4, dtype=torch.bool)
    b = torch.zeros(4, 1, 4, dtype=torch.bool)
    a[:, 0, 0] = True
    b[:, 0, 3] = True
    maps = torch.tensor([[[0.9, 5.0, 0.0, 0.2]],   # peak off both objects, but A > B: hit
                         [[0.1, 0.0, 0.0, 0.7]],   # B brighter: miss
                         [[0.0, 0.0, 0.0, 0.0]],   # tie (all zero): miss
                         [[-1.0, 0.0, 0.0, -2.0]]])  # negative values still compared: hit
    rate, hits = M.discriminative_pointing(maps, a, b)
    assert hits.tolist() == [True, False, False, True] and rate == pytest.approx(0.5)
    # a class-blind map (the same for both classes) hits exactly one class per image without ties
    same = torch.rand(6, 1, 4, generator=torch.Generator().manual_seed(0))
    hits_a = M.discriminative_pointing(same, a[:1].expand(6, -1, -1), b[:1].expand(6, -1, -1))[1]
    hits_b = M.discriminative_pointing(same, b[:1].expand(6, -1, -1), a[:1].expand(6, -1, -1))[1]
    assert (hits_a ^ hits_b).all()


def test_discriminative_pointing_skips_empty_and_validates():
    maps = torch.rand(2, 3, 3)
    a = torch.zeros(2, 3, 3, dtype=torch.bool)
    b = torch.zeros(2, 3, 3, dtype=torch.bool)
    a[:, 0, 0] = True
    b[0, 2, 2] = True                      # sample 1 has no second object
    maps[0, 0, 0], maps[0, 2, 2] = 2.0, 1.0
    rate, hits = M.discriminative_pointing(maps, a, b)
    assert hits.tolist() == [True, False] and rate == 1.0
    with pytest.raises(ValueError, match="overlap"):
        M.discriminative_pointing(maps, a, a)
    with pytest.raises(ValueError, match="upsample"):
        M.discriminative_pointing(torch.rand(2, 2, 2), a, b)
    with pytest.raises(TypeError, match="boolean"):
        M.discriminative_pointing(maps, a.float(), b)


# --------------------------------------------------------------------------- deletion / insertion
class _SumModel(nn.Module):
    """Logits [s, 0] with s = 10 * (mean of channel 0 of the left half - 0.5)."""

    def forward(self, x):
        s = 10 * (x[:, 0, :, : x.shape[-1] // 2].mean((1, 2)) - 0.5)
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_deletion_and_insertion_curves_hand_computed():
    model = _SumModel()
    img = torch.ones(1, 1, 2, 2)                     # left half mean 1 -> s = 5
    # map ranks the two left pixels first: (0,0) then (1,0), then the right ones
    maps = torch.tensor([[[4.0, 2.0], [3.0, 1.0]]])
    curve = M.deletion_curve(model, img, maps, target=0, steps=4, baseline=0.0)
    sig = torch.sigmoid
    expected = [sig(torch.tensor(5.0)), sig(torch.tensor(0.0)), sig(torch.tensor(-5.0)),
                sig(torch.tensor(-5.0)), sig(torch.tensor(-5.0))]
    assert curve[0].tolist() == pytest.approx([e.item() for e in expected], abs=1e-6)
    # insertion from black puts the two left pixels back first: -5, 0, 5, 5, 5
    ins = M.insertion_curve(model, img, maps, target=0, steps=4, baseline=0.0)
    assert ins[0].tolist() == pytest.approx([expected[i].item() for i in (2, 1, 0, 0, 0)], abs=1e-6)
    # a map ranking the irrelevant pixels first deletes more slowly: larger area
    bad = M.deletion_curve(model, img, -maps, target=0, steps=4)
    assert M.auc(bad[0]) > M.auc(curve[0])


def test_curves_batch_in_chunks_and_restore_model_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3)).train()
    images = torch.rand(3, 3, 6, 6)
    before = images.clone()
    maps = torch.rand(3, 6, 6)
    stats = model[1].running_mean.clone()
    a = M.deletion_curve(model, images, maps, steps=7, batch_size=5)
    b = M.deletion_curve(model, images, maps, steps=7, batch_size=1000)
    assert torch.allclose(a, b, atol=1e-6)
    assert a.shape == (3, 8)
    assert model.training and torch.equal(model[1].running_mean, stats) and torch.equal(images, before)
    c = M.insertion_curve(model, images, maps, steps=7)  # blur baseline
    assert c.shape == (3, 8)
    with pytest.raises(ValueError, match="upsample"):
        M.deletion_curve(model, images, torch.rand(3, 3, 3))
    with pytest.raises(ValueError, match="baseline"):
        M.deletion_curve(model, images, maps, baseline="grey")


def test_auc_trapezoid():
    assert M.auc(torch.tensor([1.0, 0.0])) == pytest.approx(0.5)
    assert M.auc(torch.tensor([1.0, 1.0, 0.0])) == pytest.approx(0.75)   # (1 + 0.5) / 2
    out = M.auc(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    assert out.tolist() == [0.0, 1.0]


# --------------------------------------------------------------------------- rank correlation
def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (50,), generator=g).float()
    b = a + torch.randn(50, generator=g)
    assert M.spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-10)
    assert M.spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)
    assert math.isnan(M.spearman(torch.ones(4), torch.arange(4.0)))
    per = M.spearman(torch.stack([a, a]), torch.stack([b, -b]), per_sample=True)
    assert per[0].item() == pytest.approx(-per[1].item(), abs=1e-6)


def _tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def _grad_map(model, images, target=None):
    x = images.clone().requires_grad_(True)
    out = model(x)
    out.gather(1, target[:, None]).sum().backward()
    return x.grad.abs()[:, 0]


def test_randomization_test_cascade_and_caller_model_untouched():
    model = _tiny_cnn().eval()
    images = torch.rand(4, 1, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = count_hooks(model)
    out = M.randomization_test(model, _grad_map, images, seed=0)
    assert list(out) == ["5", "2", "0"]                    # from the top down
    for k, v in model.state_dict().items():                # the caller's model is untouched
        assert torch.equal(v, state[k])
    assert count_hooks(model) == hooks and not model.training
    # a gradient map depends on the weights: after randomizing everything it is far from the original
    assert out["0"] < 0.9
    assert all(-1 <= v <= 1 for v in out.values())
    # deterministic for a seed
    assert out == M.randomization_test(model, _grad_map, images, seed=0)
    # an "explainer" that ignores the model (edge detector) passes unchanged: correlation 1
    constant = M.randomization_test(model, lambda m, x, target=None: x[:, 0] * 2, images)
    assert all(v == pytest.approx(1.0) for v in constant.values())
    # layers chosen by name, in forward order whatever the order given
    sub = M.randomization_test(model, _grad_map, images, layers=["5", "0"])
    assert list(sub) == ["5", "0"]
    with pytest.raises(ValueError, match="valid names"):
        M.randomization_test(model, _grad_map, images, layers=["nope"])


# --------------------------------------------------------------------------- images and maps
def test_psnr_hand_computed():
    a = torch.zeros(2, 1, 2, 2)
    b = torch.zeros(2, 1, 2, 2)
    b[0] = 0.1                              # mse 0.01 -> 20 dB
    out = M.psnr(a, b, reduction="none")
    assert out[0].item() == pytest.approx(20.0, rel=1e-5)
    assert math.isinf(out[1].item())
    assert M.psnr(a[0], b[0]) == pytest.approx(20.0, rel=1e-5)
    assert M.psnr(a[0] * 255, b[0] * 255, data_range=255) == pytest.approx(20.0, rel=1e-5)


def test_mask_share_and_threshold_mask():
    maps = torch.tensor([[[1.0, -3.0], [0.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    masks = torch.tensor([[[True, True], [False, False]], [[True, False], [False, False]]])
    share = M.mask_share(maps, masks)
    assert share.tolist() == pytest.approx([4 / 8, 0.0])       # |1| + |-3| of 8; empty map -> 0
    # channels: absolute values summed
    assert M.mask_share(torch.stack([maps, maps], 1), masks).tolist() == pytest.approx([0.5, 0.0])
    top = M.threshold_mask(maps[:1], fraction=0.5)
    assert top.tolist() == [[[True, False], [False, True]]]    # 4 and 1 are the two largest
    q = M.threshold_mask(maps[:1], quantile=0.75)               # 0.75-quantile of (-3, 0, 1, 4) = 1.75
    assert q.tolist() == [[[False, False], [False, True]]]
    assert M.threshold_mask(maps[:1], fraction=0.0).sum() == 0
    with pytest.raises(ValueError, match="exactly one"):
        M.threshold_mask(maps)
    with pytest.raises(ValueError, match="reduce the channels"):
        M.threshold_mask(torch.rand(2, 3, 4, 4), fraction=0.1)


def test_top_pixel_share():
    maps = torch.tensor([[[1.0, -3.0], [0.0, 4.0]], [[0.5, 0.0], [2.0, 0.0]]])
    masks = torch.tensor([[[False, True], [False, True]], [[True, False], [False, False]]])
    # image 0: the 2 highest |values| are 4 and -3, both in its 2-pixel mask; image 1: the top pixel
    # (2.0) is outside its 1-pixel mask
    assert M.top_pixel_share(maps, masks).tolist() == [1.0, 0.0]
    assert M.top_pixel_share(maps, masks, k=3).tolist() == pytest.approx([2 / 3, 1 / 3])
    assert M.top_pixel_share(maps, masks, k=4).tolist() == pytest.approx([2 / 4, 1 / 4])  # the area
    # channels summed in absolute value: the same as the single-channel map
    assert M.top_pixel_share(torch.stack([maps, -maps], 1), masks).tolist() == [1.0, 0.0]
    # ties broken by position: a constant map picks the first pixels
    one = torch.tensor([[[True, False], [False, False]]])
    assert M.top_pixel_share(torch.ones(1, 2, 2), one).tolist() == [1.0]
    # an empty mask scores 0 (k=None), never NaN
    assert M.top_pixel_share(maps[:1], torch.zeros(1, 2, 2, dtype=torch.bool)).tolist() == [0.0]
    with pytest.raises(ValueError, match="k must lie in 1..4"):
        M.top_pixel_share(maps, masks, k=5)
    with pytest.raises(TypeError, match="k must be an int"):
        M.top_pixel_share(maps, masks, k=1.5)


def test_metrics_do_not_modify_inputs():
    maps = torch.rand(2, 4, 4)
    masks = torch.rand(2, 4, 4) > 0.5
    m0, k0 = maps.clone(), masks.clone()
    M.threshold_mask(maps, fraction=0.3)
    M.mask_share(maps, masks)
    M.top_pixel_share(maps, masks)
    M.pointing_game(maps, masks, tolerance=1)
    M.iou(masks, masks)
    assert torch.equal(maps, m0) and torch.equal(masks, k0)
    assert np.isfinite(M.spearman(maps[0], maps[1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
def test_metrics_on_cuda_match_cpu():
    model = _tiny_cnn().eval()
    images = torch.rand(3, 1, 8, 8)
    maps = torch.rand(3, 8, 8)
    masks = torch.rand(3, 8, 8) > 0.5
    cpu_del = M.deletion_curve(model, images, maps, steps=5)
    cpu_ins = M.insertion_curve(model, images, maps, steps=5)
    cpu_rand = M.randomization_test(model, _grad_map, images)
    model.cuda()
    dev = dict(device="cuda")
    assert torch.allclose(M.deletion_curve(model, images.cuda(), maps.cuda(), steps=5).cpu(), cpu_del, atol=1e-5)
    assert torch.allclose(M.insertion_curve(model, images.cuda(), maps.cuda(), steps=5).cpu(), cpu_ins, atol=1e-5)
    gpu_rand = M.randomization_test(model, _grad_map, images.cuda())
    assert list(gpu_rand) == list(cpu_rand)  # values differ: CUDA re-initialization draws other numbers
    assert M.pointing_game(maps.to(**dev), masks.to(**dev), tolerance=1)[0] == M.pointing_game(maps, masks, tolerance=1)[0]
    assert torch.equal(M.iou(masks.to(**dev), masks.to(**dev)).cpu(), M.iou(masks, masks))
    assert torch.equal(M.threshold_mask(maps.to(**dev), fraction=0.2).cpu(), M.threshold_mask(maps, fraction=0.2))
    assert torch.allclose(M.boundary_f1(masks.to(**dev), masks.flip(1).to(**dev)).cpu(), M.boundary_f1(masks, masks.flip(1)))
    with pytest.raises(ValueError, match="move them"):
        M.deletion_curve(model, images, maps)


def _saliency(model, images, target=None):
    from labkit.attribution import saliency

    return saliency(model, images, target)


# --------------------------------------------------------------------------- cascading_randomization
def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def test_cascading_randomization_maps_give_randomization_test_scores():
    net = _small_net()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    maps = M.cascading_randomization(net, _saliency, x, seed=5)
    scores = M.randomization_test(net, _saliency, x, seed=5)
    assert list(maps) == ["original", "6", "2", "0"] and list(scores) == ["6", "2", "0"]
    for name, rho in scores.items():
        mine = sum(M.spearman(o, m) for o, m in zip(maps["original"], maps[name])) / len(x)
        assert mine == pytest.approx(rho, abs=1e-6), name
    assert torch.allclose(maps["original"], _saliency(net, x))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items()), "the caller's model is untouched"
    assert not torch.allclose(maps["0"], maps["original"])


def test_cascading_randomization_layers_and_errors():
    net = _small_net()
    x = torch.rand(2, 3, 8, 8)
    maps = M.cascading_randomization(net, _saliency, x, layers=["0", "6"], target=1)
    assert list(maps) == ["original", "6", "0"]
    assert torch.allclose(maps["original"], _saliency(net, x, 1))
    with pytest.raises(ValueError):
        M.cascading_randomization(net, _saliency, x, layers=["nope"])
    with pytest.raises(TypeError, match="list of layer names"):
        M.cascading_randomization(net, _saliency, x, layers="0")
    with pytest.raises(ValueError, match="no layer with parameters"):
        M.cascading_randomization(nn.Sequential(nn.Flatten()), _saliency, x)


# --------------------------------------------------------------------------- centered_gaussian_maps
def test_centered_gaussian_maps_values():
    g = M.centered_gaussian_maps(2, 3, sigma=1.0)
    assert g.shape == (2, 3, 3)
    assert g[0, 1, 1] == 1.0 and torch.allclose(g[1, 0, 1], torch.exp(torch.tensor(-0.5)))
    assert torch.allclose(g[0, 0, 0], torch.exp(torch.tensor(-1.0)))
    even = M.centered_gaussian_maps(1, (2, 4))  # centre between pixels: symmetric
    assert torch.allclose(even[0], even[0].flip(0)) and torch.allclose(even[0], even[0].flip(1))
    g[0, 0, 0] = 5  # copies, not views of one another
    assert g[1, 0, 0] != 5


def test_centered_gaussian_maps_validates():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must"):
            M.centered_gaussian_maps(bad, 4)
    with pytest.raises(TypeError, match="size"):
        M.centered_gaussian_maps(1, "4")
    with pytest.raises(ValueError, match="sigma"):
        M.centered_gaussian_maps(1, 4, sigma=0)


# --------------------------------------------------------------------------- Frechet distance
def test_frechet_distance_of_identical_sets_is_zero() -> None:
    feats = torch.randn(300, 6, generator=torch.Generator().manual_seed(0))
    assert lk.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)
    assert lk.frechet_distance(feats, feats.numpy()) == pytest.approx(0.0, abs=1e-8)


def test_gaussian_frechet_distance_closed_form_for_commuting_covariances() -> None:
    """Diagonal covariances: |mu1 - mu2|^2 + sum (s1 - s2)^2 with s the standard deviations."""
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.0])
    var1, var2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0
    assert lk.gaussian_frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2)) == pytest.approx(expected)


def test_gaussian_frechet_distance_matches_scipy_sqrtm() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    c1, c2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)  # not commuting
    m1, m2 = rng.normal(size=4), rng.normal(size=4)
    expected = float(((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real))
    got = lk.gaussian_frechet_distance(torch.tensor(m1), torch.tensor(c1), torch.tensor(m2), torch.tensor(c2))
    assert got == pytest.approx(expected, rel=1e-7)


def _with_moments(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """n samples whose empirical mean and (unbiased) covariance are exactly ``mean`` and ``cov``."""
    x = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    emp = x.T @ x / (n - 1)
    white = x @ torch.linalg.inv(torch.linalg.cholesky(emp)).T
    return white @ torch.linalg.cholesky(cov).T + mean


def test_frechet_distance_of_samples_equals_the_closed_form_of_their_gaussians() -> None:
    mean_a, mean_b = torch.tensor([0.0, 0.0], dtype=torch.float64), torch.tensor([3.0, -4.0], dtype=torch.float64)
    cov_a = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    cov_b = torch.tensor([[8.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    a = _with_moments(500, mean_a, cov_a, 1)
    b = _with_moments(300, mean_b, cov_b, 2)
    mu, cov = lk.feature_statistics(a)
    assert torch.allclose(mu, mean_a, atol=1e-10) and torch.allclose(cov, cov_a, atol=1e-10)
    # 25 (means) + (sqrt 2 - sqrt 8)^2 + (sqrt .5 - sqrt 2)^2 = 25 + 2 + 0.5
    assert lk.frechet_distance(a, b) == pytest.approx(27.5, rel=1e-9)
    assert lk.frechet_distance(b, a) == pytest.approx(27.5, rel=1e-9)
    assert lk.frechet_distance(a, a + torch.tensor([1.0, 2.0], dtype=torch.float64)) == pytest.approx(5.0, rel=1e-9)


def test_frechet_distance_validates_shapes() -> None:
    with pytest.raises(ValueError, match="same layer"):
        lk.frechet_distance(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="N >= 2"):
        lk.frechet_distance(torch.randn(1, 3), torch.randn(10, 3))
    with pytest.raises(TypeError, match="feats_a"):
        lk.frechet_distance([[1.0, 2.0]], torch.randn(10, 2))
    with pytest.raises(ValueError, match="NaN"):
        lk.frechet_distance(torch.full((4, 2), float("nan")), torch.randn(4, 2))


class _MeanClassifier(nn.Module):
    """Two classes by mean brightness: logits (0.5 - m, m - 0.5); features = [m, m^2] at ``body``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True)
        f = self.body(torch.cat([m, m * m], 1))
        return torch.cat([0.5 - f[:, :1], f[:, :1] - 0.5], 1)


def test_classifier_fid_uses_the_named_layer() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(50, 1, 4, 4, generator=g)
    b = torch.rand(50, 1, 4, 4, generator=g) * 0.5
    clf = _MeanClassifier()
    fa = torch.cat([a.flatten(1).mean(1, keepdim=True), a.flatten(1).mean(1, keepdim=True) ** 2], 1)
    fb = torch.cat([b.flatten(1).mean(1, keepdim=True), b.flatten(1).mean(1, keepdim=True) ** 2], 1)
    assert lk.classifier_fid(clf, a, b, layer="body") == pytest.approx(lk.frechet_distance(fa, fb), rel=1e-5)
    assert lk.classifier_fid(clf, a, a, layer="body") == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="layer"):
        lk.classifier_fid(clf, a, b, layer="nope")


# --------------------------------------------------------------------------- coverage
def test_class_histogram_and_coverage() -> None:
    clf = _MeanClassifier()
    images = torch.cat([torch.full((7, 1, 2, 2), 0.9), torch.full((3, 1, 2, 2), 0.1)])
    counts = lk.class_histogram(clf, images)
    assert counts.tolist() == [3, 7]
    assert lk.class_histogram(clf, images, num_classes=4).tolist() == [3, 7, 0, 0]
    assert lk.class_coverage(counts) == 1.0
    assert lk.class_coverage(torch.tensor([500, 500] + [0] * 8)) == pytest.approx(0.2)
    # default threshold: a quarter of the uniform share (25 of 1,000 for 10 classes)
    assert lk.class_coverage(torch.tensor([25] + [975 // 9] * 9)) == 1.0
    assert lk.class_coverage(torch.tensor([24] + [976 // 9] * 9)) == pytest.approx(0.9)
    assert lk.class_coverage(torch.tensor([1, 99]), min_share=0.0) == 1.0
    assert lk.class_coverage(torch.tensor([1, 99]), min_share=0.5) == 0.5
    with pytest.raises(ValueError, match="min_share"):
        lk.class_coverage(counts, min_share=2)
    with pytest.raises(ValueError, match="counts"):
        lk.class_coverage(torch.zeros(3))
    with pytest.raises(ValueError, match="num_classes"):
        lk.class_histogram(clf, images, num_classes=1)
