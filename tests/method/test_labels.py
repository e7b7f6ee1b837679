"""core.method.labels (the config-driven pseudo-label pipeline) on small hand-worked cases.

With ``par.iters = 0`` PAR leaves the maps as they are, so every label below is worked out from
the CAM values and the config's thresholds alone."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from core.config import DEFAULTS
from core.method.labels import propagated_label, propagated_scores, refined_label, shared_par_kernel

IGN = 255


def config(**changes) -> dict:
    """DEFAULTS with PAR switched off (0 iterations, full resolution) and ``section.key`` changes."""
    cfg = copy.deepcopy(DEFAULTS)
    cfg["par"].update(iters=0, downscale=1)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    return cfg


# one image, 2 x 2 pixels, two foreground classes; only class 1 is in the image label
RAW = torch.full((1, 3, 2, 2), 128.0)
CLS = torch.tensor([[1.0, 0.0]])
CAM = torch.tensor([[[[0.9, 0.5], [0.4, 0.2]], [[5.0, 5.0], [5.0, 5.0]]]])  # class 2 is absent


def test_refined_label_from_the_two_background_scores():
    cfg = config()
    label = refined_label(RAW, CAM, CLS, cfg, shared_par_kernel(RAW, cfg))
    # 0.55 run: 0.9 -> class 1, else background; 0.35 run: 0.9, 0.5, 0.4 -> class 1, 0.2 -> background.
    # Class where the 0.55 run says so; ignore where only the 0.35 run does; background where both do.
    # The absent class 2 never wins, however high its CAM.
    assert label.tolist() == [[[1, IGN], [IGN, 0]]]


def test_refined_label_reads_thresholds_ignore_index_and_crop_from_the_config():
    cfg = config(cam__high_thresh=0.45, data__ignore_index=200)
    valid = torch.tensor([[[True, True], [True, False]]])
    label = refined_label(RAW, CAM, CLS, cfg, shared_par_kernel(RAW, cfg), valid=valid)
    # high 0.45: 0.5 is class 1 now; outside the crop box (valid False): ignore, as the config names it
    assert label.tolist() == [[[1, 1], [200, 200]]]


def test_refined_label_steps_follow_par_settings():
    cfg = config(par__iters=3, par__downscale=2)
    raw = torch.rand(1, 3, 8, 12) * 255
    kernel = shared_par_kernel(raw, cfg)
    assert kernel.shape == (1, 8 * len(cfg["par"]["dilations"]), 4, 6)  # 8 neighbours a dilation, half size
    cam = torch.rand(1, 2, 8, 12)
    label, steps = refined_label(raw, cam, CLS, cfg, kernel, return_steps=True)
    assert label.shape == (1, 8, 12)
    assert steps.shape == (4, 1, 2, 4, 6)  # step 0 and 3 iterations; background and class 1; half size


def _softmax(bg: float, value: float) -> tuple[float, float]:
    total = math.exp(bg) + math.exp(value)
    return math.exp(bg) / total, math.exp(value) / total


def test_propagated_scores_with_an_identity_affinity():
    """A = I: T = I / (1 + col_eps), one step divides the [background, class] softmax by 1.1."""
    cam = torch.tensor([[[[0.9, 0.2]], [[3.0, 3.0]]]])  # (1, 2 classes, 1 x 2 grid)
    scores = propagated_scores(cam, CLS, torch.eye(2)[None], (1, 2), config())
    assert scores.shape == (2, 1, 3, 1, 2)  # (runs 0.55 / 0.35, B, C, h, w)
    for run, bg in enumerate((0.55, 0.35)):
        for token, value in enumerate((0.9, 0.2)):
            p_bg, p_cls = _softmax(bg, value)
            got = scores[run, 0, :, 0, token].tolist()
            assert got == pytest.approx([p_bg / 1.1, p_cls / 1.1, 0.0], rel=1e-6)


def test_propagated_scores_within_the_configured_radius():
    """A = 1 everywhere on a 1 x 3 grid with radius 1: token 0 mixes tokens 0 and 1, token 1 all
    three; each column of T is its neighbours divided by (their count + col_eps)."""
    cam = torch.tensor([[[[0.9, 0.2, 0.6]], [[0.0, 0.0, 0.0]]]])
    cfg = config(affinity__radius=1, affinity__col_eps=0.5)
    scores = propagated_scores(cam, CLS, torch.ones(1, 3, 3), (1, 3), cfg)
    p = [_softmax(0.55, v)[1] for v in (0.9, 0.2, 0.6)]  # class-1 probability of each token
    expected = [(p[0] + p[1]) / 2.5, (p[0] + p[1] + p[2]) / 3.5, (p[1] + p[2]) / 2.5]
    assert scores[0, 0, 1, 0].tolist() == pytest.approx(expected, rel=1e-6)


def test_propagated_label_with_an_identity_affinity_is_the_refined_label():
    cfg = config()
    kernel = shared_par_kernel(RAW, cfg)
    grid_cam = CAM  # the token grid is the image grid here: no resizing anywhere
    label = propagated_label(RAW, grid_cam, CLS, torch.eye(4)[None], (2, 2), cfg, kernel)
    assert label.tolist() == refined_label(RAW, CAM, CLS, cfg, kernel).tolist() == [[[1, IGN], [IGN, 0]]]
