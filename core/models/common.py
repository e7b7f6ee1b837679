"""Types shared by every encoder."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class EncoderOutput:
    """What an encoder returns.

    features: four stage maps ``(B, C_s, H_s, W_s)``.
    scores: per attention block, raw ``q.k^T`` before the ``1/sqrt(d)`` scale and the softmax,
        ``(B, heads, N, N')``.
    attn: per attention block, softmax attention ``(B, heads, N, N')``.
    block_stage: the stage (0..3) of each attention block.
    grids / kv_grids: per block, the query and key token grids ``(h, w)``.
    A CNN leaves the attention lists empty.
    """

    features: list[Tensor]
    scores: list[Tensor] = field(default_factory=list)
    attn: list[Tensor] = field(default_factory=list)
    block_stage: list[int] = field(default_factory=list)
    grids: list[tuple[int, int]] = field(default_factory=list)
    kv_grids: list[tuple[int, int]] = field(default_factory=list)
