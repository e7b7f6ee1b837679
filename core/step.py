"""One AFA training step (spec sections 3 and 5), readable top to bottom.

forward -> (no grad) multi-scale CAM -> refined pseudo label (PAR, two backgrounds) ->
affinity labels -> random walk with the learned affinity -> losses.
The PAR kernel is computed once per image and shared by every PAR call of the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from core.method.affinity import affinity_labels, affinity_loss, token_labels
from core.method.cam import cam_to_label, cam_to_three_way_label, gate_cam
from core.method.labels import propagated_label, refined_label, shared_par_kernel
from core.method.losses import balanced_seg_loss, classification_loss, dense_crf_energy_loss
from core.method.multiscale import multiscale_cam
from core.models.afa import tile_mosaic
from core.precision import Precision, resolve_precision


@dataclass
class StepResult:
    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)
    labels: dict[str, Tensor] = field(default_factory=dict)


def unwrap(model):
    """The AFANet inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def pixel_accuracy(pred: Tensor, gt: Tensor, ignore_index: int = 255) -> float:
    """Share of pixels where ``pred`` equals ``gt``, over pixels valid in both."""
    keep = (gt != ignore_index) & (pred != ignore_index)
    n = int(keep.sum())
    return float((pred[keep] == gt[keep]).float().mean()) if n else float("nan")


def step_precision(cfg: dict, device: torch.device) -> Precision:
    """``train.precision`` resolved on ``device`` (``auto`` -> what the hardware runs fast)."""
    return resolve_precision(cfg["train"]["precision"], device)


def pseudo_labels(model, batch: dict, cfg: dict, use_afa: bool) -> dict[str, Tensor]:
    """CAM label, refined (PAR) label and, with ``use_afa``, the AFA-propagated label. No gradient.
    The CAM passes run in ``train.precision``; everything after them in fp32 (core/precision.py)."""
    c_cam = cfg["cam"]
    ignore = cfg["data"]["ignore_index"]
    images, raw, cls_label, valid = batch["image"], batch["image_raw"], batch["cls_label"], batch["valid"]
    with torch.no_grad():
        ms = multiscale_cam(model, images, c_cam["scales"], with_affinity=use_afa, eps=c_cam["eps"],
                            precision=step_precision(cfg, images.device), cls_label=cls_label)
        cam = gate_cam(ms.cam, cls_label)
        out = {
            "cam_label": cam_to_label(cam, cls_label, c_cam["bg_thresh"], valid=valid, ignore_index=ignore)
        }
        if not cfg["train"]["use_par"]:  # ablation baseline: the three-way CAM label
            out["par_label"] = cam_to_three_way_label(
                cam, cls_label, c_cam["high_thresh"], c_cam["low_thresh"], valid=valid, ignore_index=ignore
            )
            return out
        kernel = shared_par_kernel(raw, cfg)
        out["par_label"] = refined_label(raw, cam, cls_label, cfg, kernel, valid=valid)
        if use_afa and ms.affinity is not None:
            out["aff_label"] = propagated_label(
                raw, cam, cls_label, ms.affinity, ms.grid, cfg, kernel, valid=valid
            )
    return out


def training_step(model, batch: dict, cfg: dict, step: int) -> StepResult:
    """One step of ``cfg['train']['mode']``: afa (the paper), cam (classifier only), supervised."""
    net = unwrap(model)
    t, w = cfg["train"], cfg["loss"]
    ignore = cfg["data"]["ignore_index"]
    images, cls_label = batch["image"], batch["cls_label"]
    size = images.shape[-2:]
    # the decoder is skipped while its loss has weight 0 (mode cam, or before cam_iters); call the
    # wrapper itself (not net.forward_cam) so DistributedDataParallel still synchronises gradients
    cls_only = t["mode"] == "cam" or (t["mode"] == "afa" and step < t["cam_iters"])
    k = int(t["tile_grid"])
    # the forward pass runs in train.precision; the model's outputs and every loss below are fp32
    with step_precision(cfg, images.device).autocast():
        if k > 1:  # mode cam only (validated): classify each image as a tile of a k x k mosaic
            out = model(tile_mosaic(images, k), with_decoder=False, with_affinity=False, tiles=k)
        else:
            out = model(images, with_decoder=not cls_only, with_affinity=not cls_only)
    if w["cls_type"] == "softmax":  # single-label pretraining only (validated in core.config)
        loss_cls = F.cross_entropy(out.logits, cls_label.argmax(1))
    else:
        loss_cls = classification_loss(out.logits, cls_label)
    logs = {"loss_cls": loss_cls.item()}
    labels: dict[str, Tensor] = {}
    if cls_only:
        loss = w["cls"] * loss_cls
        logs["loss"] = loss.item()
        return StepResult(loss, logs, labels)

    seg = F.interpolate(out.seg, size=size, mode="bilinear", align_corners=False)
    labels["seg_pred"] = seg.detach().max(1).indices  # = argmax(1); PyTorch's CPU argmax over a
    # non-innermost dimension is several times slower than max
    gt = batch.get("mask")
    if t["mode"] == "supervised":
        loss_seg = F.cross_entropy(seg, gt, ignore_index=ignore)
        loss = w["cls"] * loss_cls + loss_seg
        logs.update(loss_seg=loss_seg.item(), loss=loss.item())
        return StepResult(loss, logs, labels)

    use_afa = t["use_aff"] and out.affinity is not None
    pl = pseudo_labels(net, batch, cfg, use_afa=use_afa)
    labels.update(pl)
    target = (
        pl["aff_label"]
        if (use_afa and step >= t["aff_label_iters"] and "aff_label" in pl)
        else pl["par_label"]
    )

    loss_seg = balanced_seg_loss(seg, target, ignore_index=ignore)
    loss = w["cls"] * loss_cls + w["seg"] * loss_seg
    logs["loss_seg"] = loss_seg.item()
    if use_afa:
        grid = net.affinity_grid(out.enc)
        aff_target = affinity_labels(
            pl["par_label"], grid, radius=cfg["affinity"]["radius"], ignore_index=ignore
        )
        loss_aff, n_pos, n_neg = affinity_loss(out.affinity, aff_target, ignore_index=ignore)
        loss = loss + w["aff"] * loss_aff
        logs.update(loss_aff=loss_aff.item(), aff_pos=float(n_pos), aff_neg=float(n_neg),
                    aff_pos_fg=_foreground_positive_share(pl["par_label"], aff_target, grid, ignore))
    if t["use_reg"] and w["reg"] > 0:
        loss_reg = (
            dense_crf_energy_loss(
                seg.softmax(1),
                batch["image_raw"],
                valid=batch["valid"],
                sigma_rgb=w["reg_sigma_rgb"],
                sigma_xy=w["reg_sigma_xy"],
                scale=w["reg_scale"],
                exact_max_pixels=w["reg_exact_max_pixels"],
                samples=w["reg_samples"],
                normalize=w["reg_normalize"],
            )
            * w["reg_energy_scale"]
        )
        loss = loss + w["reg"] * loss_reg
        logs["loss_reg"] = loss_reg.item()
    logs["loss"] = loss.item()
    for name in ("par_label", "aff_label"):  # how much of the crop the pseudo labels call foreground
        if name in labels:
            logs[name.replace("_label", "_fg")] = _foreground_share(labels[name], ignore)
    if gt is not None:
        for name in ("cam_label", "par_label", "aff_label"):
            if name in labels:
                logs[name.replace("_label", "_acc")] = pixel_accuracy(labels[name], gt, ignore)
        logs["pseudo_acc"] = pixel_accuracy(target, gt, ignore)
    return StepResult(loss, logs, labels)


def _foreground_share(label: Tensor, ignore: int) -> float:
    """Share of a pseudo label's pixels (padding and ignore included) labelled foreground."""
    return ((label > 0) & (label != ignore)).float().mean().item()


def _foreground_positive_share(label: Tensor, aff_target: Tensor, grid, ignore: int) -> float:
    """Share of the affinity loss's positive pairs that join two foreground tokens (the rest join
    two background tokens): the loss pools all positives, so this says how much of its positive
    term teaches that an object's tokens belong together."""
    tokens = token_labels(label, grid)
    fg = (tokens > 0) & (tokens != ignore)  # (B, N)
    pos = aff_target == 1
    n_pos = pos.sum().item()
    return (pos & fg[:, :, None]).sum().item() / n_pos if n_pos else 0.0
