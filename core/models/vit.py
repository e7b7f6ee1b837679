"""A plain ViT/DeiT encoder from timm (ToCo's backbone), exposing the attention of the blocks asked for.

timm's own Attention uses a fused kernel that never materialises the attention matrix, so for
the blocks whose maps a caller asks for this module runs the block itself: the same parameters
and the same math as timm's ``Block`` and ``Attention``, but the attention also returns its raw
scores and its softmax. The other blocks run timm's own forward.

Token conventions: the class (and any register) tokens take part in the attention, but the
returned maps keep only the patch tokens: ``scores`` is the patch-to-patch block of q.k^T and
``attn`` is the softmax over patch keys (the patch-to-patch block of timm's attention,
renormalised so each row sums to 1). Both are ``(B, heads, N, N)`` with N = h*w patches.

Inputs of any size work: the image is zero-padded at the bottom/right to a multiple of the patch
size (in the normalised space, so the padding is the mean colour) and the position embedding is
resampled to the grid; the grid is ``(ceil(H/16), ceil(W/16))``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import timm
import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn
from torch import Tensor, nn

from core.models.common import BlockSelection, EncoderOutput, wants_maps
from core.models.encoders import (
    download_pretrained,
    is_hub_request,
    load_checked_state_dict,
    read_state_dict,
    register_encoder,
)
from core.precision import full_precision

# Our name -> (timm model name, hub repository with its ImageNet-1k weights).
VIT_MODELS: dict[str, tuple[str, str]] = {
    "vit_tiny": ("deit_tiny_patch16_224", "timm/deit_tiny_patch16_224.fb_in1k"),
    "vit_small": ("deit_small_patch16_224", "timm/deit_small_patch16_224.fb_in1k"),
    "vit_base": ("deit_base_patch16_224", "timm/deit_base_patch16_224.fb_in1k"),
}


def attention_with_maps(attn: Attention, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """timm ``Attention.forward`` (no mask) that also returns its scores and softmax.

    x: (B, T, C) tokens including the prefix tokens. Returns the output (B, T, C), the raw
    scores q.k^T (B, heads, T, T) and the softmax attention (B, heads, T, T).
    """
    b, t, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = attn.qkv(x).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    with full_precision(x.device.type):  # fp32 maps even under autocast (core/precision.py)
        scores = q.float() @ k.float().transpose(-2, -1)
        weights = torch.softmax(scores * attn.scale, dim=-1)
        out = (attn.attn_drop(weights) @ v.float()).to(q.dtype)
    out = out.transpose(1, 2).reshape(b, t, attn.attn_dim)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), scores, weights


def block_with_maps(block: Block, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """timm ``Block.forward`` with :func:`attention_with_maps` inside. x: (B, T, C)."""
    out, scores, weights = attention_with_maps(block.attn, block.norm1(x))
    x = x + block.drop_path1(block.ls1(out))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, scores, weights


class ViTEncoder(nn.Module):
    """timm VisionTransformer as a four-"stage" encoder at output stride 16.

    The blocks are split into four equal groups (``block_stage``); the features are the tokens
    after the last block of each group, passed through the final norm (as timm's
    ``forward_intermediates(norm=True)``), so the last one is ``forward_features``' output.
    """

    def __init__(self, vit: VisionTransformer, arch: str = "vit") -> None:
        super().__init__()
        for i, blk in enumerate(vit.blocks):
            if type(blk) is not Block or not isinstance(blk.attn, Attention):
                raise ValueError(
                    f"block {i} of {arch} is a {type(blk).__name__}; only timm's plain Block is supported"
                )
        self.vit = vit
        self.arch = arch
        depth = len(vit.blocks)
        if depth < 4:
            raise ValueError(f"{arch} needs at least 4 blocks to form 4 stages, it has {depth}")
        dim = vit.embed_dim
        heads = vit.blocks[0].attn.num_heads
        self.patch_size = vit.patch_embed.patch_size[0]
        self.embed_dims = [dim] * 4
        self.num_heads = [heads] * 4
        self.depths = [sum(1 for i in range(depth) if i * 4 // depth == s) for s in range(4)]
        self.output_stride = self.patch_size
        self.has_attention = True
        self.block_stage = [i * 4 // depth for i in range(depth)]
        # The last block of each group gives that stage's feature map.
        self.feature_blocks = [max(i for i in range(depth) if self.block_stage[i] == s) for s in range(4)]

    def forward(self, x: Tensor, maps: BlockSelection = None, map_rows: int | None = None) -> EncoderOutput:
        """x: (B, 3, H, W) normalised image. Features (B, D, h, w), h = ceil(H / 16).

        ``maps``: the blocks (indices, ``"all"`` or None) whose scores and attention are computed
        explicitly (in fp32, see core/precision.py); the others run timm's own (fused) attention
        and their entries are None. ``map_rows`` is accepted for a uniform API; ViT blocks compute
        the maps of every image of the batch.
        """
        vit = self.vit
        tokens = vit.patch_embed(x)  # (B, h, w, D): timm defers flattening with dynamic_img_size
        b, h, w, _ = tokens.shape
        tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(tokens)))
        skip = vit.num_prefix_tokens
        out = EncoderOutput(features=[])
        for i, blk in enumerate(vit.blocks):
            if wants_maps(maps, i):
                tokens, scores, weights = block_with_maps(blk, tokens)
                patch_weights = weights[:, :, skip:, skip:]
                out.scores.append(scores[:, :, skip:, skip:])
                out.attn.append(patch_weights / patch_weights.sum(dim=-1, keepdim=True))
            else:
                tokens = blk(tokens)
                out.scores.append(None)
                out.attn.append(None)
            out.block_stage.append(self.block_stage[i])
            out.grids.append((h, w))
            out.kv_grids.append((h, w))
            if i in self.feature_blocks:
                feat = vit.norm(tokens)[:, skip:]
                out.features.append(feat.transpose(1, 2).reshape(b, -1, h, w))
        return out


def load_vit_weights(model: ViTEncoder, source: str | os.PathLike | Mapping[str, Tensor]) -> None:
    """Load timm or original DeiT weights (path or state dict) into the wrapped ViT.

    timm's ViT checkpoint filter adapts the position embedding; the ImageNet head is ignored.
    """
    sd = read_state_dict(source)
    if any(k.startswith("vit.") for k in sd):  # a state dict of this wrapper
        sd = {k[len("vit.") :]: v for k, v in sd.items() if k.startswith("vit.")}
    sd = checkpoint_filter_fn(sd, model.vit)
    own = model.vit.state_dict()
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith(("head.", "head_dist.", "fc_norm."))}
    load_checked_state_dict(model.vit, sd, model.arch)


def _build(arch: str, drop_path_rate: float, pretrained: object) -> ViTEncoder:
    timm_name, hub_id = VIT_MODELS[arch]
    vit = timm.create_model(
        timm_name,
        pretrained=False,
        num_classes=0,
        dynamic_img_size=True,
        dynamic_img_pad=True,
        drop_path_rate=drop_path_rate,
    )
    model = ViTEncoder(vit, arch)
    if is_hub_request(pretrained):
        pretrained = download_pretrained(hub_id)
    if pretrained is not None:
        load_vit_weights(model, pretrained)  # type: ignore[arg-type]
    return model


@register_encoder("vit_tiny")
def vit_tiny(
    strides: Sequence[int] | None = None,
    drop_path_rate: float = 0.1,
    pretrained: str | os.PathLike | Mapping[str, Tensor] | None = None,
) -> ViTEncoder:
    """DeiT-tiny (D=192, 3 heads, 12 blocks). ``strides`` is accepted for a uniform API and ignored."""
    return _build("vit_tiny", drop_path_rate, pretrained)


@register_encoder("vit_small")
def vit_small(
    strides: Sequence[int] | None = None,
    drop_path_rate: float = 0.1,
    pretrained: str | os.PathLike | Mapping[str, Tensor] | None = None,
) -> ViTEncoder:
    """DeiT-small (D=384, 6 heads, 12 blocks). ``strides`` is ignored (the patch size fixes stride 16)."""
    return _build("vit_small", drop_path_rate, pretrained)


@register_encoder("vit_base")
def vit_base(
    strides: Sequence[int] | None = None,
    drop_path_rate: float = 0.1,
    pretrained: str | os.PathLike | Mapping[str, Tensor] | None = None,
) -> ViTEncoder:
    """DeiT-base (D=768, 12 heads, 12 blocks), ToCo's backbone. ``strides`` is ignored."""
    return _build("vit_base", drop_path_rate, pretrained)
