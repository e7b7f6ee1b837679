"""The pseudo-label pipeline driven by a config, shared by training (``core.step``) and analysis
(``core.analyze``): one PAR kernel per image, the refined label (step 4 of the spec) and the
labels propagated with an affinity (step 7, learned or MHSA). ``cfg`` is a full config dict."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from core.method.affinity import propagate_with_affinity
from core.method.par import par_kernel
from core.method.pseudo import downscale_for_par, labels_from_background_runs, refine_label_two_backgrounds


def _par_args(cfg: dict) -> dict:
    p = cfg["par"]
    return {
        "dilations": p["dilations"],
        "iters": p["iters"],
        "w1": p["w1"],
        "w2": p["w2"],
        "downscale": p["downscale"],
    }


def shared_par_kernel(raw: Tensor, cfg: dict) -> Tensor:
    """The PAR kernel of images ``(B, 3, H, W)`` (0-255) at PAR resolution, for every PAR call on them."""
    p = cfg["par"]
    return par_kernel(downscale_for_par(raw, p["downscale"]), p["dilations"], p["w1"], p["w2"])


def refined_label(
    raw: Tensor,
    cam: Tensor,
    cls_label: Tensor,
    cfg: dict,
    kernel: Tensor,
    valid: Tensor | None = None,
    return_steps: bool = False,
):
    """Two-background PAR-refined label ``(B, H, W)`` (and the PAR steps of the 0.55 run)."""
    return refine_label_two_backgrounds(
        raw,
        cam,
        cls_label,
        high=cfg["cam"]["high_thresh"],
        low=cfg["cam"]["low_thresh"],
        valid=valid,
        ignore_index=cfg["data"]["ignore_index"],
        kernel=kernel,
        return_steps=return_steps,
        **_par_args(cfg),
    )


def propagated_scores(
    cam: Tensor, cls_label: Tensor, aff: Tensor, grid: tuple[int, int], cfg: dict
) -> Tensor:
    """Random walk of the label-gated CAM ``(B, C-1, H, W)``, resized to the token ``grid``, with
    ``aff`` ``(B, N, N)``, for both background scores: ``(2, B, C, h, w)`` (0.55 run first)."""
    c_cam, c_aff = cfg["cam"], cfg["affinity"]
    cam_grid = F.interpolate(cam, size=tuple(grid), mode="bilinear", align_corners=False)
    return propagate_with_affinity(
        cam_grid,
        cls_label,
        aff,
        radius=c_aff["radius"],
        bg_score=(c_cam["high_thresh"], c_cam["low_thresh"]),
        power=c_aff["power"],
        col_eps=c_aff["col_eps"],
        steps=c_aff["steps"],
    )


def propagated_label(
    raw: Tensor,
    cam: Tensor,
    cls_label: Tensor,
    aff: Tensor,
    grid: tuple[int, int],
    cfg: dict,
    kernel: Tensor,
    valid: Tensor | None = None,
) -> Tensor:
    """``propagated_scores`` refined by PAR and combined as the refined label: ``(B, H, W)``."""
    probs_high, probs_low = propagated_scores(cam, cls_label, aff, grid, cfg)
    return label_from_scores(raw, probs_high, probs_low, cls_label, cfg, kernel, valid=valid)


def label_from_scores(
    raw: Tensor,
    probs_high: Tensor,
    probs_low: Tensor,
    cls_label: Tensor,
    cfg: dict,
    kernel: Tensor,
    valid: Tensor | None = None,
) -> Tensor:
    """Score maps ``[background, classes]`` at any resolution (a walk's output on the token grid)
    refined by PAR with ``cfg``'s settings and combined as the refined label: ``(B, H, W)``."""
    return labels_from_background_runs(
        raw,
        probs_high,
        probs_low,
        cls_label,
        valid=valid,
        ignore_index=cfg["data"]["ignore_index"],
        kernel=kernel,
        **_par_args(cfg),
    )
