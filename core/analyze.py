"""``core.analyze``: one call computes every intermediate map of AFA for one image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import UserError


@dataclass
class BlockAttention:
    """Softmax attention of one encoder block, for the attention-heads view.

    attn: ``(heads, N, N')`` float16, rows are query tokens on ``grid``, columns key tokens on
    ``kv_grid`` (MiT's spatial reduction makes the key grid coarser in stages 1-3).
    """

    stage: int
    index: int  # block index within the encoder (0-based, over all stages)
    grid: tuple[int, int]
    kv_grid: tuple[int, int]
    attn: np.ndarray


@dataclass
class Analysis:
    """Everything the app shows about one image. Arrays are at the image's resolution
    ``(H, W)`` unless noted; label maps are uint8 class ids (0 background, 255 ignore).
    Fields a model cannot compute (no attention, no decoder) are None."""

    image: np.ndarray  # (H, W, 3) uint8, the analysed image
    classes: list[str]  # all class names, background first
    present: np.ndarray  # (P,) int64 foreground class ids used (1..C-1)
    scores: np.ndarray  # (C-1,) float32 sigmoid probabilities of the foreground classes
    labels_source: str  # "given" (user labels) or "predicted" (logit > 0)
    cam: np.ndarray | None  # (C-1, H, W) float32 in [0, 1], zero for absent classes
    cam_label: np.ndarray | None  # (H, W)
    par_label: np.ndarray | None  # (H, W) refined two-background label
    par_steps: np.ndarray | None  # (iters + 1, K, H, W) float16, step 0 = before PAR
    par_channels: np.ndarray | None  # (K,) class ids of par_steps channels (0 = background)
    affinity: np.ndarray | None  # (N, N) float32 learned affinity, N = grid h * w
    mhsa: np.ndarray | None  # (N, N) float32 symmetrised mean attention
    grid: tuple[int, int] | None  # (h, w) token grid of affinity / mhsa
    rw_afa_label: np.ndarray | None
    rw_mhsa_label: np.ndarray | None
    attention: list[BlockAttention] | None
    seg_label: np.ndarray | None
    seg_crf_label: np.ndarray | None
    seg_probs: np.ndarray | None = None  # (C, H, W) float16 softmax of the segmentation
    notes: list[str] = field(default_factory=list)  # e.g. "image downscaled from 4000x3000"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    meta: dict[str, Any] = field(default_factory=dict)  # model name, checkpoint, settings


# -- the analysis -----------------------------------------------------------------------------


def _method_config(model) -> dict:
    """The method settings a checkpoint was trained with, on top of the paper's defaults."""
    import copy

    from core.config import DEFAULTS

    cfg = copy.deepcopy(DEFAULTS)
    saved = (getattr(model, "meta", None) or {}).get("config") or {}
    for section in ("cam", "par", "affinity", "infer", "data"):
        if isinstance(saved.get(section), dict):
            cfg[section].update(saved[section])
    return cfg


def dense_settings(cfg: dict) -> dict:
    """A copy of method settings ``cfg`` for dense labels: the ignore band collapsed onto the
    background score (``high_thresh = low_thresh = bg_thresh``), as ``analyze(dense=True)`` uses."""
    import copy

    out = copy.deepcopy(cfg)
    out["cam"]["high_thresh"] = out["cam"]["low_thresh"] = out["cam"]["bg_thresh"]
    return out


def _as_rgb_uint8(image) -> tuple[np.ndarray, list[str]]:
    """A non-empty RGB uint8 array as is; anything else through ``read_image`` (other dtypes and
    channel counts are converted with notes; an empty array is an ``ImageReadError``)."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 \
            and image.size:
        return np.ascontiguousarray(image), []
    from core.io import read_image

    return read_image(image, max_side=None)


def _resolve_labels(model, labels, logits) -> tuple[np.ndarray, str, list[str]]:
    """Foreground class ids to use, where they came from, and notes."""
    classes = list(model.classes)
    notes: list[str] = []
    if labels is not None:
        ids = []
        for item in labels:
            if isinstance(item, (int, np.integer)):
                if not 1 <= int(item) < len(classes):
                    raise UserError(f"class id {item} is out of range 1..{len(classes) - 1}")
                ids.append(int(item))
            elif item in classes[1:]:
                ids.append(classes.index(item))
            else:
                raise UserError(f"unknown class {item!r}; this model knows: {', '.join(classes[1:])}")
        if ids:
            return np.array(sorted(set(ids)), dtype=np.int64), "given", notes
        notes.append("no image-level labels given: using the predicted classes")
    ids = (np.flatnonzero(logits > 0) + 1).astype(np.int64)
    if ids.size == 0:
        ids = np.array([int(np.argmax(logits)) + 1], dtype=np.int64)
        notes.append(f"no class scored above 0.5: using the most likely one ({classes[ids[0]]})")
    return ids, "predicted", notes


def analyze(
    model,
    image,
    labels=None,
    scales=None,
    crf: bool = False,
    seg_scales=None,
    attention: bool = True,
    dense: bool = False,
    precision: str = "auto",
    seg_merge: str | None = None,
) -> Analysis:
    """Every intermediate map of AFA for one RGB uint8 image ``(H, W, 3)``; see ``Analysis``.

    ``labels``: image-level labels as class names (or ids); None uses the classes the model
    predicts (logit > 0). ``scales``: CAM scales; None: the checkpoint's ``cam.scales`` (the paper's
    1.0, 0.5, 1.5 unless it was trained with others); the segmentation
    uses ``seg_scales`` (default: the config's inference scales 1.0, 0.5, 0.75) with flips,
    merged by ``seg_merge`` (default: the config's ``infer.seg_merge``, the authors' max; see
    ``core.method.multiscale.merge_multiscale_seg``). A scale in both lists is one pass.
    Any image size works: each pass resizes the image and every map is resized back.
    ``dense``: ``par_label`` and the propagated labels use one background score (``cam.bg_thresh``,
    the CAM label's) instead of the two (``high_thresh``/``low_thresh``) of the training label, so
    they label every pixel (no 255 band) and compare with ``cam_label`` on equal terms; this is how
    ``core.evaluate`` scores them, as the authors' validation scores its propagated label.
    ``precision``: ``auto`` (fast where the hardware has it), ``fp32`` (the exact path), ``bf16``
    or ``fp16``, for the model passes only (core/precision.py).
    """
    import time

    import torch
    import torch.nn.functional as F

    from core.method.affinity import mhsa_affinity
    from core.method.cam import cam_to_label, gate_cam
    from core.method.labels import propagated_label, refined_label, shared_par_kernel
    from core.method.multiscale import multiscale_cam

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rgb, notes = _as_rgb_uint8(image)
    h, w = rgb.shape[:2]
    cfg = dense_settings(_method_config(model)) if dense else _method_config(model)
    c_cam = cfg["cam"]
    scales = tuple(float(s) for s in (c_cam["scales"] if scales is None else scales))
    if not scales or any(s <= 0 for s in scales):
        raise ValueError("scales must be a non-empty list of positive numbers")
    has_decoder = getattr(model, "decoder", None) is not None
    seg_scales = tuple(float(s) for s in (seg_scales or cfg["infer"]["scales"])) if has_decoder else ()
    device = next(model.parameters()).device
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    raw = torch.from_numpy(np.array(rgb, copy=True)).to(device).permute(2, 0, 1)[None].float()
    x = (raw - mean) / std
    blocks: list[BlockAttention] | None = None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        resolved: dict = {}

        def labels_from(unit_logits):  # the CAM merge then skips the classes not used
            resolved["logits"] = unit_logits[0].float().cpu().numpy()
            resolved["present"], resolved["source"], resolved["notes"] = _resolve_labels(
                model, labels, resolved["logits"])
            cls = torch.zeros(1, len(model.classes) - 1, device=device)
            cls[0, torch.as_tensor(resolved["present"] - 1, device=device)] = 1.0
            resolved["cls_label"] = cls
            return cls

        ms = multiscale_cam(model, x, scales, with_affinity=True, eps=c_cam["eps"], seg_scales=seg_scales,
                            seg_merge=seg_merge or cfg["infer"]["seg_merge"], unit_pass=True,
                            all_attention=attention, precision=precision, cls_label=labels_from)
        logits = resolved["logits"]
        enc = ms.enc
        if attention and enc is not None and any(a is not None for a in enc.attn):
            blocks = [
                BlockAttention(
                    stage=s,
                    index=i,
                    grid=tuple(enc.grids[i]),
                    kv_grid=tuple(enc.kv_grids[i]),
                    attn=enc.attn[i][0].half().cpu().numpy(),
                )
                for i, s in enumerate(enc.block_stage)
            ]
        aff, aff_attn, grid = ms.affinity, ms.attn, ms.grid
        timings["forward"] = time.perf_counter() - t0

        present, source = resolved["present"], resolved["source"]
        notes += resolved["notes"]
        cls_label = resolved["cls_label"]
        cam = gate_cam(ms.cam, cls_label)
        cam_label = cam_to_label(cam, cls_label, c_cam["bg_thresh"])

        t1 = time.perf_counter()
        kernel = shared_par_kernel(raw, cfg)
        par_label, steps = refined_label(raw, cam, cls_label, cfg, kernel, return_steps=True)
        par_steps = F.interpolate(steps[:, 0].float(), size=(h, w), mode="bilinear", align_corners=False)
        timings["par"] = time.perf_counter() - t1

        rw_afa = rw_mhsa = mhsa = None
        if aff is not None:
            t2 = time.perf_counter()
            mhsa = mhsa_affinity(aff_attn)
            rw = {
                name: propagated_label(raw, cam, cls_label, matrix, grid, cfg, kernel)
                for name, matrix in (("afa", aff), ("mhsa", mhsa))
            }
            rw_afa, rw_mhsa = rw["afa"], rw["mhsa"]
            timings["random_walk"] = time.perf_counter() - t2

        seg_label = seg_crf = seg_probs = None
        if ms.seg is not None:
            probs = ms.seg.softmax(1)[0]
            seg_label = probs.max(0).indices  # = argmax(0), first on ties; 10x faster on a CPU
            seg_probs = probs.half().cpu().numpy()
    if was_training:
        model.train()

    from core.precision import resolve_precision

    def label_np(t):
        return None if t is None else t.reshape(h, w).to(torch.uint8).cpu().numpy()

    timings["total"] = time.perf_counter() - t0
    result = Analysis(
        image=rgb,
        classes=list(model.classes),
        present=present,
        scores=(1.0 / (1.0 + np.exp(-logits))).astype(np.float32),
        labels_source=source,
        cam=cam[0].float().cpu().numpy(),
        cam_label=label_np(cam_label),
        par_label=label_np(par_label),
        par_steps=par_steps.half().cpu().numpy(),
        par_channels=np.concatenate([[0], present]).astype(np.int64),
        affinity=None if aff is None else aff[0].float().cpu().numpy(),
        mhsa=None if mhsa is None else mhsa[0].float().cpu().numpy(),
        grid=grid,
        rw_afa_label=label_np(rw_afa),
        rw_mhsa_label=label_np(rw_mhsa),
        attention=blocks,
        seg_label=label_np(seg_label),
        seg_crf_label=None if seg_crf is None else np.asarray(seg_crf, dtype=np.uint8),
        seg_probs=seg_probs,
        notes=notes,
        timings=timings,
        meta={
            "kind": getattr(model, "kind", "afa"),
            "scales": list(scales),
            "seg_scales": list(seg_scales),
            "seg_merge": seg_merge or cfg["infer"]["seg_merge"],
            "precision": resolve_precision(precision, device).name,
            "crf": crf,
            "checkpoint": (getattr(model, "meta", None) or {}).get("path"),
        },
    )
    return add_crf(result, cfg["infer"]["crf"]) if crf else result


def add_crf(analysis: Analysis, params: dict | None = None) -> Analysis:
    """The analysis with ``seg_crf_label`` filled in: dense CRF (pydensecrf) on the image and the
    segmentation probabilities it already holds; the model is not run again. ``params``: the
    ``infer.crf`` config section (the paper's values by default)."""
    import dataclasses
    import time

    from core.config import DEFAULTS
    from core.method.crf import dense_crf

    if analysis.seg_probs is None:
        return analysis
    c = {**DEFAULTS["infer"]["crf"], **(params or {})}
    t0 = time.perf_counter()
    label = dense_crf(analysis.image, analysis.seg_probs.astype(np.float32), **c)  # keys = its arguments
    timings = {**analysis.timings, "crf": time.perf_counter() - t0}
    return dataclasses.replace(
        analysis,
        seg_crf_label=np.asarray(label, dtype=np.uint8),
        timings=timings,
        meta={**analysis.meta, "crf": True},
    )
