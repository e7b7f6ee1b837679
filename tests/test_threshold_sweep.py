"""scripts/threshold_sweep.py: the oracle random walk (ground-truth affinity) on a case worked by hand."""

from types import SimpleNamespace

import numpy as np

from core.analyze import dense_settings
from core.config import load_config
from tests.scripts import load_script


def test_oracle_walk_spreads_a_partial_cam_over_its_object_only():
    """A 128x128 image, one object (rows/cols 32-95: tokens 2..5 of an 8x8 grid of 16 px) of one
    colour on a background of another. The CAM is 1 on one of its 16 tokens and 0.6 on the others
    (0 elsewhere): with the ground truth's affinity each object token becomes the mean of the
    object's tokens (softmax against the background score 0.45: class probability 0.63 and 0.54,
    mean 0.54 > 0.5), so the object, and nothing else, is labelled; a CAM on one token only
    (mean class probability 0.40) is drained by the background."""
    sweep = load_script("threshold_sweep")
    cfg = dense_settings(load_config(None, ["affinity.radius=4"]))  # the paper's background score 0.45
    image = np.full((128, 128, 3), 40, np.uint8)
    image[32:96, 32:96] = (200, 120, 60)
    gt = np.zeros((128, 128), np.int64)
    gt[32:96, 32:96] = 1

    def label_for(token_values):
        cam = np.zeros((1, 128, 128), np.float32)
        for (ty, tx), v in token_values.items():
            cam[0, ty * 16:(ty + 1) * 16, tx * 16:(tx + 1) * 16] = v
        a = SimpleNamespace(image=image, cam=cam, present=np.array([1]), grid=(8, 8))
        return sweep.oracle_label(a, gt, cfg)

    full = label_for({(y, x): 1.0 if (y, x) == (3, 3) else 0.6 for y in range(2, 6) for x in range(2, 6)})
    iou = ((full == 1) & (gt == 1)).sum() / ((full == 1) | (gt == 1)).sum()
    assert iou > 0.9 and set(np.unique(full)) <= {0, 1}
    lost = label_for({(3, 3): 1.0})
    assert (lost == 1).sum() < 0.1 * (gt == 1).sum()
