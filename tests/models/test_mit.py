"""Mix Transformer: parity with transformers' SegFormer, shapes, weight layouts, error messages."""

from __future__ import annotations

import re

import pytest
import torch

from core.errors import UserError
from core.models import mit
from core.models.mit import MixTransformer, convert_hf_mit_state_dict, load_mit_weights, mit_b0

transformers = pytest.importorskip("transformers")

TOL = 1e-4


def _hf_segformer(strides: list[int]) -> torch.nn.Module:
    """A randomly initialised transformers SegformerModel with mit-b0 sizes (eager attention)."""
    torch.manual_seed(0)
    config = transformers.SegformerConfig(strides=strides, attn_implementation="eager")
    return transformers.SegformerModel(config).eval()


def _legacy_hub_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a current SegformerModel state dict to the layout of the nvidia/mit-bX hub files."""
    out = {}
    for key, value in sd.items():
        key = re.sub(r"^stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.", r"encoder.block.\1.", key)
        key = re.sub(r"^stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1.", key)
        for new, old in (
            ("attention.q_proj", "attention.self.query"),
            ("attention.k_proj", "attention.self.key"),
            ("attention.v_proj", "attention.self.value"),
            ("attention.o_proj", "attention.output.dense"),
            ("attention.sequence_reduction.sequence_reduction", "attention.self.sr"),
            ("attention.sequence_reduction.layer_norm", "attention.self.layer_norm"),
            ("mlp.fc1", "mlp.dense1"),
            ("mlp.fc2", "mlp.dense2"),
            ("layernorm_before", "layer_norm_1"),
            ("layernorm_after", "layer_norm_2"),
        ):
            key = key.replace(new, old)
        out["segformer." + key] = value
    # The hub files are SegformerForImageClassification: an ImageNet classifier sits next to the encoder.
    out["classifier.weight"] = torch.zeros(1000, 256)
    out["classifier.bias"] = torch.zeros(1000)
    return out


@pytest.mark.parametrize("strides", [[4, 2, 2, 1], [4, 2, 2, 2]])
def test_matches_transformers_segformer(strides: list[int]) -> None:
    hf = _hf_segformer(strides)
    ours = mit_b0(strides=tuple(strides)).eval()
    load_mit_weights(ours, hf.state_dict())
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(x, output_attentions=True, output_hidden_states=True)
        out = ours(x, maps="all")
    assert ours.output_stride == (16 if strides[-1] == 1 else 32)
    assert len(ref.hidden_states) == len(out.features) == 4
    for ref_f, f in zip(ref.hidden_states, out.features):
        assert f.shape == ref_f.shape
        # Not bit-exact: SegFormer's block norms use eps 1e-6 where transformers uses 1e-5.
        assert (f - ref_f).abs().max().item() < TOL
    assert len(ref.attentions) == len(out.attn) == 8
    for ref_a, a in zip(ref.attentions, out.attn):
        assert a.shape == ref_a.shape
        assert (a - ref_a).abs().max().item() < TOL


def test_hub_layout_converts_like_current_layout() -> None:
    hf_sd = _hf_segformer([4, 2, 2, 1]).state_dict()
    from_current = convert_hf_mit_state_dict(hf_sd)
    from_hub = convert_hf_mit_state_dict(_legacy_hub_names(hf_sd))
    assert from_current.keys() == from_hub.keys() == mit_b0().state_dict().keys()
    assert all(torch.equal(from_current[k], from_hub[k]) for k in from_current)
    # key then value, stacked along the output dimension of our single kv Linear.
    kv = from_current["block4.1.attn.kv.weight"]
    assert torch.equal(
        kv,
        torch.cat(
            [
                hf_sd["stages.3.blocks.1.attention.k_proj.weight"],
                hf_sd["stages.3.blocks.1.attention.v_proj.weight"],
            ]
        ),
    )


def test_shapes_and_attention_b0_afa_strides() -> None:
    torch.manual_seed(0)
    model = mit_b0(strides=(4, 2, 2, 1)).eval()
    assert model.embed_dims == [32, 64, 160, 256] and model.num_heads == [1, 2, 5, 8]
    assert model.depths == [2, 2, 2, 2] and model.output_stride == 16
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96), maps="all")
    assert [tuple(f.shape) for f in out.features] == [
        (2, 32, 16, 24),
        (2, 64, 8, 12),
        (2, 160, 4, 6),
        (2, 256, 4, 6),
    ]
    assert out.block_stage == [0, 0, 1, 1, 2, 2, 3, 3]
    assert out.grids == [(16, 24)] * 2 + [(8, 12)] * 2 + [(4, 6)] * 4
    assert out.kv_grids == [(2, 3)] * 6 + [(4, 6)] * 2
    heads = [1, 1, 2, 2, 5, 5, 8, 8]
    n_q = [384, 384, 96, 96, 24, 24, 24, 24]
    n_kv = [6, 6, 6, 6, 6, 6, 24, 24]
    for i, (scores, attn) in enumerate(zip(out.scores, out.attn)):
        assert scores.shape == attn.shape == (2, heads[i], n_q[i], n_kv[i])
        assert torch.allclose(attn.sum(-1), torch.ones(()), atol=1e-5)
        head_dim = model.embed_dims[out.block_stage[i]] // heads[i]
        assert torch.allclose(attn, torch.softmax(scores * head_dim**-0.5, dim=-1), atol=1e-6)


def test_odd_input_sizes_and_too_small_input() -> None:
    model = mit_b0().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 97), maps=[7])
    # The patch-embedding convs define the grid: (65 + 6 - 7) // 4 + 1 = 17, (17 + 2 - 3) // 2 + 1 = 9, ...
    assert [tuple(f.shape[-2:]) for f in out.features] == [(17, 25), (9, 13), (5, 7), (5, 7)]
    assert out.kv_grids[0] == (2, 3) and out.scores[-1].shape[-1] == 35
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 3, 20, 20))


def test_training_mode_backward_through_scores() -> None:
    model = mit_b0(drop_path_rate=0.5).train()
    out = model(torch.randn(2, 3, 64, 64), maps=[7])
    (out.scores[-1].sum() + out.features[-1].sum()).backward()
    assert model.block4[1].attn.q.weight.grad is not None


def test_segformer_original_layout_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    source = mit_b0()
    sd = {k: v.clone() for k, v in source.state_dict().items()}
    # The keys of SegFormer's mit_bX.pth files are exactly ours, plus the ImageNet head.
    assert (
        "patch_embed1.proj.weight" in sd
        and "block1.0.attn.kv.weight" in sd
        and "block1.0.attn.sr.weight" in sd
    )
    assert (
        "block1.0.mlp.dwconv.dwconv.weight" in sd
        and "norm4.weight" in sd
        and "block4.0.attn.sr.weight" not in sd
    )
    path = tmp_path / "mit_b0.pth"
    torch.save({**sd, "head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)}, path)
    target = mit_b0()
    load_mit_weights(target, path)
    assert all(torch.equal(v, sd[k]) for k, v in target.state_dict().items())

    # The AFA authors' whole network, saved under DDP: only module.encoder.* is the encoder.
    afa = {f"module.encoder.{k}": v for k, v in sd.items()}
    afa.update(
        {"module.classifier.weight": torch.zeros(20, 256, 1, 1), "module.attn_proj.bias": torch.zeros(1)}
    )
    target = mit_b0()
    load_mit_weights(target, afa)
    assert all(torch.equal(v, sd[k]) for k, v in target.state_dict().items())

    from safetensors.torch import save_file

    st_path = tmp_path / "mit_b0.safetensors"
    save_file(sd, str(st_path))
    target = mit_b0(pretrained=st_path)
    assert all(torch.equal(v, sd[k]) for k, v in target.state_dict().items())


def test_clear_errors(tmp_path) -> None:
    b0_weights = mit_b0().state_dict()
    with torch.device("meta"):  # the check fails before any copy: no need to allocate b1
        b1 = mit.mit_b1()
    with pytest.raises(ValueError, match=r"do not fit mit_b1: .* wrong shape, e\.g\. .*another variant"):
        load_mit_weights(b1, b0_weights)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match="could not read weights from .*garbage.pth"):
        mit_b0(pretrained=garbage)
    garbage_st = tmp_path / "garbage.safetensors"
    garbage_st.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="could not read weights"):
        mit_b0(pretrained=garbage_st)

    partial = {k: v for k, v in b0_weights.items() if not k.startswith("block4.")}
    with pytest.raises(ValueError, match=r"do not fit mit_b0: \d+ missing keys \(block4\.") as err:
        load_mit_weights(mit_b0(), partial)
    assert "\n" not in str(err.value)

    with pytest.raises(ValueError, match="unexpected keys"):
        load_mit_weights(mit_b0(), {**b0_weights, "extra.weight": torch.zeros(1)})

    with pytest.raises(UserError, match="weights file .*missing.pth does not exist"):
        mit_b0(pretrained=tmp_path / "missing.pth")


def test_hub_offline_is_one_sentence(monkeypatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(UserError) as err:
        mit_b0(pretrained="hub")
    message = str(err.value)
    assert message.startswith("could not download nvidia/mit-b0: no network;")
    assert message.endswith("download the file elsewhere and pass its path as model.pretrained")
    assert "\n" not in message

    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)
    with pytest.raises(UserError, match="huggingface_hub is not installed;.*model.pretrained"):
        mit_b0(pretrained="hub")


@pytest.mark.parametrize(
    ("name", "depths", "params"),
    [
        ("mit_b1", [2, 2, 2, 2], 13_151_424),
        ("mit_b2", [3, 4, 6, 3], 24_196_288),
        ("mit_b3", [3, 4, 18, 3], 44_072_128),
        ("mit_b4", [3, 8, 27, 3], 60_842_688),
        ("mit_b5", [3, 6, 40, 3], 81_443_008),
    ],
)
def test_larger_variants_by_construction(name: str, depths: list[int], params: int) -> None:
    # Built on the meta device: no memory, no init time. The counts equal transformers' SegformerModel
    # for the same sizes and the paper's 13.1M / 24.2M / 44.0M / 60.8M / 81.4M.
    with torch.device("meta"):
        model = getattr(mit, name)()
    assert isinstance(model, MixTransformer)
    assert (
        model.depths == depths and model.embed_dims == [64, 128, 320, 512] and model.num_heads == [1, 2, 5, 8]
    )
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.block3[-1].drop_path_p == pytest.approx(0.1 * (sum(depths[:3]) - 1) / (sum(depths) - 1))


def test_sdpa_blocks_equal_the_explicit_path_forward_and_backward() -> None:
    """Blocks without maps run F.scaled_dot_product_attention; all-explicit gives the same features
    and the same gradients (fp32 tolerance); a block asked for returns exactly its maps."""
    torch.manual_seed(0)
    model = mit_b0(drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 64, 96)
    results = {}
    for maps in ("all", None, [7]):
        model.zero_grad()
        out = model(x, maps=maps)
        sum(f.square().mean() for f in out.features).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results[str(maps)] = (out, grads)
    explicit, explicit_grads = results["all"]
    for key in ("None", "[7]"):
        out, grads = results[key]
        for f, ref in zip(out.features, explicit.features):
            assert (f - ref).abs().max().item() < 1e-5
        for g, ref in zip(grads, explicit_grads):
            assert (g - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    assert all(s is None for s in results["None"][0].scores)
    asked = results["[7]"][0]
    assert [i for i, s in enumerate(asked.scores) if s is not None] == [7]
    assert torch.allclose(asked.scores[7], explicit.scores[7], atol=1e-5)
    assert torch.allclose(asked.attn[7], explicit.attn[7], atol=1e-6)
