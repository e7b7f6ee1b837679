"""A timm ResNet encoder for the "CNN CAM" baseline (classification branch only, no attention).

The last stage is dilated instead of strided (timm's ``output_stride=16``), so the stage-4 map,
and hence the CAM, is at stride 16 like the transformer encoders'. Stage strides: 4, 8, 16, 16.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import timm
from torch import Tensor, nn

from core.models.common import EncoderOutput
from core.models.encoders import (
    download_pretrained,
    is_hub_request,
    load_checked_state_dict,
    read_state_dict,
    register_encoder,
)

# Our name -> (timm model name, hub repository with its ImageNet-1k weights).
CNN_MODELS: dict[str, tuple[str, str]] = {
    "resnet10t": ("resnet10t", "timm/resnet10t.c3_in1k"),  # 4.9 M parameters: small enough to ship
    "resnet18": ("resnet18", "timm/resnet18.a1_in1k"),
    "resnet50": ("resnet50", "timm/resnet50.a1_in1k"),
}
_OUTPUT_STRIDE = 16


class ResNetEncoder(nn.Module):
    """ResNet stages 1-4 as an encoder; the attention fields of its output stay empty.

    ``num_heads`` is ``[0, 0, 0, 0]``: there is no attention.
    """

    def __init__(self, arch: str, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        timm_name = CNN_MODELS[arch][0]
        self.body = timm.create_model(
            timm_name,
            pretrained=False,
            features_only=True,
            out_indices=(1, 2, 3, 4),
            output_stride=_OUTPUT_STRIDE,
            drop_path_rate=drop_path_rate,
        )
        self.arch = arch
        self.embed_dims = list(self.body.feature_info.channels())
        self.num_heads = [0, 0, 0, 0]
        self.output_stride = _OUTPUT_STRIDE
        self.has_attention = False
        self.block_stage: list[int] = []

    def forward(self, x: Tensor, maps: object = None, map_rows: object = None) -> EncoderOutput:
        """x: (B, 3, H, W) normalised image. Features (B, C_s, H_s, W_s) at strides 4, 8, 16, 16.
        ``maps`` (attention maps asked for) is accepted for a uniform API: a CNN has none."""
        return EncoderOutput(features=list(self.body(x)))


def load_resnet_weights(model: ResNetEncoder, source: str | os.PathLike | Mapping[str, Tensor]) -> None:
    """Load timm or torchvision ResNet weights; the ImageNet classifier ``fc.*`` is ignored."""
    sd = read_state_dict(source)
    if any(k.startswith("body.") for k in sd):  # a state dict of this wrapper
        sd = {k[len("body.") :]: v for k, v in sd.items() if k.startswith("body.")}
    sd = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    load_checked_state_dict(model.body, sd, model.arch)


def _build(arch: str, drop_path_rate: float, pretrained: object) -> ResNetEncoder:
    model = ResNetEncoder(arch, drop_path_rate)
    if is_hub_request(pretrained):
        pretrained = download_pretrained(CNN_MODELS[arch][1])
    if pretrained is not None:
        load_resnet_weights(model, pretrained)  # type: ignore[arg-type]
    return model


@register_encoder("resnet10t")
def resnet10t(
    strides: Sequence[int] | None = None,
    drop_path_rate: float = 0.1,
    pretrained: str | os.PathLike | Mapping[str, Tensor] | None = None,
) -> ResNetEncoder:
    """ResNet-10-T (timm) at output stride 16: the shipped CNN CAM baseline. ``strides`` is ignored."""
    return _build("resnet10t", drop_path_rate, pretrained)


@register_encoder("resnet18")
def resnet18(
    strides: Sequence[int] | None = None,
    drop_path_rate: float = 0.1,
    pretrained: str | os.PathLike | Mapping[str, Tensor] | None = None,
) -> ResNetEncoder:
    """ResNet-18 at output stride 16. ``strides`` is accepted for a uniform factory API and ignored."""
    return _build("resnet18", drop_path_rate, pretrained)


@register_encoder("resnet50")
def resnet50(
    strides: Sequence[int] | None = None,
    drop_path_rate: float = 0.1,
    pretrained: str | os.PathLike | Mapping[str, Tensor] | None = None,
) -> ResNetEncoder:
    """ResNet-50 at output stride 16. ``strides`` is ignored."""
    return _build("resnet50", drop_path_rate, pretrained)
