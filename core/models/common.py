"""Types shared by every encoder."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

# Which blocks of an encoder materialise their attention maps: indices over all blocks (in
# order, across stages), "all", or None (no block; every attention runs as fused SDPA).
BlockSelection = Collection[int] | Literal["all"] | None


def wants_maps(maps: BlockSelection, index: int) -> bool:
    """Whether block ``index`` must return its raw scores and softmax attention."""
    if maps is None:
        return False
    if isinstance(maps, str):
        if maps != "all":
            raise ValueError(f"maps must be block indices, 'all' or None, got {maps!r}")
        return True
    return index in maps


@dataclass
class EncoderOutput:
    """What an encoder returns.

    features: four stage maps ``(B, C_s, H_s, W_s)``.
    scores: per attention block, raw ``q.k^T`` before the ``1/sqrt(d)`` scale and the softmax,
        ``(B, heads, N, N')``; None for the blocks whose maps were not asked for (``maps``).
    attn: per attention block, softmax attention ``(B, heads, N, N')``, or None likewise.
    block_stage: the stage (0..3) of each attention block.
    grids / kv_grids: per block, the query and key token grids ``(h, w)``.
    A CNN leaves the attention lists empty.
    """

    features: list[Tensor]
    scores: list[Tensor | None] = field(default_factory=list)
    attn: list[Tensor | None] = field(default_factory=list)
    block_stage: list[int] = field(default_factory=list)
    grids: list[tuple[int, int]] = field(default_factory=list)
    kv_grids: list[tuple[int, int]] = field(default_factory=list)
