"""Mix Transformer (MiT), the SegFormer encoder, exposing the attention of the blocks a caller asks for.

Parameter names follow SegFormer's original layout (``patch_embed1.proj``, ``block1.0.attn.kv``,
``norm1``, ...) so that SegFormer's ImageNet files and the AFA authors' checkpoints load 1:1.
The transformers layouts (``nvidia/mit-bX`` on the hub and ``SegformerModel.state_dict()``)
are mapped by :func:`convert_hf_mit_state_dict`.

AFA changes only the stage strides: ``(4, 2, 2, 1)`` keeps stage 4 at stride 16 so that its
attention is dense enough to learn affinity from.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
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

# SegFormer's block and stage norms use eps=1e-6; the patch-embedding and key/value-reduction
# norms keep PyTorch's default 1e-5. Checkpoints were trained that way.
_BLOCK_NORM_EPS = 1e-6
_PATCH_KERNELS = (7, 3, 3, 3)

MIT_DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "mit_b0": (2, 2, 2, 2),
    "mit_b1": (2, 2, 2, 2),
    "mit_b2": (3, 4, 6, 3),
    "mit_b3": (3, 4, 18, 3),
    "mit_b4": (3, 8, 27, 3),
    "mit_b5": (3, 6, 40, 3),
}
MIT_DIMS: dict[str, tuple[int, int, int, int]] = {
    name: (32, 64, 160, 256) if name == "mit_b0" else (64, 128, 320, 512) for name in MIT_DEPTHS
}
MIT_HEADS = (1, 2, 5, 8)
MIT_SR_RATIOS = (8, 4, 2, 1)


def tokens_to_grid(x: Tensor, h: int, w: int) -> Tensor:
    """(B, h*w, C) tokens -> (B, C, h, w) map, a channels-last view of the same memory (no copy).

    PyTorch's CPU convolutions are several times faster on channels-last input than on the
    transposed copy an NCHW layout would need, and their output stays channels-last.
    """
    return x.reshape(x.shape[0], h, w, x.shape[-1]).permute(0, 3, 1, 2)


def grid_to_tokens(x: Tensor) -> Tensor:
    """(B, C, h, w) map -> (B, h*w, C) tokens; free (a view) when the map is channels-last."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability ``p``."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows, then LayerNorm over channels.

    (B, C_in, H, W) -> tokens (B, h*w, C) and the grid (h, w) the conv produced.
    """

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x.contiguous(memory_format=torch.channels_last))
        h, w = x.shape[-2:]
        return self.norm(grid_to_tokens(x)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced grid (ratio ``sr_ratio``).

    With ``with_maps`` it also returns, for AFA, the raw scores q.k^T and the softmax attention,
    computed explicitly in fp32; otherwise ``F.scaled_dot_product_attention`` does the same
    arithmetic (fused kernels, no N x N' tensor kept for backward) and the maps are None.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(
        self, x: Tensor, h: int, w: int, with_maps: bool = False, map_rows: int | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor | None, tuple[int, int]]:
        """x: (B, N, C) with N = h*w.

        Returns out (B, N, C), scores (R, heads, N, N') and attn (R, heads, N, N') (None without
        ``with_maps``), the key grid (h', w'). ``map_rows``: only the first R images need the maps
        (e.g. not the flipped copies of a CAM pass); the others use SDPA. Default: all B.
        """
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            if h < self.sr_ratio or w < self.sr_ratio:
                raise ValueError(
                    f"the input is too small for MiT: a {h}x{w} token grid cannot be reduced by the "
                    f"key/value ratio {self.sr_ratio} (use a larger image)"
                )
            reduced = self.sr(tokens_to_grid(x, h, w))
            kv_grid = (reduced.shape[-2], reduced.shape[-1])
            kv_in = self.norm(grid_to_tokens(reduced))
        else:
            kv_grid = (h, w)
            kv_in = x
        k, v = self.kv(kv_in).view(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        scores = attn = None
        rows = 0 if not with_maps else b if map_rows is None else min(int(map_rows), b)
        parts = []
        if rows:
            # fp32 even under autocast: see core/precision.py (the affinity head's input)
            with full_precision(x.device.type):
                scores = q[:rows].float() @ k[:rows].float().transpose(-2, -1)
                attn = torch.softmax(scores * self.scale, dim=-1)
                parts.append((attn @ v[:rows].float()).to(q.dtype))
        if rows < b:
            parts.append(F.scaled_dot_product_attention(q[rows:], k[rows:], v[rows:], scale=self.scale))
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj(out), scores, attn, kv_grid


class DWConv(nn.Module):
    """3x3 depth-wise conv on the token grid: Mix-FFN's implicit position encoding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return grid_to_tokens(self.dwconv(tokens_to_grid(x, h, w)))


class MixFFN(nn.Module):
    """fc1 -> depth-wise 3x3 conv -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: efficient self-attention and Mix-FFN, each with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: float, drop_path_p: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_BLOCK_NORM_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=_BLOCK_NORM_EPS)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))
        self.drop_path_p = drop_path_p

    def forward(
        self, x: Tensor, h: int, w: int, with_maps: bool = False, map_rows: int | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor | None, tuple[int, int]]:
        out, scores, attn, kv_grid = self.attn(self.norm1(x), h, w, with_maps, map_rows)
        x = x + drop_path(out, self.drop_path_p, self.training)
        x = x + drop_path(self.mlp(self.norm2(x), h, w), self.drop_path_p, self.training)
        return x, scores, attn, kv_grid

    def extra_repr(self) -> str:
        return f"drop_path={self.drop_path_p:.3f}"


class MixTransformer(nn.Module):
    """The four-stage MiT encoder.

    Attributes: ``embed_dims``, ``num_heads``, ``depths``, ``sr_ratios``, ``strides`` (per stage),
    ``output_stride`` (product of the strides) and ``arch`` (e.g. "mit_b1", used in messages).
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (32, 64, 160, 256),
        num_heads: Sequence[int] = MIT_HEADS,
        depths: Sequence[int] = (2, 2, 2, 2),
        sr_ratios: Sequence[int] = MIT_SR_RATIOS,
        strides: Sequence[int] = (4, 2, 2, 1),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        in_chans: int = 3,
        arch: str = "mit",
    ) -> None:
        super().__init__()
        for name, seq in (
            ("embed_dims", embed_dims),
            ("num_heads", num_heads),
            ("depths", depths),
            ("sr_ratios", sr_ratios),
            ("strides", strides),
        ):
            if len(seq) != 4:
                raise ValueError(f"MixTransformer needs 4 values for {name}, got {list(seq)}")
        self.embed_dims = [int(d) for d in embed_dims]
        self.num_heads = [int(h) for h in num_heads]
        self.depths = [int(d) for d in depths]
        self.sr_ratios = [int(r) for r in sr_ratios]
        self.strides = [int(s) for s in strides]
        self.output_stride = math.prod(self.strides)
        self.has_attention = True
        self.arch = arch
        self.block_stage = [s for s in range(4) for _ in range(self.depths[s])]

        # Stochastic depth grows linearly from 0 to drop_path_rate over all blocks, as in SegFormer.
        # (Plain Python rather than torch.linspace so that building on the meta device works.)
        total = sum(self.depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        first = 0
        for s in range(4):
            chans = in_chans if s == 0 else self.embed_dims[s - 1]
            setattr(
                self,
                f"patch_embed{s + 1}",
                OverlapPatchEmbed(chans, self.embed_dims[s], _PATCH_KERNELS[s], self.strides[s]),
            )
            blocks = [
                MiTBlock(
                    self.embed_dims[s], self.num_heads[s], self.sr_ratios[s], mlp_ratio, rates[first + i]
                )
                for i in range(self.depths[s])
            ]
            setattr(self, f"block{s + 1}", nn.ModuleList(blocks))
            setattr(self, f"norm{s + 1}", nn.LayerNorm(self.embed_dims[s], eps=_BLOCK_NORM_EPS))
            first += self.depths[s]
        self.apply(_init_weights)

    def forward(self, x: Tensor, maps: BlockSelection = None, map_rows: int | None = None) -> EncoderOutput:
        """x: (B, 3, H, W) normalised image. Features are (B, C_s, H_s, W_s) with H_s set by the convs.

        ``maps``: the blocks (indices over all stages, ``"all"``, or None) whose raw scores and
        softmax attention are computed; the other blocks' entries are None. ``map_rows``: the maps
        of the first R images only (default: all).
        """
        out = EncoderOutput(features=[])
        index = 0
        for s in range(4):
            tokens, h, w = getattr(self, f"patch_embed{s + 1}")(x)
            for block in getattr(self, f"block{s + 1}"):
                tokens, scores, attn, kv_grid = block(tokens, h, w, wants_maps(maps, index), map_rows)
                index += 1
                out.scores.append(scores)
                out.attn.append(attn)
                out.block_stage.append(s)
                out.grids.append((h, w))
                out.kv_grids.append(kv_grid)
            x = tokens_to_grid(getattr(self, f"norm{s + 1}")(tokens), h, w)
            # The channels-last view itself (no copy): convolutions, pooling and upsampling take it,
            # and are faster on it on a CPU (the decoder's upsampling several times).
            out.features.append(x)
        return out


def _init_weights(m: nn.Module) -> None:
    """SegFormer's initialisation: truncated normal linears, He-normal convs (fan-out per group)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

# Inside a transformers block, old hub names and current `SegformerModel` names -> ours.
# key/value are separate Linear layers there; they are merged into our `attn.kv` afterwards.
_HF_BLOCK_NAMES = {
    "layer_norm_1": "norm1",
    "layernorm_before": "norm1",
    "attention.self.query": "attn.q",
    "attention.q_proj": "attn.q",
    "attention.self.key": "attn.k",
    "attention.k_proj": "attn.k",
    "attention.self.value": "attn.v",
    "attention.v_proj": "attn.v",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "attention.self.sr": "attn.sr",
    "attention.sequence_reduction.sequence_reduction": "attn.sr",
    "attention.self.layer_norm": "attn.norm",
    "attention.sequence_reduction.layer_norm": "attn.norm",
    "layer_norm_2": "norm2",
    "layernorm_after": "norm2",
    "mlp.dense1": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
    "mlp.dense2": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
}
# (pattern on a key without prefixes, kind). Each alternative of a pattern (hub | current layout)
# captures the 0-based stage (and block) index; the remaining groups are the parameter names.
_HF_PATTERNS = [
    (re.compile(r"^(?:block\.(\d+)\.(\d+)|stages\.(\d+)\.blocks\.(\d+))\.(.+)\.(weight|bias)$"), "block"),
    (
        re.compile(
            r"^(?:patch_embeddings\.(\d+)|stages\.(\d+)\.patch_embeddings)\.(proj|layer_norm)\.(weight|bias)$"
        ),
        "patch",
    ),
    (re.compile(r"^(?:layer_norm\.(\d+)|stages\.(\d+)\.layer_norm)\.(weight|bias)$"), "norm"),
]


def _select_prefix(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keep only the keys under ``prefix`` (stripped) if any key has it; drops heads of wrapper models."""
    if any(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def _strip_wrappers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove DDP's ``module.``, transformers' ``segformer.`` and a model's ``encoder.`` prefixes.

    Keys outside the selected prefix (a classifier, a decoder) are dropped, so that a whole
    SegformerForImageClassification or AFA network state dict yields its encoder.
    """
    out = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}
    for prefix in ("segformer.", "encoder."):
        out = _select_prefix(out, prefix)
    return out


def _is_hf_layout(sd: Mapping[str, Tensor]) -> bool:
    return any(k.startswith(("patch_embeddings.", "stages.", "block.")) for k in sd)


def convert_hf_mit_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a transformers SegFormer encoder state dict to our (SegFormer-original) names.

    Accepts the hub layout of ``nvidia/mit-bX`` (``segformer.encoder.block.0.0.attention.self.query``)
    and the current ``SegformerModel`` layout (``stages.0.blocks.0.attention.q_proj``), with or
    without ``segformer.`` / ``encoder.`` / ``module.`` prefixes. Separate key and value Linear
    layers are concatenated (key first) into our ``attn.kv``. Keys it does not recognise are kept
    as they are, so that loading reports them as unexpected.
    """
    out: dict[str, Tensor] = {}
    pending_kv: dict[str, dict[str, Tensor]] = {}
    for key, value in _strip_wrappers(sd).items():
        new_key = None
        for pattern, kind in _HF_PATTERNS:
            m = pattern.match(key)
            if m is None:
                continue
            g = m.groups()
            if kind == "block":
                stage, block = (g[0], g[1]) if g[0] is not None else (g[2], g[3])
                inner = _HF_BLOCK_NAMES.get(g[4])
                if inner is not None:
                    new_key = f"block{int(stage) + 1}.{block}.{inner}.{g[5]}"
            elif kind == "patch":
                stage = g[0] if g[0] is not None else g[1]
                inner = "proj" if g[2] == "proj" else "norm"
                new_key = f"patch_embed{int(stage) + 1}.{inner}.{g[3]}"
            else:
                stage = g[0] if g[0] is not None else g[1]
                new_key = f"norm{int(stage) + 1}.{g[2]}"
            break
        if new_key is None:
            out[key] = value
        elif new_key.split(".")[-2] in ("k", "v") and ".attn." in new_key:
            base = new_key.rsplit(".", 2)[0]  # e.g. block1.0.attn
            part, param = new_key.split(".")[-2:]
            pending_kv.setdefault(f"{base}.kv.{param}", {})[part] = value
        else:
            out[new_key] = value
    for kv_key, parts in pending_kv.items():
        if set(parts) != {"k", "v"}:
            # Keep the half we have under its own name: the loader then names it as unexpected.
            out.update({kv_key.replace(".kv.", f".{p}."): t for p, t in parts.items()})
            continue
        out[kv_key] = torch.cat([parts["k"], parts["v"]], dim=0)
    return out


def load_mit_weights(model: MixTransformer, source: str | os.PathLike | Mapping[str, Tensor]) -> None:
    """Load MiT weights from a file path or a state dict into ``model``.

    Accepted: SegFormer's original layout (the ImageNet ``mit_bX.pth`` files; ``head.*`` is
    ignored), the AFA authors' network (``encoder.*`` is taken), and the transformers layouts
    (see :func:`convert_hf_mit_state_dict`). Mismatching keys or shapes are a ValueError.
    """
    sd = read_state_dict(source)
    if _is_hf_layout(_strip_wrappers(sd)):
        sd = convert_hf_mit_state_dict(sd)
    else:
        sd = _strip_wrappers(sd)
        # The ImageNet classifier of SegFormer's pretraining files is not part of the encoder.
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    load_checked_state_dict(model, sd, model.arch)


def _build(arch: str, strides: Sequence[int], drop_path_rate: float, pretrained: object) -> MixTransformer:
    model = MixTransformer(
        embed_dims=MIT_DIMS[arch],
        depths=MIT_DEPTHS[arch],
        strides=strides,
        drop_path_rate=drop_path_rate,
        arch=arch,
    )
    if is_hub_request(pretrained):
        pretrained = download_pretrained("nvidia/" + arch.replace("_", "-"))
    if pretrained is not None:
        load_mit_weights(model, pretrained)  # type: ignore[arg-type]
    return model


@register_encoder("mit_b0")
def mit_b0(
    strides: Sequence[int] = (4, 2, 2, 1),
    drop_path_rate: float = 0.1,
    pretrained: str | os.PathLike | Mapping[str, Tensor] | None = None,
) -> MixTransformer:
    """MiT-b0: dims (32, 64, 160, 256), depths (2, 2, 2, 2). ``pretrained``: None, a path or "hub"."""
    return _build("mit_b0", strides, drop_path_rate, pretrained)


@register_encoder("mit_b1")
def mit_b1(
    strides: Sequence[int] = (4, 2, 2, 1),
    drop_path_rate: float = 0.1,
    pretrained: str | os.PathLike | Mapping[str, Tensor] | None = None,
) -> MixTransformer:
    """MiT-b1: dims (64, 128, 320, 512), depths (2, 2, 2, 2)."""
    return _build("mit_b1", strides, drop_path_rate, pretrained)


@register_encoder("mit_b2")
def mit_b2(
    strides: Sequence[int] = (4, 2, 2, 1),
    drop_path_rate: float = 0.1,
    pretrained: str | os.PathLike | Mapping[str, Tensor] | None = None,
) -> MixTransformer:
    """MiT-b2: dims (64, 128, 320, 512), depths (3, 4, 6, 3)."""
    return _build("mit_b2", strides, drop_path_rate, pretrained)


@register_encoder("mit_b3")
def mit_b3(
    strides: Sequence[int] = (4, 2, 2, 1),
    drop_path_rate: float = 0.1,
    pretrained: str | os.PathLike | Mapping[str, Tensor] | None = None,
) -> MixTransformer:
    """MiT-b3: dims (64, 128, 320, 512), depths (3, 4, 18, 3)."""
    return _build("mit_b3", strides, drop_path_rate, pretrained)


@register_encoder("mit_b4")
def mit_b4(
    strides: Sequence[int] = (4, 2, 2, 1),
    drop_path_rate: float = 0.1,
    pretrained: str | os.PathLike | Mapping[str, Tensor] | None = None,
) -> MixTransformer:
    """MiT-b4: dims (64, 128, 320, 512), depths (3, 8, 27, 3)."""
    return _build("mit_b4", strides, drop_path_rate, pretrained)


@register_encoder("mit_b5")
def mit_b5(
    strides: Sequence[int] = (4, 2, 2, 1),
    drop_path_rate: float = 0.1,
    pretrained: str | os.PathLike | Mapping[str, Tensor] | None = None,
) -> MixTransformer:
    """MiT-b5: dims (64, 128, 320, 512), depths (3, 6, 40, 3)."""
    return _build("mit_b5", strides, drop_path_rate, pretrained)
