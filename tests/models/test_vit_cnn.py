"""timm ViT and ResNet encoders, and the encoder registry."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from core.errors import UserError
from core.models.cnn import ResNetEncoder, resnet18
from core.models.encoders import ENCODERS, create_encoder
from core.models.vit import ViTEncoder, vit_tiny


@pytest.fixture(scope="module")
def tiny_vit() -> ViTEncoder:
    torch.manual_seed(0)
    return vit_tiny().eval()


@pytest.mark.parametrize("size", [(64, 96), (70, 100)])
def test_vit_matches_timm_forward_features(tiny_vit: ViTEncoder, size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    h, w = -(-size[0] // 16), -(-size[1] // 16)  # non-multiples are padded up to the next patch
    with torch.no_grad():
        out = tiny_vit(x, maps="all")
        ref = tiny_vit.vit.forward_features(x)  # (B, 1 + h*w, D), class token first
    ref_map = ref[:, 1:].transpose(1, 2).reshape(2, 192, h, w)
    assert [tuple(f.shape) for f in out.features] == [(2, 192, h, w)] * 4
    assert (out.features[-1] - ref_map).abs().max().item() < 1e-5

    assert len(out.attn) == len(out.scores) == 12
    assert out.block_stage == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert out.grids == out.kv_grids == [(h, w)] * 12
    scale = tiny_vit.vit.blocks[0].attn.scale
    assert scale == pytest.approx((192 // 3) ** -0.5)
    for scores, attn in zip(out.scores, out.attn):
        # Class token dropped from both axes; attention renormalised over the patch keys.
        assert scores.shape == attn.shape == (2, 3, h * w, h * w)
        assert torch.allclose(attn.sum(-1), torch.ones(()), atol=1e-5)
        assert torch.allclose(attn, torch.softmax(scores * scale, dim=-1), atol=1e-6)


def test_vit_attributes_and_training_backward() -> None:
    model = vit_tiny(drop_path_rate=0.2).train()
    assert model.embed_dims == [192] * 4 and model.num_heads == [3] * 4
    assert model.output_stride == 16 and model.depths == [3, 3, 3, 3]
    out = model(torch.randn(1, 3, 32, 48), maps=[11])
    (out.scores[-1].sum() + out.features[-1].sum()).backward()
    assert model.vit.blocks[-1].attn.qkv.weight.grad is not None


def test_vit_local_weights(tmp_path) -> None:
    torch.manual_seed(2)
    # A full ImageNet model, head included, as timm's hub files are.
    source = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    path = tmp_path / "deit_tiny.safetensors"
    save_file(source.state_dict(), str(path))
    model = vit_tiny(pretrained=path)
    src = source.state_dict()
    assert all(torch.equal(v, src[k]) for k, v in model.vit.state_dict().items())

    # An original DeiT .pth wraps its weights in {"model": ...}.
    pth = tmp_path / "deit_tiny.pth"
    torch.save({"model": src, "epoch": 300}, pth)
    model = vit_tiny(pretrained=pth)
    assert torch.equal(model.vit.pos_embed, src["pos_embed"])

    # A DeiT-small tensor (D=384) among DeiT-tiny ones.
    with pytest.raises(
        ValueError, match=r"do not fit vit_tiny: 1 tensors have the wrong shape, e\.g\. blocks\.0"
    ):
        vit_tiny(pretrained={**src, "blocks.0.attn.qkv.weight": torch.zeros(1152, 384)})


def test_vit_hub_offline(monkeypatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(
        UserError, match=r"^could not download timm/deit_tiny.*no network;.*model\.pretrained$"
    ):
        vit_tiny(pretrained="hub")


def test_resnet_shapes_and_weights(tmp_path) -> None:
    torch.manual_seed(0)
    model = resnet18().eval()
    assert isinstance(model, ResNetEncoder)
    assert (
        model.embed_dims == [64, 128, 256, 512] and model.output_stride == 16 and model.num_heads == [0] * 4
    )
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in out.features] == [
        (1, 64, 16, 24),
        (1, 128, 8, 12),
        (1, 256, 4, 6),
        (1, 512, 4, 6),
    ]
    assert out.scores == out.attn == out.block_stage == out.grids == out.kv_grids == []

    source = timm.create_model("resnet18", pretrained=False)  # with the fc classifier
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    loaded = resnet18(pretrained=path)
    src = source.state_dict()
    assert all(torch.equal(v, src[k]) for k, v in loaded.body.state_dict().items())


def test_registry() -> None:
    assert {"mit_b0", "mit_b5", "vit_tiny", "vit_small", "vit_base", "resnet18", "resnet50"} <= set(ENCODERS)
    enc = create_encoder("mit_b0", strides=(4, 2, 2, 2), drop_path_rate=0.0)
    assert enc.output_stride == 32
    with pytest.raises(
        ValueError, match=r"unknown encoder 'mit_b9'; valid names are: .*mit_b0.*resnet18.*vit_base"
    ):
        create_encoder("mit_b9")


def test_vit_fused_blocks_equal_the_explicit_path(tiny_vit: ViTEncoder) -> None:
    x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        explicit = tiny_vit(x, maps="all")
        fused = tiny_vit(x, maps=[11])
    for f, ref in zip(fused.features, explicit.features):
        assert (f - ref).abs().max().item() < 1e-4
    assert [i for i, s in enumerate(fused.attn) if s is not None] == [11]
    assert torch.allclose(fused.scores[11], explicit.scores[11], atol=1e-4)
