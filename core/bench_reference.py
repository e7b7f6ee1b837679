"""Reference timings: the authors' computation structure, re-implemented here for benchmarking.

The authors' repository cannot be run here (it needs mmcv and CUDA), so ``core.bench`` times this
module instead: our own code arranged the way their training script spends its time, with the
same settings and inputs. What differs from ``core.step``, and nothing else:
- every CAM pass runs the whole network, decoder included (their ``forward(cam_only=True)``
  computes the segmentation head before returning the CAM);
- PAR builds its kernel anew for every call (4 calls a step: two background runs for the
  refined label, two for the propagated label), one image at a time, gathering neighbours with
  a one-hot convolution per dilation and repeated tensors, as their module does.
It exists only to be timed; it is not used by training or the app.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


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


def reference_pseudo_labels(model, batch: dict, cfg: dict, par: ReferencePAR) -> dict[str, Tensor]:
    """The pseudo labels of one step, arranged as the authors' script computes them (see above)."""
    from core.method.cam import cam_to_label, combine_multiscale_cams, gate_cam, normalize_cam
    from core.method.labels import propagated_scores
    from core.method.multiscale import resize_images
    from core.method.pseudo import combine_two_background_labels

    c_cam = cfg["cam"]
    images, raw, cls_label, valid = batch["image"], batch["image_raw"], batch["cls_label"], batch["valid"]
    b, _, h, w = images.shape
    ignore = cfg["data"]["ignore_index"]
    with torch.no_grad():
        cams, aff = [], None
        for scale in c_cam["scales"]:
            x = resize_images(images, scale)
            out = model(torch.cat([x, x.flip(-1)]))  # the whole network, decoder included
            cams.append(out.cam)
            if scale == max(c_cam["scales"]):
                aff, grid = out.affinity[:b], model.affinity_grid(out.enc)
        cam = gate_cam(normalize_cam(combine_multiscale_cams(cams, (h, w), with_flip=True)), cls_label)
        cam_label = cam_to_label(cam, cls_label, c_cam["bg_thresh"], valid=valid, ignore_index=ignore)
        small = F.interpolate(raw, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
        keys_all = torch.cat([torch.ones_like(cls_label[:, :1]), cls_label], dim=1)

        def refine(probs_full: Tensor, i: int) -> Tensor:
            keys = keys_all[i].nonzero()[:, 0]
            refined = par(small[i : i + 1], probs_full[i : i + 1, keys])  # kernel recomputed per call
            refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
            return keys[refined.argmax(1)[0]]

        labels = {}
        for bg_name, bg in (("high", c_cam["high_thresh"]), ("low", c_cam["low_thresh"])):
            stack = torch.cat([torch.full_like(cam[:, :1], bg), cam], dim=1)
            stack = F.interpolate(stack, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
            stack = stack.masked_fill(keys_all[:, :, None, None] == 0, float("-inf")).softmax(1)
            labels[bg_name] = torch.stack([refine(stack, i) for i in range(b)])
        par_label = combine_two_background_labels(labels["high"], labels["low"], ignore_index=ignore)
        par_label[~valid] = ignore
        rw = propagated_scores(cam, cls_label, aff, grid, cfg)
        rw_labels = []
        for probs in rw:
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            rw_labels.append(torch.stack([refine(probs, i) for i in range(b)]))
        aff_label = combine_two_background_labels(rw_labels[0], rw_labels[1], ignore_index=ignore)
        aff_label[~valid] = ignore
    return {"cam_label": cam_label, "par_label": par_label, "aff_label": aff_label}
