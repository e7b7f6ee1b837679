"""core/method/multiscale.py on fake models whose CAMs and logits are known, worked by hand.

At scale 1.0 the fake CAM is at the image's resolution (64 x 64, no resize), made of three
vertical bands (columns 0-19, 20-43, 44-63: symmetric, so a flip maps bands onto bands); at other
scales it is a 1 x 1 map, which any bilinear resize turns into a constant. Every pixel of the
result is then a hand-worked number.
"""

from types import SimpleNamespace

import pytest
import torch

from core.method.multiscale import average_with_flip, merge_multiscale_seg, multiscale_cam, resize_images


def bands(a, b, c):
    """(1, 1, 64, 64): columns 0-19 = a, 20-43 = b, 44-63 = c."""
    cam = torch.empty(1, 1, 64, 64)
    cam[..., :20], cam[..., 20:44], cam[..., 44:] = a, b, c
    return cam


def const(v):
    return torch.full((1, 1, 1, 1), float(v))


class FakeModel:
    """``cams[width]`` = (CAM of the image, CAM of the flipped image as the model outputs it, i.e.
    in flipped coordinates), each (1, 1, h, w); ``segs[width]`` likewise for the decoder."""

    def __init__(self, cams, segs=None):
        self.cams, self.segs, self.calls = cams, segs or {}, []

    def attention_blocks(self):
        return []

    def _out(self, x, with_decoder):
        width = x.shape[-1]
        assert x.shape[0] == 2  # one image and its flip
        seg = torch.cat(self.segs[width]) if with_decoder else None
        self.calls.append((width, with_decoder))
        return SimpleNamespace(cam=torch.cat(self.cams[width]), seg=seg, affinity=None,
                               logits=torch.zeros(2, 1), enc=None)

    def forward_cam(self, x, with_affinity=False, all_attention=False, map_rows=None):
        return self._out(x, False)

    def __call__(self, x, with_decoder=True, with_affinity=True, all_attention=False, map_rows=None):
        return self._out(x, with_decoder)


def band_values(cam):
    row = cam[0, 0, 0]
    return row[0].item(), row[30].item(), row[63].item()


def test_flip_is_undone_before_the_max():
    # the flip's CAM (4, 0, -5) in flipped coordinates is (-5, 0, 4) in the image's:
    # max with (-2, 1, 1) = (-2, 1, 4); ReLU (0, 1, 4); normalise (0, 0.25, 1)
    # (without un-flipping, max((-2, 1, 1), (4, 0, -5)) = (4, 1, 1) -> (1, 0, 0))
    model = FakeModel({64: (bands(-2, 1, 1), bands(4, 0, -5))})
    ms = multiscale_cam(model, torch.zeros(1, 3, 64, 64), scales=(1.0,), eps=0.0)
    assert band_values(ms.cam) == pytest.approx((0.0, 0.25, 1.0))
    assert torch.equal(ms.cam[0, 0], ms.cam[0, 0, :1].expand(64, 64))  # rows are all alike


def test_relu_per_scale_before_the_sum_then_normalisation():
    # scale 1.0: max((-2, 1, 4), flip of (4, 1, -2)) = (-2, 1, 4) -> ReLU (0, 1, 4)
    # scale 0.5: max(2, -1) = 2 everywhere -> ReLU 2
    # sum (2, 3, 6); normalise (x - 2) / (4 + eps) -> (0, 0.25, 1) for eps 0
    # (the sum before the ReLU would give (0, 3, 6) -> (0, 0.5, 1))
    model = FakeModel({64: (bands(-2, 1, 4), bands(4, 1, -2)), 32: (const(2), const(-1))})
    ms = multiscale_cam(model, torch.zeros(1, 3, 64, 64), scales=(1.0, 0.5), eps=0.0)
    assert band_values(ms.cam) == pytest.approx((0.0, 0.25, 1.0))
    ms = multiscale_cam(model, torch.zeros(1, 3, 64, 64), scales=(1.0, 0.5), eps=1.0)
    assert band_values(ms.cam) == pytest.approx((0.0, 1 / 5, 4 / 5))  # divided by max + eps
    assert model.calls == [(64, False), (32, False)] * 2  # CAM passes never run the decoder


def test_a_scale_in_both_lists_is_one_pass_with_the_decoder():
    seg = (torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16, 16))
    small = (torch.zeros(1, 2, 12, 12), torch.zeros(1, 2, 12, 12))
    model = FakeModel({64: (bands(0, 1, 2), bands(2, 1, 0)), 32: (const(1), const(1)),
                       48: (const(1), const(1))}, segs={64: seg, 48: small})
    ms = multiscale_cam(model, torch.zeros(1, 3, 64, 64), scales=(1.0, 0.5), seg_scales=(1.0, 0.75))
    assert model.calls == [(64, True), (32, False), (48, True)]
    assert ms.seg.shape == (1, 2, 64, 64)


def test_resize_images_identity_at_one_and_min_side():
    x = torch.randn(1, 3, 40, 64)
    assert resize_images(x, 1.0) is x
    assert resize_images(x, 0.5).shape[-2:] == (32, 32)  # 20 is raised to MiT's minimum of 32


def test_average_with_flip():
    pair = torch.tensor([[[[1.0, 2.0, 3.0]]], [[[10.0, 20.0, 30.0]]]])  # (2, 1, 1, 3)
    assert average_with_flip(pair).flatten().tolist() == [15.5, 11.0, 6.5]  # (1+30)/2, (2+20)/2, (3+10)/2


def test_seg_max_merge_two_scales_by_hand():
    """The authors' test script: max over scales at the scale-1.0 logit resolution, then resize."""
    # scale 1.0: 2 x 2 logits for classes 0 and 1; scale 0.5: 1 x 1 logits (constant once resized)
    s1 = torch.tensor([[[[4.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [3.0, 0.0]]]])
    s05 = torch.tensor([[[[1.0]], [[2.0]]]])
    merged = merge_multiscale_seg([s1, s05], (2, 2), "max")
    # class 0: max([[4, 0], [0, 0]], 1) = [[4, 1], [1, 1]]
    # class 1: max([[0, 1], [3, 0]], 2) = [[2, 2], [3, 2]]
    assert merged[0, 0].tolist() == [[4.0, 1.0], [1.0, 1.0]]
    assert merged[0, 1].tolist() == [[2.0, 2.0], [3.0, 2.0]]
    assert merged.argmax(1)[0].tolist() == [[0, 1], [1, 1]]
    # the mean at image resolution decides pixel (0, 1) the other way: class 0 (0 + 1) / 2 = 0.5,
    # class 1 (1 + 2) / 2 = 1.5 -> still 1; and pixel (1, 1): class 0 0.5, class 1 1.0 -> 1;
    # pixel (0, 0): class 0 (4 + 1) / 2 = 2.5 > class 1 (0 + 2) / 2 = 1 -> 0
    mean = merge_multiscale_seg([s1, s05], (2, 2), "mean")
    assert mean[0, 0].tolist() == [[2.5, 0.5], [0.5, 0.5]] and mean[0, 1].tolist() == [[1.0, 1.5], [2.5, 1.0]]
    # where they differ: a pixel that wins by a large margin at one scale only
    a = torch.tensor([[[[5.0]], [[0.0]]]])  # scale 1.0: class 0 strongly
    b = torch.tensor([[[[-6.0]], [[1.0]]]])  # other scale: class 1, class 0 very low
    assert merge_multiscale_seg([a, b], (1, 1), "max").argmax(1).item() == 0  # max: 5 vs 1
    assert merge_multiscale_seg([a, b], (1, 1), "mean").argmax(1).item() == 1  # mean: -0.5 vs 0.5


def test_seg_max_merge_resizes_to_the_reference_then_to_the_image():
    s1 = torch.arange(4.0).view(1, 1, 2, 2)
    s2 = torch.full((1, 1, 1, 1), 1.5)
    out = merge_multiscale_seg([s1, s2], (4, 4), "max")
    expected = torch.nn.functional.interpolate(torch.maximum(s1, torch.full_like(s1, 1.5)), size=(4, 4),
                                               mode="bilinear", align_corners=False)
    assert torch.equal(out, expected)
    # max at the 4 x 4 image resolution instead would differ (max does not commute with resizing)
    s1_at_image = torch.nn.functional.interpolate(s1, size=(4, 4), mode="bilinear", align_corners=False)
    at_image = torch.maximum(s1_at_image, torch.full((1, 1, 4, 4), 1.5))
    assert not torch.equal(out, at_image)
    with pytest.raises(ValueError, match="max, mean"):
        merge_multiscale_seg([s1], (4, 4), "median")


def test_multiscale_seg_flip_average_and_the_scale_one_reference():
    """Per scale the logits of the image and of its flip (flipped back) are averaged; the max is
    taken at the scale-1.0 logit resolution even when 1.0 is not the first segmentation scale."""
    one = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]]])  # (1, 1, 2, 2) at scale 1.0
    one_flip = torch.tensor([[[[0.0, 4.0], [0.0, 0.0]]]])  # flipped back: [[4, 0], [0, 0]]
    half = torch.full((1, 1, 1, 1), 1.0)
    model = FakeModel({64: (bands(0, 1, 2), bands(2, 1, 0)), 32: (const(1), const(1))},
                      segs={64: (one, one_flip), 32: (half, half)})
    ms = multiscale_cam(model, torch.zeros(1, 3, 64, 64), scales=(1.0,), seg_scales=(0.5, 1.0))
    # scale 1.0 averaged: [[3, 0], [0, 0]]; max with 1 at 2 x 2: [[3, 1], [1, 1]]; resized to 64 x 64
    expected = torch.nn.functional.interpolate(torch.tensor([[[[3.0, 1.0], [1.0, 1.0]]]]), size=(64, 64),
                                               mode="bilinear", align_corners=False)
    assert torch.allclose(ms.seg, expected)


def test_present_classes_only_equals_gating_the_full_merge():
    """With cls_label only the classes present in the batch are merged; the result equals the
    full merge gated by the labels (every step of the merge is per class)."""
    from core.config import load_config
    from core.method.cam import gate_cam
    from core.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(load_config(None, ["model.backbone=mit_b0", "model.num_classes=6"])).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    cls_label = torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 0, 1, 0]])
    full = multiscale_cam(model, images, (1.0, 0.5), with_affinity=True)
    part = multiscale_cam(model, images, (1.0, 0.5), with_affinity=True, cls_label=cls_label)
    assert torch.allclose(gate_cam(part.cam, cls_label), gate_cam(full.cam, cls_label), atol=1e-6)
    assert (part.cam[:, [1, 2, 4]] == 0).all()  # classes in no image of the batch
    assert torch.allclose(part.affinity, full.affinity, atol=1e-6) and part.affinity.shape[0] == 2
    none = multiscale_cam(model, images, (1.0,), cls_label=torch.zeros(2, 5))
    assert none.cam.shape == (2, 5, 64, 64) and (none.cam == 0).all()
