"""The label-map panels of one analysis (Inspect and Compare draw the same ones): each stage's
label over the image at display size, or its errors against the ground truth, with the image's
score for that stage under it; and the ground-truth panel."""

from __future__ import annotations

from typing import Any

import numpy as np

from app import render
from app import truth as gt

PANELS = {  # panel: (core.analyze field, title)
    "cam": ("cam_label", "CAM label"),
    "par": ("par_label", "PAR label"),
    "mhsa": ("rw_mhsa_label", "MHSA-propagated label"),
    "afa": ("rw_afa_label", "AFA-propagated label"),
    "seg": ("seg_label", "Segmentation"),
}


def seg_field(analysis: Any, show_crf: bool) -> tuple[str, str]:
    """Which segmentation field the seg panel shows, and a sentence about it."""
    if analysis.seg_label is None:
        return "seg_label", "This checkpoint has no decoder (CAM only)."
    if show_crf:
        if analysis.seg_crf_label is not None:
            return "seg_crf_label", "Segmentation refined by a dense CRF."
        return "seg_label", "The CRF result is not available; showing the plain segmentation."
    return "seg_label", "Segmentation branch (multi-scale, flipped)."


def truth_panel(analysis: Any, truth: gt.GroundTruth | None, opacity: float) -> tuple[np.ndarray | None, str]:
    """The ground truth over the image (in the model's class ids where it knows them all) and a
    sentence: where it comes from and its labels, or why there are no scores. A mask in classes
    the model does not know is drawn in its own ids, with a legend of its own."""
    if analysis is None:
        return None, ""
    shown = render.for_display(analysis.image)
    if truth is None:
        return render.placeholder("no ground truth for this image", shown.shape[:2]), (
            "No ground truth: scores need an example, or an image opened from the *Dataset* tab."
        )
    truth = truth.resized(analysis.image.shape)
    mask, unknown = gt.for_model(truth, analysis.classes)
    labels = ", ".join(truth.label_names) or "background only"
    if mask is None:
        ids = sorted({int(v) for v in np.unique(truth.mask)} - {gt.IGNORE})
        return render.overlay_labels(shown, truth.mask, opacity), (
            f"Ground truth ({truth.source}): {labels}. This checkpoint does not know "
            f"{', '.join(unknown)}, so the maps are not scored. "
            + render.legend_html(list(truth.classes), ids, "Its colours")
        )
    return render.overlay_labels(shown, mask, opacity), f"Ground truth ({truth.source}): {labels}."


def truth_ids(analysis: Any, truth: gt.GroundTruth | None) -> set[int]:
    """The class ids (the model's) of the ground truth, for the legend; none if it cannot be mapped."""
    if analysis is None or truth is None:
        return set()
    mask, _ = gt.for_model(truth, analysis.classes)
    return set() if mask is None else {int(v) for v in np.unique(mask)} - {gt.IGNORE}


def label_panels(
    analysis: Any,
    truth: gt.GroundTruth | None,
    opacity: float,
    show_errors: bool = False,
    show_crf: bool = False,
) -> tuple[dict[str, tuple[np.ndarray, str]], set[int]]:
    """``{panel: (picture, note)}`` for every panel of ``PANELS`` and the class ids they show.
    The note is the image's score of that stage (mIoU and per-class IoU) when it has ground
    truth; with ``show_errors`` the picture paints the stage's errors instead of its classes."""
    shown = render.for_display(analysis.image)
    scores = gt.stage_scores(analysis, truth)
    out: dict[str, tuple[np.ndarray, str]] = {}
    ids: set[int] = {0}
    for panel, (field, title) in PANELS.items():
        note = ""
        if panel == "seg":
            field, note = seg_field(analysis, show_crf)
        label = getattr(analysis, field, None)
        if label is None:
            out[panel] = (render.placeholder(f"this model gives no {title}", shown.shape[:2]), note)
            continue
        errors = gt.errors(analysis, truth, field) if show_errors else None
        if errors is not None:
            picture = render.overlay_errors(shown, errors, opacity)
        else:
            picture = render.overlay_labels(shown, label, opacity)
            ids.update(int(v) for v in np.unique(label))
        score = gt.score_line(scores.get(field), analysis.classes)
        if field == "seg_crf_label" and "seg_label" in scores:  # what the CRF changed
            score += f" (without the CRF: mIoU {100 * scores['seg_label'].miou():.1f})"
        out[panel] = (picture, " ".join(x for x in (score, note) if x))
    return out, ids


def legend(analysis: Any, ids: set[int], show_errors: bool, truth: gt.GroundTruth | None) -> str:
    """Class swatches of the shown ids, and the error colours when errors are painted."""
    from core.method.metrics import ERROR_KINDS

    html = render.legend_html(analysis.classes, sorted(ids | {0}), "Legend")
    if show_errors and truth is not None:
        html += render.errors_legend_html(ERROR_KINDS)
    return html
