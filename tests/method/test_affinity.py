"""Tests of core.method.affinity: labels, loss, transition matrix, random walk, MHSA baseline."""

from __future__ import annotations

import pytest
import torch

from core.method.affinity import (
    affinity_labels,
    affinity_loss,
    mhsa_affinity,
    propagate_with_affinity,
    radius_mask,
    random_walk,
    transition_matrix,
)

IGN = 255


def naive_radius_mask(h: int, w: int, radius: int) -> torch.Tensor:
    n = h * w
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            mask[i, j] = max(abs(i // w - j // w), abs(i % w - j % w)) <= radius
    return mask


def naive_affinity_labels(small: torch.Tensor, radius: int) -> torch.Tensor:
    """small: (B, h, w) label already on the grid."""
    b, h, w = small.shape
    flat = small.reshape(b, -1)
    n = h * w
    out = torch.zeros(b, n, n, dtype=torch.long)
    for k in range(b):
        for i in range(n):
            for j in range(n):
                far = max(abs(i // w - j // w), abs(i % w - j % w)) > radius
                if far or flat[k, i] == IGN or flat[k, j] == IGN:
                    out[k, i, j] = IGN
                else:
                    out[k, i, j] = int(flat[k, i] == flat[k, j])
    return out


def test_radius_mask_3x3_radius_1_by_hand():
    expected = torch.tensor(
        [
            [1, 1, 0, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 0, 0, 0],
            [0, 1, 1, 0, 1, 1, 0, 0, 0],
            [1, 1, 0, 1, 1, 0, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1, 1, 1],
            [0, 1, 1, 0, 1, 1, 0, 1, 1],
            [0, 0, 0, 1, 1, 0, 1, 1, 0],
            [0, 0, 0, 1, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    mask = radius_mask(3, 3, radius=1)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("h,w,radius", [(4, 4, 1), (3, 5, 2), (5, 2, 0), (4, 6, 8)])
def test_radius_mask_matches_naive_loop(h, w, radius):
    assert torch.equal(radius_mask(h, w, radius), naive_radius_mask(h, w, radius))


def test_radius_mask_is_cached():
    assert radius_mask(4, 4, 1) is radius_mask(4, 4, 1, device="cpu")


def test_affinity_labels_by_hand_with_nearest_downsampling_and_ignore():
    # 4x4 label -> 2x2 grid: nearest keeps rows/cols 0 and 2.
    label = torch.tensor(
        [
            [0, 7, 1, 7],
            [7, 7, 7, 7],
            [IGN, 7, 1, 7],
            [7, 7, 7, 7],
        ]
    )[None]
    expected = torch.tensor(
        [
            [1, 0, IGN, 0],
            [0, 1, IGN, 1],
            [IGN, IGN, IGN, IGN],
            [0, 1, IGN, 1],
        ]
    )
    out = affinity_labels(label, grid=(2, 2), radius=1)
    assert out.shape == (1, 4, 4)
    assert out.dtype == torch.uint8
    assert torch.equal(out[0].long(), expected)


def test_affinity_labels_out_of_radius_is_ignored():
    label = torch.tensor([[1, 1, 2], [1, 1, 2], [3, 3, 2]])[None]  # already on a 3x3 grid
    out = affinity_labels(label, grid=(3, 3), radius=1)[0].long()
    # token 0 (class 1) and token 8 (class 2) are 2 apart: ignored, not negative
    assert out[0, 8] == IGN and out[8, 0] == IGN
    assert out[0, 4] == 1  # both class 1, adjacent
    assert out[4, 5] == 0  # class 1 vs class 2, adjacent
    assert out[6, 7] == 1 and out[3, 6] == 0
    assert torch.equal(out, out.T)


def test_affinity_labels_equal_naive_double_loop():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 4, (2, 8, 8), generator=g)
    label[torch.rand(2, 8, 8, generator=g) < 0.2] = IGN
    out = affinity_labels(label, grid=(4, 4), radius=1)
    small = label[:, ::2, ::2]
    assert torch.equal(out.long(), naive_affinity_labels(small, radius=1))


def test_affinity_loss_two_tokens_by_hand():
    aff = torch.tensor([[[0.9, 0.2], [0.3, 0.8]]], requires_grad=True)
    lab = torch.tensor([[[1, 0], [0, IGN]]], dtype=torch.uint8)
    loss, n_pos, n_neg = affinity_loss(aff, lab)
    # positives: (1 - 0.9) / (1 + 1); negatives: (0.2 + 0.3) / (2 + 1)
    expected = 0.5 * (0.1 / 2) + 0.5 * (0.5 / 3)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert int(n_pos) == 1 and int(n_neg) == 2
    loss.backward()
    assert aff.grad[0, 1, 1] == 0  # ignored pair gets no gradient
    assert aff.grad[0, 0, 0] == pytest.approx(-0.25)  # -0.5 / 2
    assert aff.grad[0, 0, 1] == pytest.approx(0.5 / 3)


def test_affinity_loss_all_ignored_is_zero():
    aff = torch.rand(1, 3, 3)
    loss, n_pos, n_neg = affinity_loss(aff, torch.full((1, 3, 3), IGN, dtype=torch.uint8))
    assert loss.item() == 0.0 and int(n_pos) == 0 and int(n_neg) == 0


AFF3 = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.4], [0.2, 0.4, 1.0]])
# AFF3 masked by radius 1 on a 1x3 grid (tokens 0 and 2 are 2 apart), squared, then column j
# divided by its sum + 0.1: column sums 1.25, 1.41, 1.16.
T3 = torch.tensor(
    [
        [1 / 1.35, 0.25 / 1.51, 0.0],
        [0.25 / 1.35, 1 / 1.51, 0.16 / 1.26],
        [0.0, 0.16 / 1.51, 1 / 1.26],
    ]
)


def test_transition_matrix_by_hand():
    mask = radius_mask(1, 3, radius=1)
    assert not mask[0, 2] and not mask[2, 0]
    trans = transition_matrix(AFF3[None], mask, power=2, col_eps=0.1)
    torch.testing.assert_close(trans[0], T3)
    # columns, not rows, are normalised: column sums are s / (s + 0.1)
    torch.testing.assert_close(trans[0].sum(0), torch.tensor([1.25 / 1.35, 1.41 / 1.51, 1.16 / 1.26]))
    # radius zeroing
    assert trans[0, 0, 2] == 0 and trans[0, 2, 0] == 0


def test_transition_matrix_without_mask_keeps_far_pairs():
    trans = transition_matrix(AFF3[None], None, power=1, col_eps=0.0)
    torch.testing.assert_close(trans[0].sum(0), torch.ones(3))
    assert trans[0, 0, 2] > 0


def test_random_walk_one_step_by_hand():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.4, 0.7, 0.9]])[None]  # (B=1, K=2, N=3)
    expected = torch.tensor(
        [
            [0.675 / 1.35, 0.466 / 1.51, 0.148 / 1.26],
            [0.575 / 1.35, 0.944 / 1.51, 1.012 / 1.26],
        ]
    )
    out = random_walk(probs, T3[None], steps=1)
    torch.testing.assert_close(out[0], expected)
    two = random_walk(probs, T3[None], steps=2)
    torch.testing.assert_close(two, random_walk(out, T3[None], steps=1))
    # a (B, K, h, w) input keeps its shape
    assert random_walk(probs.view(1, 2, 1, 3), T3[None]).shape == (1, 2, 1, 3)


def test_random_walk_is_batched():
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(3, 4, 6, generator=g)
    trans = torch.rand(3, 6, 6, generator=g)
    out = random_walk(probs, trans)
    for b in range(3):
        torch.testing.assert_close(out[b], probs[b] @ trans[b])


def _cams_and_labels():
    g = torch.Generator().manual_seed(2)
    cam = torch.rand(2, 4, 3, 4, generator=g)  # (B, C-1=4, h=3, w=4)
    cls_label = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    return cam, cls_label


def test_propagate_identity_affinity_keeps_argmax_and_absent_classes_zero():
    cam, cls_label = _cams_and_labels()
    aff = torch.eye(12).expand(2, 12, 12)
    out = propagate_with_affinity(cam, cls_label, aff, radius=8, bg_score=0.55)
    assert out.shape == (2, 5, 3, 4)
    # absent classes stay exactly zero
    absent = torch.cat([torch.zeros(2, 1), 1 - cls_label], dim=1).bool()
    assert (out[absent[:, :, None, None].expand_as(out)] == 0).all()
    # identity affinity: the walk only rescales (by 1 / (1 + 0.1)), argmax is kept
    bg = torch.full((2, 1, 3, 4), 0.55)
    gated = torch.cat([bg, cam.masked_fill(cls_label[:, :, None, None] == 0, -1.0)], dim=1)
    assert torch.equal(out.argmax(1), gated.argmax(1))
    torch.testing.assert_close(out.sum(1), torch.full((2, 3, 4), 1 / 1.1))


def test_propagate_two_bg_scores_in_one_call_equals_two_calls():
    cam, cls_label = _cams_and_labels()
    g = torch.Generator().manual_seed(3)
    aff = torch.rand(2, 12, 12, generator=g)
    aff = 0.5 * (aff + aff.transpose(1, 2))
    both = propagate_with_affinity(cam, cls_label, aff, radius=1, bg_score=(0.55, 0.35))
    assert both.shape == (2, 2, 5, 3, 4)
    high = propagate_with_affinity(cam, cls_label, aff, radius=1, bg_score=0.55)
    low = propagate_with_affinity(cam, cls_label, aff, radius=1, bg_score=0.35)
    torch.testing.assert_close(both[0], high)
    torch.testing.assert_close(both[1], low)
    assert (high[:, 0] >= low[:, 0]).all()  # a higher background score never lowers background
    # the radius is applied: same as passing the mask explicitly
    masked = propagate_with_affinity(cam, cls_label, aff, radius=radius_mask(3, 4, 1), bg_score=0.55)
    torch.testing.assert_close(masked, high)


def test_propagate_matches_explicit_computation():
    cam, cls_label = _cams_and_labels()
    aff = torch.rand(2, 12, 12, generator=torch.Generator().manual_seed(4))
    out = propagate_with_affinity(cam, cls_label, aff, radius=1, bg_score=0.35, power=2, col_eps=0.1)
    mask = naive_radius_mask(3, 4, 1)
    for b in range(2):
        keys = [0] + [k + 1 for k in range(4) if cls_label[b, k] > 0]
        stacked = torch.cat([torch.full((1, 12), 0.35), cam[b].reshape(4, 12)], dim=0)[keys]
        a = torch.where(mask, aff[b], torch.zeros(())) ** 2
        t = a / (a.sum(0, keepdim=True) + 0.1)
        expected = torch.zeros(5, 12)
        expected[keys] = stacked.softmax(0) @ t
        torch.testing.assert_close(out[b].reshape(5, 12), expected)


def test_mhsa_affinity_by_hand():
    block1 = torch.tensor([[[[0.8, 0.2], [0.4, 0.6]], [[0.6, 0.4], [0.2, 0.8]]]])  # (1, 2, 2, 2)
    block2 = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.4], [0.0, 1.0]]]])
    # head means: block1 [[0.7, 0.3], [0.3, 0.7]], block2 [[0.8, 0.2], [0.0, 1.0]];
    # block mean M = [[0.75, 0.25], [0.15, 0.85]]; (M + M^T) / 2 has 0.2 off the diagonal
    out = mhsa_affinity([block1, block2])
    torch.testing.assert_close(out, torch.tensor([[[0.75, 0.2], [0.2, 0.85]]]))
    asym = torch.tensor([[[[0.9, 0.1], [0.5, 0.5]]]])  # one head
    torch.testing.assert_close(mhsa_affinity(asym), torch.tensor([[[0.9, 0.3], [0.3, 0.5]]]))


def test_mhsa_affinity_symmetric_and_rejects_reduced_keys():
    g = torch.Generator().manual_seed(5)
    attn = [torch.rand(2, 3, 6, 6, generator=g).softmax(-1) for _ in range(2)]
    out = mhsa_affinity(attn)
    assert out.shape == (2, 6, 6)
    torch.testing.assert_close(out, out.transpose(1, 2))
    with pytest.raises(ValueError):
        mhsa_affinity([torch.rand(1, 2, 6, 3)])
    with pytest.raises(ValueError):
        mhsa_affinity([])
