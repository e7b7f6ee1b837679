"""The AFA network: encoder, GMP classifier + CAM, affinity head, SegFormer all-MLP decoder.

Module names follow the authors' model (``encoder``, ``classifier``, ``attn_proj``, ``decoder``)
so that their checkpoints map one to one (see ``core/convert.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.models.common import BlockSelection, EncoderOutput
from core.precision import full_precision


class MLPProjection(nn.Module):
    """Per-pixel linear projection of a feature map: ``(B, C, H, W) -> (B, D, H, W)``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        y = self.proj(x.flatten(2).transpose(1, 2))
        return y.transpose(1, 2).reshape(b, -1, h, w)


class ConvBNReLU(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class SegFormerHead(nn.Module):
    """All-MLP decoder: project each stage to ``dim``, upsample to stage 1, fuse, predict C classes."""

    def __init__(self, in_dims: list[int], num_classes: int, dim: int = 256, dropout: float = 0.1):
        super().__init__()
        self.linear_c1 = MLPProjection(in_dims[0], dim)
        self.linear_c2 = MLPProjection(in_dims[1], dim)
        self.linear_c3 = MLPProjection(in_dims[2], dim)
        self.linear_c4 = MLPProjection(in_dims[3], dim)
        self.linear_fuse = ConvBNReLU(4 * dim, dim)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, features: list[Tensor]) -> Tensor:
        """features: four maps; returns logits ``(B, C, H_1, W_1)`` at the first stage's size.

        The head computes ``pred(dropout(relu(bn(W [up(P4 c4); up(P3 c3); up(P2 c2); P1 c1]))))``
        with ``P_i`` the per-stage projections, ``up`` bilinear upsampling to stage 1 and ``W`` the
        1x1 fuse conv split in four blocks ``W_i``. Both ``W_i`` and ``up`` are linear and ``up``
        keeps constants (its weights sum to 1), so ``W_i up(P_i c_i) = up((W_i P_i) c_i)``: each
        stage is mapped by the composed matrix ``W_i P_i`` at its own resolution and only the
        fused ``dim`` channels are upsampled and summed. Equal up to rounding (tests/models/
        test_afa.py), with no 4 x ``dim`` concatenation and no 4 x ``dim`` -> ``dim`` conv at stride 4
        (measured in fp32: the head 3x faster on a CPU). The parameters are the authors' (their
        checkpoints load 1:1).
        """
        size = features[0].shape[-2:]
        blocks = self.linear_fuse.conv.weight.flatten(1).split(self.linear_c1.proj.out_features, dim=1)
        projections = (self.linear_c4, self.linear_c3, self.linear_c2, self.linear_c1)  # cat order
        fused = None
        for block, proj, c in zip(blocks, projections, features[::-1]):
            weight = block @ proj.proj.weight  # (dim, C_i): W_i P_i
            bias = block @ proj.proj.bias
            y = F.conv2d(c, weight[:, :, None, None].to(c.dtype), bias.to(c.dtype))
            # channels-last: PyTorch's CPU bilinear upsampling of many channels is several times
            # faster on it (measured: the head 0.08 s -> 0.05 s over analyze's passes in bf16)
            y = y.contiguous(memory_format=torch.channels_last)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            fused = y if fused is None else fused + y
        fused = F.relu(self.linear_fuse.bn(fused), inplace=True)
        return self.linear_pred(self.dropout(fused))


@dataclass
class AFAOutput:
    """logits: ``(B, C-1)``; cam: ``(B, C-1, h, w)`` at stage-4 resolution; seg: ``(B, C, H/4, W/4)``
    or None; affinity: ``(B, N, N)`` in (0, 1) or None; enc: the encoder's output."""

    logits: Tensor
    cam: Tensor
    seg: Tensor | None
    affinity: Tensor | None
    enc: EncoderOutput


def tile_mosaic(images: Tensor, k: int) -> Tensor:
    """``(B, C, H, W)`` -> ``(B / k^2, C, k H, k W)``: images ``n k^2 .. (n + 1) k^2 - 1`` laid out
    row by row as the k x k tiles of mosaic ``n``."""
    b, c, h, w = images.shape
    if b % (k * k):
        raise ValueError(f"a batch of {b} images does not fill {k}x{k} mosaics")
    return images.reshape(b // (k * k), k, k, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, k * h, k * w)


def split_mosaic(maps: Tensor, k: int) -> Tensor:
    """Inverse of ``tile_mosaic`` for any map ``(N, D, k h, k w)`` -> ``(N k^2, D, h, w)``."""
    n, d, hh, ww = maps.shape
    if hh % k or ww % k:
        raise ValueError(f"a {hh}x{ww} map does not split into {k}x{k} tiles")
    h, w = hh // k, ww // k
    return maps.reshape(n, d, k, h, k, w).permute(0, 2, 4, 1, 3, 5).reshape(n * k * k, d, h, w)


class AFANet(nn.Module):
    """One network trained end to end. ``kind`` is "afa" (everything) or "cnn_cam" (classifier only)."""

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        decoder_dim: int = 256,
        decoder_dropout: float = 0.1,
        aff_blocks: int = 2,
        kind: str = "afa",
        pooling: str = "gmp",
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError("num_classes counts background plus at least one class")
        self.kind = kind
        if pooling not in ("gmp", "gap"):
            raise ValueError(f"pooling must be gmp (the paper) or gap, got {pooling!r}")
        self.pooling = pooling
        self.num_classes = num_classes
        self.aff_blocks = aff_blocks
        self.encoder = encoder
        self.classifier = nn.Conv2d(encoder.embed_dims[-1], num_classes - 1, kernel_size=1, bias=False)
        self.has_attention = kind == "afa" and aff_blocks > 0 and getattr(encoder, "has_attention", True)
        if self.has_attention:
            self.attn_proj = nn.Conv2d(aff_blocks * encoder.num_heads[-1], 1, kernel_size=1, bias=True)
            nn.init.kaiming_normal_(self.attn_proj.weight, a=5**0.5, mode="fan_out")
        self.decoder = (
            SegFormerHead(list(encoder.embed_dims), num_classes, decoder_dim, decoder_dropout)
            if kind == "afa"
            else None
        )
        # set by the factory / loader
        self.classes: list[str] = []
        self.mean: list[float] = []
        self.std: list[float] = []
        self.meta: dict = {}

    # -- pieces -----------------------------------------------------------------------------
    def classify(self, f4: Tensor, tiles: int = 1) -> tuple[Tensor, Tensor]:
        """GMP classifier and CAM from the stage-4 map ``(B, D, h, w)``; with ``tiles`` k > 1 the
        map is of k x k mosaics and the logits have one row per tile (``split_mosaic`` order).
        In fp32 even under autocast (core/precision.py): the CAM is normalised and thresholded."""
        with full_precision(f4.device.type):
            f4 = f4.float()
            cells = split_mosaic(f4, tiles) if tiles > 1 else f4
            pool = F.adaptive_max_pool2d if self.pooling == "gmp" else F.adaptive_avg_pool2d
            pooled = pool(cells, 1)
            logits = self.classifier(pooled).flatten(1)
            cam = F.conv2d(f4, self.classifier.weight)
        return logits, cam

    def attention_blocks(self) -> list[int]:
        """Indices of the encoder blocks whose attention feeds the affinity head: the last
        ``aff_blocks`` blocks of the last stage (at least one: the MHSA baseline uses them too).
        Empty for an encoder without attention."""
        stages = list(getattr(self.encoder, "block_stage", []))
        if not stages or not getattr(self.encoder, "has_attention", False):
            return []
        last_stage = max(stages)
        return [i for i, s in enumerate(stages) if s == last_stage][-max(self.aff_blocks, 1) :]

    def affinity(self, enc: EncoderOutput) -> Tensor | None:
        """Learned affinity ``(B, N, N)`` from the raw scores of the ``attention_blocks``, in fp32:
        ``sigmoid(conv1x1(S + S^T))`` with ``S`` the blocks' scores stacked on the head axis.

        Computed as ``sigmoid(M + M^T + bias)`` with ``M`` the head-weighted sum of the scores
        (the 1x1 conv is linear, so it commutes with the transpose): one N x N transpose instead
        of one per head (12x faster at N = 900; equal up to rounding, see tests/models/test_afa.py).
        """
        if not self.has_attention:
            return None
        maps = [enc.scores[i] if i < len(enc.scores) else None for i in self.attention_blocks()]
        if any(m is None for m in maps):
            raise ValueError("the encoder pass did not compute the affinity blocks' attention maps")
        with full_precision(maps[0].device.type):
            weight = self.attn_proj.weight.float().view(len(maps), -1)  # (blocks, heads)
            mixed = sum(torch.einsum("h,bhij->bij", w, m.float()) for w, m in zip(weight, maps))
            return torch.sigmoid(mixed + mixed.transpose(-1, -2) + self.attn_proj.bias.float())

    def affinity_grid(self, enc: EncoderOutput) -> tuple[int, int]:
        return enc.grids[-1] if enc.grids else tuple(enc.features[-1].shape[-2:])

    def attention_maps(self, with_affinity: bool, all_attention: bool) -> BlockSelection:
        """The blocks whose attention maps a pass computes: all of them for the attention views,
        the affinity blocks when the affinity is wanted, none otherwise (fused attention)."""
        if all_attention:
            return "all"
        return self.attention_blocks() if with_affinity and self.has_attention else None

    # -- forwards ---------------------------------------------------------------------------
    def forward_cam(self, x: Tensor, with_affinity: bool = False, all_attention: bool = False,
                    map_rows: int | None = None) -> AFAOutput:
        """Encoder + classifier (+ affinity head); never the decoder. ``all_attention``: every
        block's attention maps in ``enc`` (the app's head viewer). ``map_rows``: attention maps and
        affinity of the first R images only (e.g. not the flipped copies; default all)."""
        enc = self.encoder(x, maps=self.attention_maps(with_affinity, all_attention), map_rows=map_rows)
        logits, cam = self.classify(enc.features[-1])
        aff = self.affinity(enc) if with_affinity else None
        return AFAOutput(logits, cam, None, aff, enc)

    def forward(self, x: Tensor, with_decoder: bool = True, with_affinity: bool = True,
                tiles: int = 1, all_attention: bool = False, map_rows: int | None = None) -> AFAOutput:
        """``tiles`` k > 1: ``x`` is a batch of k x k mosaics (``tile_mosaic``) and ``logits`` has
        one row per tile, in the order of the images the mosaics were made from: each tile is pooled
        and classified on its own (tile-wise classification pretraining). Outputs are float32 under
        any autocast. ``map_rows`` as in ``forward_cam``."""
        enc = self.encoder(x, maps=self.attention_maps(with_affinity, all_attention), map_rows=map_rows)
        logits, cam = self.classify(enc.features[-1], tiles)
        seg = self.decoder(enc.features).float() if with_decoder and self.decoder is not None else None
        aff = self.affinity(enc) if with_affinity else None
        return AFAOutput(logits, cam, seg, aff, enc)
