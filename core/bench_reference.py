"""The reference of ``core.bench``: the authors' training step, their arithmetic in fp32, timed here.

The authors' repository (rulixiang/afa) cannot run on this machine (it needs mmcv and CUDA), so
this module re-implements, with this project's parameters (the same ``AFANet``), the computation
their training script ``scripts/dist_train_voc.py`` performs in one iteration, arranged as
their code arranges it. Only its time is used; it is not used by training or the app.
``tests/test_bench.py`` checks that it computes the same features and pseudo labels as the fast
path (``core.step`` in fp32), so the two differ in arrangement and precision, not in method.

What one reference step computes, as theirs does (and where ``core.step`` differs):
- precision: fp32 everywhere (their script has no autocast). ``core.step`` autocasts the model
  passes to ``train.precision`` (bf16 on this CPU by default).
- encoder (their ``mix_transformer``): every block computes its raw scores, softmax and
  attention product explicitly and returns a copy of its scores, average-pooled over the query
  grid in the spatially reduced blocks; tokens go to and from NCHW maps by transposes
  (``_reference_encoder``). ``core.step``: fused SDPA except the blocks whose maps are used,
  channels-last views, no copies.
- every pass runs the whole network (their ``WeTr.forward``): decoder and affinity head
  included, even in the three no-grad CAM passes (``cam_only=True`` returns after computing
  them). ``core.step``: the CAM passes run encoder + classifier only, the affinity head in the
  largest-scale pass only.
- multi-scale CAM (``multi_scale_cam_with_aff_mat``): scale 1.0 first, then the others, on
  ``[images; flips]``, CAMs resized, max with the flip, ReLU, summed, normalised by max pools.
  The same arithmetic as ``core.method.multiscale.multiscale_cam``; this module keeps its own
  loop only because the passes differ (whole network, every block's maps).
- PAR (their ``PAR`` module, ``ReferencePAR``): the kernel is rebuilt on every call, neighbours
  gathered with one-hot convolutions and repeated tensors, one image at a time: two calls per
  image for the refined label (``refine_cams_with_bkg_v2``) and two for the propagated label
  (``refine_cams_with_cls_label``). ``core.step``: one kernel per image, shared by the batched
  calls, neighbours as shifted views.
- random walk (``propagte_aff_cam_with_bkg``): called once per background score, a loop over
  images for the softmax and the product. ``core.step``: both scores in one batched product.
- affinity labels (``cams_to_affinity_label``) with repeated label maps and per-image masking;
  the affinity loss; the segmentation loss as two cross-entropy calls; the classification loss.
- not computed: L_reg, which their released script leaves out (the energy loss is commented
  out); ``core.step`` computes it (``train.use_reg``), so its time counts against this project.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from core.models.mit import drop_path


class ReferencePAR(torch.nn.Module):
    """PAR as a per-call module: kernel recomputed on every call."""

    def __init__(self, dilations=(1, 2, 4, 8, 12, 24), iters: int = 10, w1: float = 0.3, w2: float = 0.01):
        super().__init__()
        self.dilations, self.iters, self.w1, self.w2 = list(dilations), iters, w1, w2
        onehot = torch.zeros(8, 1, 3, 3)
        for k, (r, c) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]):
            onehot[k, 0, r, c] = 1.0
        self.register_buffer("onehot", onehot)
        dist = torch.tensor([math.sqrt(2), 1, math.sqrt(2), 1, 1, math.sqrt(2), 1, math.sqrt(2)])
        self.register_buffer("dist", torch.cat([dist * d for d in self.dilations]).view(1, 1, -1, 1, 1))

    def neighbours(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        out = []
        for d in self.dilations:
            padded = F.pad(x, [d] * 4, mode="replicate").reshape(b * c, 1, h + 2 * d, w + 2 * d)
            out.append(F.conv2d(padded, self.onehot, dilation=d).view(b, c, 8, h, w))
        return torch.cat(out, dim=2)

    def forward(self, image: Tensor, maps: Tensor) -> Tensor:
        maps = F.interpolate(maps, size=image.shape[-2:], mode="bilinear", align_corners=True)
        b, _, h, w = image.shape
        nb = self.neighbours(image)
        rep = image.unsqueeze(2).repeat(1, 1, nb.shape[2], 1, 1)
        pos = self.dist.repeat(b, 1, 1, h, w)
        aff = -((torch.abs(nb - rep) / (torch.std(nb, dim=2, keepdim=True) + 1e-8) / self.w1) ** 2)
        aff = aff.mean(dim=1, keepdim=True)
        pos_aff = -((pos / (torch.std(pos, dim=2, keepdim=True) + 1e-8) / self.w1) ** 2)
        kernel = F.softmax(aff, dim=2) + self.w2 * F.softmax(pos_aff, dim=2)
        for _ in range(self.iters):
            maps = (self.neighbours(maps) * kernel).sum(2)
        return maps


# ---------------------------------------------------------------------------------- the network
def _reference_encoder(encoder, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """A ``MixTransformer``'s parameters run as the authors' encoder: features and, per block, the
    copy of its raw scores they return (pooled over the query grid by ``sr`` where keys are)."""
    b = x.shape[0]
    features, score_copies = [], []
    for s in range(4):
        embed = getattr(encoder, f"patch_embed{s + 1}")
        x = embed.proj(x)
        h, w = x.shape[-2:]
        tokens = embed.norm(x.flatten(2).transpose(1, 2))
        for block in getattr(encoder, f"block{s + 1}"):
            att = block.attn
            y = block.norm1(tokens)
            n, c = y.shape[1], y.shape[2]
            q = att.q(y).reshape(b, n, att.num_heads, att.head_dim).permute(0, 2, 1, 3)
            kv_in = y
            if att.sr_ratio > 1:
                grid = y.permute(0, 2, 1).reshape(b, c, h, w)
                kv_in = att.norm(att.sr(grid).reshape(b, c, -1).permute(0, 2, 1))
            k, v = att.kv(kv_in).reshape(b, -1, 2, att.num_heads, att.head_dim).permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-2, -1)
            attn = (scores * att.scale).softmax(dim=-1)
            out = att.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
            copy = scores.clone().reshape(b, att.num_heads, h, w, scores.shape[-1])
            if att.sr_ratio > 1:
                copy = F.avg_pool3d(copy, kernel_size=(att.sr_ratio, att.sr_ratio, 1),
                                    stride=(att.sr_ratio, att.sr_ratio, 1))
            score_copies.append(copy.reshape(-1, att.num_heads, scores.shape[-1], scores.shape[-1]))
            tokens = tokens + drop_path(out, block.drop_path_p, block.training)
            mlp = block.mlp
            hidden = mlp.fc1(block.norm2(tokens))
            hidden = hidden.transpose(1, 2).view(b, hidden.shape[-1], h, w)
            hidden = F.gelu(mlp.dwconv.dwconv(hidden).flatten(2).transpose(1, 2))
            tokens = tokens + drop_path(mlp.fc2(hidden), block.drop_path_p, block.training)
        tokens = getattr(encoder, f"norm{s + 1}")(tokens)
        x = tokens.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        features.append(x)
    return features, score_copies


def reference_forward(net, x: Tensor, cam_only: bool = False):
    """The authors' ``WeTr.forward``: the whole network in every call. ``cam_only``: (CAM, affinity);
    otherwise (classification logits, segmentation logits, score copies, affinity)."""
    features, scores = _reference_encoder(net.encoder, x)
    seg = net.decoder(features)
    stacked = torch.cat(scores[-2:], dim=1)
    affinity = torch.sigmoid(net.attn_proj(stacked + stacked.permute(0, 1, 3, 2)))[:, 0]
    f4 = features[-1]
    if cam_only:
        return F.conv2d(f4, net.classifier.weight).detach(), affinity
    pool = F.adaptive_max_pool2d if net.pooling == "gmp" else F.adaptive_avg_pool2d
    logits = net.classifier(pool(f4, (1, 1))).view(-1, net.num_classes - 1)
    return logits, seg, scores, affinity


# ---------------------------------------------------------------------------- pseudo labels
def _multiscale_cam_with_affinity(net, images: Tensor, scales) -> tuple[Tensor, Tensor]:
    b, _, h, w = images.shape
    order = [1.0] + [s for s in scales if s != 1.0]
    cams, affs = [], []
    with torch.no_grad():
        for s in order:
            x = images if s == 1.0 else F.interpolate(images, size=(int(s * h), int(s * w)),
                                                      mode="bilinear", align_corners=False)
            cam, aff = reference_forward(net, torch.cat([x, x.flip(-1)], dim=0), cam_only=True)
            affs.append(aff)
            cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
            cams.append(F.relu(torch.max(cam[:b], cam[b:].flip(-1))))
        cam = torch.sum(torch.stack(cams, dim=0), dim=0)
        cam = cam + F.adaptive_max_pool2d(-cam, (1, 1))
        cam = cam / (F.adaptive_max_pool2d(cam, (1, 1)) + 1e-5)
    largest = max(range(len(scales)), key=lambda i: scales[i])  # their argmax over the config list
    return cam, affs[largest]


def _boxes(valid: Tensor) -> list[tuple[int, int, int, int]]:
    """Per image the crop box (row0, row1, col0, col1) of the valid pixels, as their ``img_box``."""
    out = []
    for v in valid:
        rows, cols = v.any(1).nonzero()[:, 0], v.any(0).nonzero()[:, 0]
        out.append((int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1))
    return out


def _in_box(label: Tensor, boxes, ignore: int) -> Tensor:
    out = torch.full_like(label, ignore)
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        out[i, r0:r1, c0:c1] = label[i, r0:r1, c0:c1]
    return out


def _refined_with_background(par, raw: Tensor, cam: Tensor, cls_label: Tensor, cfg: dict, boxes) -> Tensor:
    """``refine_cams_with_bkg_v2``: both background scores, PAR per image and per score."""
    b, _, h, w = raw.shape
    ignore = cfg["data"]["ignore_index"]
    small = F.interpolate(raw, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
    keys_all = torch.cat([torch.ones_like(cls_label[:, :1]), cls_label], dim=1)
    runs = {}
    for name, bg in (("high", cfg["cam"]["high_thresh"]), ("low", cfg["cam"]["low_thresh"])):
        stack = torch.cat([torch.full_like(cam[:, :1], bg), cam], dim=1)
        stack = F.interpolate(stack, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
        label = torch.full((b, h, w), float(ignore), device=raw.device)
        for i, (r0, r1, c0, c1) in enumerate(boxes):
            keys = keys_all[i].nonzero()[:, 0]
            probs = stack[i, keys].unsqueeze(0).softmax(dim=1)
            refined = par(small[i:i + 1], probs)
            refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
            label[i, r0:r1, c0:c1] = keys[refined.argmax(1)][0, r0:r1, c0:c1].float()
        runs[name] = label
    out = runs["high"].clone()
    out[runs["high"] == 0] = ignore
    out[(runs["high"] + runs["low"]) == 0] = 0
    return out.long()


def _propagate(cam_grid: Tensor, aff: Tensor, mask: Tensor, cls_label: Tensor, bg: float) -> Tensor:
    """``propagte_aff_cam_with_bkg``: one background score, a loop over images."""
    b, _, h, w = cam_grid.shape
    stack = torch.cat([torch.full_like(cam_grid[:, :1], bg), cam_grid], dim=1)
    keys_all = torch.cat([torch.ones_like(cls_label[:, :1]), cls_label], dim=1)
    out = torch.zeros_like(stack)
    aff = aff.clone()
    for i in range(b):
        aff[i, ~mask] = 0
    aff = aff.detach() ** 2
    aff = aff / (torch.sum(aff, dim=1, keepdim=True) + 1e-1)
    for i in range(b):
        keys = keys_all[i].nonzero()[:, 0]
        probs = F.softmax(stack[i].reshape(stack.shape[1], -1)[keys], dim=0)
        out[i, keys] = torch.matmul(probs, aff[i]).reshape(-1, h, w)
    return out


def _refined_propagated(par, raw: Tensor, probs: Tensor, cls_label: Tensor, boxes) -> Tensor:
    """``refine_cams_with_cls_label``: PAR per image on its crop box at half resolution, argmax."""
    keys_all = torch.cat([torch.ones_like(cls_label[:, :1]), cls_label], dim=1)
    refined = torch.zeros_like(probs)
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        crop = raw[i:i + 1, :, r0:r1, c0:c1]
        small = F.interpolate(crop, size=(crop.shape[2] // 2, crop.shape[3] // 2), mode="bilinear",
                              align_corners=False)
        keys = keys_all[i].nonzero()[:, 0]
        out = par(small, probs[i:i + 1, :, r0:r1, c0:c1][:, keys])
        refined[i, keys, r0:r1, c0:c1] = F.interpolate(out, size=crop.shape[2:], mode="bilinear",
                                                       align_corners=False)[0]
    return refined.argmax(dim=1)


def reference_pseudo_labels(net, batch: dict, cfg: dict, par: ReferencePAR, radius_mask: Tensor,
                            affinity: Tensor | None = None) -> dict[str, Tensor]:
    """The CAM label, the refined label and the AFA-propagated label of one step, as the authors'
    script computes them (module docstring). ``radius_mask``: bool (N, N) for the largest scale's
    token grid (their ``attn_mask_infer``, built once before training)."""
    c_cam, ignore = cfg["cam"], cfg["data"]["ignore_index"]
    images, raw, cls_label = batch["image"], batch["image_raw"], batch["cls_label"]
    boxes = _boxes(batch["valid"])
    with torch.no_grad():
        cam, aff = _multiscale_cam_with_affinity(net, images, list(c_cam["scales"]))
        gated = cls_label[:, :, None, None] * cam
        value, label = gated.max(dim=1)
        label = label + 1
        label[value <= c_cam["bg_thresh"]] = 0
        cam_label = _in_box(label, boxes, ignore)
        side = int(round(math.sqrt(radius_mask.shape[0])))
        grid = (side, side) if side * side == radius_mask.shape[0] else None
        assert grid is not None, "the reference runs on square crops"
        cam_grid = F.interpolate(gated, size=grid, mode="bilinear", align_corners=False)
        size = raw.shape[-2:]
        rw = {}
        for name, bg in (("low", c_cam["low_thresh"]), ("high", c_cam["high_thresh"])):
            probs = _propagate(cam_grid, aff, radius_mask, cls_label, bg)
            probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
            rw[name] = _refined_propagated(par, raw, probs, cls_label, boxes)
        aff_label = rw["high"].clone()
        aff_label[rw["high"] == 0] = ignore
        aff_label[(rw["high"] + rw["low"]) == 0] = 0
        aff_label = _in_box(aff_label, boxes, ignore)
        par_label = _refined_with_background(par, raw, cam, cls_label, cfg, boxes)
    return {"cam_label": cam_label, "par_label": par_label, "aff_label": aff_label}


def _affinity_labels(label: Tensor, mask: Tensor, ignore: int) -> Tensor:
    """``cams_to_affinity_label``: repeated label maps, masks applied image by image."""
    b, h, w = label.shape
    small = F.interpolate(label.unsqueeze(1).float(), size=(h // 16, w // 16), mode="nearest")
    flat = small.reshape(b, 1, -1)
    rep = flat.repeat(1, flat.shape[-1], 1)
    out = (rep == rep.permute(0, 2, 1)).long()
    for i in range(b):
        out[i, ~mask] = ignore
        out[i, :, rep[i, 0, :] == ignore] = ignore
        out[i, rep[i, 0, :] == ignore, :] = ignore
    return out


def reference_training_step(net, batch: dict, cfg: dict, par: ReferencePAR,
                            masks: dict[str, Tensor]) -> Tensor:
    """One iteration's loss (every term on, the propagated label supervising), the authors' way.
    ``masks``: the radius masks of the crop's grid (``"train"``) and the largest scale's
    (``"infer"``), built once as their script does. Returns the loss to back-propagate."""
    ignore = cfg["data"]["ignore_index"]
    w = cfg["loss"]
    logits, seg, _, affinity = reference_forward(net, batch["image"])
    labels = reference_pseudo_labels(net, batch, cfg, par, masks["infer"])
    aff_target = _affinity_labels(labels["par_label"], masks["train"], ignore)
    pos, neg = (aff_target == 1).to(torch.int16), (aff_target == 0).to(torch.int16)
    aff_loss = 0.5 * torch.sum(pos * (1 - affinity)) / (pos.sum() + 1) + 0.5 * torch.sum(neg * affinity) / (
        neg.sum() + 1
    )
    seg = F.interpolate(seg, size=labels["aff_label"].shape[1:], mode="bilinear", align_corners=False)
    target = labels["aff_label"]
    bg_label, fg_label = target.clone(), target.clone()
    bg_label[target != 0] = ignore
    fg_label[target == 0] = ignore
    seg_loss = 0.5 * (F.cross_entropy(seg, bg_label, ignore_index=ignore)
                      + F.cross_entropy(seg, fg_label, ignore_index=ignore))
    cls_loss = F.multilabel_soft_margin_loss(logits, batch["cls_label"])
    return w["cls"] * cls_loss + w["seg"] * seg_loss + w["aff"] * aff_loss
