"""scripts/threshold_sweep.py: the oracle random walk (ground-truth affinity) on a case worked by hand."""

from types import SimpleNamespace

import numpy as np

from core.analyze import dense_settings
from core.config import load_config
from tests.scripts import load_script


def _case(patchy: bool = False):
    """The hand-worked case of the tests below: 128 px, one object on tokens 2..5 of the 8x8 grid,
    of one colour, or (``patchy``) each of its 16 tokens of its own colour, so that PAR, which
    spreads a label between pixels of similar colour, cannot carry a label across its tokens."""
    cfg = dense_settings(load_config(None, ["affinity.radius=4"]))  # the paper's background score 0.45
    image = np.full((128, 128, 3), 40, np.uint8)
    image[32:96, 32:96] = (200, 120, 60)
    if patchy:
        for k in range(16):
            ty, tx = 2 + k // 4, 2 + k % 4
            colour = (255 * (k & 1), 85 * (k >> 1 & 3), 255 * (k >> 3 & 1))
            image[ty * 16:(ty + 1) * 16, tx * 16:(tx + 1) * 16] = colour
    gt = np.zeros((128, 128), np.int64)
    gt[32:96, 32:96] = 1

    def analysis(token_values):
        cam = np.zeros((1, 128, 128), np.float32)
        for (ty, tx), v in token_values.items():
            cam[0, ty * 16:(ty + 1) * 16, tx * 16:(tx + 1) * 16] = v
        return SimpleNamespace(image=image, cam=cam, present=np.array([1]), grid=(8, 8))

    return cfg, gt, analysis


def test_identity_walk_keeps_a_one_token_cam_that_the_oracle_drains():
    """Without propagation (identity affinity) the token whose CAM is 1 keeps its class (softmax
    against 0.45: 0.63), inside the object only; the oracle's average over the object's 16 tokens
    (class probability (0.63 + 15 x 0.39) / 16 = 0.40) drains it. So the identity row isolates
    what averaging does. (The object is patchy: on one colour PAR itself averages the token away.)"""
    sweep = load_script("threshold_sweep")
    cfg, gt, analysis = _case(patchy=True)
    a = analysis({(3, 3): 1.0})
    kept = sweep.identity_label(a, gt, cfg)
    assert (kept == 1).sum() >= 16 * 16 // 2 and not ((kept == 1) & (gt == 0)).any()
    assert (sweep.oracle_label(a, gt, cfg) == 1).sum() < (kept == 1).sum() // 2


def test_grid_truth_is_the_truth_on_the_grid_whatever_the_cam():
    """The ceiling row ignores the CAM: with a CAM of zeros it still labels the grid-aligned object
    exactly; an object off the grid (rows 40-87, cols 40-87: half a token off) comes out on whole
    tokens (its nearest-resized token mask: tokens 3..5, rows/cols 48-95) before PAR's refinement."""
    sweep = load_script("threshold_sweep")
    cfg, gt, analysis = _case()
    a = analysis({})
    label = sweep.grid_truth_label(a, gt, cfg)
    iou = ((label == 1) & (gt == 1)).sum() / ((label == 1) | (gt == 1)).sum()
    assert iou > 0.95
    shifted = np.zeros_like(gt)
    shifted[40:88, 40:88] = 1
    tokens = sweep._grid_truth(a, shifted).reshape(8, 8).numpy()
    assert tokens[3:6, 3:6].all() and tokens.sum() == 9


def test_oracle_walk_spreads_a_partial_cam_over_its_object_only():
    """A 128x128 image, one object (rows/cols 32-95: tokens 2..5 of an 8x8 grid of 16 px) of one
    colour on a background of another. The CAM is 1 on one of its 16 tokens and 0.6 on the others
    (0 elsewhere): with the ground truth's affinity each object token becomes the mean of the
    object's tokens (softmax against the background score 0.45: class probability 0.63 and 0.54,
    mean 0.54 > 0.5), so the object, and nothing else, is labelled; a CAM on one token only
    (mean class probability 0.40) is drained by the background."""
    sweep = load_script("threshold_sweep")
    cfg, gt, analysis = _case()

    def label_for(token_values):
        return sweep.oracle_label(analysis(token_values), gt, cfg)

    full = label_for({(y, x): 1.0 if (y, x) == (3, 3) else 0.6 for y in range(2, 6) for x in range(2, 6)})
    iou = ((full == 1) & (gt == 1)).sum() / ((full == 1) | (gt == 1)).sum()
    assert iou > 0.9 and set(np.unique(full)) <= {0, 1}
    lost = label_for({(3, 3): 1.0})
    assert (lost == 1).sum() < 0.1 * (gt == 1).sum()
